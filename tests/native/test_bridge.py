"""dom0/native/bridge.py: learning, ageing, flooding, bounds, detach."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dom0.native.bridge import DEFAULT_AGEING_TIME, Bridge, BridgePort

BCAST = b"\xff" * 6
MCAST = bytes.fromhex("01005e000001")
A = bytes.fromhex("00163e000001")
B = bytes.fromhex("00163e000002")
C = bytes.fromhex("00163e000003")
UNKNOWN = bytes.fromhex("00163e0000ff")


def eth(
    dst: bytes, src: bytes, payload: bytes = b"p" * 46, ethertype: bytes = b"\x08\x00"
) -> bytes:
    return dst + src + ethertype + payload


def drain(port: BridgePort) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(port.receive_nowait())
        except trio.WouldBlock:
            return out


def three() -> tuple[Bridge, BridgePort, BridgePort, BridgePort]:
    br = Bridge()
    return br, br.add_port("vif1.0"), br.add_port("vif2.0"), br.add_port("vif3.0")


async def test_defaults() -> None:
    br = Bridge()
    assert br.name == "xenbr0" and br.mtu == 1500 and br.ageing_time == 300.0
    assert DEFAULT_AGEING_TIME == 300.0


async def test_learning_and_unicast() -> None:
    br, p1, p2, p3 = three()
    f1 = eth(BCAST, A)
    p1.transmit(f1)
    assert drain(p1) == [] and drain(p2) == [f1] and drain(p3) == [f1]
    assert br.lookup(A) == "vif1.0"
    f2 = eth(A, B)
    br.transmit("vif2.0", f2)
    assert drain(p1) == [f2] and drain(p2) == [] and drain(p3) == []
    assert br.fdb() == {"00:16:3e:00:00:01": "vif1.0", "00:16:3e:00:00:02": "vif2.0"}
    # a MAC that moves is re-learned on its new port
    p3.transmit(eth(B, A))
    assert br.lookup(A) == "vif3.0" and drain(p2) != []


async def test_flooding_of_multicast_and_unknown_unicast() -> None:
    br, p1, p2, p3 = three()
    p2.transmit(eth(A, B))  # learn B
    drain(p1), drain(p3)
    for dst in (MCAST, UNKNOWN):
        f = eth(dst, A)
        p1.transmit(f)
        assert drain(p1) == [] and drain(p2) == [f] and drain(p3) == [f]
    assert p1.stats.floods == 2 and br.stats.floods == 3


async def test_no_hairpin() -> None:
    br, p1, p2, p3 = three()
    p1.transmit(eth(BCAST, A))
    p1.transmit(eth(BCAST, B))  # B also lives behind vif1.0
    drain(p2), drain(p3)
    p1.transmit(eth(B, A))  # destination is on the ingress port
    assert drain(p1) == [] and drain(p2) == [] and drain(p3) == []
    assert br.stats.filtered == 1


async def test_ageing_is_lazy_and_follows_the_trio_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    br, p1, p2, p3 = three()
    p1.transmit(eth(BCAST, A))
    drain(p2), drain(p3)
    await trio.sleep(299.5)
    p2.transmit(eth(A, B))
    assert len(drain(p1)) == 1 and drain(p3) == []  # still known
    await trio.sleep(0.5)  # learned at 0, now 300: updated + ageing <= now
    assert br.lookup(A) is None
    p2.transmit(eth(A, B))
    assert len(drain(p1)) == 1 and len(drain(p3)) == 1  # flooded again
    # seeing an address again refreshes it: A at 300 and 500, B last at 300
    p1.transmit(eth(B, A))
    await trio.sleep(200)
    p1.transmit(eth(B, A))
    await trio.sleep(200)  # now 700
    assert br.lookup(A) == "vif1.0"  # expires at 800
    assert br.lookup(B) is None  # expired at 600
    await trio.sleep(100)
    assert br.fdb() == {}


async def test_fdb_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    br = Bridge(fdb_max=4)
    p1, p2 = br.add_port("vif1.0"), br.add_port("vif2.0")
    for i in range(10):
        p1.transmit(eth(BCAST, bytes([0, 0x16, 0x3E, 1, 0, i])))
    assert len(br.fdb()) == 4 and br.stats.fdb_full == 6
    assert len(drain(p2)) == 10  # unlearned sources are still forwarded
    await trio.sleep(300)
    p1.transmit(eth(BCAST, A))  # the full table makes room by expiring
    assert br.fdb() == {"00:16:3e:00:00:01": "vif1.0"}
    assert br.expire() == 0


async def test_counters_and_invalid_frames() -> None:
    br, p1, p2, p3 = three()
    good = eth(BCAST, A, b"x" * 1500)  # 1514: the largest untagged frame
    tagged = eth(BCAST, A, b"\x00\x01\x08\x00" + b"y" * 1500, ethertype=b"\x81\x00")
    assert len(tagged) == 1518
    for bad in (
        b"\x00" * 13,
        eth(BCAST, A, b"x" * 1501),
        tagged + b"z",
        eth(BCAST, MCAST),  # multicast source
        eth(BCAST, bytes(6)),  # zero source
    ):
        p1.transmit(bad)
    p1.transmit(good)
    p1.transmit(tagged)
    p1.transmit(bytearray(eth(BCAST, A, b"")))  # 14 bytes: header only is fine
    assert p1.stats.rx_dropped == 5 and br.stats.dropped == 5
    assert p1.stats.rx_frames == 3 and p1.stats.rx_bytes == 1514 + 1518 + 14
    assert p2.stats.tx_frames == 3 and p2.stats.tx_bytes == 1514 + 1518 + 14
    assert p1.stats.tx_frames == 0 and p1.stats.floods == 3
    assert [len(f) for f in drain(p3)] == [1514, 1518, 14]
    assert br.stats.frames == 3


async def test_non_reading_port_is_bounded_and_others_still_served() -> None:
    br = Bridge()
    p1 = br.add_port("vif1.0")
    fast = br.add_port("vif2.0")
    stuck = br.add_port("vif3.0", max_frames=4)
    small = br.add_port("vif4.0", max_bytes=200)
    for i in range(1000):
        p1.transmit(eth(BCAST, A, bytes([i % 256]) * 46))  # 60-byte frames
        assert len(drain(fast)) == 1
    assert stuck.queued_frames == 4 and stuck.stats.tx_dropped == 996
    assert small.queued_frames == 3 and small.queued_bytes == 180
    assert small.stats.tx_dropped == 997
    assert fast.stats.tx_frames == 1000 and fast.stats.tx_dropped == 0
    # the stuck port keeps its oldest frames; reading makes room again
    assert stuck.peek_nowait() == eth(BCAST, A, b"\x00" * 46)
    assert len(drain(stuck)) == 4
    p1.transmit(eth(BCAST, A))
    assert stuck.queued_frames == 1


async def test_receive_waits_and_notify_is_called() -> None:
    kicks = []
    br = Bridge()
    p1 = br.add_port("vif1.0")
    p2 = br.add_port("vif2.0", notify=lambda: kicks.append(1))
    got: list[bytes] = []

    async def reader() -> None:
        async for frame in p2:
            got.append(frame)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        p1.transmit(eth(BCAST, A))
        p1.transmit(eth(BCAST, A, b"q" * 46))
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 2 and kicks == [1, 1]
        br.del_port("vif2.0")  # ends the async iteration
    assert p2.detached


async def test_detach_forgets_macs_and_ends_receivers() -> None:
    br, p1, p2, p3 = three()
    p2.transmit(eth(BCAST, B))
    p2.transmit(eth(BCAST, C))
    p1.transmit(eth(BCAST, A))
    drain(p1), drain(p2), drain(p3)
    p2.transmit(eth(A, B))  # leave a frame queued on vif1.0 ... and one for vif2.0
    p1.transmit(eth(B, A))
    assert p2.queued_frames == 1
    br.del_port("vif2.0")
    assert br.lookup(B) is None and br.lookup(C) is None and br.lookup(A) == "vif1.0"
    assert set(br.ports) == {"vif1.0", "vif3.0"}
    with pytest.raises(trio.EndOfChannel):
        p2.receive_nowait()
    with pytest.raises(trio.EndOfChannel):
        await p2.receive()
    with pytest.raises(KeyError):
        p2.transmit(eth(BCAST, B))
    drain(p1)
    p1.transmit(eth(B, A))  # B unknown now: flooded to the remaining port
    assert len(drain(p3)) == 1
    # the name can be reused by a new vif, with a clean table
    again = br.add_port("vif2.0")
    assert again.stats.tx_frames == 0


async def test_waiting_receiver_is_woken_by_detach() -> None:
    br = Bridge()
    port = br.add_port("vif1.0")
    result: list[str] = []

    async def reader() -> None:
        try:
            await port.receive()
        except trio.EndOfChannel:
            result.append("eof")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        br.del_port("vif1.0")
    assert result == ["eof"]


async def test_port_misuse() -> None:
    br = Bridge()
    br.add_port("vif1.0")
    with pytest.raises(ValueError):
        br.add_port("vif1.0")
    with pytest.raises(ValueError):
        br.add_port("vif9.0", max_frames=0)
    with pytest.raises(KeyError):
        br.transmit("vif9.0", eth(BCAST, A))
    with pytest.raises(KeyError):
        br.del_port("vif9.0")


async def test_bridges_are_independent() -> None:
    br0, br1 = Bridge("xenbr0"), Bridge("xenbr1")
    a0, b0 = br0.add_port("vif1.0"), br0.add_port("vif2.0")
    b1 = br1.add_port("vif3.0")
    br1.add_port("vif1.0")  # same name on another bridge is fine
    a0.transmit(eth(BCAST, A))
    assert len(drain(b0)) == 1 and drain(b1) == []
    assert br1.lookup(A) is None
