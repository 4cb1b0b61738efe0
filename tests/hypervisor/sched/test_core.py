"""Generic machinery: CPU demand, block/wake, pause, removal, timers, helpers, RR."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from hypervisor.errno import Errno, XenError
from hypervisor.sched import (
    RunState,
    Scheduler,
    TimerQueue,
    VcpuGoneError,
    format_cpus,
    open_scheduler,
    parse_cpus,
)
from hypervisor.sched.timer import NEVER, Timer
from tests.hypervisor.sched._util import busy, cpu


@pytest.mark.parametrize("policy", ["credit", "rr"])
async def test_run_returns_after_exact_cpu_time(
    autojump_clock: trio.testing.MockClock, policy: str
) -> None:
    async with open_scheduler(1, policy) as s:
        s.add_domain(1)
        v = s.add_vcpu(1, 0)
        t0 = trio.current_time()
        await v.run(0.050)
        assert trio.current_time() - t0 == pytest.approx(0.050)
        assert v.cpu_time_ns == 50_000_000
        # The caller gets a chance to ask for more CPU at the same instant
        # (a busy loop keeps its slice); once everyone is blocked it is idle.
        await trio.testing.wait_all_tasks_blocked()
        assert v.runstate == RunState.BLOCKED and v.cpu_time_ns == 50_000_000
        await v.run(0)
        await v.run(-3)
        with pytest.raises(ValueError):
            await v.run(math.nan)


async def test_contention_stretches_wall_time(autojump_clock: trio.testing.MockClock) -> None:
    async with open_scheduler(1, "rr") as s, trio.open_nursery() as n:
        done = {}
        for d in (1, 2, 3):
            s.add_domain(d)
            v = s.add_vcpu(d, 0)

            async def job(v=v, d=d) -> None:  # type: ignore[no-untyped-def]
                await v.run(0.050)
                done[d] = trio.current_time()

            n.start_soon(job)
    # The module docstring's worked example, on one pCPU: 30 ms slices.
    assert sorted(done.values()) == pytest.approx([0.110, 0.130, 0.150])


async def test_block_keeps_demand_until_wake(autojump_clock: trio.testing.MockClock) -> None:
    async with open_scheduler(1, "credit") as s, trio.open_nursery() as n:
        s.add_domain(1)
        v = s.add_vcpu(1, 0)
        v.block()
        n.start_soon(v.run, 0.010)
        await trio.sleep(1.0)
        assert v.cpu_time_ns == 0 and not v.runnable and v.runstate == RunState.BLOCKED
        v.wake()
        await trio.sleep(0.010)
        assert v.cpu_time_ns == 10_000_000
        v.wake()  # not blocked: no-op


async def test_paused_domain_gets_no_cpu(autojump_clock: trio.testing.MockClock) -> None:
    async with open_scheduler(1, "credit") as s, trio.open_nursery() as n:
        s.add_domain(1)
        s.add_domain(2)
        a, b = s.add_vcpu(1, 0), s.add_vcpu(2, 0)
        await n.start(busy, a)
        await n.start(busy, b)
        await trio.sleep(0.5)
        s.pause_domain(1)
        s.pause_domain(1)
        a0, b0 = cpu(a), cpu(b)
        await trio.sleep(1.0)
        assert cpu(a) == a0 and a.runstate == RunState.OFFLINE
        assert cpu(b) - b0 == pytest.approx(1.0)
        assert s.domain_info(1).paused
        s.unpause_domain(1)
        await trio.sleep(0.1)
        assert cpu(a) == a0  # still paused once
        s.unpause_domain(1)
        await trio.sleep(1.0)
        assert cpu(a) > a0
        with pytest.raises(XenError) as ei:
            s.unpause_domain(1)
        assert ei.value.errno == Errno.EINVAL
        n.cancel_scope.cancel()


async def test_remove_domain_wakes_waiters_and_leaks_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_scheduler(2, "credit") as s:
        s.add_domain(1)
        s.add_domain(2)
        v = s.add_vcpu(1, 0)
        other = s.add_vcpu(2, 0)
        v.set_timer(trio.current_time() + 5, lambda: pytest.fail("timer of removed vCPU"))
        errors = []

        async def guest() -> None:
            try:
                await v.run(10.0)
            except VcpuGoneError as e:
                errors.append(e)

        async with trio.open_nursery() as n:
            n.start_soon(guest)
            n.start_soon(other.run, 0.5)
            await trio.sleep(0.1)
            s.remove_domain(1)
        assert len(errors) == 1 and 1 not in s.domains
        assert cpu(other) == pytest.approx(0.5)
        with pytest.raises(VcpuGoneError):
            await v.run(1.0)
        await trio.sleep(10)
        assert all(p.curr is None for p in s.pcpus)
        with pytest.raises(XenError) as ei:
            s.remove_domain(1)
        assert ei.value.errno == Errno.ESRCH
        with pytest.raises(XenError):
            s.add_domain(2)


async def test_cancelled_run_withdraws_demand(autojump_clock: trio.testing.MockClock) -> None:
    async with open_scheduler(1, "credit") as s:
        s.add_domain(1)
        v = s.add_vcpu(1, 0)
        with trio.move_on_after(0.020):
            await v.run(1.0)
        await trio.sleep(1.0)
        assert cpu(v) == pytest.approx(0.020) and v.demand_ns == 0 and not v.runnable


async def test_service_ends_cleanly_and_can_not_start_twice() -> None:
    s = Scheduler(2)
    async with trio.open_nursery() as n:
        await n.start(s.run)
        with pytest.raises(RuntimeError):
            await s.run()
        s.add_domain(1)
        n.start_soon(busy, s.add_vcpu(1, 0))
        await trio.sleep(0.05)
        n.cancel_scope.cancel()
    assert s._sleep_scope is None


async def test_guest_timer_fires_at_deadline(autojump_clock: trio.testing.MockClock) -> None:
    async with open_scheduler(1, "credit") as s:
        s.add_domain(1)
        v = s.add_vcpu(1, 0)
        fired: list[float] = []
        ev = trio.Event()

        def cb() -> None:
            fired.append(trio.current_time())
            ev.set()

        dl = trio.current_time() + 0.25
        v.set_timer(dl, cb)
        assert v.timer_deadline == pytest.approx(dl)
        await ev.wait()
        assert fired == [pytest.approx(dl)] and v.timer_deadline is None
        # Re-arming replaces; stop disarms.
        v.set_timer(trio.current_time() + 0.1)
        v.set_timer(trio.current_time() + 0.3)
        v.stop_timer()
        await trio.sleep(1)
        assert len(fired) == 1


async def test_hostile_timer_values(autojump_clock: trio.testing.MockClock) -> None:
    async with open_scheduler(1, "credit") as s:
        s.add_domain(1)
        v = s.add_vcpu(1, 0)
        fired: list[float] = []
        v.timer_callback = lambda: fired.append(trio.current_time())
        # Past / nonsense deadlines fire promptly, once.
        for dl in (0, -1.0, -1e308, -math.inf, math.nan, -(10**400)):
            before = len(fired)
            t = trio.current_time()
            v.set_timer(dl)
            await trio.sleep(0.001)
            assert len(fired) == before + 1
            assert fired[-1] - t <= 0.0001  # "promptly": timer_slop (50 us)
        # Absurdly far deadlines never fire and raise nothing.
        for dl in ((2**63 - 1) / 1e9 * 10, math.inf, 1e308, 10**400):
            v.set_timer(dl)
            await trio.sleep(100)
        n = len(fired)
        await trio.sleep(1000)
        assert len(fired) == n
        # set_timer_op: Xen's semantics (0 cancels; negative or > 2^50 ns ahead
        # means now + 100 ms; otherwise system time in ns).
        v.set_timer(trio.current_time() + 1)
        v.set_timer_op(0)
        await trio.sleep(2)
        assert len(fired) == n
        for bad in (-1, 2**63 - 1, 2**64 - 1, -(2**63)):
            t = trio.current_time()
            v.set_timer_op(bad)
            await trio.sleep(0.2)
            assert fired[-1] - t == pytest.approx(0.100)
        t = trio.current_time()
        v.set_timer_op(s.system_time_ns() + 7_000_000)
        await trio.sleep(0.1)
        assert fired[-1] - t == pytest.approx(0.007)


def test_timer_queue_sans_io() -> None:
    armed: list[int] = []
    q = TimerQueue(armed.append)
    out: list[str] = []
    a = Timer(q, lambda: out.append("a"))
    b = Timer(q, lambda: out.append("b"))
    a.set(30)
    a.set(10)
    b.set(10)
    assert q.next_deadline() == 10 and armed == [30, 10, 10]
    assert q.run_due(9) == 0
    assert q.run_due(10) == 2 and out == ["a", "b"]  # ties fire in arming order
    assert q.next_deadline() == NEVER and not a.active
    b.set(NEVER)
    assert not b.active
    c = Timer(q, lambda: c.set(100))  # a callback may re-arm its own timer
    c.set(50)
    q.run_due(60)
    assert c.deadline == 100


def test_cpu_sets() -> None:
    assert parse_cpus(None, 4) == {0, 1, 2, 3}
    assert parse_cpus("all", 4) == {0, 1, 2, 3}
    assert parse_cpus("0-2,^1", 4) == {0, 2}
    assert parse_cpus("all,^3", 4) == {0, 1, 2}
    assert parse_cpus([3], 4) == {3}
    for bad in ("", "4", "2-1", "x", "0-", "^0-3", "0,,1"):
        with pytest.raises(ValueError):
            parse_cpus(bad, 4)
    assert format_cpus(range(4), 4) == "all"
    assert format_cpus([0, 1, 2, 5], 8) == "0-2,5"
    assert format_cpus([3], 8) == "3"


async def test_add_vcpu_errors(autojump_clock: trio.testing.MockClock) -> None:
    s = Scheduler(2)
    s.add_domain(1)
    s.add_vcpu(1, 0)
    for args, errno in (((1, 0), Errno.EEXIST), ((5, 0), Errno.ESRCH)):
        with pytest.raises(XenError) as ei:
            s.add_vcpu(*args)
        assert ei.value.errno == errno
    with pytest.raises(XenError) as ei:
        s.add_vcpu(1, 1, affinity="7")
    assert ei.value.errno == Errno.EINVAL
    with pytest.raises(ValueError):
        Scheduler(0)
    with pytest.raises(ValueError):
        Scheduler(1, "fifo")


async def test_round_robin_equal_shares_ignore_weights(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_scheduler(2, "rr") as s, trio.open_nursery() as n:
        vs = []
        for i, w in enumerate([256, 256, 512, 1024]):
            s.add_domain(i + 1, weight=w)
            vs.append(s.add_vcpu(i + 1, 0))
            await n.start(busy, vs[-1])
        await trio.sleep(10.0)
        shares = [cpu(v) / 10.0 for v in vs]
        assert sum(shares) == pytest.approx(2.0, abs=1e-6)
        for sh in shares:
            assert sh == pytest.approx(0.5, abs=0.02)
        # Pinning: a vCPU pinned to pCPU 1 only ever runs there.
        pinned = s.add_vcpu(4, 1, affinity="1")
        await n.start(busy, pinned)
        await trio.sleep(3.0)
        assert pinned.last_cpu == 1 and pinned.nr_migrations == 0 and cpu(pinned) > 0.3
        n.cancel_scope.cancel()
