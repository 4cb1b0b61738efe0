"""vCPU hot-plug: ``HYPERVISOR_vcpu_op`` with ``VCPUOP_up``/``_down``/``_is_up``.

Xen's rules (xen/common/domain.c ``do_vcpu_op``): a domain acts on its own
vCPUs only; an id it lacks is ENOENT; up/down are idempotent; bringing down
the last vCPU that is up powers the domain off instead. A down vCPU never
gets a pCPU, its run state is OFFLINE, ``getdomaininfo`` counts only online
vCPUs, new ``compute`` on it is refused (EINVAL, as for a vCPU the domain
lacks) and work under way on it is frozen until it is up again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from hypervisor.domain import ShutdownReason
from hypervisor.errno import Errno, XenError
from hypervisor.hypercall import HYPERVISOR_vcpu_op, VCPUOP_down, VCPUOP_is_up, VCPUOP_up
from hypervisor.sched import RunState
from hypervisor.vcpu import DomainDestroyed

from .test_sched_integration import cpu_s, hog, make_host, new_domu, running


def errno_of(fn: Callable[[], Any]) -> Errno:
    with pytest.raises(XenError) as ei:
        fn()
    return ei.value.errno


def vcpu_cpu_s(hv: Any, domid: int, vcpu: int) -> float:
    return [v.cpu_time for v in hv.interface(0).sysctl_vcpu_list(domid)][vcpu]


def test_up_down_is_up_are_idempotent_and_counted() -> None:
    hv = make_host()
    dom0 = hv.interface(0)
    g = new_domu(hv, "g", max_vcpus=3)
    assert [g.vcpu_is_up(i) for i in range(3)] == [True, True, True]
    assert dom0.domctl_getdomaininfo(g.domid).nr_online_vcpus == 3
    g.vcpu_down(2)
    g.vcpu_down(2)  # already down: nothing happens
    g.vcpu_down(1)
    assert [g.vcpu_is_up(i) for i in range(3)] == [True, False, False]
    info = dom0.domctl_getdomaininfo(g.domid)
    assert (info.nr_online_vcpus, info.max_vcpu_id) == (1, 2)
    assert [v.runstate for v in dom0.sysctl_vcpu_list(g.domid)][1:] == [RunState.OFFLINE] * 2
    g.vcpu_up(1)
    g.vcpu_up(1)
    assert dom0.domctl_getdomaininfo(g.domid).nr_online_vcpus == 2
    assert dom0.sysctl_vcpu_list(g.domid)[1].runstate == RunState.BLOCKED  # idle again
    # the raw C-style calls answer as Xen's do
    assert g.call_c(HYPERVISOR_vcpu_op, VCPUOP_is_up, 2) == 0
    assert g.call_c(HYPERVISOR_vcpu_op, VCPUOP_is_up, 1) == 1
    assert g.call_c(HYPERVISOR_vcpu_op, VCPUOP_up, 2) == 0
    stats = hv.statistics()[g.domid]
    assert (stats["vcpu_op.up"], stats["vcpu_op.down"], stats["vcpu_op.is_up"]) == (3, 3, 8)
    hv.check_invariants()


@pytest.mark.parametrize("vcpu", [2, 3, 31, 32, -1, 2**32, 2**64])
def test_a_vcpu_the_domain_lacks_is_enoent(vcpu: int) -> None:
    hv = make_host()
    g = new_domu(hv, "g", max_vcpus=2)
    for fn in (g.vcpu_up, g.vcpu_down, g.vcpu_is_up):
        assert errno_of(lambda fn=fn: fn(vcpu)) == Errno.ENOENT
    assert g.call_c(HYPERVISOR_vcpu_op, VCPUOP_down, vcpu) == -Errno.ENOENT
    assert [g.vcpu_is_up(i) for i in range(2)] == [True, True]


@pytest.mark.parametrize("junk", ["1", None, 1.0, True, [1], b"\x01"])
def test_junk_vcpu_ids_and_arguments_are_errors_not_crashes(junk: object) -> None:
    hv = make_host()
    g = new_domu(hv, "g", max_vcpus=2)
    for cmd in (VCPUOP_up, VCPUOP_down, VCPUOP_is_up):
        assert g.call_c(HYPERVISOR_vcpu_op, cmd, junk) == -Errno.EINVAL
        assert g.call_c(HYPERVISOR_vcpu_op, cmd) == -Errno.EFAULT  # no vCPU id at all
        assert g.call_c(HYPERVISOR_vcpu_op, cmd, 1, 2, 3) == -Errno.EFAULT
    for cmd in (0, 4, 99, -1):  # initialise, runstate info...: not simulated
        assert g.call_c(HYPERVISOR_vcpu_op, cmd, 1) == -Errno.ENOSYS
    assert [g.vcpu_is_up(i) for i in range(2)] == [True, True]
    hv.check_invariants()


def test_a_domain_only_reaches_its_own_vcpus() -> None:
    hv = make_host()
    dom0 = hv.interface(0)
    a = new_domu(hv, "a", max_vcpus=2)
    b = new_domu(hv, "b", max_vcpus=2)
    a.vcpu_down(1)
    assert [b.vcpu_is_up(i) for i in range(2)] == [True, True]
    assert dom0.domctl_getdomaininfo(b.domid).nr_online_vcpus == 2
    # dom0 acts on its own (single) vCPU too, not on a guest's
    assert dom0.vcpu_is_up(0) and errno_of(lambda: dom0.vcpu_is_up(1)) == Errno.ENOENT


def test_downing_the_last_online_vcpu_powers_the_domain_off() -> None:
    hv = make_host()
    dom0 = hv.interface(0)
    g = new_domu(hv, "g", max_vcpus=2)
    g.vcpu_down(0)  # vCPU 0 may go down: vCPU 1 is still up
    assert [g.vcpu_is_up(i) for i in range(2)] == [False, True]
    g.vcpu_down(1)  # the last one: Xen shuts the domain down instead
    info = dom0.domctl_getdomaininfo(g.domid)
    assert info.shutdown_reason == ShutdownReason.POWEROFF
    assert g.vcpu_is_up(1) and info.nr_online_vcpus == 1
    one = new_domu(hv, "one")
    one.vcpu_down(0)
    assert dom0.domctl_getdomaininfo(one.domid).shutdown_reason == ShutdownReason.POWEROFF
    hv.check_invariants()


async def test_an_offline_vcpu_gets_no_cpu_and_its_work_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hv = make_host(nr_pcpus=2)
    dom0 = hv.interface(0)
    g = new_domu(hv, "g", max_vcpus=2)
    done: list[float] = []

    async def job() -> None:
        await g.compute(0.5, vcpu=1)
        done.append(trio.current_time())

    async with running(hv) as n:
        await n.start(hog, g, 0.010, 0)
        t0 = trio.current_time()
        n.start_soon(job)
        await trio.sleep(0.2)
        assert vcpu_cpu_s(hv, g.domid, 1) == pytest.approx(0.2)
        g.vcpu_down(1)  # asynchronous, as in Xen: off its pCPU at the next pass
        await trio.testing.wait_all_tasks_blocked()
        v1 = dom0.sysctl_vcpu_list(g.domid)[1]
        assert (v1.runstate, v1.running) == (RunState.OFFLINE, False)
        frozen = vcpu_cpu_s(hv, g.domid, 1)
        assert frozen == pytest.approx(0.2)
        assert errno_of(lambda: g.compute(0.1, vcpu=1).send(None)) == Errno.EINVAL
        await trio.sleep(1.0)
        assert vcpu_cpu_s(hv, g.domid, 1) == frozen and not done
        assert (g.domid, 1) not in [p.curr for p in hv.sched.pcpu_info()]
        assert vcpu_cpu_s(hv, g.domid, 0) == pytest.approx(1.2)  # vCPU 0 kept running
        info = dom0.domctl_getdomaininfo(g.domid)
        assert (info.nr_online_vcpus, info.xl_state()) == (1, "r-----")
        assert dom0.sysctl_vcpu_list(g.domid)[1].offline_time == pytest.approx(1.0)
        g.vcpu_up(1)  # the frozen job continues where it stopped
        await trio.sleep(0.4)
        assert done == [pytest.approx(t0 + 1.5)]
        hv.check_invariants()
        n.cancel_scope.cancel()


async def test_offline_vcpus_do_not_hide_a_blocked_domain(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hv = make_host()
    dom0 = hv.interface(0)
    g = new_domu(hv, "g", max_vcpus=2)
    g.vcpu_down(1)
    async with running(hv) as n:
        n.start_soon(g.sched_block, 0)
        await trio.testing.wait_all_tasks_blocked()
        assert dom0.domctl_getdomaininfo(g.domid).xl_state() == "-b----"
        n.cancel_scope.cancel()


async def test_destroying_a_domain_with_frozen_work_leaks_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hv = make_host()
    dom0 = hv.interface(0)
    base = hv.resource_counts()
    g = new_domu(hv, "g", max_vcpus=2)
    outcome: list[str] = []

    async def job() -> None:
        try:
            await g.compute(math.inf, vcpu=1)
        except DomainDestroyed:
            outcome.append("destroyed")

    async with running(hv) as n:
        n.start_soon(job)
        await trio.sleep(0.1)
        g.vcpu_down(1)
        await trio.sleep(0.1)
        assert hv.resource_counts()["sched_demands"] == 1
        dom0.domctl_destroydomain(g.domid)
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == ["destroyed"]
        with pytest.raises(DomainDestroyed):
            g.vcpu_up(1)
        n.cancel_scope.cancel()
    assert hv.resource_counts() == base
    hv.check_invariants()


async def test_a_guest_cannot_slow_others_with_vcpu_op_storms(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hv = make_host()
    evil = new_domu(hv, "evil", max_vcpus=2)
    victim = new_domu(hv, "victim")

    async def storm() -> None:
        i = 0
        while True:  # flaps vCPU 1, with junk in between (vCPU 0 keeps the domain up)
            evil.call_c(HYPERVISOR_vcpu_op, (VCPUOP_up, VCPUOP_down, VCPUOP_is_up, 7)[i % 4],
                        (1, 1, 2, -5, "x")[i % 5])
            i += 1
            await trio.sleep(0.001)

    async with running(hv) as n:
        await n.start(hog, victim)
        await n.start(hog, evil, 0.010, 0)
        n.start_soon(storm)
        await trio.sleep(2.0)
        # one pCPU, two hogs of equal weight: an even split, the storm notwithstanding
        assert cpu_s(hv, victim.domid) == pytest.approx(1.0, abs=0.1)
        assert hv.interface(0).domctl_getdomaininfo(evil.domid).shutdown_reason is None
        hv.check_invariants()
        n.cancel_scope.cancel()
