"""Round-robin: the teaching baseline policy.

Theory of operation
-------------------
One global FIFO of runnable vCPUs that are not running. A pCPU that needs work
takes the first queued vCPU whose hard affinity allows it and runs it for a
fixed slice (30 ms by default). At the end of the slice, or when the vCPU
yields, a still-runnable vCPU goes to the tail of the FIFO -- but keeps the
pCPU if nobody else may use it. A vCPU that becomes runnable joins the tail
and wakes one idle pCPU it may run on. There are no weights, caps, boosts or
ticks: every runnable vCPU gets an equal share, and a vCPU that wakes waits
its turn behind everyone already queued.

Worked example: 1 pCPU, A and B always busy, C wakes at t=10 ms.
A runs 0-30 ms; queue is B, C; B runs 30-60 ms, C 60-90 ms, A 90-120 ms...
C's wake-up latency was 50 ms (credit's BOOST would have made it ~1 ms).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

from hypervisor.sched.policy import SchedPolicy
from hypervisor.sched.timer import NEVER

if TYPE_CHECKING:
    from hypervisor.sched.core import SchedVcpu

RR_DEFAULT_TSLICE_MS: Final = 30


class RoundRobinPolicy(SchedPolicy):
    """Equal shares, fixed timeslice, one global queue.

    Args:
        tslice_ms: the slice, 1..1000 ms.

    Raises:
        ValueError: slice out of range.
    """

    name = "rr"

    def __init__(self, tslice_ms: int = RR_DEFAULT_TSLICE_MS) -> None:
        if not 1 <= tslice_ms <= 1000:
            raise ValueError("tslice_ms must be 1..1000")
        self.tslice_ms = tslice_ms
        self.tslice = tslice_ms * 1_000_000
        self.queue: deque[SchedVcpu] = deque()
        self._yielding: set[SchedVcpu] = set()

    def params(self) -> dict[str, int]:
        """``tslice_ms`` for display."""
        return {"tslice_ms": self.tslice_ms}

    def insert_vcpu(self, v: SchedVcpu, now: int) -> None:
        """Nothing to set up."""

    def remove_vcpu(self, v: SchedVcpu, now: int) -> None:
        """Forget a vCPU."""
        if v in self.queue:
            self.queue.remove(v)
        self._yielding.discard(v)

    def wake(self, v: SchedVcpu, now: int) -> None:
        """Queue at the tail; wake one idle pCPU that may run it."""
        if v.is_running or v in self.queue:
            return
        self.queue.append(v)
        self._tickle(v)

    def _tickle(self, v: SchedVcpu) -> None:
        sched = self.sched
        for c in sorted(v.affinity):
            p = sched.pcpus[c]
            if p.curr is None and not p.need_resched:
                sched.raise_softirq(c)
                return

    def sleep(self, v: SchedVcpu, now: int) -> None:
        """Leave the queue (the core reschedules a running vCPU)."""
        if v in self.queue:
            self.queue.remove(v)

    def yield_(self, v: SchedVcpu) -> None:
        """Mark: the next decision ends the slice early."""
        self._yielding.add(v)

    def affinity_changed(self, v: SchedVcpu, now: int) -> None:
        """Evict a running vCPU from a pCPU it may no longer use."""
        if v.is_running and v.processor not in v.affinity:
            self.sched.raise_softirq(v.processor)
        elif v in self.queue:
            self._tickle(v)

    def do_schedule(
        self, cpu: int, prev: SchedVcpu | None, now: int
    ) -> tuple[SchedVcpu | None, int]:
        """Keep ``prev`` until its slice ends, else rotate through the queue."""
        p = self.sched.pcpus[cpu]
        yielded = prev is not None and prev in self._yielding
        if prev is not None:
            self._yielding.discard(prev)
            if prev.runnable and cpu in prev.affinity:
                if not yielded and p.slice_end > now:
                    return prev, p.slice_end - now
                self.queue.append(prev)
            elif prev.runnable:
                self.queue.append(prev)
                self._tickle(prev)
        for i, v in enumerate(self.queue):
            if cpu in v.affinity:
                del self.queue[i]
                return v, self.tslice
        return None, NEVER
