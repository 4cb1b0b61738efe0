"""Small synchronisation primitives shared by every kernel's drivers."""

from __future__ import annotations

import trio


class Kick:
    """A re-armable wake-up flag: many :meth:`set` calls, one wake (coalescing).

    Set from synchronous code (an event handler, a watch callback), awaited by
    one task, which then re-reads whatever state it cares about. ``count``
    says how many times it was set, for statistics.
    """

    __slots__ = ("_event", "count")

    def __init__(self) -> None:
        self._event = trio.Event()
        self.count = 0

    def set(self) -> None:
        """Request a pass (cheap; idempotent until the waiter runs)."""
        self.count += 1
        self._event.set()

    async def wait(self) -> None:
        """Return once :meth:`set` was called since the last wait returned."""
        await self._event.wait()
        self._event = trio.Event()
