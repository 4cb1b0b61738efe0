"""The guest upcall dispatcher (domu/evtchn.py): Linux order, repeat loop, storms, teardown."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from domu.evtchn import MAX_UPCALL_PASSES, EventDispatcher, PortUnbound, PortWaiter
from hypervisor.domain import DomainConfig
from hypervisor.hypercall import HypercallInterface
from hypervisor.hypervisor import Hypervisor
from hypervisor.vcpu import DomainDestroyed

from .conftest import MakeDomU


def ipi_ports(g: HypercallInterface, n: int) -> list[int]:
    return [g.evtchn_bind_ipi(0) for _ in range(n)]


def recorder(disp: EventDispatcher, ports: list[int]) -> list[int]:
    seen: list[int] = []
    for p in ports:
        disp.bind(p, seen.append)
    return seen


def test_linux_round_robin_order(make_domu: MakeDomU) -> None:
    g = make_domu()
    ports = ipi_ports(g, 140)
    disp = EventDispatcher(g)
    seen = recorder(disp, ports)
    for p in (130, 70, 3):
        g.evtchn_send(p)
    assert disp.do_upcall() == 3
    assert seen == [3, 70, 130]  # first scan starts at port 0
    assert (disp.next_word, disp.next_bit) == (2, 3)  # resume after port 130
    seen.clear()
    for p in (3, 70, 129, 135):
        g.evtchn_send(p)
    disp.do_upcall()
    # start word 2 at bit 3 (135), wrap to words 0 and 1, then word 2's low bits (129)
    assert seen == [135, 3, 70, 129]
    seen.clear()
    disp.next_word, disp.next_bit = 0, 6  # the module docstring's worked example
    for p in (3, 70):
        g.evtchn_send(p)
    disp.do_upcall()
    assert seen == [70, 3]
    assert (disp.next_word, disp.next_bit) == (0, 4)


def test_pending_cleared_before_handler_and_repeat_loop(make_domu: MakeDomU) -> None:
    g = make_domu()
    low, high = ipi_ports(g, 2)
    disp = EventDispatcher(g)
    seen: list[tuple[int, bool]] = []

    def on_high(p: int) -> None:
        seen.append((p, disp.is_pending(p)))
        g.evtchn_send(low)  # raised during the scan, after `low` was passed

    disp.bind(low, lambda p: seen.append((p, disp.is_pending(p))))
    disp.bind(high, on_high)
    g.evtchn_send(high)
    assert disp.do_upcall() == 2  # the repeat loop picked up `low` in the same upcall
    assert seen == [(high, False), (low, False)]
    assert not disp.is_pending(low) and g.shared_info[0] == 0  # upcall_pending consumed


def test_masked_ports_are_not_dispatched(make_domu: MakeDomU) -> None:
    g = make_domu()
    a, b = ipi_ports(g, 2)
    disp = EventDispatcher(g)
    seen = recorder(disp, [a, b])
    disp.mask(a)
    g.evtchn_send(a)
    g.evtchn_send(b)
    assert disp.do_upcall() == 1 and seen == [b]
    assert disp.is_pending(a)
    assert disp.do_upcall() == 0  # the masked edge was lost; nothing re-raises it
    disp.unmask(a)  # pending: the unmask hypercall re-raises it
    assert g.shared_info[0] == 1
    assert disp.do_upcall() == 1 and seen == [b, a]
    unbound = g.evtchn_bind_ipi(0)
    g.evtchn_send(unbound)  # a pending port nobody bound a handler to
    disp.unmask(unbound)
    assert disp.do_upcall() == 1 and disp.spurious == 1


async def test_port_waiter_coalesces() -> None:
    w = PortWaiter()
    for _ in range(3):
        w.notify(5)
    with trio.testing.assert_checkpoints():
        await w.wait()  # the three events collapsed into one
    done = []

    async def waiter() -> None:
        await w.wait()
        done.append(1)

    async with trio.open_nursery() as n:
        n.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not done
        with pytest.raises(RuntimeError):
            await w.wait()  # one waiter at a time
        w.notify(5)
    assert done == [1] and w.events == 4


async def test_dispatcher_ends_cleanly_when_domain_destroyed(
        hv: Hypervisor, dom0: HypercallInterface, make_domu: MakeDomU) -> None:
    g = make_domu()
    p0 = dom0.evtchn_alloc_unbound(g.domid)
    pg = g.evtchn_bind_interdomain(0, p0)
    disp = EventDispatcher(g)
    w = disp.waiter(pg)
    outcomes: list[str] = []

    async def driver() -> None:
        try:
            while True:
                await w.wait()
                outcomes.append("event")
        except DomainDestroyed:
            outcomes.append("destroyed")

    async with trio.open_nursery() as n:
        await n.start(disp.run)
        n.start_soon(driver)
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == ["event"]  # bind_interdomain's initial pending event
        dom0.domctl_destroydomain(g.domid)
    # the nursery exited without an exception: run() returned, the driver unwound
    assert outcomes == ["event", "destroyed"] and disp.closed
    with pytest.raises(DomainDestroyed):
        await w.wait()
    assert hv.resource_counts()["waiting_tasks"] == 0
    assert hv.resource_counts()["domains"] == 1
    hv.check_invariants()


async def test_event_storm_costs_bounded_work_and_real_work_completes(
        hv: Hypervisor, make_domu: MakeDomU) -> None:
    """XSA-332: a frontend hammering its event channel cannot stall the backend."""
    backend, hostile, good = make_domu(name="be"), make_domu(name="evil"), make_domu(name="ok")
    ph = hostile.evtchn_alloc_unbound(backend.domid)
    bh = backend.evtchn_bind_interdomain(hostile.domid, ph)
    pg = good.evtchn_alloc_unbound(backend.domid)
    bg = backend.evtchn_bind_interdomain(good.domid, pg)
    bdisp, gdisp = EventDispatcher(backend), EventDispatcher(good)
    storm_handled = 0

    def on_storm(_p: int) -> None:
        nonlocal storm_handled
        storm_handled += 1  # a spurious event: no work

    bdisp.bind(bh, on_storm)
    bdisp.bind(bg, lambda _p: backend.evtchn_send(bg))  # real work: answer the request
    replies = gdisp.waiter(pg)
    sends, chunk = 100_000, 100
    completed = 0

    async def storm() -> None:
        for i in range(sends):
            hostile.evtchn_send(ph)
            if i % chunk == chunk - 1:
                await trio.lowlevel.checkpoint()

    async def client() -> None:
        nonlocal completed
        for _ in range(50):
            good.evtchn_send(pg)
            await replies.wait()
            completed += 1

    async with trio.open_nursery() as n:
        await n.start(bdisp.run)
        await n.start(gdisp.run)
        await trio.testing.wait_all_tasks_blocked()
        await replies.wait()  # the reply to the initial pending event
        upcalls = bdisp.upcalls
        async with trio.open_nursery() as work:
            work.start_soon(storm)
            work.start_soon(client)
        assert completed == 50
        n.cancel_scope.cancel()
    stats = hv.statistics()
    assert stats[hostile.domid]["event_channel_op.send"] == sends
    # every send was O(1) in the hypervisor and coalesced into few upcalls in the backend
    assert storm_handled <= sends // chunk + 2
    assert bdisp.upcalls - upcalls <= sends // chunk + 50 + 2
    assert stats[backend.domid]["evtchn.coalesced"] >= sends - storm_handled - 1
    hv.check_invariants()


async def test_self_raising_storm_cannot_monopolise_the_run_loop(make_domu: MakeDomU) -> None:
    g = make_domu()
    (ipi,) = ipi_ports(g, 1)
    disp = EventDispatcher(g)
    handled = 0

    def forever(p: int) -> None:
        nonlocal handled
        handled += 1
        g.evtchn_send(p)  # re-raise itself every time

    disp.bind(ipi, forever)
    g.evtchn_send(ipi)
    assert disp.do_upcall() == MAX_UPCALL_PASSES  # bounded, upcall left pending
    assert g.shared_info[0] == 1
    progress = 0
    async with trio.open_nursery() as n:
        await n.start(disp.run)
        for _ in range(20):
            await trio.lowlevel.checkpoint()
            progress += 1
        n.cancel_scope.cancel()
    assert progress == 20 and handled > MAX_UPCALL_PASSES


async def test_dispatcher_woken_but_not_reparked_when_destroyed_still_ends() -> None:
    """An event wakes the guest's vCPU; before its task runs again the domain
    is destroyed. kill() finds no parked task, so the woken task itself must
    notice the domain is dying instead of parking forever."""
    hv = Hypervisor(memory_bytes=64 << 20, dom0_pages=64)
    dom0 = hv.interface(0)
    domid = dom0.domctl_createdomain(DomainConfig(name="g", nr_pages=16, max_pages=64))
    dom0.domctl_unpausedomain(domid)
    gport = dom0.evtchn_alloc_unbound(remote_dom=0, dom=domid)
    lport = dom0.evtchn_bind_interdomain(domid, gport)
    disp = EventDispatcher(hv.interface(domid))
    disp.bind(gport, lambda p: None)
    async with trio.open_nursery() as n:
        await n.start(disp.run)
        await trio.testing.wait_all_tasks_blocked()
        dom0.evtchn_send(lport)  # the vCPU is now runnable, no longer parked
        dom0.evtchn_close(lport)
        dom0.domctl_destroydomain(domid)
        with trio.fail_after(5):
            while n.child_tasks:
                await trio.testing.wait_all_tasks_blocked()
                await trio.lowlevel.checkpoint()


async def test_unbind_drops_the_waiter_and_wakes_its_task(
    hv: Hypervisor, dom0: HypercallInterface, make_domu: MakeDomU
) -> None:
    """Binding and unbinding waiters repeatedly must not accumulate them, and a
    task waiting on an unbound port must not hang."""
    g = make_domu()
    disp = EventDispatcher(g)
    for _ in range(100):
        port = g.evtchn_alloc_unbound(remote_dom=0)
        disp.waiter(port)
        disp.unbind(port)
        g.evtchn_close(port)
    assert disp._waiters == {}
    port = g.evtchn_alloc_unbound(remote_dom=0)
    w = disp.waiter(port)
    async with trio.open_nursery() as n:
        got: list[BaseException] = []

        async def waiting() -> None:
            try:
                await w.wait()
            except PortUnbound as exc:
                got.append(exc)

        n.start_soon(waiting)
        await trio.testing.wait_all_tasks_blocked()
        disp.unbind(port)
    assert len(got) == 1
