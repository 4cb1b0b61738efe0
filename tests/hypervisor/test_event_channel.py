"""Event channels: every operation, its error paths, and the shared_info bytes."""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing

from domu.evtchn import EventDispatcher
from hypervisor.errno import Errno, XenError
from hypervisor.event_channel import (
    ECS_FREE,
    ECS_INTERDOMAIN,
    ECS_IPI,
    ECS_PIRQ,
    ECS_UNBOUND,
    ECS_VIRQ,
    VIRQ_CON_RING,
    VIRQ_DEBUG,
    VIRQ_DOM_EXC,
    VIRQ_TIMER,
)
from hypervisor.hypercall import HypercallInterface
from hypervisor.hypervisor import Hypervisor
from hypervisor.types import DOMID_SELF

from .conftest import MakeDomU


def errno_of(fn, *args) -> Errno:  # type: ignore[no-untyped-def]
    with pytest.raises(XenError) as ei:
        fn(*args)
    return ei.value.errno


def pending(hc: HypercallInterface, port: int) -> bool:
    si = hc.shared_info
    word = struct.unpack_from("<Q", si, 2048 + 8 * (port // 64))[0]
    return bool(word >> (port % 64) & 1)


def set_mask(hc: HypercallInterface, port: int, on: bool) -> None:
    si = hc.shared_info
    off = 2560 + 8 * (port // 64)
    word = struct.unpack_from("<Q", si, off)[0]
    word = word | (1 << port % 64) if on else word & ~(1 << port % 64)
    struct.pack_into("<Q", si, off, word)


def vcpu_info(hc: HypercallInterface, vcpu: int = 0) -> tuple[int, int, int]:
    """(upcall_pending u8 @0, upcall_mask u8 @1, pending_sel u64 @8) from raw bytes."""
    return struct.unpack_from("<BB6xQ", hc.shared_info, 64 * vcpu)


def connect(a: HypercallInterface, b: HypercallInterface) -> tuple[int, int]:
    pa = a.evtchn_alloc_unbound(b.domid)
    pb = b.evtchn_bind_interdomain(a.domid, pa)
    return pa, pb


def test_port_zero_never_handed_out_and_lowest_free_first(make_domu: MakeDomU) -> None:
    g = make_domu()
    ports = [g.evtchn_alloc_unbound(DOMID_SELF) for _ in range(5)]
    assert ports == [1, 2, 3, 4, 5]
    g.evtchn_close(3)
    g.evtchn_close(2)
    assert g.evtchn_alloc_unbound(0) == 2
    assert g.evtchn_alloc_unbound(0) == 3
    assert g.evtchn_alloc_unbound(0) == 6
    assert errno_of(g.evtchn_close, 0) == Errno.EINVAL
    assert g.evtchn_status(0).status == ECS_FREE


def test_bind_interdomain_starts_pending_and_links_both(hv: Hypervisor, dom0: HypercallInterface,
                                                        make_domu: MakeDomU) -> None:
    g = make_domu()
    p0 = dom0.evtchn_alloc_unbound(g.domid)
    st = dom0.evtchn_status(p0)
    assert (st.status, st.remote_dom) == (ECS_UNBOUND, g.domid)
    pg = g.evtchn_bind_interdomain(0, p0)
    assert pending(g, pg)
    assert vcpu_info(g)[0] == 1 and vcpu_info(g)[2] == 1 << (pg // 64)
    assert not pending(dom0, p0)
    s0, sg = dom0.evtchn_status(p0), g.evtchn_status(pg)
    assert (s0.status, s0.remote_dom, s0.remote_port) == (ECS_INTERDOMAIN, g.domid, pg)
    assert (sg.status, sg.remote_dom, sg.remote_port) == (ECS_INTERDOMAIN, 0, p0)
    hv.check_invariants()


def test_bind_interdomain_errors(dom0: HypercallInterface, make_domu: MakeDomU) -> None:
    g, h = make_domu(), make_domu()
    p0 = dom0.evtchn_alloc_unbound(g.domid)
    assert errno_of(g.evtchn_bind_interdomain, 999, p0) == Errno.ESRCH
    assert errno_of(h.evtchn_bind_interdomain, 0, p0) == Errno.EINVAL  # not reserved for h
    assert errno_of(g.evtchn_bind_interdomain, 0, 4000) == Errno.EINVAL
    assert errno_of(g.evtchn_bind_interdomain, 0, p0 + 1) == Errno.EINVAL  # free port
    g.evtchn_bind_interdomain(0, p0)
    assert errno_of(g.evtchn_bind_interdomain, 0, p0) == Errno.EINVAL  # already bound
    # a failed bind leaves no local port behind
    assert [g.evtchn_status(p).status for p in (1, 2)] == [ECS_INTERDOMAIN, ECS_FREE]


def test_loopback_interdomain(make_domu: MakeDomU) -> None:
    g = make_domu()
    p1 = g.evtchn_alloc_unbound(DOMID_SELF)
    p2 = g.evtchn_bind_interdomain(DOMID_SELF, p1)
    g.evtchn_send(p2)
    assert pending(g, p1)


def test_send_coalesces_and_masked_port_loses_edge(hv: Hypervisor, dom0: HypercallInterface,
                                                   make_domu: MakeDomU) -> None:
    g = make_domu()
    p0, pg = connect(dom0, g)
    # consume the initial pending state
    struct.pack_into("<Q", g.shared_info, 2048, 0)
    struct.pack_into("<BB6xQ", g.shared_info, 0, 0, 0, 0)
    dom0.evtchn_send(p0)
    dom0.evtchn_send(p0)
    dom0.evtchn_send(p0)
    stats = hv.statistics()[g.domid]
    assert stats["evtchn.deliver"] == 2  # bind + first send
    assert stats["evtchn.coalesced"] == 2
    assert pending(g, pg) and vcpu_info(g)[0] == 1
    # masked: pending bit set, but no selector bit and no upcall
    struct.pack_into("<Q", g.shared_info, 2048, 0)
    struct.pack_into("<BB6xQ", g.shared_info, 0, 0, 0, 0)
    set_mask(g, pg, True)
    dom0.evtchn_send(p0)
    assert pending(g, pg)
    assert vcpu_info(g) == (0, 0, 0)
    # unmask re-raises
    g.evtchn_unmask(pg)
    assert vcpu_info(g) == (1, 0, 1 << (pg // 64))
    # unmask of an unmasked port does nothing more
    struct.pack_into("<BB6xQ", g.shared_info, 0, 0, 0, 0)
    g.evtchn_unmask(pg)
    assert vcpu_info(g) == (0, 0, 0)


def test_send_on_unbound_is_dropped_and_on_virq_is_einval(make_domu: MakeDomU) -> None:
    g = make_domu()
    p = g.evtchn_alloc_unbound(0)
    g.evtchn_send(p)  # silently dropped
    v = g.evtchn_bind_virq(VIRQ_TIMER)
    assert errno_of(g.evtchn_send, v) == Errno.EINVAL
    assert errno_of(g.evtchn_send, 77) == Errno.EINVAL


def test_close_makes_peer_unbound_reserved_for_closer(dom0: HypercallInterface,
                                                      make_domu: MakeDomU) -> None:
    g = make_domu()
    p0, pg = connect(dom0, g)
    g.evtchn_close(pg)
    st = dom0.evtchn_status(p0)
    assert (st.status, st.remote_dom) == (ECS_UNBOUND, g.domid)
    assert not pending(g, pg)
    # the closer can re-bind it, and the new port is pending
    pg2 = g.evtchn_bind_interdomain(0, p0)
    assert pending(g, pg2)
    assert errno_of(g.evtchn_close, pg + 100) == Errno.EINVAL


def test_ipi_virq_and_vcpu_rules(make_domu: MakeDomU) -> None:
    g = make_domu(max_vcpus=2)
    ipi = g.evtchn_bind_ipi(1)
    assert g.evtchn_status(ipi).vcpu == 1
    g.evtchn_send(ipi)
    assert pending(g, ipi) and vcpu_info(g, 1)[0] == 1 and vcpu_info(g, 0)[0] == 0
    assert errno_of(g.evtchn_bind_ipi, 2) == Errno.ENOENT
    t1 = g.evtchn_bind_virq(VIRQ_TIMER, 1)
    assert errno_of(g.evtchn_bind_virq, VIRQ_TIMER, 1) == Errno.EEXIST
    g.evtchn_bind_virq(VIRQ_TIMER, 0)
    assert errno_of(g.evtchn_bind_virq, VIRQ_DOM_EXC, 1) == Errno.EINVAL  # global on vcpu1
    assert errno_of(g.evtchn_bind_virq, 24, 0) == Errno.EINVAL
    assert errno_of(g.evtchn_bind_virq, VIRQ_DEBUG, 5) == Errno.ENOENT
    dx = g.evtchn_bind_virq(VIRQ_DOM_EXC)
    st = g.evtchn_status(dx)
    assert (st.status, st.virq) == (ECS_VIRQ, VIRQ_DOM_EXC)
    # bind_vcpu: global virq may move, per-vcpu virq and ipi may not
    g.evtchn_bind_vcpu(dx, 1)
    assert g.evtchn_status(dx).vcpu == 1
    assert errno_of(g.evtchn_bind_vcpu, t1, 0) == Errno.EINVAL
    assert errno_of(g.evtchn_bind_vcpu, ipi, 0) == Errno.EINVAL
    assert errno_of(g.evtchn_bind_vcpu, dx, 9) == Errno.ENOENT
    assert errno_of(g.evtchn_bind_vcpu, 999, 0) == Errno.EINVAL
    u = g.evtchn_alloc_unbound(0)
    g.evtchn_bind_vcpu(u, 1)
    # closing a virq port frees the virq for re-binding
    g.evtchn_close(dx)
    g.evtchn_bind_virq(VIRQ_DOM_EXC)


def test_pirq_binding_and_platform_delivery(hv: Hypervisor, dom0: HypercallInterface,
                                            make_domu: MakeDomU) -> None:
    g = make_domu()
    dev = hv.platform.add_device("disk0")
    assert not dev.raise_irq()
    assert hv.platform.dropped == 1
    p = dom0.evtchn_bind_pirq(dev.pirq)
    assert (dom0.evtchn_status(p).status, dom0.evtchn_status(p).pirq) == (ECS_PIRQ, dev.pirq)
    assert errno_of(dom0.evtchn_bind_pirq, dev.pirq) == Errno.EEXIST
    assert errno_of(dom0.evtchn_bind_pirq, 256) == Errno.EINVAL
    assert errno_of(dom0.evtchn_send, p) == Errno.EINVAL
    assert dev.raise_irq()
    assert pending(dom0, p)
    assert errno_of(g.evtchn_bind_pirq, dev.pirq) == Errno.EPERM
    assert errno_of(g.evtchn_bind_pirq, 5) == Errno.EPERM
    dom0.evtchn_close(p)
    assert not dev.raise_irq()
    hv.check_invariants()


def test_enospc_at_port_limit_leaves_other_domains_untouched(hv: Hypervisor,
                                                             dom0: HypercallInterface,
                                                             make_domu: MakeDomU) -> None:
    g, h = make_domu(), make_domu()
    p0, ph = connect(dom0, h)
    for i in range(1023):
        assert g.evtchn_alloc_unbound(0) == i + 1
    assert errno_of(g.evtchn_alloc_unbound, 0) == Errno.ENOSPC
    assert errno_of(g.evtchn_bind_ipi, 0) == Errno.ENOSPC
    assert errno_of(g.evtchn_bind_virq, VIRQ_TIMER, 0) == Errno.ENOSPC
    q = dom0.evtchn_alloc_unbound(g.domid)
    assert errno_of(g.evtchn_bind_interdomain, 0, q) == Errno.ENOSPC
    # the other domains still work
    assert h.evtchn_alloc_unbound(0) == ph + 1
    dom0.evtchn_send(p0)
    assert pending(h, ph)
    hv.check_invariants()


def test_small_port_limit(make_domu: MakeDomU) -> None:
    g = make_domu(max_evtchn_port=3)
    assert [g.evtchn_alloc_unbound(0) for _ in range(3)] == [1, 2, 3]
    assert errno_of(g.evtchn_alloc_unbound, 0) == Errno.ENOSPC
    assert errno_of(g.evtchn_status, 4) == Errno.EINVAL


def test_every_port_number_never_crashes(hv: Hypervisor, dom0: HypercallInterface,
                                         make_domu: MakeDomU) -> None:
    g = make_domu()
    connect(dom0, g)
    g.evtchn_bind_ipi(0)
    for port in [*range(4096), -1, 2**32 - 1, 2**32, 2**63]:
        for fn in (g.evtchn_send, g.evtchn_close, g.evtchn_unmask, g.evtchn_status):
            try:
                fn(port)
            except XenError as e:
                assert e.errno == Errno.EINVAL
        try:
            g.evtchn_bind_vcpu(port, 0)
        except XenError as e:
            assert e.errno == Errno.EINVAL
    hv.check_invariants()


def test_status_struct_and_errors(hv: Hypervisor, dom0: HypercallInterface,
                                  make_domu: MakeDomU) -> None:
    g = make_domu()
    p0, pg = connect(dom0, g)
    raw = dom0.evtchn_status(p0).pack()
    assert len(raw) == 24
    assert struct.unpack("<H2xIIIH2xI", raw) == (0, p0, ECS_INTERDOMAIN, 0, g.domid, pg)
    # dom0 may query another domain, domU may not (EPERM whether or not it exists)
    assert dom0.evtchn_status(pg, g.domid).remote_port == p0
    assert errno_of(dom0.evtchn_status, 1, 999) == Errno.ESRCH
    assert errno_of(g.evtchn_status, 1, 0) == Errno.EPERM
    assert errno_of(g.evtchn_status, 1, 999) == Errno.EPERM
    ipi = g.evtchn_bind_ipi(0)
    assert g.evtchn_status(ipi).status == ECS_IPI
    assert struct.unpack_from("<I", g.evtchn_status(ipi).pack(), 8)[0] == ECS_IPI


def test_reset_closes_everything(hv: Hypervisor, dom0: HypercallInterface,
                                 make_domu: MakeDomU) -> None:
    g = make_domu()
    p0, _ = connect(dom0, g)
    g.evtchn_bind_ipi(0)
    g.evtchn_bind_virq(VIRQ_TIMER)
    g.evtchn_reset()
    assert hv.domains.get(g.domid).evtchn.in_use() == 0  # type: ignore[union-attr]
    assert dom0.evtchn_status(p0).status == ECS_UNBOUND
    dom0.evtchn_reset(g.domid)
    assert errno_of(g.evtchn_reset, 0) == Errno.EPERM
    hv.check_invariants()


def test_alloc_unbound_errors(dom0: HypercallInterface, make_domu: MakeDomU) -> None:
    g = make_domu()
    assert errno_of(dom0.evtchn_alloc_unbound, 0, 999) == Errno.ESRCH
    assert errno_of(g.evtchn_alloc_unbound, 0, 0) == Errno.EPERM
    assert errno_of(g.evtchn_alloc_unbound, 0, 999) == Errno.EPERM
    p = dom0.evtchn_alloc_unbound(0, g.domid)  # dom0 allocates in g, for dom0
    assert dom0.evtchn_status(p, g.domid).remote_dom == 0


def test_shared_info_layout_offsets(make_domu: MakeDomU) -> None:
    """pending @2048, mask @2560 (64 u64 words each); vcpu_info 64 bytes each."""
    g = make_domu(max_vcpus=2)
    si = g.shared_info
    assert len(si) == 4096
    assert vcpu_info(g, 0)[1] == 1 and vcpu_info(g, 1)[1] == 1  # boot: upcalls masked
    p = g.evtchn_bind_ipi(1)
    for _ in range(64 - p):
        g.evtchn_bind_ipi(1)
    g.evtchn_send(64)  # word 1, bit 0
    assert si[2048 + 8] == 1 and not any(si[2048:2048 + 8])
    assert struct.unpack_from("<Q", si, 64 + 8)[0] == 0b10  # vcpu1 pending_sel bit 1
    assert si[64] == 1 and si[0] == 0
    set_mask(g, 64, True)
    assert si[2560 + 8] == 1


async def test_dispatcher_runs_handlers_and_round_trips(hv: Hypervisor, dom0: HypercallInterface,
                                                        make_domu: MakeDomU) -> None:
    g = make_domu()
    p0, pg = connect(dom0, g)
    d0, dg = EventDispatcher(dom0), EventDispatcher(g)
    seen: list[str] = []
    dg.bind(pg, lambda p: (seen.append(f"g{p}"), g.evtchn_send(pg)))
    w0 = d0.waiter(p0)
    async with trio.open_nursery() as n:
        await n.start(d0.run)
        await n.start(dg.run)
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [f"g{pg}"]  # bind_interdomain left it pending
        await w0.wait()  # g's handler answered
        for _ in range(10):
            dom0.evtchn_send(p0)
            await w0.wait()
        assert len(seen) == 11
        await trio.testing.wait_all_tasks_blocked()
        assert hv.resource_counts()["waiting_tasks"] == 2
        n.cancel_scope.cancel()
    assert hv.resource_counts()["waiting_tasks"] == 0
    hv.check_invariants()


async def test_dispatcher_masked_port_is_not_dispatched(dom0: HypercallInterface,
                                                        make_domu: MakeDomU) -> None:
    g = make_domu()
    p0, pg = connect(dom0, g)
    dg = EventDispatcher(g)
    seen: list[int] = []
    dg.bind(pg, seen.append)
    dg.mask(pg)
    async with trio.open_nursery() as n:
        await n.start(dg.run)
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [] and dg.is_pending(pg)  # masked: left pending, not dispatched
        dom0.evtchn_send(p0)  # coalesces with the pending bit
        await trio.testing.wait_all_tasks_blocked()
        assert seen == []
        dg.unmask(pg)  # pending: asks Xen to re-raise
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [pg]
        dom0.evtchn_send(p0)
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [pg, pg]
        n.cancel_scope.cancel()


async def test_block_waits_until_unpaused(hv: Hypervisor, dom0: HypercallInterface,
                                          make_domu: MakeDomU) -> None:
    g = make_domu(unpause=False)
    connect(dom0, g)
    woke = trio.Event()

    async def vcpu() -> None:
        await g.sched_block()
        woke.set()

    async with trio.open_nursery() as n:
        n.start_soon(vcpu)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()  # pending, but paused
        assert dom0.domctl_getdomaininfo(g.domid).xl_state() == "-bp---"
        dom0.domctl_unpausedomain(g.domid)
        await trio.testing.wait_all_tasks_blocked()
        assert woke.is_set()


async def test_poll_wakes_on_masked_port_and_times_out(autojump_clock: trio.testing.MockClock,
                                                       dom0: HypercallInterface,
                                                       make_domu: MakeDomU) -> None:
    g = make_domu()
    p0, pg = connect(dom0, g)
    struct.pack_into("<Q", g.shared_info, 2048, 0)  # consume initial pending
    set_mask(g, pg, True)
    start = trio.current_time()
    assert await g.sched_poll([pg], timeout=1.5) is False
    assert trio.current_time() - start == pytest.approx(1.5)
    result: list[bool] = []

    async def poller() -> None:
        result.append(await g.sched_poll([pg], timeout=None))

    async with trio.open_nursery() as n:
        n.start_soon(poller)
        await trio.testing.wait_all_tasks_blocked()
        assert not result
        dom0.evtchn_send(p0)  # masked port still wakes the poller
    assert result == [True]
    assert await g.sched_poll([pg], timeout=0) is True  # already pending
    with pytest.raises(XenError) as ei:
        await g.sched_poll([5000])
    assert ei.value.errno == Errno.EINVAL
    with pytest.raises(XenError) as ei:
        await g.sched_poll(list(range(129)))
    assert ei.value.errno == Errno.EINVAL


async def test_yield_is_a_checkpoint(make_domu: MakeDomU) -> None:
    g = make_domu()
    await g.sched_yield()


def test_console_virq(hv: Hypervisor, dom0: HypercallInterface, make_domu: MakeDomU) -> None:
    p = dom0.evtchn_bind_virq(VIRQ_CON_RING)
    g = make_domu()
    g.console_write(b"hello\nworld")
    assert pending(dom0, p)
    assert dom0.console_read().endswith(b"(d1) hello\n(d1) world")
