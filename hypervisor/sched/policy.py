"""The one small interface every scheduling policy implements.

The split follows Xen's ``struct scheduler`` (``xen/common/sched/private.h``):
the generic part (:mod:`hypervisor.sched.core`) owns pCPUs, vCPU run states,
CPU demand, timers, time accounting and the service task; a policy owns its
runqueues and decides, when asked, which vCPU a pCPU runs next and for how
long. A policy never awaits and never reads the clock: every hook gets ``now``
(machine time in ns) from the core. Hooks run synchronously, so each is atomic
with respect to every other task.

Contract, from the core's side:

* ``wake(v)`` is called exactly when ``v`` becomes runnable (it was not),
  ``sleep(v)`` exactly when it stops being runnable. A runnable vCPU that is
  not running on a pCPU must be findable by the policy's ``do_schedule``.
* ``do_schedule(cpu, prev, now)`` is called when ``cpu``'s slice ends or its
  reschedule flag was raised (by the policy through
  :meth:`~hypervisor.sched.core.Scheduler.raise_softirq`, or by the core when
  the running vCPU stopped being runnable). ``prev`` is what ran there (or
  ``None``); it may be runnable or not. The policy returns the vCPU to run
  (``prev`` again, another runnable vCPU whose hard affinity contains ``cpu``
  and that is not running elsewhere, or ``None`` to idle) and the slice length
  in ns (ignored when idling).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from hypervisor.sched.core import SchedDomain, Scheduler, SchedVcpu


class SchedPolicy(abc.ABC):
    """A scheduling policy (round-robin, credit1, ...)."""

    name: ClassVar[str]
    """Short name, as in Xen's ``sched=`` option (``credit``, ``rr``)."""

    sched: Scheduler

    def attach(self, sched: Scheduler) -> None:
        """Bind the policy to its scheduler; called once by the scheduler.

        Args:
            sched: the owning scheduler (gives pCPUs, timers, softirqs).
        """
        self.sched = sched

    def start(self, now: int) -> None:  # noqa: B027 - optional hook
        """The service task started; arm periodic timers here.

        Args:
            now: machine time in ns.
        """

    def insert_domain(self, dom: SchedDomain) -> None:  # noqa: B027 - optional hook
        """A domain was added (its parameters are on ``dom``)."""

    def remove_domain(self, dom: SchedDomain) -> None:  # noqa: B027 - optional hook
        """A domain was removed (all its vCPUs were removed first)."""

    def adjust(self, dom: SchedDomain) -> None:  # noqa: B027 - optional hook
        """``dom.weight`` or ``dom.cap`` changed (already validated)."""

    @abc.abstractmethod
    def insert_vcpu(self, v: SchedVcpu, now: int) -> None:
        """A vCPU was added; it is not runnable yet. Choose ``v.processor``."""

    @abc.abstractmethod
    def remove_vcpu(self, v: SchedVcpu, now: int) -> None:
        """A vCPU is removed. ``sleep`` was called first if it was runnable."""

    @abc.abstractmethod
    def wake(self, v: SchedVcpu, now: int) -> None:
        """``v`` became runnable: queue it and tickle a pCPU if useful."""

    @abc.abstractmethod
    def sleep(self, v: SchedVcpu, now: int) -> None:
        """``v`` stopped being runnable: dequeue it (or reschedule its pCPU)."""

    @abc.abstractmethod
    def yield_(self, v: SchedVcpu) -> None:
        """``v`` asked to yield (SCHEDOP_yield); the core then reschedules."""

    @abc.abstractmethod
    def affinity_changed(self, v: SchedVcpu, now: int) -> None:
        """``v.affinity`` changed; move it off pCPUs it may no longer use."""

    @abc.abstractmethod
    def do_schedule(
        self, cpu: int, prev: SchedVcpu | None, now: int
    ) -> tuple[SchedVcpu | None, int]:
        """Pick what ``cpu`` runs next.

        Args:
            cpu: the pCPU being rescheduled.
            prev: the vCPU that was running there, or ``None`` (idle).
            now: machine time in ns.

        Returns:
            ``(next, slice_ns)``; ``next`` is ``None`` to idle.
        """

    def params(self) -> dict[str, int]:
        """Pool-wide parameters for display (``xl sched-credit`` header)."""
        return {}
