"""dom0's backend bus: one backend driver instance per device, one lifecycle for all.

Theory of operation
-------------------
The toolstack creates a device by writing two directories in one
transaction (libxl's ``device_add``): the backend dir
``/local/domain/0/backend/<type>/<D>/<V>`` (dom0-owned, read-only to the
guest) and the frontend dir ``/local/domain/<D>/device/<type>/<V>``
(guest-owned). The bus holds ONE watch per registered device type on
``backend/<type>`` under dom0's home. A watch event names the path that
changed, so the bus finds the device ``(D, V)`` from the path alone - O(1)
per event, no scan of every device:

* an unknown device is *probed* (its ``state``, ``frontend`` and
  ``frontend-id`` read) and, if its own state reads Initialising (1), a
  driver instance is created (Linux ``xenbus_probe_backend``);
* a known device is *kicked*: its runner wakes and re-reads what it needs.

Each device has one runner task, which owns a nursery (for ring workers),
the device's :class:`~ring.xenbus.XenbusDevice` state machine and a watch
on the frontend's ``state``. Watch events only set a flag (:class:`Kick`),
so any number of events between two wake-ups cost one pass: a guest that
rewrites its ``state`` thousands of times gets at most one transition per
pass, and its ring worker starts exactly once per ``CONNECT`` and stops
exactly once per ``DISCONNECT`` (the table makes a repeated Connected a
no-op). If the client-side watch queue ever overflowed (``Watch.dropped``),
the bus rescans every device of that type once, so no new device is lost.

Lifecycle every backend shares (the table in :mod:`ring.xenbus` decides
when each hook runs)::

    probe()       PUBLISH_FEATURES: write feature keys        -> InitWait (2)
    hotplug_done() polled each pass until true (vif/vbd): Connected waits for it
    map_ring()    MAP_RING: read the frontend's ring keys, map, bind
    connect()     CONNECT: publish details, start_worker(...)  -> Connected (4)
    disconnect()  DISCONNECT: stop the worker; the base class then unmaps every
                  grant and closes every port it handed out (idempotent)
    remove()      UNREGISTER: last words; the instance is dropped

A hook or ring worker that fails makes the device ``fatal()`` (Closing):
that device only; every other device and dom0 carry on. A failure the guest
caused (:class:`~ring.errors.PeerProtocolError`, a grant that does not map,
a port that does not bind, a missing key) is logged at INFO; any other
exception is a bug in the driver and is logged at ERROR with its traceback.
The toolstack's detach (``online = 0``, ``state = 5``) and a vanished
frontend (state reads Unknown) follow the same table; a vanished *backend*
directory (forced removal) disconnects and unregisters at once.

Adding a driver is registering a class for its device type; importing the
module that defines it registers it (see :class:`Backend` for every hook and
helper)::

    @register_backend
    class KvBack(Backend):
        kind = "kv"
        async def probe(self): await self.write_key("max-key-length", "32")
        async def map_ring(self): ...
        async def connect(self): self.start_worker(self._serve)
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
from hypervisor.grant_table import GNTST_okay
from hypervisor.hypercall import HypercallInterface
from hypervisor.types import DomId, Port
from ring.errors import PeerProtocolError
from ring.xenbus import (
    Action,
    IllegalTransition,
    LocalEvent,
    Transition,
    XenbusDevice,
    parse_number,
)

__all__ = [
    "BACKEND_DRIVERS",
    "Backend",
    "BackendBus",
    "BackendDevice",
    "DeviceGone",
    "Kick",
    "parse_number",
    "register_backend",
]

_log = logging.getLogger("xensim.dom0.backends")

BACKEND_DRIVERS: dict[str, type[Backend]] = {}
"""The default registry: device type -> backend driver class."""

B = TypeVar("B", bound="Backend")


class DeviceGone(Exception):
    """The device's backend directory was removed (toolstack detach or destroy).

    Raised by :meth:`Backend.write_keys` instead of writing: a write would
    recreate the directory the toolstack just removed, leaking its nodes.
    """


def register_backend(cls: type[B]) -> type[B]:
    """Class decorator: make ``cls`` the default backend for ``cls.kind``.

    Every host booted afterwards serves that device type with ``cls``; the
    registration happens when the module defining ``cls`` is imported, so
    import it before :func:`~dom0.host.open_host` (``import mydriver.back``).

    Raises:
        ValueError: ``cls.kind`` is not a device type name
            (``[a-z][a-z0-9_-]{0,31}``), or another class already serves
            that type (a wiring bug).
    """
    return register_driver(BACKEND_DRIVERS, cls, "backend")


@dataclass(frozen=True)
class BackendDevice:
    """Identity of one device, derived from dom0-owned paths only.

    Attributes:
        kind: device type (``"vbd"``, ``"vif"``, ``"console"``).
        frontend_id: the guest's domid (from the backend path, not from a key
            the guest could write).
        devid: the device id.
        backend_path: ``/local/domain/0/backend/<kind>/<D>/<V>``.
        frontend_path: ``/local/domain/<D>/device/<kind>/<V>`` (checked).
    """

    kind: str
    frontend_id: DomId
    devid: int
    backend_path: str
    frontend_path: str


class Backend(RingWorkers):
    """Base class of every backend driver (blkback, netback, kvback...).

    A driver subclasses it, sets :attr:`kind`, overrides the **hooks** the bus
    calls (each ``async def hook(self)``; the state table decides when) and
    uses the **helpers** for everything it acquires, so the base class can
    release it whatever happened. Redefining a helper is refused when the
    class is created (``TypeError`` naming the reserved names), so a driver
    cannot break the bus by accident with a method of its own.

    Hooks (override; all optional):

    * :meth:`probe` -- publish feature keys (then the bus writes InitWait).
    * :meth:`map_ring` -- read the frontend's ring keys, map, bind.
    * :meth:`connect` -- publish details and :meth:`start_worker`.
    * :meth:`disconnect` -- stop and release; overrides call ``super()`` last.
    * :meth:`remove` -- last words before the instance is dropped.
    * :meth:`hotplug_done` -- only for kinds whose table waits for a hotplug step.

    Helpers (call; never redefine): :meth:`read_key`, :meth:`write_key`,
    :meth:`write_keys`, :meth:`read_frontend`, :meth:`map_grant`,
    :meth:`bind_port`, :meth:`bind_port_waiter`, :meth:`start_worker`,
    :meth:`stop_worker`. :meth:`release_resources` may be extended (call
    ``super()`` last).

    A hook or worker that raises makes *this* device fatal (Closing): a
    peer's fault (:class:`~ring.errors.PeerProtocolError`, a grant that does
    not map...) is logged at INFO, any other exception is a driver bug and is
    logged at ERROR with its traceback. dom0 and every other device carry on.

    Args:
        dev: which device (trusted identity).
        xs: dom0's xenstore client.
        hc: dom0's hypercall interface.
        events: dom0's event dispatcher.

    Attributes:
        kind: the device type this class serves (class attribute).
        dev: the device's identity (:class:`BackendDevice`).
        workers_started / workers_stopped: ring-worker starts and stops.
        errors: hooks or workers that failed (the peer's fault or a driver bug).
        last_error: the exception behind the latest failure, or None.
    """

    kind: ClassVar[str] = ""

    def __init__(self, dev: BackendDevice, xs: XenStoreClient, hc: HypercallInterface,
                 events: EventDispatcher) -> None:
        self.dev = dev
        self.xs = xs
        self.hc = hc
        self.events = events
        self.workers_started = 0
        self.workers_stopped = 0
        self.errors = 0
        self.last_error: BaseException | None = None
        self.worker_failed = False
        self._nursery: trio.Nursery | None = None
        self._worker: trio.CancelScope | None = None
        self._worker_done: trio.Event | None = None
        self._grants: list[int] = []
        self._ports: list[Port] = []

    # -- hooks (override) ------------------------------------------------------------------

    async def probe(self) -> None:
        """Hook, PUBLISH_FEATURES: write this backend's feature keys (default: none).

        The bus writes ``state = 2`` (InitWait) after it returns.
        """

    async def map_ring(self) -> None:
        """Hook, MAP_RING: read the frontend's ring keys, map the ring, bind the port.

        The frontend wrote those keys: check them (:func:`parse_number`).
        """

    async def connect(self) -> None:
        """Hook, CONNECT: publish device details and start serving (:meth:`start_worker`).

        The bus writes ``state = 4`` (Connected) after it returns.
        """

    async def disconnect(self) -> None:
        """Hook, DISCONNECT: stop serving and release everything (idempotent).

        Overrides must call ``await super().disconnect()`` last: it stops the
        worker and releases every grant and port the helpers handed out.
        """
        await self.stop_worker()
        self.release_resources()

    async def remove(self) -> None:
        """Hook, UNREGISTER: the instance is about to be dropped (default: nothing)."""

    async def hotplug_done(self) -> bool:
        """Hook: has the hotplug step finished (vif: ``hotplug-status`` reads ``connected``)?

        Asked once per pass while the device's table still waits for it (vif,
        vbd: ``Connected`` is deferred until then); never asked for kinds that
        need no hotplug. Default: no.
        """
        return False

    # -- helpers for subclasses ---------------------------------------------------------------

    async def read_frontend(self, key: str) -> bytes | None:
        """A key of the frontend dir (guest-controlled: check it), or None if absent."""
        return await read_or_none(self.xs, f"{self.dev.frontend_path}/{key}")

    async def read_key(self, key: str) -> bytes | None:
        """A key of the own (backend) dir, or None if absent.

        The toolstack and this driver write there; the guest cannot.
        """
        return await read_or_none(self.xs, f"{self.dev.backend_path}/{key}")

    async def write_key(self, key: str, value: str | bytes) -> None:
        """Write a key of the own (backend) dir, if the device still exists.

        Raises:
            DeviceGone: the toolstack removed the device (nothing written).
        """
        await self.write_keys({key: value})

    async def write_keys(self, keys: Mapping[str, str | bytes]) -> None:
        """Write several keys of the own dir in one transaction, only if the
        directory still exists (as Linux's ``xenbus_switch_state`` checks
        first): a backend finishing slow work after a detach must not
        recreate the directory the toolstack removed.

        Raises:
            DeviceGone: the directory is gone; nothing was written.
        """
        await publish_keys(self.xs, self.dev.backend_path, keys)

    def map_grant(self, ref: int, readonly: bool = False) -> memoryview:
        """Map the frontend's grant ``ref``; unmapped by :meth:`release_resources`.

        Raises:
            PeerProtocolError: the grant does not map (wrong domid, bad ref...).
        """
        res = self.hc.grant_map_one(self.dev.frontend_id, ref, readonly)
        if res.status != GNTST_okay or res.view is None:
            raise PeerProtocolError(f"grant ref {ref} of d{self.dev.frontend_id}: "
                                    f"GNTST {res.status}")
        self._grants.append(res.handle)
        return res.view

    def bind_port(self, remote_port: int, handler: Callable[[int], None]) -> Port:
        """Bind the frontend's unbound ``remote_port``; closed by :meth:`release_resources`.

        Args:
            remote_port: the frontend's port number (guest-controlled).
            handler: called with the local port on every event (sync, must
                not block: set a flag or a :class:`PortWaiter`).

        Raises:
            PeerProtocolError: the port does not bind.
        """
        try:
            port = self.hc.evtchn_bind_interdomain(self.dev.frontend_id, remote_port)
        except XenError as exc:
            raise PeerProtocolError(f"event channel {remote_port}: {exc}") from None
        self._ports.append(port)
        self.events.bind(port, handler)
        return port

    def bind_port_waiter(self, remote_port: int) -> tuple[Port, PortWaiter]:
        """:meth:`bind_port` with a new :class:`PortWaiter` as the handler.

        ``await waiter.wait()`` returns once an event arrived since the last
        wait (events coalesce).
        """
        waiter = PortWaiter()
        return self.bind_port(remote_port, waiter.notify), waiter

    def release_resources(self) -> None:
        """Close every port and unmap every grant handed out (idempotent).

        Drivers holding more (persistent grants, a bridge port) may extend it,
        calling ``super().release_resources()`` last.
        """
        while self._ports:
            port = self._ports.pop()
            self.events.unbind(port)
            with contextlib.suppress(XenError):
                self.hc.evtchn_close(port)
        while self._grants:
            self.hc.grant_unmap_one(self._grants.pop())

    # -- deprecated names (kept for drivers written against them) ---------------------

    async def read(self, key: str) -> bytes | None:
        """Deprecated: use :meth:`read_key`."""
        warnings.warn("Backend.read() is deprecated: use read_key()", DeprecationWarning,
                      stacklevel=2)
        return await self.read_key(key)

    async def write(self, key: str, value: str | bytes) -> None:
        """Deprecated: use :meth:`write_key`."""
        warnings.warn("Backend.write() is deprecated: use write_key()", DeprecationWarning,
                      stacklevel=2)
        await self.write_key(key, value)

    async def publish(self, keys: Mapping[str, str | bytes]) -> None:
        """Deprecated: use :meth:`write_keys`."""
        warnings.warn("Backend.publish() is deprecated: use write_keys()", DeprecationWarning,
                      stacklevel=2)
        await self.write_keys(keys)

    # -- the ring worker (domu.sync.RingWorkers) ------------------------------------

    _worker_errors = PEER_ERRORS

    def _worker_label(self) -> str:
        return self.dev.backend_path

    def _worker_failure(self) -> None:
        self._fatal_from_worker()

    _fatal_from_worker: Callable[[], None] = lambda self: None  # set by the runner


declare_driver_names(
    Backend, hooks=("probe", "map_ring", "connect", "disconnect", "remove", "hotplug_done"),
    state=("dev", "xs", "hc", "events", "errors", "last_error", "worker_failed",
           "workers_started", "workers_stopped"),
    aliases=("read", "write", "publish"))


async def publish_keys(xs: XenStoreClient, base: str, keys: Mapping[str, str | bytes]) -> None:
    """Write ``base/<key>`` for each key in one transaction, if ``base`` exists.

    Raises:
        DeviceGone: ``base`` was removed; nothing was written.
    """

    async def txn(tx: XenStoreTransaction) -> None:
        if await read_or_none(tx, base) is None:
            raise DeviceGone(base)
        for key, value in keys.items():
            await tx.write(f"{base}/{key}", value)

    await xs.transaction(txn)


class _DeviceRunner:
    """The bus's record of one live device: its kick, instance and state machine."""

    def __init__(self, dev: BackendDevice, instance: Backend, machine: XenbusDevice) -> None:
        self.dev = dev
        self.instance = instance
        self.machine = machine
        self.kick = Kick()
        self.done = trio.Event()
        self.passes = 0


class BackendBus:
    """Runs backend driver instances for every device of the registered types.

    Args:
        xs: dom0's (privileged) xenstore client.
        hc: dom0's hypercall interface.
        events: dom0's event dispatcher.
        drivers: type -> driver class, merged over :data:`BACKEND_DRIVERS`
            (to add a type or replace one type's driver; None: the registry).
        domid: the backend domain (0).

    Attributes:
        devices: ``(kind, frontend domid, devid)`` -> live runner.
        rescans: full rescans done after a watch queue overflow.
    """

    def __init__(self, xs: XenStoreClient, hc: HypercallInterface, events: EventDispatcher,
                 drivers: Mapping[str, type[Backend]] | None = None, domid: int = 0) -> None:
        self.xs = xs
        self.hc = hc
        self.events = events
        self.drivers = {**BACKEND_DRIVERS, **(drivers or {})}
        self.domid = domid
        self.devices: dict[tuple[str, int, int], _DeviceRunner] = {}
        self.rescans = 0
        self._probing: set[tuple[str, int, int]] = set()
        self._nursery: trio.Nursery | None = None

    def base(self, kind: str) -> str:
        """``/local/domain/<B>/backend/<kind>``."""
        return f"/local/domain/{self.domid}/backend/{kind}"

    def instance(self, kind: str, domid: int, devid: int) -> Backend | None:
        """The live driver instance of a device, if any."""
        r = self.devices.get((kind, domid, devid))
        return r.instance if r is not None else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """The bus service: one watch per registered type; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for kind in self.drivers:
                await nursery.start(self._watch_kind, kind)
            task_status.started()

    async def _watch_kind(self, kind: str, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        base = self.base(kind)
        async with self.xs.watch(base, token=f"backend-bus-{kind}") as watch:
            task_status.started()
            dropped = 0
            async for path in watch:
                if watch.dropped != dropped:
                    dropped = watch.dropped
                    self.rescans += 1
                    await self._rescan(kind)
                    continue
                self._on_path(kind, base, path)

    def _on_path(self, kind: str, base: str, path: str) -> None:
        if not path.startswith(base + "/"):
            return  # the registration event, or the type dir itself
        parts = path[len(base) + 1:].split("/")
        if not parts[0].isdigit():
            return
        domid = int(parts[0])
        if len(parts) == 1:  # a whole domain's dir changed (created or removed)
            for (k, d, _v), r in list(self.devices.items()):
                if k == kind and d == domid:
                    r.kick.set()
            return
        if not parts[1].isdigit():
            return
        self._touch(kind, domid, int(parts[1]))

    def _touch(self, kind: str, domid: int, devid: int) -> None:
        key = (kind, domid, devid)
        runner = self.devices.get(key)
        if runner is not None:
            runner.kick.set()
        elif key not in self._probing and self._nursery is not None:
            self._probing.add(key)
            self._nursery.start_soon(self._maybe_probe, key)

    async def _rescan(self, kind: str) -> None:
        base = self.base(kind)
        try:
            domids = await self.xs.directory(base)
        except XenStoreError:
            domids = []
        for d in domids:
            if not d.isdigit():
                continue
            try:
                devids = await self.xs.directory(f"{base}/{d}")
            except XenStoreError:
                continue
            for v in devids:
                if v.isdigit():
                    self._touch(kind, int(d), int(v))
        for (k, _d, _v), r in list(self.devices.items()):
            if k == kind:
                r.kick.set()

    async def _maybe_probe(self, key: tuple[str, int, int]) -> None:
        """Probe a device the bus has not seen: only if its own state reads 1."""
        kind, domid, devid = key
        try:
            bpath = f"{self.base(kind)}/{domid}/{devid}"
            state = await read_or_none(self.xs, f"{bpath}/state")
            frontend = await read_or_none(self.xs, f"{bpath}/frontend")
            online = await read_or_none(self.xs, f"{bpath}/online")
        except (XenStoreError, XenStoreProtocolError):
            self._probing.discard(key)
            return
        expected = f"/local/domain/{domid}/device/{kind}/{devid}"
        if state != b"1" or frontend is None or frontend.decode("ascii", "replace") != expected:
            # not ours to drive (e.g. the primary console's backend dir points at
            # /local/domain/<D>/console and runs no handshake), or not fresh
            self._probing.discard(key)
            return
        dev = BackendDevice(kind, DomId(domid), devid, bpath, expected)
        try:
            instance = self.drivers[kind](dev, self.xs, self.hc, self.events)
        except Exception as exc:  # a driver bug: this device fails, nothing else
            _log.error("%s: %s() failed (driver bug); the device is Closed", bpath,
                       self.drivers[kind].__qualname__, exc_info=exc)
            self._probing.discard(key)
            with contextlib.suppress(XenStoreError, DeviceGone):
                await publish_keys(self.xs, bpath, {"state": "6"})
            return
        machine = XenbusDevice(kind, "backend", online=online != b"0")  # type: ignore[arg-type]
        runner = _DeviceRunner(dev, instance, machine)
        self.devices[key] = runner
        self._probing.discard(key)
        assert self._nursery is not None
        self._nursery.start_soon(self._run_device, key, runner)

    # -- one device ---------------------------------------------------------------------------

    async def _run_device(self, key: tuple[str, int, int], runner: _DeviceRunner) -> None:
        inst = runner.instance
        try:
            async with trio.open_nursery() as nursery:
                inst._nursery = nursery
                inst._fatal_from_worker = runner.kick.set  # type: ignore[method-assign]
                nursery.start_soon(self._pump_frontend_state, runner)
                await self._drive(runner)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._release(runner)
            self.devices.pop(key, None)
            runner.done.set()

    async def _pump_frontend_state(self, runner: _DeviceRunner) -> None:
        path = f"{runner.dev.frontend_path}/state"
        with contextlib.suppress(XenStoreProtocolError):
            async with self.xs.watch(path) as watch:
                async for _ in watch:
                    watch.queue.clear()  # coalesce: one pass reads the latest value
                    runner.kick.set()

    async def _drive(self, runner: _DeviceRunner) -> None:
        m = runner.machine
        await self._apply(runner, m.probe())
        while not m.removed:
            await runner.kick.wait()
            runner.passes += 1
            inst = runner.instance
            if inst.worker_failed:
                inst.worker_failed = False
                await self._fatal(runner)
                continue
            own_state = await read_or_none(self.xs, f"{runner.dev.backend_path}/state")
            if own_state is None:  # forced removal: the toolstack deleted our dir
                await self._force_remove(runner)
                return
            if m.online:
                online = await read_or_none(self.xs, f"{runner.dev.backend_path}/online")
                if online == b"0" and own_state == b"5":
                    await self._apply(runner, m.toolstack_close())
            if (not m.hotplug and m.lookup(LocalEvent.HOTPLUG_CONNECTED) is not None
                    and await self._hotplug_done(runner)):
                await self._apply(runner, m.hotplug_connected())
            front = await read_or_none(self.xs, f"{runner.dev.frontend_path}/state")
            try:
                t = m.frontend_changed(front)
            except IllegalTransition:
                await self._fatal(runner)
                continue
            await self._apply(runner, t)

    def _failed(self, runner: _DeviceRunner, what: str, exc: Exception) -> None:
        """Count and log a hook's failure: the guest's fault (INFO) or a driver bug (ERROR)."""
        note_hook_failure(runner.instance, runner.dev.backend_path, what, exc, _log)

    async def _hotplug_done(self, runner: _DeviceRunner) -> bool:
        try:
            return bool(await runner.instance.hotplug_done())
        except Exception as exc:
            self._failed(runner, "hotplug_done", exc)
            await self._disconnect(runner)
            await self._fatal(runner)
            return False

    async def _disconnect(self, runner: _DeviceRunner) -> None:
        """The driver's disconnect hook; if it raises, the base class's cleanup still runs."""
        try:
            await runner.instance.disconnect()
        except DeviceGone:
            pass
        except Exception as exc:
            self._failed(runner, Action.DISCONNECT, exc)
            await self._release(runner)

    async def _release(self, runner: _DeviceRunner) -> None:
        """Stop the worker and release what the helpers handed out, whatever the driver did."""
        inst = runner.instance
        await inst.stop_worker()
        try:
            inst.release_resources()
        except Exception as exc:
            self._failed(runner, "release_resources", exc)
            Backend.release_resources(inst)

    async def _apply(self, runner: _DeviceRunner, t: Transition) -> None:
        inst = runner.instance
        hooks = {
            Action.PUBLISH_FEATURES: inst.probe,
            Action.MAP_RING: inst.map_ring,
            Action.CONNECT: inst.connect,
            Action.DISCONNECT: inst.disconnect,
            Action.UNREGISTER: inst.remove,
        }
        for action in t.actions:
            hook = hooks.get(action)
            if hook is None:
                continue
            try:
                await hook()
            except DeviceGone:
                # Removed under us: stop, write nothing; the bus's removal
                # path (the directory vanished) unregisters the instance.
                await self._disconnect(runner)
                return
            except Exception as exc:  # the peer's fault, or a bug in the driver
                self._failed(runner, action, exc)
                if action == Action.DISCONNECT:
                    await self._release(runner)
                else:
                    await self._disconnect(runner)
                await self._fatal(runner)
                return
        if t.writes:
            with contextlib.suppress(XenStoreError, DeviceGone):
                await publish_keys(self.xs, runner.dev.backend_path, dict(t.writes))

    async def _fatal(self, runner: _DeviceRunner) -> None:
        """``xenbus_dev_fatal``: this device goes to Closing; nothing else is touched."""
        if runner.machine.lookup(LocalEvent.FATAL) is None:
            return
        await self._apply(runner, runner.machine.fatal())

    async def _force_remove(self, runner: _DeviceRunner) -> None:
        if not runner.machine.removed:
            await self._disconnect(runner)
            try:
                await runner.instance.remove()
            except Exception as exc:
                self._failed(runner, Action.UNREGISTER, exc)
            runner.machine.removed = True

    async def wait_removed(self, kind: str, domid: int, devid: int) -> None:
        """Return once the device's instance is gone (callers bound it)."""
        r = self.devices.get((kind, domid, devid))
        if r is not None:
            await r.done.wait()
