"""netback end to end with the real netfront: two guests ping through xenbr0."""

from __future__ import annotations

from trio.testing import MockClock

from dom0.backends.netback import vif_statistics
from dom0.host import Host
from dom0.testing import GuestFactory
from dom0.toolstack.config import VifSpec


async def test_ping_with_generated_macs_and_vif_counters(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    b = await guest_factory("examples.ping:main", name="b", extra="ip=10.0.0.2",
                            vifs=[VifSpec()])
    await b.console.wait_for("10.0.0.2 up on eth0")
    a = await guest_factory("examples.ping:main", name="a",
                            extra="ip=10.0.0.1 peer=10.0.0.2 count=3 stay=1",
                            vifs=[VifSpec()])
    log = await a.console.wait_for("packet loss")
    assert b"3 packets transmitted, 3 received, 0% packet loss" in log, log.decode()
    stats = vif_statistics(xen_host.kernel.backends)
    for dom in (a, b):
        s = stats[f"vif{dom.domid}.0"]
        assert s.tx_packets >= 3 and s.rx_packets >= 3, s
        assert s.tx_errors == 0 and s.rx_errors == 0 and s.ring_errors == 0 and s.carrier
    await a.destroy()
    await b.destroy()
    assert vif_statistics(xen_host.kernel.backends) == {}
    assert xen_host.kernel.bridge("xenbr0").ports == {}
