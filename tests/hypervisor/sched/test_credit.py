"""Credit1 behaviour: weights, caps, BOOST, pinning, parameters, accounting."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from hypervisor.errno import Errno, XenError
from hypervisor.sched import CreditPolicy, RunState, Scheduler, open_scheduler
from hypervisor.sched.credit import CSCHED_PRI_TS_BOOST
from tests.hypervisor.sched._util import busy, cpu

T = 10.0


async def test_weights_give_proportional_shares(autojump_clock: trio.testing.MockClock) -> None:
    # 2 pCPUs = 2.0 CPUs to share. Weights 256/256/512/1024 (sum 2048) give fair
    # shares 2*256/2048 = 0.25, 0.25, 0.5 and 2*1024/2048 = 1.0 CPU. The 1024
    # domain has one vCPU, so 1.0 CPU is also the most it could ever use: its
    # fair share is exactly its ceiling and nothing needs redistributing.
    # As fractions of the machine: 12.5%, 12.5%, 25%, 50%.
    weights = [256, 256, 512, 1024]
    expected_cpus = [2 * w / sum(weights) for w in weights]
    async with open_scheduler(2, "credit") as s, trio.open_nursery() as n:
        vs = []
        for i, w in enumerate(weights):
            s.add_domain(i + 1, weight=w)
            vs.append(s.add_vcpu(i + 1, 0))
            await n.start(busy, vs[-1])
        t0 = trio.current_time()
        await trio.sleep(T)
        elapsed = trio.current_time() - t0
        got = [cpu(v) / elapsed for v in vs]
        for g, e in zip(got, expected_cpus):
            assert abs(g / 2 - e / 2) <= 0.02, (got, expected_cpus)  # share of machine +-2%
            assert abs(g - e) <= 0.03 * e, (got, expected_cpus)  # and +-3% relative
        assert sum(got) == pytest.approx(2.0, abs=1e-6)  # work conserving: both pCPUs busy
        n.cancel_scope.cancel()


async def test_cap_holds_domain_at_25_percent(autojump_clock: trio.testing.MockClock) -> None:
    # Alone on an otherwise idle 2-pCPU machine (so work conservation would
    # give it a whole pCPU) and beside an uncapped hog on the same machine.
    async with open_scheduler(2, "credit") as s, trio.open_nursery() as n:
        s.add_domain(1, cap=25)
        capped = s.add_vcpu(1, 0)
        s.add_domain(2)
        hog = s.add_vcpu(2, 0)
        await n.start(busy, capped)
        await n.start(busy, hog)
        await trio.sleep(T)
        assert cpu(capped) / T == pytest.approx(0.25, abs=0.02)
        assert cpu(hog) / T == pytest.approx(1.0, abs=0.01)
        credit, _pri, active, _parked = s.policy.vcpu_credit(capped)  # type: ignore[attr-defined]
        assert active and credit >= -300
        n.cancel_scope.cancel()


async def test_cap_on_contended_pcpu_and_runtime_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_scheduler(1, "credit") as s, trio.open_nursery() as n:
        for d in (1, 2):
            s.add_domain(d)
        a, b = s.add_vcpu(1, 0), s.add_vcpu(2, 0)
        await n.start(busy, a)
        await n.start(busy, b)
        s.set_params(1, cap=25)
        await trio.sleep(T)
        assert cpu(a) / T == pytest.approx(0.25, abs=0.02)
        assert cpu(b) / T == pytest.approx(0.75, abs=0.02)
        # Lift the cap: back to equal shares.
        s.set_params(1, cap=0)
        a0, b0 = cpu(a), cpu(b)
        await trio.sleep(T)
        assert (cpu(a) - a0) / T == pytest.approx(0.5, abs=0.03)
        assert (cpu(b) - b0) / T == pytest.approx(0.5, abs=0.03)
        n.cancel_scope.cancel()


async def _io_latencies(s: Scheduler, n: trio.Nursery, rounds: int = 40) -> list[float]:
    """Hogs on every pCPU; an I/O vCPU blocks, is woken by a timer, runs 1 ms."""
    for d in (1, 2, 3):
        s.add_domain(d)
        await n.start(busy, s.add_vcpu(d, 0))
    # Warm up: every new vCPU starts boosted (its first wake); after a while
    # the hogs have been caught running by a tick and are UNDER/OVER.
    await trio.sleep(0.5)
    s.add_domain(9)
    io = s.add_vcpu(9, 0)
    lat = []
    for _ in range(rounds):
        io.block()
        wake_at = trio.current_time() + 0.047
        io.set_timer(wake_at, io.wake)  # VIRQ_TIMER -> event delivery -> wake
        await io.run(0.001)  # demand stays pending while blocked
        lat.append(trio.current_time() - wake_at)
    return lat


async def test_boost_wakes_io_vcpu_within_one_timeslice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_scheduler(1, "credit") as s, trio.open_nursery() as n:
        lat = await _io_latencies(s, n)
        # 1 ms of work + at most the 1 ms rate limit protecting the hog: far
        # below one 30 ms timeslice, although three hogs share the pCPU.
        assert max(lat) <= 0.030
        assert max(lat) <= 0.001 + 0.001 + 1e-9
        n.cancel_scope.cancel()


async def test_round_robin_has_no_boost(autojump_clock: trio.testing.MockClock) -> None:
    async with open_scheduler(1, "rr") as s, trio.open_nursery() as n:
        lat = await _io_latencies(s, n, rounds=10)
        assert max(lat) > 0.030  # waits behind the hogs' slices
        n.cancel_scope.cancel()


async def test_waking_vcpu_is_boosted_and_boost_ends_at_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_scheduler(1, "credit") as s, trio.open_nursery() as n:
        s.add_domain(1)
        s.add_domain(2)
        hog = s.add_vcpu(1, 0)
        await n.start(busy, hog)
        v = s.add_vcpu(2, 0)
        await trio.sleep(0.1)
        n.start_soon(v.run, 1.0)
        await trio.testing.wait_all_tasks_blocked()
        pol = s.policy
        assert isinstance(pol, CreditPolicy)
        assert pol.vcpu_credit(v)[1] == CSCHED_PRI_TS_BOOST
        assert v.runstate == RunState.RUNNING or v.runnable
        await trio.sleep(0.025)  # past the next 10 ms tick while running
        assert pol.vcpu_credit(v)[1] != CSCHED_PRI_TS_BOOST
        n.cancel_scope.cancel()


async def test_pinning_is_respected(autojump_clock: trio.testing.MockClock) -> None:
    async with open_scheduler(2, "credit") as s, trio.open_nursery() as n:
        vs = []
        for d in range(1, 5):
            s.add_domain(d)
        pinned = s.add_vcpu(1, 0, affinity="1")
        await n.start(busy, pinned)
        for d in range(2, 5):
            vs.append(s.add_vcpu(d, 0))
            await n.start(busy, vs[-1])
        await trio.sleep(3.0)
        # It ran (on pCPU 1 only: its first run sets last_cpu, every later
        # change of pCPU would count as a migration).
        assert pinned.last_cpu == 1 and pinned.nr_migrations == 0
        assert cpu(pinned) > 0.3
        # Re-pin at run time to pCPU 0: from now on it only runs there.
        pinned.set_affinity([0])
        assert pinned.processor == 0 or pinned.is_running  # requeued, or evicted at once
        await trio.sleep(0.2)
        assert pinned.last_cpu == 0 and pinned.nr_migrations == 1
        m = pinned.nr_migrations
        c0 = cpu(pinned)
        await trio.sleep(3.0)
        assert pinned.last_cpu == 0 and pinned.nr_migrations == m
        assert cpu(pinned) - c0 > 0.3
        with pytest.raises(XenError) as ei:
            pinned.set_affinity("5")
        assert ei.value.errno == Errno.EINVAL
        n.cancel_scope.cancel()


async def test_sched_credit_params_validated(autojump_clock: trio.testing.MockClock) -> None:
    async with open_scheduler(2, "credit") as s:
        s.add_domain(1)
        s.add_vcpu(1, 0)
        s.add_vcpu(1, 1)
        assert s.get_params(1) == (256, 0)
        s.set_params(1, weight=65535, cap=200)
        assert s.get_params(1) == (65535, 200)
        for kw in ({"weight": 0}, {"weight": 65536}, {"cap": -1}, {"cap": 201},
                   {"weight": 300, "cap": 999}):
            with pytest.raises(XenError) as ei:
                s.set_params(1, **kw)  # type: ignore[arg-type]
            assert ei.value.errno == Errno.EINVAL
        assert s.get_params(1) == (65535, 200)  # a rejected call changed nothing
        with pytest.raises(XenError) as ei:
            s.get_params(7)
        assert ei.value.errno == Errno.ESRCH
        with pytest.raises(XenError):
            s.add_domain(2, weight=0)
        assert CreditPolicy().params() == {
            "tslice_ms": 30, "ratelimit_us": 1000, "migration_delay_us": 0}


async def test_accounting_sums_are_consistent(autojump_clock: trio.testing.MockClock) -> None:
    async with open_scheduler(2, "credit") as s, trio.open_nursery() as n:
        t0 = trio.current_time()
        for d in range(1, 4):
            s.add_domain(d)
            for i in range(2):
                await n.start(busy, s.add_vcpu(d, i))
        s.add_domain(4)
        idle = s.add_vcpu(4, 0)  # never asks for CPU
        await trio.sleep(5.0)
        elapsed = trio.current_time() - t0
        infos = s.vcpu_list()
        total = sum(i.cpu_time for i in infos)
        assert total <= 2 * elapsed + 1e-9
        assert total == pytest.approx(2 * elapsed, rel=1e-6)  # all busy: both pCPUs full
        for i in infos:
            parts = i.cpu_time + i.runnable_time + i.blocked_time + i.offline_time
            assert parts == pytest.approx(elapsed, abs=1e-6)
        assert idle.cpu_time_ns == 0 and idle.info().blocked
        doms = [s.domain_info(d) for d in range(1, 5)]
        assert sum(d.cpu_time for d in doms) == pytest.approx(total)
        assert doms[3].blocked and not doms[3].running
        assert sum(p.busy_time for p in s.pcpu_info()) == pytest.approx(total)
        n.cancel_scope.cancel()


async def test_idle_machine_is_cheap(autojump_clock: trio.testing.MockClock) -> None:
    async with open_scheduler(4, "credit") as s:
        s.add_domain(1)
        v = s.add_vcpu(1, 0)
        await v.run(0.005)
        passes = s.nr_passes
        await trio.sleep(1000.0)  # nothing runnable: no ticks, no accounting
        assert s.nr_passes - passes <= 3
        assert cpu(v) == pytest.approx(0.005)


def test_deterministic_given_same_calls() -> None:
    async def scenario() -> list[int]:
        async with open_scheduler(2, "credit") as s, trio.open_nursery() as n:
            vs = []
            for i, w in enumerate([256, 256, 512, 1024, 128]):
                s.add_domain(i + 1, weight=w)
                vs.append(s.add_vcpu(i + 1, 0))
                await n.start(busy, vs[-1], 0.007)
            await trio.sleep(2.0)
            n.cancel_scope.cancel()
            return [v.cpu_time_ns for v in vs]

    results = [trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
               for _ in range(3)]
    assert results[0] == results[1] == results[2]
    assert not math.isclose(results[0][0], results[0][3])
