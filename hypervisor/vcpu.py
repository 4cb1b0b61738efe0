"""vCPUs: the one place where a guest task waits for the hypervisor.

Theory of operation
-------------------
A vCPU is a guest task that, from time to time, hands control to the
hypervisor and sleeps: ``SCHEDOP_block`` (until an upcall is pending),
``SCHEDOP_poll`` (until one of some ports is pending, or a timeout) or
``SCHEDOP_yield``. Each vCPU has at most one parked trio task; waking it is
``trio.lowlevel.reschedule`` of that task, the cheapest wake trio has. Every
wake is only a hint: the woken task re-checks its condition, so spurious
kicks are harmless and no wake can be lost (the condition is checked after
the waiter is registered, and nothing can run in between in trio).

The per-vCPU ``vcpu_info`` lives in the domain's ``shared_info`` frame in
Xen's x86_64 layout: ``evtchn_upcall_pending`` u8 @0, ``evtchn_upcall_mask``
u8 @1, ``evtchn_pending_sel`` u64 @8, one 64-byte block per vCPU at offset
``64 * vcpu_id``.

A domain that is paused, shut down or dying does not return from a wait:
pausing takes effect at the next blocking hypercall (Python cannot preempt a
running task). A dying domain's waiters are woken with
:class:`DomainDestroyed`, so its tasks unwind.

The CPU scheduler
-----------------
Each vCPU has a :class:`~hypervisor.sched.SchedVcpu` (:attr:`VCpu.sched`,
attached by the hypervisor when the domain is built). Guest tasks consume
CPU on it (``HypercallInterface.compute``); the waits here tell the
scheduler what the vCPU is doing:

* ``SCHEDOP_block``/``SCHEDOP_poll``: the vCPU is marked blocked right before
  the task parks, and woken (``vcpu_unblock``) as soon as the park returns --
  whatever woke it: an event (:meth:`mark_events_pending`), a :meth:`kick`,
  destruction or cancellation. The task resumes at the same virtual instant
  as the delivery, so this is the event-delivery wake that lets the credit
  policy BOOST an I/O-bound vCPU past CPU hogs, without adding a single
  operation to the delivery path itself (:meth:`mark_events_pending` and
  :meth:`kick` are unchanged).
* A simulated guest may run several tasks on one vCPU (its event loop plus
  tasks calling ``compute``), where a real kernel would only block when none
  of its threads is runnable. So blocking uses
  :meth:`~hypervisor.sched.SchedVcpu.block_if_idle` (a vCPU with outstanding
  CPU demand stays runnable), and ``compute`` wakes the vCPU before asking for
  CPU (the guest thread that wants it is runnable, so the kernel is not idle).
* ``SCHEDOP_yield`` gives up the rest of the vCPU's slice.
* Pause, shutdown and destruction are domain-wide: see
  :meth:`hypervisor.domain.Domain._update_runnable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import outcome
import trio

from hypervisor.errno import Errno, XenError

if TYPE_CHECKING:
    from hypervisor.domain import Domain
    from hypervisor.sched import SchedVcpu

VCPU_INFO_SIZE = 64
OFF_UPCALL_PENDING = 0
OFF_UPCALL_MASK = 1
OFF_PENDING_SEL = 8
SCHED_POLL_MAX_PORTS = 128
"""Xen refuses a poll on more ports than this with EINVAL."""


class DomainDestroyed(Exception):
    """Raised into a domain's tasks when the domain is destroyed.

    Real Xen simply never runs a destroyed domain's vCPUs again; the
    simulation wakes any waiting guest task with this exception (and raises
    it from any later hypercall) so the task unwinds cleanly.
    """


class VCpu:
    """One virtual CPU of a domain.

    Args:
        domain: the owning domain.
        vcpu_id: 0-based index (< 32: it has a ``vcpu_info`` in shared_info).
        shared_info: the domain's shared_info frame (hypervisor view).
    """

    __slots__ = ("_base", "_si", "_waiter", "domain", "poll_ports", "sched", "vcpu_id",
                 "virq_to_port")

    sched: SchedVcpu
    """Its schedulable vCPU (set by the hypervisor when the domain is registered)."""

    def __init__(self, domain: Domain, vcpu_id: int, shared_info: memoryview) -> None:
        self.domain = domain
        self.vcpu_id = vcpu_id
        self._si = shared_info
        self._base = VCPU_INFO_SIZE * vcpu_id
        self._waiter: trio.lowlevel.Task | None = None
        self.poll_ports: frozenset[int] | None = None
        self.virq_to_port: dict[int, int] = {}
        shared_info[self._base + OFF_UPCALL_MASK] = 1  # boots with upcalls masked

    # -- vcpu_info in shared_info ---------------------------------------------------------

    @property
    def upcall_pending(self) -> int:
        """``evtchn_upcall_pending`` as the guest sees it."""
        return self._si[self._base + OFF_UPCALL_PENDING]

    @property
    def upcall_mask(self) -> int:
        """``evtchn_upcall_mask`` as the guest sees it."""
        return self._si[self._base + OFF_UPCALL_MASK]

    def mark_events_pending(self) -> None:
        """Xen ``vcpu_mark_events_pending``: set upcall_pending; kick on 0 -> 1."""
        idx = self._base
        si = self._si
        if si[idx]:
            return
        si[idx] = 1
        w = self._waiter
        if w is not None:
            self._waiter = None
            trio.lowlevel.reschedule(w)

    # -- waiting ---------------------------------------------------------------------------

    @property
    def is_blocked(self) -> bool:
        """True while a task is parked in block/poll/yield on this vCPU."""
        return self._waiter is not None

    def kick(self) -> None:
        """Wake the parked task (if any) so it re-checks its condition."""
        w = self._waiter
        if w is not None:
            self._waiter = None
            trio.lowlevel.reschedule(w)

    def kill(self) -> None:
        """Wake the parked task with :class:`DomainDestroyed` (domain teardown)."""
        w = self._waiter
        if w is not None:
            self._waiter = None
            trio.lowlevel.reschedule(w, outcome.Error(DomainDestroyed(f"d{self.domain.domid}")))

    def _abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self._waiter = None
        self.poll_ports = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def _park(self) -> None:
        if self.domain.dying:
            # Woken (say by an event) but not yet re-parked when the domain was
            # destroyed: kill() found no waiter, so nobody will ever wake us.
            raise DomainDestroyed(f"d{self.domain.domid}")
        if self._waiter is not None:
            raise RuntimeError(
                f"d{self.domain.domid}v{self.vcpu_id}: two tasks waiting on one vCPU")
        self._waiter = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    async def block(self) -> None:
        """``SCHEDOP_block``: enable upcalls, sleep until one is pending.

        Returns once ``evtchn_upcall_pending`` is set and the domain is
        runnable. Always a trio checkpoint.

        Raises:
            DomainDestroyed: the domain was destroyed while waiting.
        """
        si = self._si
        base = self._base
        si[base + OFF_UPCALL_MASK] = 0
        dom = self.domain
        if si[base] and dom.runnable:
            await trio.lowlevel.checkpoint()
            return
        s = self.sched
        while True:
            s.block_if_idle()
            try:
                await self._park()
            finally:
                s.wake()
            if si[base] and dom.runnable:
                return

    async def poll(self, ports: Sequence[int], timeout: float | None) -> bool:
        """``SCHEDOP_poll``: sleep until a port in ``ports`` is pending.

        Also returns when an upcall is deliverable (pending and unmasked), as
        Xen does. Args are guest-controlled.

        Args:
            ports: at most 128 ports of this domain.
            timeout: seconds of trio-clock time; ``None`` waits forever.

        Returns:
            True if some polled port is pending (or an upcall is deliverable),
            False on timeout.

        Raises:
            XenError: EINVAL for too many ports or a port beyond the limit.
            DomainDestroyed: the domain was destroyed while waiting.
        """
        dom = self.domain
        if len(ports) > SCHED_POLL_MAX_PORTS:
            raise XenError(Errno.EINVAL, "too many ports to poll")
        limit = dom.evtchn.max_port
        for p in ports:
            if not 0 <= p <= limit:
                raise XenError(Errno.EINVAL, f"port {p} out of range")
        wanted = frozenset(ports)
        if self._poll_ready(wanted) and dom.runnable:
            await trio.lowlevel.checkpoint()
            return True
        s = self.sched
        with trio.move_on_after(float("inf") if timeout is None else max(timeout, 0.0)):
            while True:
                self.poll_ports = wanted
                dom.pollers += 1
                s.block_if_idle()
                try:
                    await self._park()
                finally:
                    s.wake()
                    self.poll_ports = None
                    dom.pollers -= 1
                if self._poll_ready(wanted) and dom.runnable:
                    return True
        while not dom.runnable:
            await self._park()
        return self._poll_ready(wanted)

    def _poll_ready(self, ports: frozenset[int]) -> bool:
        si = self._si
        if si[self._base] and not si[self._base + OFF_UPCALL_MASK]:
            return True
        is_pending = self.domain.evtchn.is_pending
        return any(is_pending(p) for p in ports)

    async def yield_(self) -> None:
        """``SCHEDOP_yield``: give up the vCPU's slice, let other tasks run.

        Stalls while the domain is paused.
        """
        self.sched.yield_()
        await trio.lowlevel.checkpoint()
        while not self.domain.runnable:
            await self._park()
