"""netback with a frontend that uses split event channels (event-channel-tx/-rx)."""

from __future__ import annotations

from typing import Any

import pytest

from dom0.host import Host
from dom0.native.bridge import BridgePort
from dom0.testing import GuestFactory
from domu.guest import Guest
from ring.netif import NETIF_RSP_OKAY, NetifTxRequest
from tests.net.test_netback import RawNetFront, drain, eth, make_guest, settle, tap

__all__ = ["tap"]


class SplitNetFront(RawNetFront):
    split = True


@pytest.fixture
def xen_host_options() -> dict[str, Any]:
    return {"frontend_drivers": {"vif": SplitNetFront}}


async def test_split_event_channels_carry_tx_and_rx(
        xen_host: Host, guest_factory: GuestFactory, tap: BridgePort) -> None:
    box: dict[int, Guest] = {}
    dom, front, back = await make_guest(guest_factory, xen_host, box)
    assert front.tx_port != front.rx_port and back.tx_port != back.rx_port
    fpath = f"/local/domain/{dom.domid}/device/vif/0"
    assert await xen_host.kernel.xs.read(f"{fpath}/event-channel-rx") == str(
        front.rx_port).encode()
    ok = eth(1, 64)
    front.send([NetifTxRequest(front.page(ok), 0, 0, 1, len(ok))])
    front.post_rx([5])
    await settle()
    assert drain(tap) == [ok]
    assert [(r.id, r.status) for r in front.tx.get_responses()] == [(1, NETIF_RSP_OKAY)]
    tap.transmit(eth(9, 70))
    await settle()
    assert [(r.id, r.status) for r in front.rx.get_responses()] == [(5, 70)]
    assert front.rx_waiter.events >= 1  # rx responses were signalled on the rx channel
