"""netback against a raw (and hostile) netif frontend built from ``ring/`` directly.

The frontend here is a test driver for the ``vif`` kind: it publishes the rings
and event channel(s) like netfront (and goes 1 -> 4 directly), then lets the
test put any slot it likes on the tx ring and post any rx buffer. A dom0 tap
port on the same bridge plays "the rest of the network". Every test ends with
the xensim leak check (grants, ports, nodes, watches, tasks, bridge ports).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from dom0.backends.netback import (
    RX_DRAIN_TIMEOUT,
    RX_QUEUE_MAX_BYTES,
    RX_STALL_TIMEOUT,
    NetBack,
    vif_statistics,
)
from dom0.host import DomainHandle, Host
from dom0.native.bridge import BridgePort
from dom0.testing import GuestFactory
from dom0.toolstack.config import VifSpec
from domu.frontends.bus import Frontend
from domu.guest import Guest
from ring.netif import (
    NETIF_RSP_ERROR,
    NETIF_RSP_NULL,
    NETIF_RSP_OKAY,
    NETIF_RX_CODEC,
    NETIF_TX_CODEC,
    XEN_NETIF_GSO_TYPE_TCPV4,
    NetifExtraInfo,
    NetifRxRequest,
    NetifTxRequest,
    NETRXF_more_data,
    NETTXF_extra_info,
    NETTXF_more_data,
)
from ring.sring import FrontRing

BCAST = b"\xff" * 6
TAP = "tap0"


class RawNetFront(Frontend):
    """A netif frontend the test drives by hand (rings straight from ``ring/``)."""

    kind = "vif"
    split = False
    extra_keys: dict[str, str] = {}

    async def talk_to_backend(self) -> None:
        tx_gfn, tx_view = self.alloc_page()
        rx_gfn, rx_view = self.alloc_page()
        self.tx = FrontRing.init([tx_view], NETIF_TX_CODEC)
        self.rx = FrontRing.init([rx_view], NETIF_RX_CODEC)
        keys = {"tx-ring-ref": str(self.grant_page(tx_gfn)),
                "rx-ring-ref": str(self.grant_page(rx_gfn))}
        self.tx_port, self.tx_waiter = self.alloc_port_waiter()
        if self.split:
            self.rx_port, self.rx_waiter = self.alloc_port_waiter()
            keys["event-channel-tx"] = str(self.tx_port)
            keys["event-channel-rx"] = str(self.rx_port)
        else:
            self.rx_port, self.rx_waiter = self.tx_port, self.tx_waiter
            keys["event-channel"] = str(self.tx_port)
        keys.update({"request-rx-copy": "1", "feature-rx-notify": "1", "feature-sg": "1"})
        keys.update(self.extra_keys)
        for key, value in keys.items():
            await self.write_key(key, value)
        self.rx_pages: dict[int, memoryview] = {}

    # -- helpers for tests ---------------------------------------------------------------
    def page(self, data: bytes = b"", offset: int = 0, readonly: bool = True) -> int:
        """A page holding ``data`` at ``offset``, granted to the backend; its gref."""
        gfn, view = self.alloc_page()
        view[offset:offset + len(data)] = data
        return self.grant_page(gfn, readonly=readonly)

    def send(self, slots: list[NetifTxRequest | NetifExtraInfo]) -> None:
        """Put slots on the tx ring, push, notify if the ring says so."""
        self.tx.put_requests(slots)
        if self.tx.push_requests_and_check_notify():
            self.hc.evtchn_send(self.tx_port)

    def post_rx(self, ids: list[int]) -> list[int]:
        """Post one empty writable page per id; returns the grefs."""
        refs = []
        reqs = []
        for rid in ids:
            gfn, view = self.alloc_page()
            ref = self.grant_page(gfn)
            self.rx_pages[ref] = view
            refs.append(ref)
            reqs.append(NetifRxRequest(rid, ref))
        self.rx.put_requests(reqs)
        if self.rx.push_requests_and_check_notify():
            self.hc.evtchn_send(self.rx_port)
        return refs


@pytest.fixture
def xen_host_options() -> dict[str, Any]:
    return {"frontend_drivers": {"vif": RawNetFront}}


def eth(src: int, size: int, dst: bytes = BCAST, fill: int = 0xAB) -> bytes:
    """A frame of ``size`` bytes from MAC 00:16:3e:00:00:<src>."""
    hdr = dst + bytes([0, 0x16, 0x3E, 0, 0, src]) + b"\x08\x00"
    return hdr + bytes([fill]) * (size - len(hdr))


def keeper(box: dict[int, Guest]) -> Callable[[Guest], Awaitable[None]]:
    async def main(guest: Guest) -> None:
        box[guest.domid] = guest
        await trio.sleep_forever()
    return main


async def wait_backend_state(host: Host, domid: int, want: bytes, devid: int = 0) -> None:
    path = f"/local/domain/0/backend/vif/{domid}/{devid}/state"
    with trio.fail_after(30):
        async with host.kernel.xs.watch(path) as w:
            async for _ in w:
                try:
                    if await host.kernel.xs.read(path) == want:
                        return
                except Exception:
                    pass


async def make_guest(guest_factory: GuestFactory, host: Host, box: dict[int, Guest],
                     **fields: Any) -> tuple[DomainHandle, RawNetFront, NetBack]:
    fields.setdefault("vifs", [VifSpec()])
    dom = await guest_factory(keeper(box), **fields)
    await wait_backend_state(host, dom.domid, b"4")
    front = box[dom.domid].devices["vif/0"]
    back = host.kernel.backends.instance("vif", dom.domid, 0)
    assert isinstance(front, RawNetFront) and isinstance(back, NetBack)
    return dom, front, back


@pytest.fixture
async def tap(xen_host: Host) -> Any:
    port = xen_host.kernel.bridge("xenbr0").add_port(TAP)
    yield port
    if not port.detached:
        xen_host.kernel.bridge("xenbr0").del_port(TAP)


def drain(port: BridgePort) -> list[bytes]:
    out = []
    while port.peek_nowait() is not None:
        out.append(port.receive_nowait())
    return out


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


# -- handshake -----------------------------------------------------------------------------


async def test_handshake_features_hotplug_and_macs(xen_host: Host,
                                                   guest_factory: GuestFactory) -> None:
    box: dict[int, Guest] = {}
    dom, _front, back = await make_guest(guest_factory, xen_host, box)
    dom2, _front2, _ = await make_guest(guest_factory, xen_host, box)
    bpath = f"/local/domain/0/backend/vif/{dom.domid}/0"
    xs = xen_host.kernel.xs
    expect = {"feature-sg": b"1", "feature-gso-tcpv4": b"0", "feature-rx-copy": b"1",
              "feature-rx-flip": b"0", "feature-multicast-control": b"0",
              "feature-split-event-channels": b"1", "multi-queue-max-queues": b"1",
              "hotplug-status": b"connected", "state": b"4", "bridge": b"xenbr0"}
    for key, value in expect.items():
        assert await xs.read(f"{bpath}/{key}") == value, key
    ports = xen_host.kernel.bridge("xenbr0").ports
    assert f"vif{dom.domid}.0" in ports and f"vif{dom2.domid}.0" in ports
    assert back.stats.carrier and back.port_name == f"vif{dom.domid}.0"
    macs = [await xs.read(f"/local/domain/0/backend/vif/{d}/0/mac")
            for d in (dom.domid, dom2.domid)]
    assert all(m.startswith(b"00:16:3e:") for m in macs) and macs[0] != macs[1]
    fmac = await xs.read(f"/local/domain/{dom.domid}/device/vif/0/mac")
    assert fmac == macs[0]
    assert set(vif_statistics(xen_host.kernel.backends)) == {
        f"vif{dom.domid}.0", f"vif{dom2.domid}.0"}


async def test_mac_generation_is_seedable(xen_host: Host, guest_factory: GuestFactory) -> None:
    import random

    xen_host.toolstack.rng = random.Random(7)
    first = xen_host.toolstack.new_mac()
    xen_host.toolstack.rng = random.Random(7)
    assert xen_host.toolstack.new_mac() == first
    assert first.startswith("00:16:3e:") and int(first.split(":")[3], 16) < 0x80


async def test_request_rx_copy_zero_is_refused(xen_host: Host,
                                               guest_factory: GuestFactory) -> None:
    box: dict[int, Guest] = {}
    RawNetFront.extra_keys = {"request-rx-copy": "0"}
    try:
        dom = await guest_factory(keeper(box), vifs=[VifSpec()])
        await wait_backend_state(xen_host, dom.domid, b"5")
    finally:
        RawNetFront.extra_keys = {}
    back = xen_host.kernel.backends.instance("vif", dom.domid, 0)
    assert back is not None and back.errors == 1
    assert back.tx_ring is None and back.bport is None  # nothing kept mapped or attached


# -- guest transmit --------------------------------------------------------------------------


async def test_tx_single_and_multi_slot_frames_reach_the_bridge(
        xen_host: Host, guest_factory: GuestFactory, tap: BridgePort) -> None:
    box: dict[int, Guest] = {}
    _dom, front, back = await make_guest(guest_factory, xen_host, box)
    one = eth(1, 60)
    front.send([NetifTxRequest(front.page(one), 0, 0, 7, len(one))])
    await settle()
    assert drain(tap) == [one]
    assert [(r.id, r.status) for r in front.tx.get_responses()] == [(7, NETIF_RSP_OKAY)]

    # 3 fragments at odd offsets, with a GSO extra-info slot after the first
    big = eth(1, 5000, fill=0x5A)
    parts = [big[:1000], big[1000:4000], big[4000:]]
    slots: list[NetifTxRequest | NetifExtraInfo] = [
        NetifTxRequest(front.page(parts[0], 96), 96, NETTXF_more_data | NETTXF_extra_info,
                       10, len(big)),
        NetifExtraInfo.gso(1448, XEN_NETIF_GSO_TYPE_TCPV4),
        NetifTxRequest(front.page(parts[1], 1), 1, NETTXF_more_data, 11, len(parts[1])),
        NetifTxRequest(front.page(parts[2], 3096), 3096, 0, 12, len(parts[2])),
    ]
    xen_host.kernel.bridge("xenbr0").mtu = 9000
    front.send(slots)
    await settle()
    assert drain(tap) == [big]
    rsps = front.tx.get_responses()
    assert [r.status for r in rsps] == [NETIF_RSP_OKAY, NETIF_RSP_NULL, NETIF_RSP_OKAY,
                                        NETIF_RSP_OKAY]
    assert [rsps[0].id, rsps[2].id, rsps[3].id] == [10, 11, 12]
    assert back.stats.tx_packets == 2 and back.stats.tx_bytes == 60 + 5000
    assert back.stats.tx_null_slots == 1 and back.stats.tx_errors == 0


def _hostile_cases(front: RawNetFront) -> dict[str, tuple[list[Any], list[int]]]:
    """name -> (slots, expected statuses); every case is one dropped packet."""
    E, N = NETIF_RSP_ERROR, NETIF_RSP_NULL
    good = front.page(eth(1, 4000))
    M = NETTXF_more_data
    many = [NetifTxRequest(good, 0, M, 0, 19 * 100)] + [
        NetifTxRequest(good, 0, M if k < 17 else 0, k + 1, 100) for k in range(18)]
    return {
        "too-many-slots": (many, [E] * 19),
        "zero-size fragment": ([NetifTxRequest(good, 0, M, 1, 60),
                                NetifTxRequest(good, 0, 0, 2, 0)], [E, E]),
        "fragment out of page": ([NetifTxRequest(good, 0, M, 1, 260),
                                  NetifTxRequest(good, 4000, 0, 2, 200)], [E, E]),
        "first slot shorter than ethernet header": (
            [NetifTxRequest(good, 0, M, 1, 60), NetifTxRequest(good, 0, 0, 2, 50)], [E, E]),
        "1-byte first fragment": (
            [NetifTxRequest(good, 0, M, 1, 61), NetifTxRequest(good, 0, 0, 2, 60)], [E, E]),
        "runt frame": ([NetifTxRequest(good, 0, 0, 1, 10)], [E]),
        "size smaller than fragments": (
            [NetifTxRequest(good, 0, M, 1, 60), NetifTxRequest(good, 0, 0, 2, 100)], [E, E]),
        "single slot out of page": ([NetifTxRequest(good, 100, 0, 1, 4000)], [E]),
        "bad grant ref": ([NetifTxRequest(99999, 0, 0, 1, 60)], [E]),
        "bad extra-info type": ([NetifTxRequest(good, 0, NETTXF_extra_info, 1, 60),
                                 NetifExtraInfo(0, 0, bytes(6))], [E, N]),
        "too many extra-info slots": (
            [NetifTxRequest(good, 0, NETTXF_extra_info, 1, 60),
             *[NetifExtraInfo.gso(1448, 1, more=True)] * 4], [E, N, N, N, N]),
    }


HOSTILE = {
    "too-many-slots": "too-many-slots",
    "zero-size fragment": "fragment",
    "fragment out of page": "fragment",
    "first slot shorter than ethernet header": "runt",
    "1-byte first fragment": "runt",
    "runt frame": "runt",
    "size smaller than fragments": "size-mismatch",
    "single slot out of page": "fragment",
    "bad grant ref": "grant-copy",
    "bad extra-info type": "extra-info",
    "too many extra-info slots": "extra-info",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_tx_hostile_packet_is_dropped_counted_and_vif_keeps_working(
        xen_host: Host, guest_factory: GuestFactory, tap: BridgePort, case: str) -> None:
    box: dict[int, Guest] = {}
    _dom, front, back = await make_guest(guest_factory, xen_host, box)
    slots, statuses = _hostile_cases(front)[case]
    front.send(slots)
    await settle()
    assert drain(tap) == []
    rsps = front.tx.get_responses()
    assert [r.status for r in rsps] == statuses
    data_ids = [s.id for s in slots if isinstance(s, NetifTxRequest)]
    assert [r.id for r in rsps if r.status != NETIF_RSP_NULL] == data_ids
    assert dict(back.stats.tx_drops) == {HOSTILE[case]: 1}
    assert back.stats.tx_errors == 1 and back.stats.tx_packets == 0
    # still serving
    ok = eth(1, 100)
    front.send([NetifTxRequest(front.page(ok), 0, 0, 99, len(ok))])
    await settle()
    assert drain(tap) == [ok]
    assert [(r.id, r.status) for r in front.tx.get_responses()] == [(99, NETIF_RSP_OKAY)]


async def test_tx_endless_more_data_chain_is_dropped(
        xen_host: Host, guest_factory: GuestFactory, tap: BridgePort) -> None:
    box: dict[int, Guest] = {}
    _dom, front, back = await make_guest(guest_factory, xen_host, box)
    ref = front.page(eth(1, 100))
    chain = [NetifTxRequest(ref, 0, NETTXF_more_data, k, 100) for k in range(200)]
    front.send(chain[:100])
    await settle()
    assert [r.status for r in front.tx.get_responses()] == [NETIF_RSP_ERROR] * 100
    front.send(chain[100:])  # the chain goes on: still answered, still dropped
    await settle()
    assert [r.status for r in front.tx.get_responses()] == [NETIF_RSP_ERROR] * 100
    assert back.stats.tx_drops == {"endless-chain": 1} and back.stats.tx_error_slots == 200
    end = NetifTxRequest(ref, 0, 0, 500, 100)  # the chain's last slot
    ok = eth(1, 80)
    front.send([end, NetifTxRequest(front.page(ok), 0, 0, 501, len(ok))])
    await settle()
    assert [(r.id, r.status) for r in front.tx.get_responses()] == [
        (500, NETIF_RSP_ERROR), (501, NETIF_RSP_OKAY)]
    assert drain(tap) == [ok]


async def test_tx_chain_split_across_pushes_is_assembled(
        xen_host: Host, guest_factory: GuestFactory, tap: BridgePort) -> None:
    box: dict[int, Guest] = {}
    _dom, front, _back = await make_guest(guest_factory, xen_host, box)
    frame = eth(1, 300)
    front.send([NetifTxRequest(front.page(frame[:200]), 0, NETTXF_more_data, 1, 300)])
    await settle()
    assert front.tx.get_responses() == [] and drain(tap) == []  # waits for the rest
    front.send([NetifTxRequest(front.page(frame[200:]), 0, 0, 2, 100)])
    await settle()
    assert [(r.id, r.status) for r in front.tx.get_responses()] == [
        (1, NETIF_RSP_OKAY), (2, NETIF_RSP_OKAY)]
    assert drain(tap) == [frame]


async def test_tx_bogus_req_prod_halts_only_that_vif(
        xen_host: Host, guest_factory: GuestFactory, tap: BridgePort) -> None:
    box: dict[int, Guest] = {}
    dom_a, front_a, back_a = await make_guest(guest_factory, xen_host, box)
    _dom_b, front_b, back_b = await make_guest(guest_factory, xen_host, box)
    front_a.tx.sring.req_prod = (front_a.tx.sring.req_prod + 100000) & 0xFFFFFFFF
    xen_host_hc = front_a.hc
    xen_host_hc.evtchn_send(front_a.tx_port)
    await wait_backend_state(xen_host, dom_a.domid, b"5")
    assert back_a.stats.ring_errors == 1 and back_a.bport is None
    assert f"vif{dom_a.domid}.0" not in xen_host.kernel.bridge("xenbr0").ports
    ok = eth(2, 64)
    front_b.send([NetifTxRequest(front_b.page(ok), 0, 0, 3, len(ok))])
    await settle()
    assert drain(tap) == [ok] and back_b.stats.tx_packets == 1


async def test_event_storm_costs_bounded_work(
        xen_host: Host, guest_factory: GuestFactory, tap: BridgePort) -> None:
    box: dict[int, Guest] = {}
    _dom, front, back = await make_guest(guest_factory, xen_host, box)
    await settle()
    before = back.stats.tx_passes
    for _ in range(100_000):
        front.hc.evtchn_send(front.tx_port)
    ok = eth(1, 64)
    front.send([NetifTxRequest(front.page(ok), 0, 0, 1, len(ok))])
    await settle()
    assert back.stats.tx_passes - before <= 3
    assert drain(tap) == [ok]


# -- guest receive ---------------------------------------------------------------------------


async def test_rx_fills_posted_buffers_in_their_slots(
        xen_host: Host, guest_factory: GuestFactory, tap: BridgePort) -> None:
    box: dict[int, Guest] = {}
    _dom, front, back = await make_guest(guest_factory, xen_host, box)
    # move the ring indices on first so slot != index != id
    refs = front.post_rx([300 + k for k in range(5)])
    frames = [eth(9, 60 + k) for k in range(3)]
    for f in frames:
        tap.transmit(f)
    await settle()
    rsps = front.rx.get_responses()
    assert [(r.id, r.offset, r.flags, r.status) for r in rsps] == [
        (300 + k, 0, 0, len(frames[k])) for k in range(3)]
    for k, f in enumerate(frames):
        assert bytes(front.rx_pages[refs[k]][:len(f)]) == f
    # a jumbo frame across three buffers (feature-sg), NETRXF_more_data on all but the last
    xen_host.kernel.bridge("xenbr0").mtu = 9000
    jumbo = eth(9, 9014, fill=0x33)
    front.post_rx([400, 401])
    tap.transmit(jumbo)
    await settle()
    rsps = front.rx.get_responses()
    assert [(r.id, r.flags, r.status) for r in rsps] == [
        (303, NETRXF_more_data, 4096), (304, NETRXF_more_data, 4096), (400, 0, 822)]
    got = b"".join(bytes(front.rx_pages[ref][:n]) for ref, n in
                   ((refs[3], 4096), (refs[4], 4096)))
    assert got == jumbo[:8192]
    assert back.stats.rx_packets == 4 and back.stats.rx_bytes == sum(map(len, frames)) + 9014


async def test_rx_bad_buffer_gref_answers_error_and_continues(
        xen_host: Host, guest_factory: GuestFactory, tap: BridgePort) -> None:
    box: dict[int, Guest] = {}
    _dom, front, back = await make_guest(guest_factory, xen_host, box)
    front.rx.put_requests([NetifRxRequest(1, 99999)])
    front.rx.push_requests()
    front.post_rx([2])
    tap.transmit(eth(9, 60))
    tap.transmit(eth(9, 61))
    await settle()
    rsps = front.rx.get_responses()
    assert [(r.id, r.status) for r in rsps] == [(1, NETIF_RSP_ERROR), (2, 61)]
    assert back.stats.rx_errors == 1 and back.stats.rx_packets == 1


async def test_rx_guest_without_buffers_is_bounded_drained_and_stalled(
        autojump_clock: MockClock, xen_host: Host, guest_factory: GuestFactory,
        tap: BridgePort) -> None:
    box: dict[int, Guest] = {}
    _dom_a, front_a, back_a = await make_guest(guest_factory, xen_host, box)
    _dom_b, front_b, back_b = await make_guest(guest_factory, xen_host, box)
    port_a = back_a.bport
    assert port_a is not None
    front_b.post_rx(list(range(200)))
    t0 = trio.current_time()
    for k in range(1000):  # a flood: A never posts a buffer
        tap.transmit(eth(9, 1500, fill=k & 0xFF))
    assert port_a.queued_bytes <= RX_QUEUE_MAX_BYTES
    queued = port_a.queued_frames
    assert 0 < queued < 1000 and port_a.stats.tx_dropped == 1000 - queued
    await trio.sleep(1)
    assert back_b.stats.rx_packets == 200  # B is served during the flood
    assert back_a.stats.rx_packets == 0 and port_a.queued_frames == queued
    await trio.sleep(RX_DRAIN_TIMEOUT)
    assert port_a.queued_frames == 0
    assert back_a.stats.rx_drops["drain-timeout"] == queued and back_a.stats.carrier
    # keep trickling frames in: they expire one by one; carrier goes off at the stall
    while trio.current_time() < t0 + RX_STALL_TIMEOUT + 1:
        tap.transmit(eth(9, 100))
        await trio.sleep(5)
        assert port_a.queued_bytes <= RX_QUEUE_MAX_BYTES
        used = len(front_b.rx.get_responses())  # B is a healthy guest: it refills
        if used:
            front_b.post_rx(list(range(used)))
    assert not back_a.stats.carrier and back_a.stats.stalls == 1
    tap.transmit(eth(9, 100))
    await trio.sleep(0.1)
    assert port_a.queued_frames == 0 and back_a.stats.rx_drops["carrier-off"] >= 1
    # buffers appear: carrier on, traffic flows again
    front_a.post_rx([7])
    await trio.sleep(0.1)
    assert back_a.stats.carrier
    tap.transmit(eth(9, 77))
    await trio.sleep(0.1)
    assert [(r.id, r.status) for r in front_a.rx.get_responses()] == [(7, 77)]
    assert back_b.stats.carrier and back_b.stats.stalls == 0


# -- hot-plug ----------------------------------------------------------------------------------


async def test_hot_unplug_during_traffic_leaves_nothing_behind(
        xen_host: Host, guest_factory: GuestFactory, tap: BridgePort) -> None:
    box: dict[int, Guest] = {}
    dom = await guest_factory(keeper(box))
    devid = await dom.attach_vif(VifSpec())
    assert devid == 0
    await wait_backend_state(xen_host, dom.domid, b"4")
    front = box[dom.domid].devices["vif/0"]
    assert isinstance(front, RawNetFront)
    ref = front.page(eth(1, 1000))
    front.post_rx(list(range(10)))
    for k in range(20):
        tap.transmit(eth(9, 500))
        front.send([NetifTxRequest(ref, 0, 0, k, 1000)])
    await dom.detach_vif(0)
    await settle()
    assert xen_host.kernel.backends.instance("vif", dom.domid, 0) is None
    assert f"vif{dom.domid}.0" not in xen_host.kernel.bridge("xenbr0").ports
    assert front.pending_grants == []
    # plug it in again: a new vif with a fresh ring works
    await dom.attach_vif(VifSpec())
    await wait_backend_state(xen_host, dom.domid, b"4")
    front = box[dom.domid].devices["vif/0"]
    ok = eth(1, 64)
    drain(tap)
    front.send([NetifTxRequest(front.page(ok), 0, 0, 1, len(ok))])
    await settle()
    assert drain(tap) == [ok]
