"""A hostile backend against netfront (THREATS "Frontends", XSA-391).

Each case breaks one thing on vif 0 and checks the exact reason, that the
program gets :class:`NetDeviceBroken` from send and receive, that the guest
keeps running, and that vif 1 of the same guest is still served.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from dom0.host import Host
from dom0.testing import GuestFactory
from dom0.toolstack.config import VifSpec
from domu.netdev import NetDevice, NetDeviceBroken
from ring.netif import (
    NETIF_RSP_NULL,
    NetifExtraInfo,
    NetifRxResponse,
    NETRXF_extra_info,
    NETRXF_more_data,
)
from tests.net.test_netfront import (
    DRIVERS,
    MAC0,
    MAC1,
    ScriptedNetBack,
    boot,
    frame,
    front_of,
)


@pytest.fixture
def xen_host_options() -> dict[str, Any]:
    return dict(DRIVERS)


async def tx_two(nic: NetDevice, back: ScriptedNetBack) -> list[Any]:
    await nic.send(frame(64, 1))
    await nic.send(frame(64, 2))
    return back.take_tx()


async def tx_id_out_of_range(nic: NetDevice, back: ScriptedNetBack) -> None:
    await tx_two(nic, back)
    back.raw_tx_response(300)


async def tx_id_not_in_flight(nic: NetDevice, back: ScriptedNetBack) -> None:
    reqs = await tx_two(nic, back)
    back.raw_tx_response(max(r.id for r in reqs) + 7)


async def tx_id_duplicated(nic: NetDevice, back: ScriptedNetBack) -> None:
    reqs = await tx_two(nic, back)
    back.raw_tx_response(reqs[0].id)
    back.raw_tx_response(reqs[0].id)


async def tx_more_responses_than_requests(nic: NetDevice, back: ScriptedNetBack) -> None:
    await tx_two(nic, back)
    back.tx.sring.rsp_prod = back.tx.rsp_prod_pvt + 3
    back.notify()


async def tx_rsp_prod_far_ahead(nic: NetDevice, back: ScriptedNetBack) -> None:
    await tx_two(nic, back)
    back.tx.sring.rsp_prod = 0x7FFF0000
    back.notify()


async def tx_null_status(nic: NetDevice, back: ScriptedNetBack) -> None:
    reqs = await tx_two(nic, back)
    back.raw_tx_response(reqs[0].id, NETIF_RSP_NULL)


async def rx_wrong_id(nic: NetDevice, back: ScriptedNetBack) -> None:
    back.raw_rx_responses([NetifRxResponse(17, 0, 0, 64)])  # slot 0 answered as id 17


async def rx_beyond_page(nic: NetDevice, back: ScriptedNetBack) -> None:
    back.raw_rx_responses([NetifRxResponse(0, 4000, 0, 200)])


async def rx_unknown_status(nic: NetDevice, back: ScriptedNetBack) -> None:
    back.raw_rx_responses([NetifRxResponse(0, 0, 0, -7)])


async def rx_more_than_posted(nic: NetDevice, back: ScriptedNetBack) -> None:
    back.rx.sring.rsp_prod = back.rx.rsp_prod_pvt + 257
    back.notify()


async def rx_chain_too_long(nic: NetDevice, back: ScriptedNetBack) -> None:
    back.raw_rx_responses([NetifRxResponse(i, 0, NETRXF_more_data, 100) for i in range(19)])


async def rx_bad_extra(nic: NetDevice, back: ScriptedNetBack) -> None:
    back.raw_rx_responses([NetifRxResponse(0, 0, NETRXF_extra_info, 64),
                           NetifExtraInfo(9, 0, bytes(6))])


async def rx_extra_on_later_fragment(nic: NetDevice, back: ScriptedNetBack) -> None:
    back.raw_rx_responses([NetifRxResponse(0, 0, NETRXF_more_data, 64),
                           NetifRxResponse(1, 0, NETRXF_extra_info, 64)])


CASES: dict[str, tuple[Callable[..., Any], str]] = {
    "tx-id-out-of-range": (tx_id_out_of_range, "tx response id 300 out of range"),
    "tx-id-not-in-flight": (tx_id_not_in_flight, "tx response for inactive request"),
    "tx-id-duplicated": (tx_id_duplicated, "tx response for inactive request"),
    "tx-too-many": (tx_more_responses_than_requests, "only 2 requests outstanding"),
    "tx-rsp-prod-far": (tx_rsp_prod_far_ahead, "requests outstanding"),
    "tx-null": (tx_null_status, "bad status"),
    "rx-wrong-id": (rx_wrong_id, "rx response id 17 in slot 0"),
    "rx-beyond-page": (rx_beyond_page, "beyond the page"),
    "rx-unknown-status": (rx_unknown_status, "unknown status -7"),
    "rx-more-than-posted": (rx_more_than_posted, "only 256 buffers posted"),
    "rx-chain-too-long": (rx_chain_too_long, "rx chain longer than 18 slots"),
    "rx-bad-extra": (rx_bad_extra, "unknown extra-info type 9"),
    "rx-extra-late": (rx_extra_on_later_fragment, "extra-info flag on a later fragment"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_hostile_backend_breaks_only_its_device(
    case: str, autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    attack, reason = CASES[case]
    dom, box, (bad, good) = await boot(
        guest_factory, xen_host, vifs=[VifSpec(mac=MAC0), VifSpec(mac=MAC1)])
    nic, other = box.nics
    await attack(nic, bad)
    await trio.testing.wait_all_tasks_blocked()
    assert nic.broken is not None and reason in nic.broken, nic.broken
    assert nic.operstate == "broken"
    with pytest.raises(NetDeviceBroken):
        await nic.send(frame(64))
    with pytest.raises(NetDeviceBroken):
        await nic.receive()
    assert front_of(box, 0).errors >= 1
    # the guest runs on and its other NIC still works both ways
    assert dom.state == "running"
    good.deliver(frame(64, 0x33))
    with trio.fail_after(1):
        assert await other.receive() == frame(64, 0x33)
    await other.send(frame(64, 0x44))
    (req,) = good.take_tx()
    assert good.packet_data([req]) == frame(64, 0x44)
    good.answer_tx([req])
    await trio.testing.wait_all_tasks_blocked()
    assert other.broken is None and other.stats.tx_errors == 0
    await dom.destroy()


async def test_waiting_sender_and_receiver_get_errors(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, box, (back,) = await boot(guest_factory, xen_host)
    nic = box.nics[0]
    for _ in range(256):
        await nic.send(frame(64))
    back.take_tx()
    errors: list[str] = []

    async def blocked_send() -> None:
        with pytest.raises(NetDeviceBroken):
            await nic.send(frame(64))
        errors.append("send")

    async def blocked_receive() -> None:
        with pytest.raises(NetDeviceBroken):
            await nic.receive()
        errors.append("receive")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_send)
        nursery.start_soon(blocked_receive)
        await trio.testing.wait_all_tasks_blocked()
        assert errors == []
        back.raw_tx_response(999)
    assert sorted(errors) == ["receive", "send"]
    assert dom.state == "running"
    await dom.destroy()


async def test_frames_received_before_breaking_are_still_readable(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, box, (back,) = await boot(guest_factory, xen_host)
    nic = box.nics[0]
    back.deliver(frame(64, 1))
    await trio.testing.wait_all_tasks_blocked()
    rx_wrong_slot = NetifRxResponse(200, 0, 0, 64)
    back.raw_rx_responses([rx_wrong_slot])
    await trio.testing.wait_all_tasks_blocked()
    assert nic.broken is not None
    assert await nic.receive() == frame(64, 1)
    with pytest.raises(NetDeviceBroken):
        await nic.receive()
    await dom.destroy()
