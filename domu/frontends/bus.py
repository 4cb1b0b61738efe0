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

The frontend trusts its backend only as far as the threat model says
(XSA-376/391/396): hooks validate what they read; a failing hook makes the
device ``fatal()`` (Closing) and nothing else.

Adding a driver is registering a class::

    @register_frontend
    class BlkFront(Frontend):
        kind = "vbd"
        async def talk_to_backend(self): ...
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import trio

from domu.evtchn import EventDispatcher, PortWaiter
from domu.gnttab import GrantTableClient
from domu.sync import Kick, RingWorkers
from domu.xenstore import XenStoreClient, XenStoreError, XenStoreProtocolError, read_or_none
from hypervisor.errno import XenError
from hypervisor.hypercall import HypercallInterface
from hypervisor.types import DomId, Gfn, GrantRef, Port
from ring.errors import PeerProtocolError
from ring.xenbus import (
    Action,
    IllegalTransition,
    LocalEvent,
    Transition,
    XenbusDevice,
    XenbusState,
)

__all__ = [
    "FRONTEND_DRIVERS",
    "Frontend",
    "FrontendBus",
    "FrontendDevice",
    "PageAllocator",
    "register_frontend",
]

_log = logging.getLogger("xensim.domu.frontends")

FRONTEND_DRIVERS: dict[str, type[Frontend]] = {}
"""The default registry: device type -> frontend driver class."""

PEER_ERRORS = (PeerProtocolError, XenError, XenStoreError)


def register_frontend(cls: type[Frontend]) -> type[Frontend]:
    """Class decorator: make ``cls`` the default frontend for ``cls.kind``.

    Raises:
        ValueError: another class already drives that type.
    """
    if FRONTEND_DRIVERS.get(cls.kind, cls) is not cls:
        raise ValueError(f"a frontend for {cls.kind!r} is already registered")
    FRONTEND_DRIVERS[cls.kind] = cls
    return cls


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
    """Base class of every frontend driver (blkfront, netfront, consolefront...).

    Acquire pages, grants and ports through :meth:`alloc_page`, :meth:`grant`
    and :meth:`alloc_port` so :meth:`release_resources` can give them back.

    Args:
        dev: which device.
        xs: the guest's xenstore client.
        hc: the guest's hypercall interface.
        events: the guest's event dispatcher.
        grants: the guest's grant allocator.
        pages: the guest's page allocator.

    Attributes:
        workers_started / workers_stopped: I/O worker starts and stops.
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
        self.worker_failed = False
        self.pending_grants: list[tuple[GrantRef, Gfn | None]] = []
        self._nursery: trio.Nursery | None = None
        self._worker: trio.CancelScope | None = None
        self._worker_done: trio.Event | None = None
        self._kick: Callable[[], None] = lambda: None
        self._pages: list[Gfn] = []
        self._refs: list[tuple[GrantRef, Gfn | None]] = []
        self._ports: list[Port] = []

    # -- hooks ---------------------------------------------------------------------------

    async def talk_to_backend(self) -> None:
        """TALK_TO_BACKEND: set up the ring(s) and publish them."""

    async def connect(self) -> None:
        """CONNECT: read the backend's details and start I/O."""

    async def backend_changed_again(self) -> None:
        """CHECK_RESIZE / ANNOUNCE: the backend announced Connected again."""

    async def disconnect(self) -> None:
        """DISCONNECT: stop I/O and release everything (call super() last)."""
        await self.stop_worker()
        self.release_resources()

    async def remove(self) -> None:
        """The device is going away."""

    # -- helpers ------------------------------------------------------------------------------

    async def read_backend(self, key: str) -> bytes | None:
        """A key of the backend dir, or None if absent or unreadable."""
        return await read_or_none(self.xs, f"{self.dev.backend_path}/{key}")

    async def read(self, key: str) -> bytes | None:
        """A key of the own (frontend) dir, or None."""
        return await read_or_none(self.xs, f"{self.dev.path}/{key}")

    async def write(self, key: str, value: str | bytes) -> None:
        """Write a key of the own dir."""
        await self.xs.write(f"{self.dev.path}/{key}", value)

    def alloc_page(self) -> tuple[Gfn, memoryview]:
        """A zeroed page of the guest's own RAM (freed by :meth:`release_resources`)."""
        gfn, view = self.pages.alloc()
        self._pages.append(gfn)
        return gfn, view

    def grant(self, gfn: Gfn, readonly: bool = False) -> GrantRef:
        """Grant own page ``gfn`` to the backend domain (ended on release)."""
        ref = self.grants.grant_access(self.dev.backend_id, gfn, readonly)
        self._refs.append((ref, None))
        return ref

    def alloc_port(self, handler: Callable[[int], None] | None = None,
                   ) -> tuple[Port, PortWaiter | None]:
        """An unbound port for the backend, bound to ``handler`` (or a new waiter)."""
        port = self.hc.evtchn_alloc_unbound(self.dev.backend_id)
        self._ports.append(port)
        waiter = None
        if handler is None:
            waiter = PortWaiter()
            handler = waiter.notify
        self.events.bind(port, handler)
        return port, waiter

    def release_resources(self) -> None:
        """Close ports, end grants (deferring refs still mapped), free pages."""
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

    # -- the ring worker (domu.sync.RingWorkers) ------------------------------------

    _worker_errors = PEER_ERRORS

    def _worker_label(self) -> str:
        return self.dev.path

    def _worker_failure(self) -> None:
        self._kick()


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
        drivers: type -> driver class (default :data:`FRONTEND_DRIVERS`).

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
        self.drivers = dict(FRONTEND_DRIVERS if drivers is None else drivers)
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
            inst = self.drivers[kind](dev, self.xs, self.hc, self.events, self.grants,
                                      self.pages)
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
            with trio.CancelScope(shield=True):
                await inst.stop_worker()
                inst.release_resources()
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
            if await inst.read("state") is None:  # our dir was removed
                await inst.disconnect()
                await inst.remove()
                return
            if inst.worker_failed:
                inst.worker_failed = False
                await self._event(runner, LocalEvent.FATAL)
                continue
            if runner.want_close and m.state not in (XenbusState.Closing, XenbusState.Closed):
                await self._event(runner, LocalEvent.CLOSE)
            back = await inst.read_backend("state")
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

    async def _apply(self, runner: _Runner, t: Transition) -> None:
        inst = runner.instance
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
            except PEER_ERRORS as exc:
                inst.errors += 1
                _log.info("%s: %s failed: %s", inst.dev.path, action, exc)
                await inst.disconnect()
                if runner.machine.lookup(LocalEvent.FATAL) is not None:
                    await self._apply(runner, runner.machine.fatal())
                return
        for key, value in t.writes:
            with contextlib.suppress(XenStoreError):
                await inst.write(key, value)
        self._note(runner)
