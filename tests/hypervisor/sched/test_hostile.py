"""Hostile guests cannot stall the machine or take others' shares."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from hypervisor.sched import SchedVcpu, open_scheduler
from tests.hypervisor.sched._util import busy, cpu

T = 5.0


async def never_blocks(v: SchedVcpu, *, task_status: trio.TaskStatus[None]) -> None:
    """One endless demand: a pure hog."""
    task_status.started()
    await v.run(math.inf)


async def timer_abuser(v: SchedVcpu, counts: dict[str, int], *,
                       task_status: trio.TaskStatus[None]) -> None:
    """Re-arms absurd timers and blocks on them in a tight loop."""
    task_status.started()
    values = [0, -1.0, (2**63 - 1) / 1e9, math.inf, math.nan, -math.inf, 1e308, 10**400]
    ops = [0, -1, 2**63 - 1, 2**64 - 1]
    i = 0
    while True:
        i += 1
        v.block()
        v.set_timer(values[i % len(values)], v.wake)
        if i % 3 == 0:
            v.set_timer_op(ops[i % len(ops)])
        # One tiny bit of work per wake; if the timer never fires, the vCPU
        # stays blocked -- then unblock via a sane timer next round.
        with trio.move_on_after(0.2):
            await v.run(0.0001)
            counts["woke"] += 1
        if v.blocked:
            counts["never"] += 1
            v.wake()
            await v.run(0.0001)


async def yielder(v: SchedVcpu, counts: dict[str, int], *,
                  task_status: trio.TaskStatus[None]) -> None:
    """Yields in a tight loop (each iteration costs only 50 us of CPU)."""
    task_status.started()
    while True:
        v.yield_()
        await v.run(0.00005)
        counts["yields"] += 1


@pytest.mark.parametrize("policy", ["credit", "rr"])
async def test_hostile_guests_do_not_stall_others(
    autojump_clock: trio.testing.MockClock, policy: str
) -> None:
    counts = {"woke": 0, "never": 0, "yields": 0}
    with trio.fail_after(T + 1):  # simulated time must advance: nothing stalls
        async with open_scheduler(2, policy) as s, trio.open_nursery() as n:
            for d in range(1, 6):
                s.add_domain(d)
            hog = s.add_vcpu(1, 0)
            abuser = s.add_vcpu(2, 0)
            yld = s.add_vcpu(3, 0)
            good = [s.add_vcpu(4, 0), s.add_vcpu(5, 0)]
            await n.start(never_blocks, hog)
            await n.start(timer_abuser, abuser, counts)
            await n.start(yielder, yld, counts)
            for g in good:
                await n.start(busy, g)
            t0 = trio.current_time()
            await trio.sleep(T)
            elapsed = trio.current_time() - t0
            n.cancel_scope.cancel()
    # Four CPU-bound vCPUs (hog, yielder, two good ones) share 2 pCPUs; the
    # abuser uses almost nothing. The good ones keep (about) their fair half.
    for g in good:
        assert cpu(g) / elapsed >= 0.40, [cpu(x) / elapsed for x in (hog, yld, *good)]
    # The hog gets no more than the well-behaved CPU-bound guests.
    shares = [cpu(x) / elapsed for x in (hog, yld, *good)]
    assert cpu(hog) <= max(cpu(g) for g in good) * 1.05, shares
    assert cpu(abuser) / elapsed < 0.05
    total = sum(cpu(x) for x in (hog, abuser, yld, *good))
    assert total <= 2 * elapsed + 1e-9
    assert total == pytest.approx(2 * elapsed, rel=1e-3)
    assert counts["woke"] > 10 and counts["never"] > 0 and counts["yields"] > 10
