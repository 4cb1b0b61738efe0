"""netback end to end with the real netfront: two guests ping through xenbr0."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from dom0.backends.netback import BOUNCE_PAGES, vif_statistics
from dom0.host import Host
from dom0.testing import GuestFactory
from dom0.toolstack.config import VifSpec
from domu.guest import Guest
from domu.netdev import NetDevice
from hypervisor.grant_table import GNTTABOP_copy
from hypervisor.hypercall import HYPERVISOR_grant_table_op


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


async def test_bulk_transfer_is_one_copy_per_slot_and_one_hypercall_per_pass(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the ``bench net`` path costs in grant copies: a 1514-byte frame is one
    op out of the sender and one into the receiver, batched per ring pass."""
    nics: dict[str, NetDevice] = {}

    def keep(name: str) -> Callable[[Guest], Awaitable[None]]:
        async def main(guest: Guest) -> None:
            nics[name] = guest.nic(0)
            await trio.sleep_forever()
        return main

    doms = [await guest_factory(keep(name), name=name,
                                vifs=[VifSpec(mac=f"00:16:3e:0c:00:0{i + 1}")])
            for i, name in enumerate("ab")]
    a, b = nics["a"], nics["b"]
    await a.wait_carrier()
    await b.wait_carrier()
    calls: list[int] = []
    real = xen_host.hv.gnttab.copy

    def counting(caller: Any, ops: Any) -> list[int]:
        calls.append(len(ops))
        return real(caller, ops)

    key = (HYPERVISOR_grant_table_op, GNTTABOP_copy)
    monkeypatch.setitem(xen_host.hv.table, key,
                        dataclasses.replace(xen_host.hv.table[key], handler=counting))
    n = 300
    frames = [b.mac + a.mac + b"\x88\xb5" + bytes([k & 0xFF]) * 1500 for k in range(n)]
    got: list[bytes] = []

    async def reader() -> None:
        while len(got) < n:
            got.append(await b.receive())

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for f in frames:
                await a.send(f)
    assert got == frames
    stats = vif_statistics(xen_host.kernel.backends)
    sa, sb = (stats[f"vif{d.domid}.0"] for d in doms)
    assert sum(calls) == 2 * n  # one op per slot, each side
    assert len(calls) <= sa.tx_passes + sb.rx_passes  # at most one hypercall per pass
    assert max(calls) <= BOUNCE_PAGES and len(calls) < n // 4
