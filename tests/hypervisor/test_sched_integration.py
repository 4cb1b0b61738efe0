"""The CPU scheduler inside the hypervisor: guests computing, pausing, waking, timers, domctls.

Every test builds its own host inside ``trio.run`` (virtual time from
``autojump_clock``), starts ``hv.run`` like the boot code does, drives guests
only through their :class:`HypercallInterface`, and ends with the leak and
invariant checks.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from domu.evtchn import EventDispatcher
from hypervisor.domain import DomainConfig, ShutdownReason
from hypervisor.errno import Errno, XenError
from hypervisor.event_channel import VIRQ_TIMER
from hypervisor.hypercall import HypercallInterface
from hypervisor.hypervisor import Hypervisor
from hypervisor.sched_ops import PhysInfo, SchedCreditParams
from hypervisor.vcpu import DomainDestroyed

MACHINE = 64 << 20


def make_host(**kw: Any) -> Hypervisor:
    kw.setdefault("nr_pcpus", 1)
    return Hypervisor(memory_bytes=MACHINE, dom0_pages=16, **kw)


def new_domu(hv: Hypervisor, name: str, unpause: bool = True, **kw: Any) -> HypercallInterface:
    dom0 = hv.interface(0)
    domid = dom0.domctl_createdomain(DomainConfig(name=name, nr_pages=4, max_pages=8, **kw))
    if unpause:
        dom0.domctl_unpausedomain(domid)
    return hv.interface(domid)


@asynccontextmanager
async def running(hv: Hypervisor) -> AsyncIterator[trio.Nursery]:
    """``hv.run`` plus a nursery for guest tasks; both cancelled at the end."""
    async with trio.open_nursery() as n:
        await n.start(hv.run)
        yield n
        n.cancel_scope.cancel()


async def hog(hc: HypercallInterface, chunk: float = 0.010, vcpu: int = 0, *,
              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A guest CPU hog: computes in ``chunk`` pieces until its domain is destroyed."""
    task_status.started()
    try:
        while True:
            await hc.compute(chunk, vcpu)
    except DomainDestroyed:
        return


def cpu_s(hv: Hypervisor, domid: int) -> float:
    """The domain's CPU time in seconds, as ``xl list`` shows it."""
    return hv.interface(0).domctl_getdomaininfo(domid).cpu_time / 1e9


def errno_of(fn: Callable[[], Any]) -> Errno:
    with pytest.raises(XenError) as ei:
        fn()
    return ei.value.errno


# -- CPU consumption under contention ----------------------------------------------------------


async def test_weights_split_one_pcpu(autojump_clock: trio.testing.MockClock) -> None:
    hv = make_host()
    a = new_domu(hv, "a", weight=256)
    b = new_domu(hv, "b", weight=512)
    async with running(hv) as n:
        await n.start(hog, a)
        await n.start(hog, b)
        await trio.sleep(10.0)
        ta, tb = cpu_s(hv, a.domid), cpu_s(hv, b.domid)
        n.cancel_scope.cancel()
    assert ta + tb == pytest.approx(10.0, abs=0.001)  # work conserving, dom0 idle
    assert ta / 10.0 == pytest.approx(1 / 3, abs=0.02)
    assert tb / 10.0 == pytest.approx(2 / 3, abs=0.02)
    hv.check_invariants()


async def test_compute_takes_exact_cpu_time_on_an_idle_machine(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hv = make_host(nr_pcpus=2)
    g = new_domu(hv, "g", max_vcpus=2)
    dom0 = hv.interface(0)
    async with running(hv) as n:
        t0 = trio.current_time()
        async with trio.open_nursery() as m:  # two vCPUs, two pCPUs: in parallel
            m.start_soon(g.compute, 0.250, 0)
            m.start_soon(g.compute, 0.250, 1)
        assert trio.current_time() - t0 == pytest.approx(0.250)
        info = dom0.domctl_getdomaininfo(g.domid)
        assert info.cpu_time == 500_000_000
        await g.compute(0)  # a checkpoint only
        await g.compute(-1)
        with pytest.raises(XenError) as ei:
            await g.compute(0.1, vcpu=2)
        assert ei.value.errno == Errno.EINVAL
        assert dom0.domctl_getdomaininfo(g.domid).cpu_time == 500_000_000
        n.cancel_scope.cancel()
    hv.check_invariants()


async def test_paused_domain_gets_no_cpu_and_resumes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hv = make_host()
    dom0 = hv.interface(0)
    g = new_domu(hv, "g")
    async with running(hv) as n:
        await n.start(hog, g)
        await trio.sleep(1.0)
        assert cpu_s(hv, g.domid) == pytest.approx(1.0)
        dom0.domctl_pausedomain(g.domid)
        frozen = cpu_s(hv, g.domid)
        await trio.sleep(1.0)
        assert cpu_s(hv, g.domid) == frozen
        info = dom0.domctl_getdomaininfo(g.domid)
        assert info.xl_state() == "--p---"
        assert hv.sched.domain_info(g.domid).paused
        dom0.domctl_unpausedomain(g.domid)
        await trio.sleep(1.0)
        assert cpu_s(hv, g.domid) == pytest.approx(frozen + 1.0)
        hv.check_invariants()
        n.cancel_scope.cancel()


async def test_created_domain_is_paused_until_unpaused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hv = make_host()
    g = new_domu(hv, "g", unpause=False)
    done: list[float] = []

    async def job() -> None:
        await g.compute(0.1)
        done.append(trio.current_time())

    async with running(hv) as n:
        n.start_soon(job)
        await trio.sleep(5.0)
        assert done == [] and cpu_s(hv, g.domid) == 0
        hv.interface(0).domctl_unpausedomain(g.domid)
        await trio.sleep(1.0)
        assert done == [pytest.approx(5.1)]
        n.cancel_scope.cancel()


async def test_shutdown_stops_cpu_use_and_resume_restarts_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hv = make_host()
    dom0 = hv.interface(0)
    g = new_domu(hv, "g")
    async with running(hv) as n:
        await n.start(hog, g)
        await trio.sleep(0.5)
        g.sched_shutdown(ShutdownReason.SUSPEND)
        frozen = cpu_s(hv, g.domid)
        await trio.sleep(1.0)
        assert cpu_s(hv, g.domid) == frozen
        assert dom0.domctl_getdomaininfo(g.domid).xl_state() == "---ss-"  # s: suspended
        dom0.domctl_resumedomain(g.domid)
        await trio.sleep(0.5)
        assert cpu_s(hv, g.domid) == pytest.approx(frozen + 0.5)
        hv.check_invariants()
        n.cancel_scope.cancel()


async def test_destroy_during_compute_raises_domain_destroyed_and_leaks_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hv = make_host(nr_pcpus=2)
    dom0 = hv.interface(0)
    base = hv.resource_counts()
    assert (base["sched_domains"], base["sched_vcpus"], base["sched_demands"]) == (1, 1, 0)
    g = new_domu(hv, "g", max_vcpus=2)
    other = new_domu(hv, "other")
    outcomes: list[str] = []

    async def guest(vcpu: int) -> None:
        try:
            await g.compute(math.inf, vcpu)
        except DomainDestroyed:
            outcomes.append(f"v{vcpu} destroyed")

    async with running(hv) as n:
        n.start_soon(guest, 0)
        n.start_soon(guest, 1)
        await n.start(hog, other)
        await trio.sleep(0.205)  # mid-chunk: the hog's demand is outstanding
        counts = hv.resource_counts()
        assert (counts["sched_domains"], counts["sched_vcpus"], counts["sched_demands"]) == \
            (3, 4, 3)
        dom0.domctl_destroydomain(g.domid)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(outcomes) == ["v0 destroyed", "v1 destroyed"]
        with pytest.raises(DomainDestroyed):
            await g.compute(0.1)
        # the survivor now has the machine to itself
        before = cpu_s(hv, other.domid)
        await trio.sleep(0.3)
        assert cpu_s(hv, other.domid) == pytest.approx(before + 0.3)
        dom0.domctl_destroydomain(other.domid)
        await trio.testing.wait_all_tasks_blocked()
        n.cancel_scope.cancel()
    assert hv.resource_counts() == base
    hv.check_invariants()


async def test_compute_without_hv_run_is_a_clear_error() -> None:
    hv = make_host()
    g = new_domu(hv, "g")
    with pytest.raises(RuntimeError, match=r"hv\.run"):
        await g.compute(0.1)
    async with running(hv):
        with pytest.raises(RuntimeError, match="already"):
            await hv.run()


async def test_open_service_runs_the_scheduler_for_the_block(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hv = make_host()
    g = new_domu(hv, "g")
    async with hv.open_service():
        await g.compute(0.1)
        assert cpu_s(hv, g.domid) == pytest.approx(0.1)
    assert not hv.sched.running
    with pytest.raises(RuntimeError):
        await g.compute(0.1)


# -- BOOST through real event delivery ----------------------------------------------------------


async def _io_latencies(policy: str, rounds: int = 20) -> list[float]:
    """CPU hogs on the only pCPU; an I/O domain serves events sent by another domain.

    The I/O domain's EventDispatcher sleeps in SCHEDOP_block; its handler wakes
    a worker task (same vCPU) that computes 1 ms per event. Returns, per event,
    the time from the send until that 1 ms of work is done.
    """
    hv = make_host(scheduler=policy)
    hogs = [new_domu(hv, f"hog{i}") for i in range(2)]
    io = new_domu(hv, "io")
    client = new_domu(hv, "client")
    port = client.evtchn_alloc_unbound(io.domid)
    io_port = io.evtchn_bind_interdomain(client.domid, port)
    lat: list[float] = []
    async with running(hv) as n:
        for h in hogs:
            await n.start(hog, h)
        disp = EventDispatcher(io)
        waiter = disp.waiter(io_port)
        await n.start(disp.run)
        served = trio.Event()
        served_box = [served]

        async def worker() -> None:
            while True:
                await waiter.wait()
                await io.compute(0.001)
                served_box[0].set()

        n.start_soon(worker)
        await trio.sleep(0.5)  # warm up: the hogs settle into UNDER/OVER
        await served_box[0].wait()  # the bind's initial pending event was served
        for _ in range(rounds):
            await trio.sleep(0.047)
            served_box[0] = trio.Event()
            sent = trio.current_time()
            client.evtchn_send(port)
            await served_box[0].wait()
            lat.append(trio.current_time() - sent)
        # the I/O domain's vCPU sleeps in SCHEDOP_block between events
        await trio.testing.wait_all_tasks_blocked()
        assert hv.interface(0).domctl_getdomaininfo(io.domid).xl_state()[1] == "b"
        n.cancel_scope.cancel()
    hv.check_invariants()
    return lat


async def test_event_delivery_boosts_io_domain_past_cpu_hogs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lat = await _io_latencies("credit")
    assert max(lat) <= 0.030  # within one timeslice of the send
    assert max(lat) <= 0.001 + 0.001 + 1e-9  # its 1 ms + at most the hog's 1 ms rate limit


async def test_without_boost_the_io_domain_waits_behind_the_hogs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lat = await _io_latencies("rr", rounds=10)
    assert max(lat) > 0.030


async def test_compute_on_a_vcpu_whose_event_loop_is_blocked_does_not_stall(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A guest's event loop in SCHEDOP_block does not stop its other tasks' CPU use."""
    hv = make_host()
    g = new_domu(hv, "g")
    async with running(hv) as n:
        await n.start(EventDispatcher(g).run)
        await trio.testing.wait_all_tasks_blocked()
        assert hv.interface(0).domctl_getdomaininfo(g.domid).xl_state() == "-b----"
        t0 = trio.current_time()
        await g.compute(0.5)
        assert trio.current_time() - t0 == pytest.approx(0.5)
        n.cancel_scope.cancel()


# -- set_timer_op -> VIRQ_TIMER ----------------------------------------------------------------


async def test_set_timer_op_raises_virq_timer_on_the_right_vcpu_at_the_right_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hv = make_host(nr_pcpus=2)
    g = new_domu(hv, "g", max_vcpus=2)
    fired: dict[int, list[float]] = {0: [], 1: []}
    async with running(hv) as n:
        for vcpu in (0, 1):
            disp = EventDispatcher(g, vcpu)
            port = g.evtchn_bind_virq(VIRQ_TIMER, vcpu)
            disp.bind(port, lambda _p, v=vcpu: fired[v].append(trio.current_time()))
            await n.start(disp.run)
        await trio.sleep(1.0)
        t0 = trio.current_time()
        now = g.system_time_ns()
        g.set_timer_op(now + 5_000_000, vcpu=1)
        g.set_timer_op(now + 20_000_000, vcpu=0)
        await trio.sleep(0.1)
        assert fired[1] == [pytest.approx(t0 + 0.005)]
        assert fired[0] == [pytest.approx(t0 + 0.020)]
        # re-arming replaces; 0 cancels
        g.set_timer_op(g.system_time_ns() + 10_000_000)
        g.set_timer_op(g.system_time_ns() + 30_000_000)
        g.set_timer_op(g.system_time_ns() + 50_000_000, vcpu=1)
        g.set_timer_op(0, vcpu=1)
        t1 = trio.current_time()
        await trio.sleep(1.0)
        assert fired[0][1:] == [pytest.approx(t1 + 0.030)] and len(fired[1]) == 1
        n.cancel_scope.cancel()
    hv.check_invariants()


@pytest.mark.parametrize(("timeout", "fires_after"), [
    (0, None),  # cancel: never fires
    (1, 50e-6),  # long past: fires promptly, after the 50 us slop
    (-1, 0.100),  # negative: Xen's Linux-bug workaround, 100 ms
    (2**63 - 1, 0.100),  # more than 2^50 ns ahead: same
    (2**64 + 7, None),  # wider than u64: truncated to 7 ns, long past... see below
])
async def test_absurd_set_timer_op_values_are_harmless(
    autojump_clock: trio.testing.MockClock, timeout: int, fires_after: float | None,
) -> None:
    hv = make_host()
    g = new_domu(hv, "g")
    fired: list[float] = []
    async with running(hv) as n:
        disp = EventDispatcher(g)
        disp.bind(g.evtchn_bind_virq(VIRQ_TIMER), lambda _p: fired.append(trio.current_time()))
        await n.start(disp.run)
        await trio.sleep(1.0)
        t0 = trio.current_time()
        g.set_timer_op(timeout)
        await trio.sleep(1.0)
        if timeout == 2**64 + 7:
            fires_after = 50e-6  # u64 truncation: 7 ns of system time, long past
        if fires_after is None:
            assert fired == []
        else:
            assert fired == [pytest.approx(t0 + fires_after)]
        # hostile argument lists: an errno each, nothing armed, nothing broken
        for bad in ("soon", 1.5, None, [1]):
            assert g.call_c(15, 0, bad) == -Errno.EFAULT
        assert g.call_c(15, 0, 1, 1) == -Errno.EINVAL  # no vCPU 1
        assert g.call_c(15, 0, 1, -1) == -Errno.EINVAL
        assert g.call_c(15, 0, 1, "0") == -Errno.EINVAL
        await trio.sleep(1.0)
        assert len(fired) == (0 if fires_after is None else 1)
        n.cancel_scope.cancel()
    hv.check_invariants()


async def test_timer_without_a_bound_virq_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hv = make_host()
    g = new_domu(hv, "g")
    async with running(hv) as n:
        g.set_timer_op(g.system_time_ns() + 1_000_000)
        await trio.sleep(0.1)
        assert hv.statistics()[g.domid] == {"set_timer_op.set": 1}
        n.cancel_scope.cancel()


# -- domctl / sysctl: scheduler parameters, affinity, physinfo -----------------------------------


def test_scheduler_op_get_set_and_validation() -> None:
    """Works without hv.run: parameters are plain hypervisor state."""
    hv = make_host()
    dom0 = hv.interface(0)
    g = new_domu(hv, "g", max_vcpus=2)
    assert dom0.domctl_scheduler_op(g.domid) == SchedCreditParams(weight=256, cap=0)
    assert dom0.domctl_scheduler_op(g.domid, weight=512) == SchedCreditParams(512, 0)
    assert dom0.domctl_scheduler_op(g.domid, cap=150) == SchedCreditParams(512, 150)
    assert dom0.domctl_scheduler_op(g.domid, cap=0) == SchedCreditParams(512, 0)
    for kw in ({"weight": 0}, {"weight": 65536}, {"weight": -5}, {"weight": "heavy"},
               {"cap": 201}, {"cap": -1}, {"weight": 300, "cap": 999}):
        assert errno_of(lambda kw=kw: dom0.domctl_scheduler_op(g.domid, **kw)) == Errno.EINVAL
    assert dom0.domctl_scheduler_op(g.domid) == SchedCreditParams(512, 0)  # nothing changed
    assert errno_of(lambda: dom0.call(36, 16, g.domid, 7)) == Errno.EINVAL  # unknown cmd
    assert errno_of(lambda: dom0.domctl_scheduler_op(999)) == Errno.ESRCH
    assert errno_of(lambda: g.domctl_scheduler_op(g.domid)) == Errno.EPERM
    assert errno_of(lambda: g.domctl_scheduler_op(g.domid, weight=65535)) == Errno.EPERM
    assert errno_of(lambda: g.domctl_scheduler_op(999, weight=1)) == Errno.EPERM
    assert dom0.domctl_scheduler_op(0) == SchedCreditParams(256, 0)
    hv.check_invariants()


def test_domain_config_weight_cap_and_cpus() -> None:
    hv = make_host(nr_pcpus=4)
    dom0 = hv.interface(0)
    g = new_domu(hv, "g", weight=1024, cap=50, cpus="1-2", max_vcpus=2)
    assert dom0.domctl_scheduler_op(g.domid) == SchedCreditParams(1024, 50)
    assert [dom0.domctl_getvcpuaffinity(g.domid, i) for i in (0, 1)] == [{1, 2}, {1, 2}]
    base = hv.resource_counts()
    for kw in ({"weight": 0}, {"weight": 70000}, {"cap": 101}, {"cap": -3}, {"cpus": "4"},
               {"cpus": "^0-3"}, {"cpus": "x"}, {"cpus": [9]}, {"cpus": ["a"]}):
        cfg = DomainConfig(name="bad", nr_pages=4, max_pages=8, **kw)  # type: ignore[arg-type]
        assert errno_of(lambda cfg=cfg: dom0.domctl_createdomain(cfg)) == Errno.EINVAL
        assert hv.resource_counts() == base  # nothing left behind
    hv.check_invariants()


async def test_vcpu_affinity_pins_where_a_vcpu_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hv = make_host(nr_pcpus=2)
    dom0 = hv.interface(0)
    g = new_domu(hv, "g")
    dom0.domctl_setvcpuaffinity(g.domid, 0, "1")
    assert dom0.domctl_getvcpuaffinity(g.domid, 0) == {1}
    for bad in ("2", "", "^0-1", [5], "0-9", 3.5, [0.5]):
        assert errno_of(lambda b=bad: dom0.domctl_setvcpuaffinity(g.domid, 0, b)) == Errno.EINVAL
    assert errno_of(lambda: dom0.domctl_setvcpuaffinity(g.domid, 1, "0")) == Errno.EINVAL
    assert errno_of(lambda: dom0.domctl_setvcpuaffinity(999, 0, "0")) == Errno.ESRCH
    assert errno_of(lambda: g.domctl_setvcpuaffinity(g.domid, 0, "0")) == Errno.EPERM
    async with running(hv) as n:
        await n.start(hog, g)
        await trio.sleep(0.1)
        (v,) = dom0.sysctl_vcpu_list(g.domid)
        assert (v.domid, v.vcpu_id, v.cpu, v.running, v.affinity) == (g.domid, 0, 1, True, {1})
        assert v.cpu_time == pytest.approx(0.1)
        cpus = dom0.sysctl_getcpuinfo()
        assert [c.curr for c in cpus] == [None, (g.domid, 0)]
        assert cpus[1].busy_time == pytest.approx(0.1) and cpus[0].busy_time == 0
        assert dom0.domctl_getdomaininfo(g.domid).xl_state() == "r-----"
        dom0.domctl_setvcpuaffinity(g.domid, 0, None)  # all pCPUs again
        assert dom0.domctl_getvcpuaffinity(g.domid, 0) == {0, 1}
        assert [(v.domid, v.vcpu_id) for v in dom0.sysctl_vcpu_list()] == [(0, 0), (g.domid, 0)]
        n.cancel_scope.cancel()
    hv.check_invariants()


def test_physinfo_reports_pcpus_memory_and_scheduler() -> None:
    hv = make_host(nr_pcpus=3, scheduler="rr")
    info = hv.interface(0).sysctl_physinfo()
    assert isinstance(info, PhysInfo)
    assert (info.nr_cpus, info.max_cpu_id, info.scheduler) == (3, 2, "rr")
    assert info.total_pages == MACHINE >> 12
    assert info.free_pages == info.total_pages - hv.machine.allocated
    assert make_host().interface(0).sysctl_physinfo().sched_id == 5  # XEN_SCHEDULER_CREDIT
    with pytest.raises(ValueError):
        make_host(scheduler="bvt")
    with pytest.raises(ValueError):
        make_host(nr_pcpus=0)


async def test_getdomaininfo_cpu_time_and_state_letters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hv = make_host()
    dom0 = hv.interface(0)
    g = new_domu(hv, "g")
    async with running(hv) as n:
        await n.start(EventDispatcher(g).run)
        await trio.testing.wait_all_tasks_blocked()
        info = dom0.domctl_getdomaininfo(g.domid)
        assert (info.cpu_time, info.xl_state()) == (0, "-b----")
        assert dom0.domctl_getdomaininfo(0).xl_state() == "r-----"  # the caller is running
        n.start_soon(g.compute, 0.3)
        await trio.sleep(0.1)
        info = dom0.domctl_getdomaininfo(g.domid)
        assert (info.cpu_time, info.xl_state()) == (100_000_000, "r-----")
        await trio.sleep(1.0)
        listed = {i.domid: i for i in dom0.sysctl_getdomaininfolist()}
        assert listed[g.domid].cpu_time == 300_000_000
        assert listed[g.domid].xl_state() == "-b----"
        assert listed[0].xl_state() == "r-----"
        n.cancel_scope.cancel()
    hv.check_invariants()


async def test_yield_gives_the_pcpu_to_a_peer(autojump_clock: trio.testing.MockClock) -> None:
    hv = make_host(scheduler="rr")
    a, b = new_domu(hv, "a"), new_domu(hv, "b")
    async with running(hv) as n:
        await n.start(hog, a, 1.0)  # a's demand: a whole second
        await n.start(hog, b, 1.0)
        await trio.sleep(0.005)
        assert [c.curr for c in hv.interface(0).sysctl_getcpuinfo()] == [(a.domid, 0)]
        await a.sched_yield()
        await trio.testing.wait_all_tasks_blocked()
        assert [c.curr for c in hv.interface(0).sysctl_getcpuinfo()] == [(b.domid, 0)]
        n.cancel_scope.cancel()
