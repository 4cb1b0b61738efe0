"""Small synchronisation primitives shared by every kernel's drivers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

_log = logging.getLogger("xensim.drivers")


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


class RingWorkers:
    """``start_worker`` / ``stop_worker`` for a split-driver instance (a mixin).

    A device runs at most one I/O worker task at a time (the ring loop), in
    the device's nursery, started on connect and stopped on disconnect. The
    class using this mixin provides ``_nursery``, the counters
    ``workers_started``, ``workers_stopped`` and ``errors``, the flag
    ``worker_failed``, and three hooks: :attr:`_worker_errors` (exceptions a
    misbehaving peer can cause: they end the worker, never the kernel),
    :meth:`_worker_label` (for log messages) and :meth:`_worker_failure`
    (what the bus must do when the peer broke the worker).
    """

    _worker_errors: tuple[type[BaseException], ...] = ()
    _nursery: trio.Nursery | None
    _worker: trio.CancelScope | None
    _worker_done: trio.Event | None
    workers_started: int
    workers_stopped: int
    errors: int
    worker_failed: bool

    def _worker_label(self) -> str:
        raise NotImplementedError

    def _worker_failure(self) -> None:
        raise NotImplementedError

    def start_worker(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run the I/O worker ``fn`` until :meth:`stop_worker`.

        Raises:
            RuntimeError: a worker is already running (a driver bug).
        """
        if self._worker is not None:
            raise RuntimeError(f"{self._worker_label()}: worker already running")
        assert self._nursery is not None
        scope = trio.CancelScope()
        done = trio.Event()
        self._worker, self._worker_done = scope, done
        self.workers_started += 1

        async def run() -> None:
            try:
                with scope:
                    await fn()
            except self._worker_errors as exc:
                self.errors += 1
                self.worker_failed = True
                _log.info("%s: worker stopped: %s", self._worker_label(), exc)
                self._worker_failure()
            finally:
                self.workers_stopped += 1
                done.set()

        self._nursery.start_soon(run)

    async def stop_worker(self) -> None:
        """Cancel the worker and wait until it has stopped (idempotent)."""
        scope, done = self._worker, self._worker_done
        self._worker = self._worker_done = None
        if scope is not None and done is not None:
            scope.cancel()
            await done.wait()
