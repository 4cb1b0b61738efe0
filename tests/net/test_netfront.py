"""netfront against a scripted backend built from ``ring/`` directly.

:class:`ScriptedNetBack` is a dom0 backend driver that does nothing on its
own: the test consumes tx requests, answers them, posts rx responses, or
writes raw slots, one step at a time. It publishes netback's feature keys,
maps the rings when the frontend is Connected and then writes its own
``state = 4`` (the backend bus has no hotplug script to wait for yet).
The hostile cases live in ``test_netfront_hostile.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from dom0.backends.bus import Backend
from dom0.host import DomainHandle, Host
from dom0.testing import GuestFactory
from dom0.toolstack.config import VifSpec
from domu.frontends.netfront import NetFront
from domu.guest import Guest
from domu.netdev import NetDevice, NetDeviceDown
from hypervisor.grant_table import GNTST_okay
from ring.netif import (
    NET_RX_RING_SIZE,
    NETIF_RSP_ERROR,
    NETIF_RSP_OKAY,
    NETIF_RX_CODEC,
    NETIF_TX_CODEC,
    XEN_NETIF_GSO_TYPE_TCPV4,
    NetifExtraInfo,
    NetifRxRequest,
    NetifRxResponse,
    NetifTxRequest,
    NetifTxResponse,
    NETRXF_extra_info,
    NETRXF_more_data,
    NETTXF_more_data,
)
from ring.sring import BackRing

PAGE = 4096


class ScriptedNetBack(Backend):
    """A netback the test drives by hand (and can make hostile)."""

    kind = "vif"
    features = {"feature-sg": "1", "feature-rx-copy": "1", "feature-rx-flip": "0",
                "feature-split-event-channels": "1", "feature-gso-tcpv4": "1"}

    async def probe(self) -> None:
        for key, value in self.features.items():
            await self.write_key(key, value)

    async def map_ring(self) -> None:
        self.keys = {k: await self.read_frontend(k) for k in (
            "tx-ring-ref", "rx-ring-ref", "event-channel", "request-rx-copy",
            "feature-rx-notify", "feature-sg")}
        self.tx: BackRing[NetifTxRequest, NetifTxResponse] = BackRing.attach(
            [self.map_grant(int(self.keys["tx-ring-ref"] or b""))], NETIF_TX_CODEC)
        self.rx: BackRing[NetifRxRequest, NetifRxResponse] = BackRing.attach(
            [self.map_grant(int(self.keys["rx-ring-ref"] or b""))], NETIF_RX_CODEC)
        self.port, self.waiter = self.bind_port_waiter(int(self.keys["event-channel"] or b""))
        self.held: list[int] = []
        await self.write_key("state", "4")

    # -- grant copies (map, copy, unmap) ---------------------------------------------------

    def copy_from(self, gref: int, offset: int, n: int) -> bytes:
        res = self.hc.grant_map_one(self.dev.frontend_id, gref, readonly=True)
        assert res.status == GNTST_okay and res.view is not None
        data = bytes(res.view[offset:offset + n])
        self.hc.grant_unmap_one(res.handle)
        return data

    def copy_to(self, gref: int, offset: int, data: bytes) -> None:
        res = self.hc.grant_map_one(self.dev.frontend_id, gref)
        assert res.status == GNTST_okay and res.view is not None
        res.view[offset:offset + len(data)] = data
        self.hc.grant_unmap_one(res.handle)

    def hold(self, gref: int) -> None:
        """Map a grant and keep it mapped (until the device disconnects)."""
        self.map_grant(gref, readonly=True)
        self.held.append(gref)

    def notify(self) -> None:
        self.hc.evtchn_send(self.port)

    # -- tx --------------------------------------------------------------------------------

    def take_tx(self) -> list[NetifTxRequest]:
        return self.tx.get_requests()

    def packet_data(self, reqs: list[NetifTxRequest]) -> bytes:
        later = sum(r.size for r in reqs[1:])
        lens = [reqs[0].size - later] + [r.size for r in reqs[1:]]
        return b"".join(self.copy_from(r.gref, r.offset, n) for r, n in zip(reqs, lens))

    def answer_tx(self, reqs: list[NetifTxRequest], status: int = NETIF_RSP_OKAY) -> None:
        self.tx.put_responses([NetifTxResponse(r.id, status) for r in reqs])
        if self.tx.push_responses_and_check_notify():
            self.notify()

    def raw_tx_response(self, rid: int, status: int = NETIF_RSP_OKAY) -> None:
        """Write a response slot and publish it whatever was requested."""
        self.tx.sring.write_slot(self.tx.rsp_prod_pvt, NETIF_TX_CODEC.encode_response(
            NetifTxResponse(rid, status)))
        self.tx.rsp_prod_pvt = (self.tx.rsp_prod_pvt + 1) & 0xFFFFFFFF
        self.tx.push_responses()
        self.notify()

    # -- rx --------------------------------------------------------------------------------

    def posted(self) -> int:
        return self.rx.unconsumed_requests()

    def deliver(self, frame: bytes, *, chunk: int = PAGE, gso: bool = False) -> None:
        """Copy ``frame`` into posted buffers, one response per slot, and notify."""
        pieces = [frame[i:i + chunk] for i in range(0, len(frame), chunk)] or [b""]
        reqs = self.rx.get_requests(limit=len(pieces) + (1 if gso else 0))
        assert len(reqs) == len(pieces) + (1 if gso else 0), "not enough rx buffers posted"
        rsps: list[Any] = []
        data_reqs = [reqs[0], *reqs[2 if gso else 1:]]
        for i, (req, piece) in enumerate(zip(data_reqs, pieces)):
            self.copy_to(req.gref, 0, piece)
            flags = NETRXF_more_data if i < len(pieces) - 1 else 0
            if i == 0 and gso:
                flags |= NETRXF_extra_info
            rsps.append(NetifRxResponse(req.id, 0, flags, len(piece)))
            if i == 0 and gso:
                rsps.append(NetifExtraInfo.gso(1448, XEN_NETIF_GSO_TYPE_TCPV4))
        self.rx.put_responses(rsps)
        if self.rx.push_responses_and_check_notify():
            self.notify()

    def raw_rx_responses(self, rsps: list[NetifRxResponse | NetifExtraInfo],
                         consume: bool = True) -> None:
        """Consume as many requests as responses (if possible) and publish raw slots."""
        if consume:
            self.rx.get_requests(limit=len(rsps))
        for rsp in rsps:
            self.rx.sring.write_slot(self.rx.rsp_prod_pvt, NETIF_RX_CODEC.encode_response(rsp))
            self.rx.rsp_prod_pvt = (self.rx.rsp_prod_pvt + 1) & 0xFFFFFFFF
        self.rx.push_responses()
        self.notify()


DRIVERS = {"backend_drivers": {"vif": ScriptedNetBack}}
MAC0 = "00:16:3e:0a:00:01"
MAC1 = "00:16:3e:0a:00:02"


@pytest.fixture
def xen_host_options() -> dict[str, Any]:
    return dict(DRIVERS)


class Box:
    """What the guest program hands the test."""

    guest: Guest
    nics: list[NetDevice]


def holder(ndev: int = 1) -> tuple[Box, Callable[[Guest], Awaitable[None]]]:
    box = Box()

    async def prog(guest: Guest) -> None:
        box.guest = guest
        box.nics = [guest.nic(i) for i in range(ndev)]
        await trio.sleep_forever()

    return box, prog


async def boot(guest_factory: GuestFactory, xen_host: Host, *, vifs: list[VifSpec] | None = None,
               ) -> tuple[DomainHandle, Box, list[ScriptedNetBack]]:
    vifs = vifs or [VifSpec(mac=MAC0)]
    box, prog = holder(len(vifs))
    dom = await guest_factory(prog, vifs=vifs)
    await trio.testing.wait_all_tasks_blocked()
    backs = []
    for i in range(len(vifs)):
        back = xen_host.kernel.backends.instance("vif", dom.domid, i)
        assert isinstance(back, ScriptedNetBack)
        backs.append(back)
    with trio.fail_after(5):
        for nic in box.nics:
            await nic.wait_carrier()
    return dom, box, backs


def front_of(box: Box, devid: int = 0) -> NetFront:
    front = box.guest.devices[f"vif/{devid}"]
    assert isinstance(front, NetFront)
    return front


def frame(n: int, fill: int = 0xAB, dst: bytes = b"\xff" * 6) -> bytes:
    return dst + bytes.fromhex(MAC0.replace(":", "")) + b"\x08\x00" + bytes([fill]) * (n - 14)


# -- handshake -------------------------------------------------------------------------------


async def test_handshake_publishes_rings_and_features(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, box, (back,) = await boot(guest_factory, xen_host)
    assert back.keys["request-rx-copy"] == b"1"
    assert back.keys["feature-rx-notify"] == b"1"
    assert back.keys["feature-sg"] == b"1"
    home = f"/local/domain/{dom.domid}/device/vif/0"
    assert await box.guest.xenstore.read(f"{home}/state") == b"4"
    nic = box.nics[0]
    assert nic.mac == bytes.fromhex("00163e0a0001") and nic.mtu == 1500
    assert nic.carrier and nic.operstate == "up" and nic.name == "eth0"
    # the rx ring is fully stocked, ids = slot index, grants distinct and writable
    assert back.posted() == NET_RX_RING_SIZE
    reqs = [back.rx.copy_request(i) for i in range(NET_RX_RING_SIZE)]
    assert [r.id for r in reqs] == list(range(NET_RX_RING_SIZE))
    assert len({r.gref for r in reqs}) == NET_RX_RING_SIZE
    front = front_of(box)
    assert front.backend_features["feature-sg"] and front.backend_features["feature-rx-copy"]
    await dom.destroy()


async def test_backend_without_rx_copy_is_refused(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ScriptedNetBack, "features", {"feature-sg": "1"})
    box, prog = holder(0)
    dom = await guest_factory(prog, vifs=[VifSpec(mac=MAC0)])
    await trio.testing.wait_all_tasks_blocked()
    home = f"/local/domain/{dom.domid}/device/vif/0"
    assert await box.guest.xenstore.read(f"{home}/state") in (b"5", b"6")
    assert dom.state == "running"
    await dom.destroy()


# -- transmit --------------------------------------------------------------------------------


async def test_tx_single_slot_and_grants_ended(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, box, (back,) = await boot(guest_factory, xen_host)
    nic, front = box.nics[0], front_of(box)
    free_refs = front.grants.free_count
    data = frame(60)
    await nic.send(data)
    (req,) = back.take_tx()
    assert req.size == 60 and req.flags == 0 and req.offset == 0
    assert back.packet_data([req]) == data
    assert front.grants.free_count == free_refs - 1
    back.answer_tx([req])
    await trio.testing.wait_all_tasks_blocked()
    assert front.grants.free_count == free_refs
    assert len(front._tx_free_ids) == 256 and all(b is None for b in front._tx_inflight)
    assert nic.stats.tx_packets == 1 and nic.stats.tx_bytes == 60
    await dom.destroy()


async def test_tx_multi_slot_jumbo(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, box, (back,) = await boot(guest_factory, xen_host, vifs=[VifSpec(mac=MAC0, mtu=9000)])
    nic = box.nics[0]
    assert nic.mtu == 9000
    data = bytes(range(256)) * 35 + bytes(54)  # 9014 bytes, recognisable
    await nic.send(data)
    reqs = back.take_tx()
    assert [r.size for r in reqs] == [9014, 4096, 822]
    assert [r.flags & NETTXF_more_data for r in reqs] == [NETTXF_more_data] * 2 + [0]
    assert len({r.id for r in reqs}) == 3 and all(r.id < 256 for r in reqs)
    assert back.packet_data(reqs) == data
    back.answer_tx(reqs)
    await trio.testing.wait_all_tasks_blocked()
    assert len(front_of(box)._tx_free_ids) == 256
    with pytest.raises(ValueError):
        await nic.send(bytes(9015))
    await dom.destroy()


async def test_tx_frame_limits(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, box, (back,) = await boot(guest_factory, xen_host)
    nic = box.nics[0]
    with pytest.raises(ValueError):
        await nic.send(bytes(13))
    with pytest.raises(ValueError):
        await nic.send(frame(1515))
    vlan = b"\xff" * 12 + b"\x81\x00" + bytes(1504)  # 1518: tagged frames get 4 more
    await nic.send(vlan)
    await nic.send(frame(1514))
    assert [r.size for r in back.take_tx()] == [1518, 1514]
    await dom.destroy()


async def test_tx_backpressure_when_ring_full(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, box, (back,) = await boot(guest_factory, xen_host)
    nic = box.nics[0]
    for i in range(256):
        await nic.send(frame(64, i & 0xFF))
    done = trio.Event()

    async def one_more() -> None:
        await nic.send(frame(64, 0x77))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_more)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()  # the sender waits: the ring is the queue
        reqs = back.take_tx()
        assert len(reqs) == 256
        back.answer_tx(reqs[:1])
        await done.wait()
    (last,) = back.take_tx()
    assert back.packet_data([last])[14] == 0x77
    back.answer_tx([*reqs[1:], last])
    await trio.testing.wait_all_tasks_blocked()
    assert len(front_of(box)._tx_free_ids) == 256
    await dom.destroy()


async def test_tx_error_status_is_counted(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, box, (back,) = await boot(guest_factory, xen_host)
    nic = box.nics[0]
    await nic.send(frame(64))
    back.answer_tx(back.take_tx(), NETIF_RSP_ERROR)
    await trio.testing.wait_all_tasks_blocked()
    assert nic.stats.tx_errors == 1 and nic.broken is None
    await dom.destroy()


async def test_backend_keeping_a_tx_grant_mapped_defers_release(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, box, (back,) = await boot(guest_factory, xen_host)
    nic, front = box.nics[0], front_of(box)
    await nic.send(frame(64))
    (req,) = back.take_tx()
    back.hold(req.gref)  # maps it and never unmaps (until disconnect)
    back.answer_tx([req])
    await trio.testing.wait_all_tasks_blocked()
    assert (req.gref, front._tx_inflight[req.id]) == (req.gref, None)
    assert [r for r, _ in front.pending_grants] == [req.gref]
    held_gfn = front.pending_grants[0][1]
    # the page is never handed out again while the backend maps it
    for _ in range(20):
        await nic.send(frame(64))
        (r,) = back.take_tx()
        assert r.gref != req.gref
        back.answer_tx([r])
        await trio.testing.wait_all_tasks_blocked()
    assert all(gfn != held_gfn for gfn, _ in front._tx_pages)
    assert nic.broken is None
    await dom.destroy()


# -- receive ---------------------------------------------------------------------------------


async def test_rx_single_frame_and_refill(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, box, (back,) = await boot(guest_factory, xen_host)
    nic = box.nics[0]
    data = frame(100, 0x42)
    back.deliver(data)
    with trio.fail_after(1):
        assert await nic.receive() == data
    await trio.testing.wait_all_tasks_blocked()
    assert back.posted() == NET_RX_RING_SIZE  # refilled
    assert nic.stats.rx_packets == 1 and nic.stats.rx_bytes == 100
    await dom.destroy()


async def test_rx_scatter_gather_and_async_iteration(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, box, (back,) = await boot(guest_factory, xen_host, vifs=[VifSpec(mac=MAC0, mtu=9000)])
    nic = box.nics[0]
    big = bytes(range(256)) * 35 + bytes(54)
    back.deliver(big)  # 3 slots: 4096 + 4096 + 822 with more_data
    back.deliver(frame(60), chunk=20)  # 3 slots of an ordinary frame
    back.deliver(frame(1514, 0x11), gso=True)  # one data slot + a GSO extra
    got = []
    with trio.fail_after(1):
        async for f in nic:
            got.append(f)
            if len(got) == 3:
                break
    assert got == [big, frame(60), frame(1514, 0x11)]
    await trio.testing.wait_all_tasks_blocked()
    assert back.posted() == NET_RX_RING_SIZE and nic.broken is None
    await dom.destroy()


async def test_rx_chain_split_across_pushes(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, box, (back,) = await boot(guest_factory, xen_host)
    nic = box.nics[0]
    data = frame(300)
    reqs = back.rx.get_requests(limit=2)
    back.copy_to(reqs[0].gref, 0, data[:200])
    back.copy_to(reqs[1].gref, 0, data[200:])
    back.raw_rx_responses([NetifRxResponse(reqs[0].id, 0, NETRXF_more_data, 200)],
                          consume=False)
    await trio.testing.wait_all_tasks_blocked()
    assert nic.queued == 0
    back.raw_rx_responses([NetifRxResponse(reqs[1].id, 0, 0, 100)], consume=False)
    with trio.fail_after(1):
        assert await nic.receive() == data
    await dom.destroy()


async def test_rx_errors_and_bad_lengths_drop_the_frame_only(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, box, (back,) = await boot(guest_factory, xen_host)
    nic = box.nics[0]
    reqs = back.rx.get_requests(limit=1)
    back.raw_rx_responses([NetifRxResponse(reqs[0].id, 0, 0, NETIF_RSP_ERROR)], consume=False)
    back.deliver(b"short")  # < 14 bytes
    back.deliver(frame(1600), chunk=1000)  # longer than the MTU allows
    back.deliver(frame(64, 0x99))
    with trio.fail_after(1):
        assert await nic.receive() == frame(64, 0x99)
    assert nic.stats.rx_errors == 3 and nic.stats.rx_length_errors == 2
    assert nic.broken is None
    await dom.destroy()


async def test_rx_queue_is_bounded(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, box, (back,) = await boot(guest_factory, xen_host)
    nic = box.nics[0]
    for i in range(600):  # the program reads nothing
        back.deliver(frame(64, i & 0xFF))
        if back.posted() == 0:
            await trio.testing.wait_all_tasks_blocked()
    await trio.testing.wait_all_tasks_blocked()
    assert nic.queued == 512 and nic.stats.rx_dropped == 600 - 512
    assert await nic.receive() == frame(64, 0)
    await dom.destroy()


async def test_down_drops_and_errors_up_recovers(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, box, (back,) = await boot(guest_factory, xen_host)
    nic = box.nics[0]
    back.deliver(frame(64))
    await trio.testing.wait_all_tasks_blocked()
    nic.down()
    assert nic.operstate == "down" and nic.queued == 0
    with pytest.raises(NetDeviceDown):
        await nic.send(frame(64))
    with pytest.raises(NetDeviceDown):
        await nic.receive()
    back.deliver(frame(64))
    await trio.testing.wait_all_tasks_blocked()
    assert nic.stats.rx_dropped == 2
    nic.up()
    back.deliver(frame(64, 5))
    with trio.fail_after(1):
        assert await nic.receive() == frame(64, 5)
    await nic.send(frame(64))
    assert len(back.take_tx()) == 1
    await dom.destroy()


async def test_clean_shutdown_closes_the_device(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, box, (back,) = await boot(guest_factory, xen_host)
    nic = box.nics[0]
    await dom.shutdown()
    assert dom.state == "gone"
    assert nic.operstate == "closed"
    assert back.workers_started == 0
