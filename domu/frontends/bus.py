"""The guest kernel's frontend bus (Linux ``xenbus_probe_frontend``).

Theory of operation
-------------------
The toolstack writes each device's frontend dir
``/local/domain/<D>/device/<type>/<V>`` (state 1, ``backend``,
``backend-id``, type keys). At boot the bus lists ``device/<type>`` for
every registered driver type and probes each device whose own ``state``
reads Initialising (1); a watch on ``device`` catches devices added later.
Each device gets one runner task with its own nursery (for the ring worker),
a :class:`~ring.xenbus.XenbusDevice` frontend state machine and a watch on
the backend's ``state``. Watch events only set a coalescing flag, so a
backend that flaps its state costs one pass per wake-up.

Lifecycle every frontend shares (the table in :mod:`ring.xenbus` decides
when each hook runs)::

    talk_to_backend()  TALK_TO_BACKEND: allocate + grant the ring, alloc_unbound,
                       write ring-ref / event-channel ...           -> 3 (or 4)
    connect()          CONNECT: read the backend's details, start I/O -> 4
    backend_changed_again()  CHECK_RESIZE / ANNOUNCE: Connected seen again
    disconnect()       DISCONNECT: stop I/O; the base class then closes every
                       port, ends every grant and frees every page it handed out
    remove()           the device went away (its dir was removed)

The frontend does not trust its backend (Linux learnt this from
XSA-376/391/396): hooks validate what they read. A hook or I/O worker that
raises makes the device ``fatal()`` (Closing) and nothing else: a backend's
fault is logged at INFO, any other exception is a driver bug, logged at
ERROR with its traceback. The guest kernel and its other devices carry on.
The bus itself reads and writes xenstore directly; it never calls a
driver's methods other than the hooks.

Adding a driver is registering a class for its device type; importing the
module that defines it registers it (see :class:`Frontend` for every hook
and helper)::

    @register_frontend
    class KvFront(Frontend):
        kind = "kv"
        async def talk_to_backend(self): ...
        async def connect(self): self.start_worker(self._complete)
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import trio

from domu.evtchn import EventDispatcher, PortWaiter
from domu.gnttab import GrantTableClient
from domu.sync import (
    PEER_ERRORS,
    Kick,
    RingWorkers,
    declare_driver_names,
    note_hook_failure,
    register_driver,
)
from domu.xenstore import (
    XenStoreClient,
    XenStoreError,
    XenStoreProtocolError,
    XenStoreTransaction,
    read_or_none,
)
from hypervisor.errno import XenError
from hypervisor.hypercall import HypercallInterface
from hypervisor.types import DomId, Gfn, GrantRef, Port
from ring.xenbus import (
    Action,
    IllegalTransition,
    LocalEvent,
    Transition,
    XenbusDevice,
    XenbusState,
    parse_number,
)

__all__ = [
    "FRONTEND_DRIVERS",
    "Frontend",
    "FrontendBus",
    "FrontendDevice",
    "PageAllocator",
    "parse_number",
    "register_frontend",
]

_log = logging.getLogger("xensim.domu.frontends")

FRONTEND_DRIVERS: dict[str, type[Frontend]] = {}
"""The default registry: device type -> frontend driver class."""

F = TypeVar("F", bound="Frontend")


def register_frontend(cls: type[F]) -> type[F]:
    """Class decorator: make ``cls`` the default frontend for ``cls.kind``.

    Every guest booted afterwards drives that device type with ``cls``; the
    registration happens when the module defining ``cls`` is imported, so
    import it before :func:`~dom0.host.open_host` (``import mydriver.front``).

    Raises:
        ValueError: ``cls.kind`` is not a device type name
            (``[a-z][a-z0-9_-]{0,31}``), or another class already drives
            that type.
    """
    return register_driver(FRONTEND_DRIVERS, cls, "frontend")


class PageAllocator:
    """The guest kernel's free pages (gfns of its own RAM) for rings and buffers.

    Args:
        hc: the guest's hypercall interface (pages are reached through its memory).
        gfns: the free gfns (the builder's special pages excluded).
    """

    def __init__(self, hc: HypercallInterface, gfns: range) -> None:
        self.hc = hc
        self._free = list(reversed(gfns))

    def alloc(self) -> tuple[Gfn, memoryview]:
        """A zeroed page: its gfn and a view of it.

        Raises:
            MemoryError: the guest is out of free pages.
        """
        if not self._free:
            raise MemoryError("guest out of free pages")
        gfn = Gfn(self._free.pop())
        view = self.hc.memory.page(gfn)
        view[:] = bytes(len(view))
        return gfn, view

    def free(self, gfn: Gfn) -> None:
        """Give a page back."""
        self._free.append(gfn)

    def take(self, n: int) -> list[Gfn]:
        """Remove up to ``n`` free pages and return their gfns, contents untouched
        (for the balloon, which hands them to Xen)."""
        n = min(max(n, 0), len(self._free))
        taken = [Gfn(g) for g in self._free[len(self._free) - n :]]
        del self._free[len(self._free) - n :]
        return taken

    @property
    def free_count(self) -> int:
        """Pages available."""
        return len(self._free)


@dataclass(frozen=True)
class FrontendDevice:
    """Identity of one frontend device.

    Attributes:
        kind: device type.
        devid: device id.
        path: ``/local/domain/<D>/device/<kind>/<V>``.
        backend_path: from the ``backend`` key (toolstack-written).
        backend_id: from ``backend-id``.
    """

    kind: str
    devid: int
    path: str
    backend_path: str
    backend_id: DomId


class Frontend(RingWorkers):
    """Base class of every frontend driver (blkfront, netfront, kvfront...).

    A driver subclasses it, sets :attr:`kind`, overrides the **hooks** the bus
    calls (each ``async def hook(self)``; the state table decides when) and
    acquires pages, grants and ports through the **helpers**, so the base
    class can give them back whatever happened. Redefining a helper is
    refused when the class is created (``TypeError`` naming the reserved
    names): name your API methods as you like (``read``, ``write``, ``get``...)
    as long as they are not helpers or hooks.

    Hooks (override; all optional):

    * :meth:`talk_to_backend` -- allocate, grant and publish the ring(s)
      (then the bus writes Initialised).
    * :meth:`connect` -- read the backend's details, start I/O.
    * :meth:`backend_changed_again` -- the backend announced Connected again.
    * :meth:`disconnect` -- stop I/O, fail waiting callers, release;
      overrides call ``super()`` last.
    * :meth:`remove` -- the device's directory went away.

    Helpers (call; never redefine): :meth:`read_backend`, :meth:`read_key`,
    :meth:`write_key`, :meth:`write_keys`, :meth:`alloc_page`,
    :meth:`grant_page`, :meth:`alloc_port`, :meth:`alloc_port_waiter`,
    :meth:`start_worker`, :meth:`stop_worker`, :attr:`is_connected`.
    :meth:`release_resources` may be extended (call ``super()`` last).

    A hook or worker that raises makes *this* device fatal (Closing): a
    backend's fault (:class:`~ring.errors.PeerProtocolError`...) is logged at
    INFO, any other exception is a driver bug and is logged at ERROR with its
    traceback. The guest kernel and its other devices carry on.

    Args:
        dev: which device.
        xs: the guest's xenstore client.
        hc: the guest's hypercall interface.
        events: the guest's event dispatcher.
        grants: the guest's grant allocator.
        pages: the guest's page allocator.

    Attributes:
        kind: the device type this class drives (class attribute).
        dev: the device's identity (:class:`FrontendDevice`).
        workers_started / workers_stopped: I/O worker starts and stops.
        errors: hooks or workers that failed (the backend's fault or a driver bug).
        last_error: the exception behind the latest failure, or None.
        pending_grants: refs still mapped by the backend when released (the
            page is kept, as Linux defers; retried on the next release).
    """

    kind: ClassVar[str] = ""

    def __init__(self, dev: FrontendDevice, xs: XenStoreClient, hc: HypercallInterface,
                 events: EventDispatcher, grants: GrantTableClient,
                 pages: PageAllocator) -> None:
        self.dev = dev
        self.xs = xs
        self.hc = hc
        self.events = events
        self.grants = grants
        self.pages = pages
        self.workers_started = 0
        self.workers_stopped = 0
        self.errors = 0
        self.last_error: BaseException | None = None
        self.worker_failed = False
        self.pending_grants: list[tuple[GrantRef, Gfn | None]] = []
        self._xenbus_connected = False
        self._nursery: trio.Nursery | None = None
        self._worker: trio.CancelScope | None = None
        self._worker_done: trio.Event | None = None
        self._kick: Callable[[], None] = lambda: None
        self._pages: list[Gfn] = []
        self._refs: list[tuple[GrantRef, Gfn | None]] = []
        self._ports: list[Port] = []

    # -- hooks (override) -----------------------------------------------------------------

    async def talk_to_backend(self) -> None:
        """Hook, TALK_TO_BACKEND: set up the ring(s) and publish them.

        Allocate and grant pages, allocate the port, then write the keys the
        backend reads (:meth:`write_keys`: one transaction). The bus writes
        ``state = 3`` (Initialised) after it returns, so the keys are there
        before the backend looks.
        """

    async def connect(self) -> None:
        """Hook, CONNECT: the backend is Connected; read its details, start I/O.

        The bus writes ``state = 4`` after it returns; from then on
        :attr:`is_connected` is true and :meth:`~domu.guest.Guest.open_device`
        hands the driver to programs.
        """

    async def backend_changed_again(self) -> None:
        """Hook, CHECK_RESIZE / ANNOUNCE: the backend announced Connected again."""

    async def disconnect(self) -> None:
        """Hook, DISCONNECT: stop I/O and release everything (idempotent).

        Overrides fail their waiting callers first, then call
        ``await super().disconnect()`` last: it stops the worker and releases
        every port, grant and page the helpers handed out.
        """
        await self.stop_worker()
        self.release_resources()

    async def remove(self) -> None:
        """Hook: the device is going away (its directory was removed)."""

    # -- helpers ------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """True from the end of :meth:`connect` until the device leaves Connected."""
        return self._xenbus_connected

    async def read_backend(self, key: str) -> bytes | None:
        """A key of the backend dir (backend-controlled: check it), or None if absent."""
        return await read_or_none(self.xs, f"{self.dev.backend_path}/{key}")

    async def read_key(self, key: str) -> bytes | None:
        """A key of the own (frontend) dir, or None."""
        return await read_or_none(self.xs, f"{self.dev.path}/{key}")

    async def write_key(self, key: str, value: str | bytes) -> None:
        """Write a key of the own dir."""
        await self.xs.write(f"{self.dev.path}/{key}", value)

    async def write_keys(self, keys: Mapping[str, str | bytes]) -> None:
        """Write several keys of the own dir in one transaction (all or none)."""

        async def txn(tx: XenStoreTransaction) -> None:
            for key, value in keys.items():
                await tx.write(f"{self.dev.path}/{key}", value)

        await self.xs.transaction(txn)

    def alloc_page(self) -> tuple[Gfn, memoryview]:
        """A zeroed page of the guest's own RAM (freed by :meth:`release_resources`).

        Raises:
            MemoryError: the guest is out of free pages.
        """
        gfn, view = self.pages.alloc()
        self._pages.append(gfn)
        return gfn, view

    def grant_page(self, gfn: Gfn, readonly: bool = False) -> GrantRef:
        """Grant own page ``gfn`` to the backend domain (access ended on release)."""
        ref = self.grants.grant_access(self.dev.backend_id, gfn, readonly)
        self._refs.append((ref, None))
        return ref

    def alloc_port(self, handler: Callable[[int], None]) -> Port:
        """An unbound port for the backend to bind, with ``handler`` bound to it.

        Args:
            handler: called with the port on every event (sync, must not
                block: set a flag or a :class:`PortWaiter`).

        Returns:
            The port (publish it, e.g. as ``event-channel``); closed on release.
        """
        port = self.hc.evtchn_alloc_unbound(self.dev.backend_id)
        self._ports.append(port)
        self.events.bind(port, handler)
        return port

    def alloc_port_waiter(self) -> tuple[Port, PortWaiter]:
        """:meth:`alloc_port` with a new :class:`PortWaiter` as the handler.

        ``await waiter.wait()`` returns once an event arrived since the last
        wait (events coalesce).
        """
        waiter = PortWaiter()
        return self.alloc_port(waiter.notify), waiter

    def release_resources(self) -> None:
        """Close ports, end grants (deferring refs still mapped), free pages.

        Drivers holding more may extend it, calling ``super().release_resources()``
        last.
        """
        while self._ports:
            port = self._ports.pop()
            self.events.unbind(port)
            with contextlib.suppress(XenError):
                self.hc.evtchn_close(port)
        still: list[tuple[GrantRef, Gfn | None]] = []
        for ref, _ in [*self.pending_grants, *self._refs]:
            if not self.grants.end_foreign_access(ref):
                still.append((ref, None))
        self._refs = []
        self.pending_grants = still
        if not still:  # no page may be reused while a backend still maps one
            for gfn in self._pages:
                self.pages.free(gfn)
            self._pages = []

    # -- deprecated names (kept for drivers written against them) ---------------------

    async def read(self, key: str) -> bytes | None:
        """Deprecated: use :meth:`read_key` (a subclass may define its own ``read``)."""
        warnings.warn("Frontend.read() is deprecated: use read_key()", DeprecationWarning,
                      stacklevel=2)
        return await self.read_key(key)

    async def write(self, key: str, value: str | bytes) -> None:
        """Deprecated: use :meth:`write_key` (a subclass may define its own ``write``)."""
        warnings.warn("Frontend.write() is deprecated: use write_key()", DeprecationWarning,
                      stacklevel=2)
        await self.write_key(key, value)

    def grant(self, gfn: Gfn, readonly: bool = False) -> GrantRef:
        """Deprecated: use :meth:`grant_page` (a subclass may define its own ``grant``)."""
        warnings.warn("Frontend.grant() is deprecated: use grant_page()", DeprecationWarning,
                      stacklevel=2)
        return self.grant_page(gfn, readonly)

    # -- the ring worker (domu.sync.RingWorkers) ------------------------------------

    _worker_errors = PEER_ERRORS

    def _worker_label(self) -> str:
        return self.dev.path

    def _worker_failure(self) -> None:
        self._kick()


declare_driver_names(
    Frontend, hooks=("talk_to_backend", "connect", "backend_changed_again", "disconnect",
                     "remove"),
    state=("dev", "xs", "hc", "events", "grants", "pages", "errors", "last_error",
           "worker_failed", "workers_started", "workers_stopped", "pending_grants"),
    aliases=("read", "write", "grant"))


class _Runner:
    def __init__(self, instance: Frontend, machine: XenbusDevice) -> None:
        self.instance = instance
        self.machine = machine
        self.kick = Kick()
        self.want_close = False
        self.settled = trio.Event()  # Connected, or given up (Closing/Closed)
        self.closed = trio.Event()
        self.done = trio.Event()


class FrontendBus:
    """Probes and runs the guest's frontend devices.

    Args:
        xs: the guest's xenstore client.
        hc: the guest's hypercall interface.
        events: the guest's event dispatcher.
        grants: the guest's grant allocator.
        pages: the guest's page allocator.
        drivers: type -> driver class, merged over :data:`FRONTEND_DRIVERS`
            (to add a type or replace one type's driver; None: the registry).

    Attributes:
        devices: ``"<kind>/<devid>"`` -> live driver instance.
    """

    def __init__(self, xs: XenStoreClient, hc: HypercallInterface, events: EventDispatcher,
                 grants: GrantTableClient, pages: PageAllocator,
                 drivers: Mapping[str, type[Frontend]] | None = None) -> None:
        self.xs = xs
        self.hc = hc
        self.events = events
        self.grants = grants
        self.pages = pages
        self.drivers = {**FRONTEND_DRIVERS, **(drivers or {})}
        self.home = f"/local/domain/{hc.domid}"
        self.devices: dict[str, Frontend] = {}
        self._runners: dict[str, _Runner] = {}
        self._probing: set[str] = set()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Probe existing devices, then follow ``device/`` for new ones."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for kind in self.drivers:
                try:
                    ids = await self.xs.directory(f"{self.home}/device/{kind}")
                except XenStoreError:
                    ids = []
                for devid in ids:
                    await self._maybe_probe(kind, devid)
            await nursery.start(self._watch_devices)
            task_status.started()

    async def _watch_devices(self, *,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                             ) -> None:
        base = f"{self.home}/device/"
        with contextlib.suppress(XenStoreProtocolError):
            async with self.xs.watch(f"{self.home}/device", token="frontend-bus") as w:
                task_status.started()
                async for path in w:
                    if not path.startswith(base):
                        continue
                    parts = path[len(base):].split("/")
                    if len(parts) < 2 or parts[0] not in self.drivers:
                        continue
                    name = f"{parts[0]}/{parts[1]}"
                    runner = self._runners.get(name)
                    if runner is not None:
                        runner.kick.set()
                    elif name not in self._probing and self._nursery is not None:
                        self._probing.add(name)
                        self._nursery.start_soon(self._maybe_probe, parts[0], parts[1])

    async def _maybe_probe(self, kind: str, devid: str) -> None:
        name = f"{kind}/{devid}"
        try:
            if name in self._runners or not devid.isdigit():
                return
            path = f"{self.home}/device/{kind}/{devid}"
            state = await read_or_none(self.xs, f"{path}/state")
            backend = await read_or_none(self.xs, f"{path}/backend")
            backend_id = await read_or_none(self.xs, f"{path}/backend-id")
            if state != b"1" or backend is None or backend_id is None \
                    or not backend_id.isdigit():
                return
            dev = FrontendDevice(kind, int(devid), path, backend.decode("ascii", "replace"),
                                 DomId(int(backend_id)))
            cls = self.drivers[kind]
            try:
                inst = cls(dev, self.xs, self.hc, self.events, self.grants, self.pages)
            except Exception as exc:  # a driver bug: this device fails, nothing else
                _log.error("%s: %s() failed (driver bug); the device is Closed", path,
                           cls.__qualname__, exc_info=exc)
                with contextlib.suppress(XenStoreError):
                    await self.xs.write(f"{path}/state", str(int(XenbusState.Closed)))
                return
            runner = _Runner(inst, XenbusDevice(kind, "frontend"))  # type: ignore[arg-type]
            self._runners[name] = runner
            self.devices[name] = inst
            assert self._nursery is not None
            self._nursery.start_soon(self._run_device, name, runner)
        finally:
            self._probing.discard(name)

    async def wait_settled(self) -> None:
        """Return once every probed device is Connected or gave up (callers bound it)."""
        for r in list(self._runners.values()):
            await r.settled.wait()

    async def close_all(self) -> None:
        """Close every device through the handshake (callers bound it)."""
        runners = list(self._runners.values())
        for r in runners:
            r.want_close = True
            r.kick.set()
        for r in runners:
            await r.closed.wait()

    # -- one device ---------------------------------------------------------------------------

    async def _run_device(self, name: str, runner: _Runner) -> None:
        inst = runner.instance
        try:
            async with trio.open_nursery() as nursery:
                inst._nursery = nursery
                inst._kick = runner.kick.set
                nursery.start_soon(self._pump_backend_state, runner)
                await self._drive(runner)
                nursery.cancel_scope.cancel()
        finally:
            inst._xenbus_connected = False
            with trio.CancelScope(shield=True):
                await self._release(runner)
            self._runners.pop(name, None)
            self.devices.pop(name, None)
            runner.settled.set()
            runner.closed.set()
            runner.done.set()

    async def _pump_backend_state(self, runner: _Runner) -> None:
        with contextlib.suppress(XenStoreProtocolError):
            async with self.xs.watch(f"{runner.instance.dev.backend_path}/state") as w:
                async for _ in w:
                    w.queue.clear()
                    runner.kick.set()

    async def _drive(self, runner: _Runner) -> None:
        m = runner.machine
        inst = runner.instance
        await self._apply(runner, m.probe())
        while True:
            self._note(runner)
            await runner.kick.wait()
            if await read_or_none(self.xs, f"{inst.dev.path}/state") is None:
                inst._xenbus_connected = False  # our dir was removed
                await self._disconnect(runner)
                try:
                    await inst.remove()
                except Exception as exc:
                    self._failed(runner, "remove", exc)
                return
            if inst.worker_failed:
                inst.worker_failed = False
                await self._event(runner, LocalEvent.FATAL)
                continue
            if runner.want_close and m.state not in (XenbusState.Closing, XenbusState.Closed):
                await self._event(runner, LocalEvent.CLOSE)
            back = await read_or_none(self.xs, f"{inst.dev.backend_path}/state")
            try:
                t = m.backend_changed(back)
            except IllegalTransition:
                await self._event(runner, LocalEvent.FATAL)
                continue
            await self._apply(runner, t)

    def _note(self, runner: _Runner) -> None:
        st = runner.machine.state
        if st in (XenbusState.Connected, XenbusState.Closing, XenbusState.Closed):
            runner.settled.set()
        if st == XenbusState.Closed:
            runner.closed.set()

    async def _event(self, runner: _Runner, ev: LocalEvent) -> None:
        if runner.machine.lookup(ev) is not None:
            await self._apply(runner, runner.machine.handle(ev))

    def _failed(self, runner: _Runner, what: str, exc: Exception) -> None:
        """Count and log a hook's failure: the backend's fault (INFO) or a driver bug (ERROR)."""
        note_hook_failure(runner.instance, runner.instance.dev.path, what, exc, _log)

    async def _disconnect(self, runner: _Runner) -> None:
        """The driver's disconnect hook; if it raises, the base class's cleanup still runs."""
        try:
            await runner.instance.disconnect()
        except Exception as exc:
            self._failed(runner, Action.DISCONNECT, exc)
            await self._release(runner)

    async def _release(self, runner: _Runner) -> None:
        """Stop the worker and give back what the helpers handed out, whatever the driver did."""
        inst = runner.instance
        await inst.stop_worker()
        try:
            inst.release_resources()
        except Exception as exc:
            self._failed(runner, "release_resources", exc)
            Frontend.release_resources(inst)

    async def _apply(self, runner: _Runner, t: Transition) -> None:
        inst = runner.instance
        if t.new_state != XenbusState.Connected:
            inst._xenbus_connected = False  # before any hook: disconnect sees it closed
        hooks = {
            Action.TALK_TO_BACKEND: inst.talk_to_backend,
            Action.CONNECT: inst.connect,
            Action.CHECK_RESIZE: inst.backend_changed_again,
            Action.ANNOUNCE: inst.backend_changed_again,
            Action.DISCONNECT: inst.disconnect,
        }
        for action in t.actions:
            hook = hooks.get(action)
            if hook is None:
                continue
            try:
                await hook()
            except Exception as exc:  # the backend's fault, or a bug in the driver
                self._failed(runner, action, exc)
                inst._xenbus_connected = False
                if action == Action.DISCONNECT:
                    await self._release(runner)
                else:
                    await self._disconnect(runner)
                if runner.machine.lookup(LocalEvent.FATAL) is not None:
                    await self._apply(runner, runner.machine.fatal())
                return
        if t.new_state == XenbusState.Connected:
            inst._xenbus_connected = True  # before the state write: watchers see a ready driver
        for key, value in t.writes:
            with contextlib.suppress(XenStoreError):
                await self.xs.write(f"{inst.dev.path}/{key}", value)
        self._note(runner)
