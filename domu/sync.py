"""Small synchronisation primitives shared by every kernel's drivers."""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar, TypeVar

import trio

from domu.xenstore import XenStoreError
from hypervisor.errno import XenError
from ring.errors import PeerProtocolError

_log = logging.getLogger("xensim.drivers")

_KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
D = TypeVar("D", bound=type)


def register_driver(registry: dict[str, Any], cls: D, role: str) -> D:
    """Make ``cls`` the default ``role`` driver for ``cls.kind`` in ``registry``.

    What :func:`~dom0.backends.bus.register_backend` and
    :func:`~domu.frontends.bus.register_frontend` do.

    Raises:
        ValueError: ``cls.kind`` is not a device type name
            (``[a-z][a-z0-9_-]{0,31}``), or another class already serves that
            type (a wiring bug).
    """
    kind = cls.kind  # type: ignore[attr-defined]
    if not _KIND.fullmatch(kind):
        raise ValueError(f"{cls.__qualname__}.kind = {kind!r}: set kind to the device "
                         "type name, e.g. kind = \"kv\"")
    if registry.get(kind, cls) is not cls:
        raise ValueError(f"a {role} for {kind!r} is already registered")
    registry[kind] = cls
    return cls


def declare_driver_names(base: type[RingWorkers], hooks: Iterable[str], state: Iterable[str],
                         aliases: Iterable[str]) -> None:
    """Set a driver base class's ``_hooks``, ``_overridable`` and ``_reserved`` names.

    Reserved (a subclass may not redefine them, see :func:`check_driver_class`):
    every attribute of ``base`` and :class:`RingWorkers` plus the instance
    ``state`` the bus reads, except the ``hooks``, ``release_resources``,
    ``kind`` and the deprecated ``aliases`` (a driver may use those names).
    """
    base._hooks = frozenset(hooks)
    base._overridable = frozenset({"release_resources"})
    base._reserved = frozenset(
        {name for klass in (base, RingWorkers) for name in vars(klass)
         if not name.startswith("__")} | set(state)
    ) - base._hooks - base._overridable - {"kind", *aliases}

PEER_ERRORS = (PeerProtocolError, XenError, XenStoreError)
"""Failures the other end can cause in a driver hook (bad keys, refused grants and
ports, protocol violations): they make that device fatal, nothing else."""


def note_hook_failure(inst: Any, where: str, what: str, exc: Exception,
                      log: logging.Logger) -> None:
    """Count and log a driver hook's failure, for both buses.

    A peer's fault (:data:`PEER_ERRORS`) is logged at INFO; anything else is a
    driver bug, logged at ERROR with its traceback. Either way the caller
    closes that device and only that device.

    Args:
        inst: the driver instance (its ``errors`` and ``last_error`` are updated).
        where: the device's xenstore directory, for the log line.
        what: the hook or action that failed.
        exc: what it raised.
        log: the bus's logger.
    """
    inst.errors += 1
    inst.last_error = exc
    if isinstance(exc, PEER_ERRORS):
        log.info("%s: %s failed: %s", where, what, exc)
    else:
        log.error("%s: %s raised (driver bug); closing this device", where, what,
                  exc_info=exc)


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
    _hooks: ClassVar[frozenset[str]] = frozenset()
    _overridable: ClassVar[frozenset[str]] = frozenset()
    _reserved: ClassVar[frozenset[str]] = frozenset()
    _nursery: trio.Nursery | None
    _worker: trio.CancelScope | None
    _worker_done: trio.Event | None
    workers_started: int
    workers_stopped: int
    errors: int
    worker_failed: bool
    last_error: BaseException | None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        check_driver_class(cls)

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
            except Exception as exc:  # the peer's doing, or a driver bug: this device only
                self.errors += 1
                self.last_error = exc
                self.worker_failed = True
                if isinstance(exc, self._worker_errors):
                    _log.info("%s: worker stopped: %s", self._worker_label(), exc)
                else:
                    _log.error("%s: worker crashed (driver bug); closing the device",
                               self._worker_label(), exc_info=exc)
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


def check_driver_class(cls: type[RingWorkers]) -> None:
    """Refuse a driver class that redefines what its bus relies on.

    Each bus base class (``Backend``, ``Frontend``) lists its *hooks* (async,
    no-argument methods the bus calls: a driver overrides them), the sync
    methods a driver may extend (calling ``super()``), and the *reserved*
    names (helpers and state the bus uses: a driver must not redefine them).
    A driver class that redefines a reserved name, or defines a hook with the
    wrong shape, would break the bus at run time in a confusing way; this
    makes it fail at class creation, naming the problem.

    Raises:
        TypeError: ``cls`` redefines a reserved name, or a hook is not an
            ``async def`` taking only ``self``.
    """
    base = next((b for b in cls.__mro__[1:] if "_reserved" in vars(b)), None)
    if base is None:
        return
    hooks = ", ".join(sorted(cls._hooks))
    for name, value in vars(cls).items():
        if name in cls._reserved:
            raise TypeError(
                f"{cls.__qualname__}.{name}: {name!r} is a helper of {base.__name__} that the "
                f"bus relies on; pick another name. Reserved: "
                f"{', '.join(sorted(n for n in cls._reserved if not n.startswith('_')))} "
                f"(and every _private name of {base.__name__}). Hooks you override: {hooks}.")
        if name in cls._hooks:
            fn = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"{cls.__qualname__}.{name}: {name!r} is a {base.__name__} hook; "
                                f"the bus awaits it: define it as 'async def {name}(self)' (or "
                                f"pick another name for your method). Hooks: {hooks}.")
            params = list(inspect.signature(fn).parameters.values())[1:]
            if any(p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                   for p in params):
                raise TypeError(f"{cls.__qualname__}.{name}: {name!r} is a {base.__name__} hook "
                                f"the bus calls as {name}() with no arguments; pick another "
                                f"name for your method. Hooks: {hooks}.")
