"""End to end: netfront -> netback -> bridge -> netback -> netfront, with pings."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from dom0.host import Host
from dom0.testing import GuestFactory
from dom0.toolstack.config import VifSpec
from domu.guest import Guest
from domu.net import NetStack, open_netstack
from domu.net.ether import BROADCAST, ETH_P_IP, encode_frame, parse_mac
from domu.netdev import NetDevice

pytest.importorskip("dom0.backends.netback")

MACS = ["00:16:3e:01:00:01", "00:16:3e:01:00:02", "00:16:3e:01:00:03"]
IPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


async def test_two_guests_ping_each_other(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    b = await guest_factory("examples.ping:main", name="b", extra="ip=10.0.0.2",
                            vifs=[VifSpec(mac=MACS[1])])
    await b.console.wait_for("10.0.0.2 up on eth0")
    a = await guest_factory("examples.ping:main", name="a",
                            extra="ip=10.0.0.1 peer=10.0.0.2 count=3 stay=1",
                            vifs=[VifSpec(mac=MACS[0])])
    log = await a.console.wait_for("packet loss")
    assert b"3 packets transmitted, 3 received, 0% packet loss" in log, log.decode()
    assert b"64 bytes from 10.0.0.2: icmp_seq=3 ttl=64" in log
    await a.destroy()
    await b.destroy()


class Net:
    """What each guest program hands the test."""

    def __init__(self) -> None:
        self.stacks: dict[str, NetStack] = {}
        self.nics: dict[str, NetDevice] = {}


def stacked(net: Net, ip: str):
    async def prog(guest: Guest) -> None:
        nic = guest.nic(0)
        async with open_netstack(nic, ip) as stack:
            net.stacks[guest.name] = stack
            net.nics[guest.name] = nic
            await trio.sleep_forever()
    return prog


async def three_guests(guest_factory: GuestFactory, net: Net) -> None:
    for i, name in enumerate("abc"):
        await guest_factory(stacked(net, IPS[i]), name=name, vifs=[VifSpec(mac=MACS[i])])
    with trio.fail_after(5):
        for nic in net.nics.values():
            await nic.wait_carrier()
    await trio.testing.wait_all_tasks_blocked()


async def test_ping_both_ways_and_broadcast_reaches_everyone(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    net = Net()
    await three_guests(guest_factory, net)
    ab = await net.stacks["a"].ping("10.0.0.2", count=2, timeout=1, interval=0.1)
    ba = await net.stacks["b"].ping("10.0.0.1", count=2, timeout=1, interval=0.1)
    assert (ab.received, ba.received) == (2, 2)
    assert net.stacks["a"].arp.lookup(bytes([10, 0, 0, 2]), trio.current_time()) \
        == parse_mac(MACS[1])
    # an unknown address: no reply, 100% loss, nothing breaks
    lost = await net.stacks["a"].ping("10.0.0.9", count=1, timeout=0.5)
    assert lost.received == 0 and lost.loss == 1.0
    # a broadcast from c reaches a and b (their stacks count it as ignored IP)
    before = {n: net.nics[n].stats.rx_packets for n in "abc"}
    bcast = encode_frame(BROADCAST, parse_mac(MACS[2]), 0x88B5, b"hello everyone")
    await net.nics["c"].send(bcast)
    await trio.testing.wait_all_tasks_blocked()
    for n in "ab":
        assert net.nics[n].stats.rx_packets == before[n] + 1
    assert net.nics["c"].stats.rx_packets == before["c"]  # never back out of its ingress
    for nic in net.nics.values():
        assert nic.broken is None


async def test_mac_learning_stops_flooding(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    net = Net()
    await three_guests(guest_factory, net)
    bridge = xen_host.kernel.bridge("xenbr0")
    # every guest announced itself (gratuitous ARP): all three MACs are learned
    assert set(bridge.fdb()) >= {m.lower() for m in MACS} or len(bridge.fdb()) >= 3
    c_rx = net.nics["c"].stats.rx_packets
    floods = bridge.stats.floods
    stats = await net.stacks["a"].ping("10.0.0.2", count=3, timeout=1, interval=0.1)
    assert stats.received == 3
    await trio.testing.wait_all_tasks_blocked()
    # one ARP request was broadcast (flooded to c); the echo traffic was unicast
    assert net.nics["c"].stats.rx_packets - c_rx <= 1
    assert bridge.stats.floods - floods <= 1
    # unicast from b to a's learned MAC does not reach c at all
    c_rx = net.nics["c"].stats.rx_packets
    frame = encode_frame(parse_mac(MACS[0]), parse_mac(MACS[1]), ETH_P_IP, bytes(100))
    for _ in range(10):
        await net.nics["b"].send(frame)
    await trio.testing.wait_all_tasks_blocked()
    assert net.nics["c"].stats.rx_packets == c_rx
    assert net.stacks["a"].stats["ignored"] >= 10


async def test_bulk_transfer_through_the_bridge(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    nics: dict[str, NetDevice] = {}

    def plain(name: str):
        async def prog(guest: Guest) -> None:
            nics[name] = guest.nic(0)
            await trio.sleep_forever()
        return prog

    for i, name in enumerate("ab"):
        await guest_factory(plain(name), name=name, vifs=[VifSpec(mac=MACS[i])])
    a, b = nics["a"], nics["b"]
    with trio.fail_after(5):
        await a.wait_carrier()
        await b.wait_carrier()
    frames = [encode_frame(b.mac, a.mac, 0x88B5, bytes([i & 0xFF]) * 1486)
              for i in range(2000)]
    got: list[bytes] = []

    async def reader() -> None:
        while len(got) < len(frames):
            got.append(await b.receive())

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for f in frames:
                await a.send(f)
    assert got == frames
    assert a.broken is None and b.broken is None
    assert a.stats.tx_packets == 2000 and b.stats.rx_dropped == 0
