"""One-shot timers on the machine clock (Xen's ``struct timer``), sans-IO.

Theory of operation
-------------------
Every time-driven thing in the scheduler is a :class:`Timer`: each pCPU's
credit tick, the credit accounting master tick, and each vCPU's single-shot
guest timer (``set_timer_op`` / VIRQ_TIMER). A timer holds a callback and at
most one deadline, in integer nanoseconds of the machine clock. All armed
timers live in one binary heap owned by a :class:`TimerQueue`; re-arming or
stopping a timer does not search the heap, it bumps the timer's generation so
its old heap entry is recognised as stale and dropped when it reaches the top
(lazy deletion). Arming is O(log n), stopping is O(1).

This module never awaits and never reads a clock: the scheduler's service task
asks :meth:`TimerQueue.next_deadline` how long it may sleep and calls
:meth:`TimerQueue.run_due` with the time it woke at. Callbacks run
synchronously, in deadline order (ties in arming order), and may arm timers.

Worked example::

    q = TimerQueue()
    fired = []
    t = Timer(q, lambda: fired.append("t"))
    t.set(30)          # heap: (30, gen 1)
    t.set(10)          # heap: (10, gen 2), (30, gen 1) -- the 30 entry is stale
    q.next_deadline()  # -> 10
    q.run_due(15)      # fires t once; drops the stale entry later
    fired == ["t"]; t.active is False
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Final

NEVER: Final = (1 << 63) - 1
"""A deadline that is never reached (the largest ``s_time_t``)."""


class Timer:
    """A one-shot timer; re-arming replaces the previous deadline.

    Args:
        queue: the queue this timer is armed in.
        callback: called with no arguments when the deadline is reached.
            Controlled by the hypervisor (never by a guest).
    """

    __slots__ = ("_gen", "_queue", "callback", "deadline")

    def __init__(self, queue: TimerQueue, callback: Callable[[], None]) -> None:
        self._queue = queue
        self.callback = callback
        self.deadline = NEVER
        self._gen = 0

    @property
    def active(self) -> bool:
        """True while the timer is armed and has not fired."""
        return self.deadline != NEVER

    def set(self, deadline: int) -> None:
        """Arm (or re-arm) the timer.

        Args:
            deadline: absolute machine time in ns; ``NEVER`` or more disarms.
                A deadline in the past fires at the queue's next
                :meth:`TimerQueue.run_due`.
        """
        self._gen += 1
        if deadline >= NEVER:
            self.deadline = NEVER
            return
        self.deadline = deadline
        self._queue._push(self, deadline, self._gen)

    def stop(self) -> None:
        """Disarm the timer (a no-op when it is not armed)."""
        self._gen += 1
        self.deadline = NEVER


class TimerQueue:
    """The heap of armed timers.

    Args:
        on_armed: called with the deadline whenever a timer is armed, so the
            owner can wake up earlier than it planned to. Optional.
    """

    __slots__ = ("_heap", "_seq", "on_armed")

    def __init__(self, on_armed: Callable[[int], None] | None = None) -> None:
        self._heap: list[tuple[int, int, int, Timer]] = []
        self._seq = itertools.count()
        self.on_armed = on_armed

    def __len__(self) -> int:
        """Number of heap entries, stale ones included (for leak checks)."""
        return len(self._heap)

    def _push(self, timer: Timer, deadline: int, gen: int) -> None:
        heapq.heappush(self._heap, (deadline, next(self._seq), gen, timer))
        if self.on_armed is not None:
            self.on_armed(deadline)

    def next_deadline(self) -> int:
        """The earliest armed deadline, or :data:`NEVER`; drops stale entries."""
        heap = self._heap
        while heap:
            deadline, _, gen, timer = heap[0]
            if gen == timer._gen:
                return deadline
            heapq.heappop(heap)
        return NEVER

    def run_due(self, now: int) -> int:
        """Fire every timer whose deadline is ``<= now``.

        Args:
            now: the current machine time in ns.

        Returns:
            How many callbacks ran.
        """
        heap = self._heap
        fired = 0
        while heap and heap[0][0] <= now:
            _, _, gen, timer = heapq.heappop(heap)
            if gen != timer._gen:
                continue
            timer._gen += 1
            timer.deadline = NEVER
            fired += 1
            timer.callback()
        return fired
