"""CPU scheduling of vCPUs over the machine's physical CPUs.

* :mod:`~hypervisor.sched.core` -- pCPUs, vCPUs, CPU demand (``await v.run(s)``),
  block/wake/yield/pause, single-shot timers, run-state accounting, and the
  service task that makes every decision (:class:`Scheduler`).
* :mod:`~hypervisor.sched.policy` -- the interface a policy implements.
* :mod:`~hypervisor.sched.credit` -- Xen's credit1 (weights, caps, BOOST).
* :mod:`~hypervisor.sched.rr` -- round-robin, the teaching baseline.
* :mod:`~hypervisor.sched.timer` -- the sans-IO timer heap.

Typical use::

    sched = Scheduler(nr_pcpus=4, policy="credit")
    await nursery.start(sched.run)
    sched.add_domain(1, weight=512)
    v = sched.add_vcpu(1, 0, affinity="0-1")
    await v.run(0.050)          # 50 ms of pCPU time
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from hypervisor.sched.core import (
    NS_PER_S,
    TIMER_SLOP_NS,
    DomainInfo,
    PcpuInfo,
    RunState,
    SchedDomain,
    Scheduler,
    SchedVcpu,
    VcpuGoneError,
    VcpuInfo,
    format_cpus,
    parse_cpus,
)
from hypervisor.sched.credit import CreditPolicy
from hypervisor.sched.policy import SchedPolicy
from hypervisor.sched.rr import RoundRobinPolicy
from hypervisor.sched.timer import NEVER, Timer, TimerQueue


@asynccontextmanager
async def open_scheduler(
    nr_pcpus: int, policy: SchedPolicy | str = "credit"
) -> AsyncIterator[Scheduler]:
    """Run a :class:`Scheduler` service for the duration of the block.

    Args:
        nr_pcpus: number of physical CPUs.
        policy: ``"credit"``, ``"rr"`` or a policy instance.

    Yields:
        The running scheduler; its task is cancelled on exit.
    """
    sched = Scheduler(nr_pcpus, policy)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        try:
            yield sched
        finally:
            nursery.cancel_scope.cancel()


__all__ = [
    "NEVER",
    "NS_PER_S",
    "TIMER_SLOP_NS",
    "CreditPolicy",
    "DomainInfo",
    "PcpuInfo",
    "RoundRobinPolicy",
    "RunState",
    "SchedDomain",
    "SchedPolicy",
    "SchedVcpu",
    "Scheduler",
    "Timer",
    "TimerQueue",
    "VcpuGoneError",
    "VcpuInfo",
    "format_cpus",
    "open_scheduler",
    "parse_cpus",
]
