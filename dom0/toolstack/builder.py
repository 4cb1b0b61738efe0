"""The domain builder and lifecycle monitor: the toolstack's core (libxl's job).

Theory of operation
-------------------
:meth:`Toolstack.create` builds a domain from a :class:`GuestConfig` step by
step; every step that acquires something pushes its undo onto the domain's
private record (:class:`DomainRecord`), so a failure at any step - or a
``destroy`` while the build is still running - unwinds exactly what was done::

    validate -> domctl createdomain (paused; memory MiB -> pages, maxmem, vcpus)
      -> populate RAM -> pick the console and xenstore pages (the last two gfns)
      -> alloc_unbound the console and xenstore ports (in the guest, for dom0)
      -> seed grant refs 0 (console) and 1 (xenstore) granting dom0
      -> setstartinfo (store gfn/evtchn, console gfn/evtchn, cmdline)
      -> ONE transaction: the standard xenstore layout with libxl's permissions
      -> one transaction per device (backend dir, frontend dir, /libxl record)
      -> INTRODUCE to xenstored (dom0 maps grant ref 1, serves the ring)
      -> hand the console to the console daemon (dom0 maps grant ref 0)
      -> wait (<= 10 s) for every backend to reach InitWait
      -> start the guest kernel -> unpause -> wait (<= 10 s) until it has booted

xensim guests are PVH-like: the "frame numbers" in start_info and in the
``ring-ref`` keys are guest frame numbers (as HVM/PVH params are), reached
through the guest's own memory view.

Trust (the toolstack never believes the guest): the record holds everything
the toolstack acts on - domid, uuid, ports, pages, devices and their paths - and is never
refreshed from xenstore, so a guest rewriting its own nodes cannot steer
dom0. Console keys, ``cpu``, ``memory``, ``device`` and ``control`` are
read-only to the guest; ``control/shutdown``, ``control/feature-*``,
``data``, ``drivers``, ``feature``, ``attr``, ``error`` and each device's
frontend dir are guest-owned, exactly as libxl sets them.

Destroy (:meth:`Toolstack.destroy`) always works, whatever state the domain
is in: devices are closed through the xenbus handshake (``online = 0``,
``state = 5``; wait <= 10 s for the backend to reach Closed) if the guest can
still answer, then removed by force; the domain is destroyed in Xen; the undo
stack releases the console, the xenstore ring, the xenstore nodes and the
guest kernel; finally the toolstack waits (<= 10 s, woken by VIRQ_DOM_EXC)
until the hypervisor has really freed the domain.

Lifecycle: the monitor watches ``@releaseDomain`` (fired by xenstored on
VIRQ_DOM_EXC); for each domain newly shut down it applies the config's
``on_poweroff`` / ``on_reboot`` / ``on_crash`` / ``on_watchdog`` action:
destroy, restart (destroy + create from the same config: a NEW domid, as
Xen does) or preserve (leave it shut down for inspection).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import random
import struct
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from dom0.backends.bus import Backend
from dom0.backends.consoleback import ConsoleBack
from dom0.kernel import Dom0Kernel
from dom0.toolstack.config import (
    XEN_OUI,
    Action,
    ChannelSpec,
    ConfigError,
    DiskSpec,
    GuestConfig,
    VifSpec,
)
from dom0.toolstack.xlcfg import vdev_number
from domu.xenstore import XenStoreClient, XenStoreError, XenStoreTransaction, read_or_none
from hypervisor.domain import (
    DomainConfig,
    DomainInfo,
    ShutdownReason,
    XEN_DOMINF_dying,
    XEN_DOMINF_paused,
    XEN_DOMINF_shutdown,
)
from hypervisor.errno import Errno, XenError
from hypervisor.grant_table import (
    GNTTAB_RESERVED_CONSOLE,
    GNTTAB_RESERVED_XENSTORE,
    GRANT_ENTRY_V1,
    GNTST_okay,
    GTF_permit_access,
)
from hypervisor.hypercall import HypercallInterface
from hypervisor.types import PAGE_SIZE, DomId, Gfn, Port
from ring.console import (
    CONSOLE_DEFAULT_LIMIT,
    CONSOLE_OUTPUT_PTY,
    CONSOLE_PROTOCOL_VT100,
    CONSOLE_TYPE_IOEMU,
    CONSOLE_TYPE_XENCONSOLED,
)

__all__ = [
    "BACKEND_INITWAIT_TIMEOUT",
    "BOOT_TIMEOUT",
    "DEVICE_CLOSE_TIMEOUT",
    "DOMAIN_GONE_TIMEOUT",
    "SHUTDOWN_TIMEOUT",
    "CreateAborted",
    "DeviceRequest",
    "DomainRecord",
    "Toolstack",
    "channel_device_request",
    "console_device_request",
    "load_program",
    "vbd_device_request",
    "vif_device_request",
]

_log = logging.getLogger("xensim.toolstack")

BACKEND_INITWAIT_TIMEOUT = 10.0
"""Seconds a new device's backend has to reach InitWait (libxl LIBXL_INIT_TIMEOUT)."""
DEVICE_CLOSE_TIMEOUT = 10.0
"""Seconds a detached device's backend has to reach Closed (LIBXL_DESTROY_TIMEOUT)."""
BOOT_TIMEOUT = 10.0
"""Seconds a guest kernel has from unpause until it reports booted."""
SHUTDOWN_TIMEOUT = 60.0
"""Seconds a guest has to shut down after ``control/shutdown`` (then it is destroyed)."""
DOMAIN_GONE_TIMEOUT = 10.0
"""Seconds destroy waits for the hypervisor to free the domain (zombie otherwise)."""
KERNEL_STOP_TIMEOUT = 5.0
"""Seconds destroy waits for the guest kernel's tasks to finish."""
RING_DETACH_TIMEOUT = 5.0
"""Seconds destroy waits for dom0 to stop serving the guest's xenstore ring."""

KIB_PER_MIB = 1024
PAGES_PER_MIB = (1 << 20) // PAGE_SIZE
SPECIAL_PAGES = 2  # console + xenstore, at the top of RAM
PRIMARY_CONSOLE_DEVID = 0
"""``backend/console/<D>/0`` is the primary console's node; secondary consoles start at 1."""


class CreateAborted(Exception):
    """The domain was destroyed (or failed) before it finished booting."""


def load_program(kernel: str | Callable[..., Any]) -> Callable[..., Awaitable[None]]:
    """Resolve a guest program: ``"module:function"`` or the function itself.

    Raises:
        ConfigError: the module or function cannot be found.
    """
    if callable(kernel):
        return kernel
    mod_name, _, fn_name = kernel.partition(":")
    try:
        mod = importlib.import_module(mod_name)
        fn = getattr(mod, fn_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"kernel {kernel!r}: {exc}") from None
    if not callable(fn):
        raise ConfigError(f"kernel {kernel!r}: not a function")
    return fn  # type: ignore[no-any-return]


@dataclass(frozen=True)
class DeviceRequest:
    """A device the toolstack wires up (libxl's ``libxl__device_generic_add``).

    Args:
        kind: device type (a backend driver must be registered for it).
        devid: device id.
        backend: type-specific backend keys (besides frontend, frontend-id,
            online, state, which the toolstack writes).
        frontend: type-specific frontend keys (besides backend, backend-id,
            state).
    """

    kind: str
    devid: int
    backend: Mapping[str, str] = field(default_factory=dict)
    frontend: Mapping[str, str] = field(default_factory=dict)

    def backend_path(self, domid: int, backend_domid: int = 0) -> str:
        """``/local/domain/<B>/backend/<kind>/<D>/<V>``."""
        return f"/local/domain/{backend_domid}/backend/{self.kind}/{domid}/{self.devid}"

    def frontend_path(self, domid: int) -> str:
        """``/local/domain/<D>/device/<kind>/<V>``."""
        return f"/local/domain/{domid}/device/{self.kind}/{self.devid}"


Undo = Callable[[], Awaitable[None]]


@dataclass(eq=False)
class DomainRecord:
    """The toolstack's private, trusted record of one domain.

    Attributes:
        config: what it was built from (restart reuses it).
        domid: its id (None until createdomain succeeded).
        state: ``building`` / ``running`` / ``shutdown`` / ``dying`` / ``gone``.
        shutdown_reason: the reason the hypervisor reported, once shut down.
        successor: the domain a restart created.
        final_console: the console log captured when the console was detached.
        final_consoles: secondary console number -> its log, captured when
            that device was removed (unplug or destroy).
    """

    config: GuestConfig
    domid: DomId | None = None
    name: str = ""
    uuid: str = ""
    state: str = "building"
    store_gfn: Gfn = 0  # type: ignore[assignment]
    store_port: Port = 0  # type: ignore[assignment]
    console_gfn: Gfn = 0  # type: ignore[assignment]
    console_port: Port = 0  # type: ignore[assignment]
    devices: list[DeviceRequest] = field(default_factory=list)
    devices_written: list[DeviceRequest] = field(default_factory=list)
    undo: list[tuple[str, Undo]] = field(default_factory=list)
    shutdown_reason: int | None = None
    successor: DomainRecord | None = None
    final_console: bytes = b""
    final_consoles: dict[int, bytes] = field(default_factory=dict)
    create_scope: trio.CancelScope | None = None
    kernel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    kernel_done: trio.Event = field(default_factory=trio.Event)
    kernel_started: bool = False
    booted: trio.Event = field(default_factory=trio.Event)
    shut: trio.Event = field(default_factory=trio.Event)
    gone: trio.Event = field(default_factory=trio.Event)
    finished: trio.Event = field(default_factory=trio.Event)
    teardown_lock: trio.Lock = field(default_factory=trio.Lock)
    boot_error: BaseException | None = None
    acting: bool = False

    @property
    def dom_path(self) -> str:
        """``/local/domain/<D>``."""
        return f"/local/domain/{self.domid}"


Launcher = Callable[[DomainRecord], Callable[[], Awaitable[None]]]
"""Given a record, the async function that runs that guest's kernel (the host's job)."""


class Toolstack:
    """Builds, watches and destroys domains (libxl + the xl monitor).

    Args:
        kernel: the running dom0 kernel (its xenstore client, console
            daemon, backend bus and hypercall interface).
        launcher: starts a guest kernel for a record (provided by the host).

    Attributes:
        records: domid -> record of every domain the toolstack built and
            has not finished destroying.
    """

    def __init__(self, kernel: Dom0Kernel, launcher: Launcher) -> None:
        self.kernel = kernel
        self.hc: HypercallInterface = kernel.hc
        self.launcher = launcher
        self.records: dict[int, DomainRecord] = {}
        self.building: set[DomainRecord] = set()
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self.stopped = trio.Event()
        self._names: set[str] = set()
        self.rng = random.Random()
        """Chooses vif MACs (xl: random in 00:16:3e); tests may seed or replace it."""

    @property
    def xs(self) -> XenStoreClient:
        """dom0's privileged xenstore client."""
        return self.kernel.xs

    # -- service ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """The toolstack service: the guests' nursery and the lifecycle monitor."""
        for path in ("/vm", "/libxl", "/local/domain/0/backend/console",
                     *(f"/local/domain/0/backend/{k}" for k in self.kernel.backends.drivers)):
            await self.xs.mkdir(path)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._monitor)
                task_status.started()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            self.stopped.set()

    def stop(self) -> None:
        """Stop the monitor and the guests' nursery (destroy the guests first)."""
        self._stop.set()

    async def _monitor(self, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.xs.watch("@releaseDomain", token="toolstack-monitor") as watch:
            task_status.started()
            async for _ in watch:
                watch.queue.clear()  # one re-scan answers every queued event
                self._scan()

    def _scan(self, records: list[DomainRecord] | None = None) -> None:
        for rec in list(self.records.values()) if records is None else records:
            if rec.state != "running" or rec.domid is None:
                continue
            try:
                info = self.hc.domctl_getdomaininfo(rec.domid)
            except XenError:
                continue
            reason = info.shutdown_reason
            if reason is None:
                continue
            rec.state = "shutdown"
            rec.shutdown_reason = reason
            rec.shut.set()
            assert self._nursery is not None
            self._nursery.start_soon(self._on_shutdown, rec, reason)

    async def _on_shutdown(self, rec: DomainRecord, reason: int) -> None:
        rec.acting = True
        try:
            await self._act(rec, reason)
        finally:
            rec.acting = False
            if rec.gone.is_set():
                rec.finished.set()

    async def _act(self, rec: DomainRecord, reason: int) -> None:
        cfg = rec.config
        action = {
            ShutdownReason.POWEROFF: cfg.on_poweroff,
            ShutdownReason.REBOOT: cfg.on_reboot,
            ShutdownReason.CRASH: cfg.on_crash,
            ShutdownReason.WATCHDOG: cfg.on_watchdog,
        }.get(ShutdownReason(reason))
        if action is None:  # suspend (save/restore is not simulated yet), soft reset
            _log.info("d%s %s: shut down with reason %d; left as is", rec.domid, rec.name,
                      reason)
            return
        _log.info("d%s %s: shutdown reason %s -> %s", rec.domid, rec.name,
                  ShutdownReason(reason).name.lower(), action.value)
        if action == Action.PRESERVE:
            return
        await self.destroy(rec)
        if action in (Action.RESTART, Action.RENAME_RESTART, Action.COREDUMP_RESTART):
            # libxl restarts from the domain's stored config, which includes
            # devices hot-plugged since create and the MACs it generated: the
            # devices come from our record, not from the original config.
            restart = dataclasses.replace(rec.config, disks=[], vifs=[], channels=[])
            try:
                rec.successor = await self.create(restart, devices=list(rec.devices))
            except Exception as exc:  # a failed restart leaves the domain destroyed
                _log.warning("%s: restart failed: %s", rec.name, exc)

    def new_mac(self) -> str:
        """A random MAC in Xen's OUI ``00:16:3e`` (libxl), unused by our live vifs.

        The last three bytes come from :attr:`rng`; the top bit of the fourth
        is clear, as libxl does.
        """
        used = {r.backend.get("mac") for rec in self.records.values() for r in rec.devices
                if r.kind == "vif"} | {r.backend.get("mac") for rec in self.building
                                       for r in rec.devices if r.kind == "vif"}
        while True:
            b = self.rng.getrandbits(24)
            mac = f"{XEN_OUI}:{(b >> 16) & 0x7F:02x}:{(b >> 8) & 0xFF:02x}:{b & 0xFF:02x}"
            if mac not in used:
                return mac

    # -- create -------------------------------------------------------------------------------

    def _device_requests(self, config: GuestConfig,
                         extra: list[DeviceRequest]) -> list[DeviceRequest]:
        reqs: list[DeviceRequest] = []
        for disk in config.disks:
            reqs.append(_vbd_request(disk))
        for i, vif in enumerate(config.vifs):
            reqs.append(_vif_request(vif, i, self.new_mac))
        for i, channel in enumerate(config.channels):  # libxl: channel i is console i + 1
            reqs.append(channel_device_request(i + 1, channel))
        reqs.extend(extra)
        seen: set[tuple[str, int]] = set()
        for r in reqs:
            _refuse_primary_console(r)
            if r.kind not in self.kernel.backends.drivers:
                raise ConfigError(f"device {r.kind}/{r.devid}: no backend driver for "
                                  f"{r.kind!r} is registered in dom0")
            if (r.kind, r.devid) in seen:
                raise ConfigError(f"device {r.kind}/{r.devid} given twice")
            seen.add((r.kind, r.devid))
        return reqs

    async def create(self, config: GuestConfig, *,
                     devices: list[DeviceRequest] | None = None) -> DomainRecord:
        """Build, start and boot a domain.

        Args:
            config: the guest (user-controlled; validated first).
            devices: extra devices beyond ``config.disks`` / ``config.vifs`` /
                ``config.channels`` (device types without xl.cfg syntax); a
                console here must not reuse a channel's number (channel ``i``
                is console ``i + 1``).

        Returns:
            The record, once the guest kernel reported it booted.

        Raises:
            ConfigError: invalid configuration, duplicate name, no backend
                driver for a device type, unknown guest program.
            XenError: the hypervisor refused a step (e.g. ENOMEM).
            CreateAborted: the domain was destroyed, or failed to boot, before
                it finished booting.
            TimeoutError: a backend or the guest kernel did not answer in time.
            Everything done so far is undone before any of these propagates.
        """
        config.validate()
        load_program(config.kernel)
        reqs = self._device_requests(config, list(devices or []))
        if config.name in self._names:
            raise ConfigError(f"name {config.name!r}: a domain with that name exists")
        rec = DomainRecord(config=config, name=config.name, devices=reqs,
                           uuid=config.uuid or str(uuidlib.uuid4()))
        self._names.add(rec.name)
        self.building.add(rec)
        rec.create_scope = trio.CancelScope()
        try:
            with rec.create_scope:
                await self._build(rec)
                with trio.fail_after(BOOT_TIMEOUT):
                    await _first_of(rec.booted.wait, rec.kernel_done.wait)
                if not rec.booted.is_set():
                    raise CreateAborted(f"{rec.name}: the guest kernel stopped while booting"
                                        ) from rec.boot_error
            if rec.create_scope.cancelled_caught:
                raise CreateAborted(f"{rec.name}: destroyed while being created")
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._teardown(rec)
            raise
        finally:
            rec.create_scope = None
            self.building.discard(rec)
        rec.state = "running"
        self._scan([rec])  # it may have shut down already (a program that returns at once)
        return rec

    async def _build(self, rec: DomainRecord) -> None:
        cfg = rec.config
        hc = self.hc
        nr_pages = cfg.memory * PAGES_PER_MIB
        max_pages = cfg.max_memory * PAGES_PER_MIB
        cmdline = cfg.cmdline if cfg.cmdline is not None else cfg.extra
        domid = hc.domctl_createdomain(DomainConfig(
            name=cfg.name, max_pages=max_pages, nr_pages=0, max_vcpus=cfg.max_vcpus,
            max_evtchn_port=cfg.max_event_channels, max_grant_frames=cfg.max_grant_frames,
            max_maptrack_frames=cfg.max_maptrack_frames, uuid=uuidlib.UUID(rec.uuid),
            cmdline=cmdline, **sched_params(cfg, hc.sysctl_physinfo().nr_cpus)))
        rec.domid = domid
        self.records[domid] = rec
        pin_vcpus(hc, domid, cfg, hc.sysctl_physinfo().nr_cpus)
        await trio.lowlevel.checkpoint()

        done = hc.populate_physmap(range(nr_pages), domid=domid)
        if done != nr_pages:
            raise XenError(Errno.ENOMEM, f"populated {done} of {nr_pages} pages")
        rec.console_gfn = Gfn(nr_pages - 2)
        rec.store_gfn = Gfn(nr_pages - 1)
        rec.store_port = hc.evtchn_alloc_unbound(remote_dom=0, dom=domid)
        rec.console_port = hc.evtchn_alloc_unbound(remote_dom=0, dom=domid)
        self._seed_grants(domid, rec.console_gfn, rec.store_gfn)
        hc.domctl_setstartinfo(domid, store_mfn=rec.store_gfn, store_evtchn=rec.store_port,
                               console_mfn=rec.console_gfn, console_evtchn=rec.console_port)

        rec.undo.append(("xenstore nodes", lambda: self._remove_nodes(rec)))
        await self.xs.transaction(lambda tx: self._write_layout(tx, rec))
        for req in rec.devices:
            rec.devices_written.append(req)
            await self.xs.transaction(lambda tx, req=req: self._write_device(tx, rec, req))

        rec.undo.append(("xenstore ring", lambda: self._release_xenstore(rec)))
        await self.xs.introduce(domid, rec.store_gfn, rec.store_port)

        rec.undo.append(("console", lambda: self._detach_console(rec)))
        self.kernel.attach_console(domid, rec.name, rec.console_port, CONSOLE_DEFAULT_LIMIT)

        with trio.fail_after(BACKEND_INITWAIT_TIMEOUT):
            for req in rec.devices:
                await self._wait_backend_state(req.backend_path(domid), 2)
        for req in rec.devices:  # Closing instead of InitWait: the hotplug step failed
            await self._check_backend_alive(req.backend_path(domid), req)

        rec.undo.append(("guest kernel", lambda: self._stop_kernel(rec)))
        self._launch(rec)
        hc.domctl_unpausedomain(domid)

    def _seed_grants(self, domid: DomId, console_gfn: Gfn, store_gfn: Gfn) -> None:
        """libxc ``xc_dom_gnttab_seed``: refs 0 and 1 of the guest grant dom0 its rings."""
        res = self.hc.grant_setup_table(1, dom=domid)
        if res.status != GNTST_okay:
            raise XenError(Errno.ENOMEM, f"grant table setup failed (GNTST {res.status})")
        view = self.hc.map_foreign(domid, mfn=res.frames[0])
        for ref, gfn in ((GNTTAB_RESERVED_CONSOLE, console_gfn),
                         (GNTTAB_RESERVED_XENSTORE, store_gfn)):
            off = ref * GRANT_ENTRY_V1.size
            struct.pack_into("<HI", view, off + 2, 0, gfn)  # domid, frame first
            struct.pack_into("<H", view, off, GTF_permit_access)  # flags last
        view.release()

    async def _write_layout(self, tx: XenStoreTransaction, rec: DomainRecord) -> None:
        """The standard layout (Xen's xenstore-paths) with libxl's permissions, one transaction."""
        cfg = rec.config
        d = rec.domid
        dom = rec.dom_path
        vm = f"/vm/{rec.uuid}"
        lib = f"/libxl/{d}"
        ro = ["n0", f"r{d}"]  # dom0 owns, the guest may read
        rw = [f"n{d}"]  # the guest owns
        for path, perms in ((dom, ro), (vm, ro), (lib, ["n0"])):
            await tx.mkdir(path)
            await tx.set_perms(path, perms)
        await tx.write(f"{vm}/uuid", rec.uuid)
        await tx.write(f"{vm}/name", rec.name)
        await tx.write(f"{vm}/start_time", f"{trio.current_time():.2f}")
        await tx.write(f"{vm}/image/ostype", "linux")
        await tx.write(f"{dom}/vm", vm)
        await tx.write(f"{dom}/name", rec.name)
        await tx.write(f"{dom}/domid", str(d))
        for i in range(cfg.max_vcpus):
            await tx.write(f"{dom}/cpu/{i}/availability",
                           "online" if i < cfg.vcpus else "offline")
        await tx.write(f"{dom}/memory/static-max", str(cfg.max_memory * KIB_PER_MIB))
        await tx.write(f"{dom}/memory/target", str(cfg.memory * KIB_PER_MIB))
        await tx.mkdir(f"{dom}/device")
        await tx.write(f"{dom}/control/platform-feature-multiprocessor-suspend", "1")
        await tx.write(f"{dom}/control/platform-feature-xs_reset_watches", "1")
        for key in ("control/shutdown", "control/feature-poweroff", "control/feature-reboot",
                    "control/feature-suspend", "control/sysrq", "data", "drivers", "feature",
                    "attr", "error"):
            await tx.mkdir(f"{dom}/{key}")
            await tx.set_perms(f"{dom}/{key}", rw)
        await tx.write(f"{dom}/store/port", str(rec.store_port))
        await tx.write(f"{dom}/store/ring-ref", str(rec.store_gfn))
        # primary console: frontend keys read-only to the guest (dom0 trusts them)
        cback = f"/local/domain/0/backend/console/{d}/0"
        for key, value in (("backend", cback), ("backend-id", "0"),
                           ("limit", str(CONSOLE_DEFAULT_LIMIT)),
                           ("type", CONSOLE_TYPE_XENCONSOLED), ("output", CONSOLE_OUTPUT_PTY),
                           ("port", str(rec.console_port)),
                           ("ring-ref", str(rec.console_gfn))):
            await tx.write(f"{dom}/console/{key}", value)
        await tx.mkdir(cback)
        await tx.set_perms(cback, ro)
        for key, value in (("frontend", f"{dom}/console"), ("frontend-id", str(d)),
                           ("online", "1"), ("protocol", CONSOLE_PROTOCOL_VT100),
                           ("state", "1")):
            await tx.write(f"{cback}/{key}", value)
        await tx.write(f"{lib}/type", "pv")
        await tx.write(f"{lib}/device/console/0/frontend", f"{dom}/console")
        await tx.write(f"{lib}/device/console/0/backend", cback)

    async def _write_device(self, tx: XenStoreTransaction, rec: DomainRecord,
                            req: DeviceRequest) -> None:
        """libxl__device_generic_add: backend dir, frontend dir, /libxl copy."""
        d = rec.domid
        assert d is not None
        bpath, fpath = req.backend_path(d), req.frontend_path(d)
        await tx.mkdir(bpath)
        await tx.set_perms(bpath, ["n0", f"r{d}"])
        await tx.mkdir(fpath)
        await tx.set_perms(fpath, [f"n{d}", "r0"])
        for key, value in {**req.backend, "frontend": fpath, "frontend-id": str(d),
                           "online": "1"}.items():
            await tx.write(f"{bpath}/{key}", value)
        for key, value in {**req.frontend, "backend": bpath, "backend-id": "0"}.items():
            await tx.write(f"{fpath}/{key}", value)
        await tx.write(f"{fpath}/state", "1")
        await tx.write(f"{bpath}/state", "1")
        lib = f"/libxl/{d}/device/{req.kind}/{req.devid}"
        await tx.write(f"{lib}/frontend", fpath)
        await tx.write(f"{lib}/backend", bpath)

    async def _wait_backend_state(self, bpath: str, at_least: int) -> None:
        """Wait until the dom0-owned backend ``state`` reads >= ``at_least`` (callers bound it)."""
        async with self.xs.watch(f"{bpath}/state") as w:
            async for _ in w:
                raw = await read_or_none(self.xs, f"{bpath}/state")
                if raw is not None and raw.isdigit() and int(raw) >= at_least:
                    return

    def _launch(self, rec: DomainRecord) -> None:
        run_kernel = self.launcher(rec)
        rec.kernel_started = True

        async def run() -> None:
            try:
                with rec.kernel_scope:
                    await run_kernel()
            except Exception as exc:  # a guest kernel bug must not take dom0 down
                rec.boot_error = exc
                _log.exception("d%s %s: guest kernel failed", rec.domid, rec.name)
                with contextlib.suppress(XenError, KeyError):
                    if rec.domid is not None:
                        self.hc.sched_remote_shutdown(rec.domid, ShutdownReason.CRASH)
            finally:
                rec.kernel_done.set()

        assert self._nursery is not None
        self._nursery.start_soon(run)

    # -- destroy ------------------------------------------------------------------------------

    async def destroy(self, rec: DomainRecord) -> None:
        """Tear the domain down completely (idempotent; works in any state).

        A domain still being created is aborted (its :meth:`create` raises
        :class:`CreateAborted`).
        """
        if rec in self.building and rec.create_scope is not None:
            rec.create_scope.cancel()  # create unwinds everything itself (bounded waits)
            await rec.gone.wait()
            return
        await self._teardown(rec)

    async def _teardown(self, rec: DomainRecord) -> None:
        async with rec.teardown_lock:
            if rec.gone.is_set():
                return
            rec.state = "dying"
            rec.shut.set()
            d = rec.domid
            if d is not None:
                await self._remove_devices(rec)
                with contextlib.suppress(XenError):
                    self.hc.domctl_destroydomain(d)
            while rec.undo:
                what, undo = rec.undo.pop()
                try:
                    await undo()
                except Exception:
                    _log.exception("d%s %s: undoing %s failed", d, rec.name, what)
            if d is not None:
                with trio.move_on_after(DOMAIN_GONE_TIMEOUT):
                    while True:
                        ev = self.kernel._dom_exc
                        if self._exists(d) is None:
                            break
                        await ev.wait()
                if self._exists(d) is not None:
                    _log.warning("d%d %s: still a zombie after destroy", d, rec.name)
                self.records.pop(d, None)
            rec.state = "gone"
            self._names.discard(rec.name)
            rec.gone.set()
            if not rec.acting:
                rec.finished.set()

    def _exists(self, domid: int) -> DomainInfo | None:
        try:
            return self.hc.domctl_getdomaininfo(domid)
        except XenError:
            return None

    def _guest_can_answer(self, domid: int) -> bool:
        info = self._exists(domid)
        return info is not None and not info.flags & (
            XEN_DOMINF_dying | XEN_DOMINF_paused | XEN_DOMINF_shutdown)

    async def _remove_devices(self, rec: DomainRecord) -> None:
        """libxl device remove: handshake if the guest can answer, then force."""
        d = rec.domid
        assert d is not None
        reqs = list(rec.devices_written)
        backs = [self.kernel.backends.instance(req.kind, d, req.devid) for req in reqs]
        if reqs and self._guest_can_answer(d) and rec.kernel_started:
            with trio.move_on_after(DEVICE_CLOSE_TIMEOUT):
                async with trio.open_nursery() as nursery:
                    for req in reqs:
                        nursery.start_soon(self._close_device, rec, req)
        for req, back in zip(reqs, backs):
            await self._force_remove_device(rec, req, back)
        rec.devices_written.clear()

    async def _close_device(self, rec: DomainRecord, req: DeviceRequest) -> None:
        assert rec.domid is not None
        bpath = req.backend_path(rec.domid)

        async def detach(tx: XenStoreTransaction) -> None:
            state = await read_or_none(tx, f"{bpath}/state")
            if state is None:
                return
            await tx.write(f"{bpath}/online", "0")
            if state != b"6":
                await tx.write(f"{bpath}/state", "5")

        await self.xs.transaction(detach)
        await self._wait_backend_state(bpath, 6)

    async def _force_remove_device(self, rec: DomainRecord, req: DeviceRequest,
                                   back: Backend | None) -> None:
        """Remove the device's directories and wait for its backend instance to go.

        ``back`` is that instance as it was before any close handshake (which
        may already have unregistered it): a console's log is kept in the record.
        """
        d = rec.domid
        assert d is not None
        for path in (req.frontend_path(d), req.backend_path(d),
                     f"/libxl/{d}/device/{req.kind}/{req.devid}"):
            with contextlib.suppress(XenStoreError):
                await self.xs.rm(path)
        with trio.move_on_after(DEVICE_CLOSE_TIMEOUT):
            await self.kernel.backends.wait_removed(req.kind, d, req.devid)
        if isinstance(back, ConsoleBack):  # keep what it printed, as for the primary console
            rec.final_consoles[req.devid] = back.log()

    async def _remove_nodes(self, rec: DomainRecord) -> None:
        d = rec.domid
        kinds = {"console", *(r.kind for r in rec.devices)}
        paths = [rec.dom_path, f"/vm/{rec.uuid}", f"/libxl/{d}",
                 *(f"/local/domain/0/backend/{k}/{d}" for k in sorted(kinds))]
        for path in paths:
            with contextlib.suppress(XenStoreError):
                await self.xs.rm(path)

    async def _release_xenstore(self, rec: DomainRecord) -> None:
        with contextlib.suppress(XenStoreError):
            await self.xs.release(rec.domid)
        with trio.move_on_after(RING_DETACH_TIMEOUT):
            await self.kernel.wait_ring_detached(rec.domid)  # type: ignore[arg-type]

    async def _detach_console(self, rec: DomainRecord) -> None:
        assert rec.domid is not None
        rec.final_console = self.kernel.detach_console(rec.domid)
        await trio.lowlevel.checkpoint()

    async def _stop_kernel(self, rec: DomainRecord) -> None:
        rec.kernel_scope.cancel()
        with trio.move_on_after(KERNEL_STOP_TIMEOUT):
            await rec.kernel_done.wait()

    # -- control ------------------------------------------------------------------------------

    async def shutdown(self, rec: DomainRecord, reason: str = "poweroff", *,
                       wait: bool = True, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Ask the guest to shut down through ``control/shutdown``.

        Args:
            rec: the domain.
            reason: ``poweroff``, ``reboot``, ``suspend`` or ``halt``.
            wait: wait until the guest has shut down (and its on_* action ran);
                a guest that does not within ``timeout`` seconds is destroyed.
            timeout: seconds (trio clock).

        Raises:
            ValueError: an unknown reason.
        """
        if reason not in ("poweroff", "reboot", "suspend", "halt"):
            raise ValueError(f"unknown shutdown reason {reason!r}")
        if rec.state != "running":
            return
        with contextlib.suppress(XenStoreError):
            await self.xs.write(f"{rec.dom_path}/control/shutdown", reason)
        if not wait:
            return
        with trio.move_on_after(timeout):
            await rec.shut.wait()
        if not rec.shut.is_set():
            _log.warning("d%s %s: did not shut down in %.0f s; destroying", rec.domid,
                         rec.name, timeout)
            await self.destroy(rec)
        action = _action_for(rec)
        if action is not None and action != Action.PRESERVE:
            with trio.move_on_after(timeout):
                await rec.finished.wait()

    async def set_memory_target(self, rec: DomainRecord, kib: int) -> int:
        """``xl mem-set``: the balloon target (KiB) and Xen's ceiling (libxl's
        ``libxl_set_memory_target``).

        Writes ``memory/target``, which the guest's balloon driver follows, and
        sets Xen's ``max_pages`` to the target plus 1 MiB of slack
        (``LIBXL_MAXMEM_CONSTANT``). Does not wait for the guest: ``xl list``'s
        Mem column follows as the balloon moves.

        Returns:
            The domain's ``memory/static-max`` (KiB).

        Raises:
            ValueError: the domain is not running, the target is below 1 MiB,
                or above ``memory/static-max`` (xl.cfg ``maxmem``); nothing changed.
        """
        if rec.state != "running" or rec.domid is None:
            raise ValueError(f"{rec.name} is not running")
        if kib < KIB_PER_MIB:
            raise ValueError(f"{kib} KiB is below the 1 MiB minimum")
        base = f"{rec.dom_path}/memory"
        static_max = int((await self.xs.read(f"{base}/static-max")).decode())
        if kib > static_max:
            raise ValueError(f"{kib} KiB exceeds the domain's maximum "
                             f"(memory/static-max = {static_max} KiB)")
        await self.xs.write(f"{base}/target", str(kib))
        self.kernel.hc.domctl_max_mem(rec.domid, kib + KIB_PER_MIB)
        return static_max

    async def set_vcpus(self, rec: DomainRecord, n: int) -> int:
        """``xl vcpu-set``: vCPUs 0..n-1 online, the rest offline (libxl's
        ``libxl_set_vcpuonline`` for a PV guest).

        Writes ``cpu/<i>/availability`` = ``online``/``offline`` for every
        vCPU in one transaction; the guest kernel follows it with
        VCPUOP_up/_down (``xl list`` shows the change once it has).

        Returns:
            The domain's vCPU count (``maxvcpus``).

        Raises:
            ValueError: the domain is not running, or ``n`` is not
                1..maxvcpus (libxl: "Requested 0 VCPUs!", "Requested N VCPUs,
                however maxcpus is M!"); nothing changed.
        """
        if rec.state != "running" or rec.domid is None:
            raise ValueError(f"{rec.name} is not running")
        info = self._exists(rec.domid)
        if info is None:
            raise ValueError(f"{rec.name} is not running")
        max_vcpus = info.max_vcpu_id + 1
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"requested {n!r} vCPUs: at least 1 must stay online")
        if n > max_vcpus:
            raise ValueError(f"requested {n} vCPUs, however maxvcpus is {max_vcpus}")
        base = f"{rec.dom_path}/cpu"

        async def write(tx: XenStoreTransaction) -> None:
            for i in range(max_vcpus):
                await tx.write(f"{base}/{i}/availability", "online" if i < n else "offline")

        await self.xs.transaction(write)
        return max_vcpus

    async def destroy_all(self) -> None:
        """Destroy every domain (host shutdown)."""
        for rec in list(self.building):
            if rec.create_scope is not None:
                rec.create_scope.cancel()
        async with trio.open_nursery() as nursery:
            for rec in list(self.records.values()):
                nursery.start_soon(self.destroy, rec)

    # -- hot-plug (xl block-attach / network-attach / *-detach) -------------------------------

    async def attach_device(self, rec: DomainRecord, req: DeviceRequest) -> None:
        """Hot-plug a device into a running domain (libxl ``device_add``).

        The same one-transaction write as at create time (backend dir,
        frontend dir, ``/libxl`` copy); the device is recorded
        in the toolstack's private record *before* anything is written, so a
        destroy at any later point removes it. Returns once the backend
        reached InitWait (the guest's frontend connects on its own).

        Args:
            rec: the domain (the toolstack's record).
            req: the device (caller-controlled, e.g. from ``xl block-attach``).

        Raises:
            ConfigError: no backend driver for ``req.kind``, the device
                already exists, the domain is not running, or the backend
                failed (e.g. the image cannot be opened); nothing is left.
                Also ``console/0``: that is the primary console, which the
                builder sets up.
            TimeoutError: the backend did not reach InitWait within
                :data:`BACKEND_INITWAIT_TIMEOUT`; the device was removed again.
        """
        _refuse_primary_console(req)
        if req.kind not in self.kernel.backends.drivers:
            raise ConfigError(f"device {req.kind}/{req.devid}: no backend driver for "
                              f"{req.kind!r} is registered in dom0")
        async with rec.teardown_lock:  # never interleaves with destroy or another (de)tach
            d = rec.domid
            if rec.state != "running" or d is None:
                raise ConfigError(f"{rec.name}: cannot attach a device to a domain that "
                                  f"is {rec.state}")
            if any((r.kind, r.devid) == (req.kind, req.devid) for r in rec.devices):
                raise ConfigError(f"device {req.kind}/{req.devid} already exists in "
                                  f"{rec.name}")
            rec.devices.append(req)
            rec.devices_written.append(req)
            try:
                await self.xs.transaction(lambda tx: self._write_device(tx, rec, req))
                with trio.fail_after(BACKEND_INITWAIT_TIMEOUT):
                    await self._wait_backend_state(req.backend_path(d), 2)
                await self._check_backend_alive(req.backend_path(d), req)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._forget_device(rec, req, force=True)
                raise

    async def _check_backend_alive(self, bpath: str, req: DeviceRequest) -> None:
        """Raise ConfigError if the backend went to Closing/Closed instead of InitWait.

        That is how a backend reports a failed hotplug step (an image that
        cannot be opened); its ``hotplug-error`` key (dom0-owned) says why.
        """
        raw = await read_or_none(self.xs, f"{bpath}/state")
        if raw is not None and raw.isdigit() and 2 <= int(raw) <= 4:
            return
        why = await read_or_none(self.xs, f"{bpath}/hotplug-error")
        reason = why.decode("utf-8", "replace") if why else f"backend state {raw!r}"
        raise ConfigError(f"device {req.kind}/{req.devid}: the backend failed: {reason}")

    async def detach_device(self, rec: DomainRecord, kind: str, devid: int, *,
                            force: bool = False) -> None:
        """Hot-unplug a device (libxl ``device_remove``, or ``device_destroy`` if forced).

        Unforced, the xenbus close handshake runs (backend ``online = 0``,
        ``state = 5``; wait <= :data:`DEVICE_CLOSE_TIMEOUT` for Closed) when
        the guest can answer; then the directories are removed and the
        backend instance is waited for. A guest that cannot answer (paused,
        shut down) is not waited for.

        Args:
            rec: the domain (the toolstack's record).
            kind, devid: which device (caller-controlled).
            force: skip the handshake; remove the directories at once.

        Raises:
            KeyError: the toolstack's record has no such device.
            TimeoutError: unforced, and the backend did not reach Closed in
                time; the device stays recorded (detach again with ``force``).
        """
        async with rec.teardown_lock:
            req = next((r for r in rec.devices_written
                        if (r.kind, r.devid) == (kind, devid)), None)
            if req is None or rec.domid is None or rec.gone.is_set():
                raise KeyError(f"{rec.name}: no device {kind}/{devid}")
            await self._forget_device(rec, req, force=force)

    async def _forget_device(self, rec: DomainRecord, req: DeviceRequest, *,
                             force: bool) -> None:
        d = rec.domid
        assert d is not None
        back = self.kernel.backends.instance(req.kind, d, req.devid)
        if not force and self._guest_can_answer(d) and rec.kernel_started:
            with trio.move_on_after(DEVICE_CLOSE_TIMEOUT) as scope:
                await self._close_device(rec, req)
            if scope.cancelled_caught:
                raise TimeoutError(f"d{d} {rec.name}: device {req.kind}/{req.devid} did "
                                   f"not close within {DEVICE_CLOSE_TIMEOUT:.0f} s")
        await self._force_remove_device(rec, req, back)
        with contextlib.suppress(ValueError):
            rec.devices_written.remove(req)
        with contextlib.suppress(ValueError):
            rec.devices.remove(req)
        # libxl__xs_path_cleanup: drop the per-type parents the device left empty
        for parent in (f"/local/domain/0/backend/{req.kind}/{d}",
                       f"{rec.dom_path}/device/{req.kind}", f"/libxl/{d}/device/{req.kind}"):
            with contextlib.suppress(XenStoreError):
                if not await self.xs.directory(parent):
                    await self.xs.rm(parent)


def _cpu_set(cpulist: str, nr_cpus: int) -> list[int] | None:
    """An xl CPULIST as pCPU numbers (None = every pCPU)."""
    from dom0.toolstack.xlcfg import parse_cpulist

    cpus = parse_cpulist(cpulist, nr_cpus)
    return None if cpus is None or len(cpus) >= nr_cpus else sorted(cpus)


def sched_params(cfg: GuestConfig, nr_cpus: int) -> dict[str, Any]:
    """xl.cfg ``cpu_weight`` / ``cap`` / ``cpus`` as ``DomainConfig`` scheduler fields.

    A single CPULIST (or a per-vCPU list whose entries are all equal) becomes
    every vCPU's hard affinity at creation; differing per-vCPU lists are
    applied afterwards by :func:`pin_vcpus` (libxl does the same with
    ``xc_vcpu_setaffinity`` per vCPU).

    Raises:
        ConfigError: a CPULIST names a pCPU the host lacks.
    """
    cpus = cfg.cpus
    if isinstance(cpus, list):
        cpus = cpus[0] if cpus and len(set(cpus)) == 1 else None
    return {"weight": cfg.cpu_weight, "cap": cfg.cap,
            "cpus": None if cpus is None else _cpu_set(cpus, nr_cpus)}


def pin_vcpus(hc: HypercallInterface, domid: int, cfg: GuestConfig, nr_cpus: int) -> None:
    """Apply a per-vCPU ``cpus = ["0", "1-2", ...]`` list whose entries differ."""
    cpus = cfg.cpus
    if not isinstance(cpus, list) or len(set(cpus)) <= 1:
        return
    for vcpu in range(cfg.max_vcpus):
        cpulist = cpus[vcpu] if vcpu < len(cpus) else "all"
        hc.domctl_setvcpuaffinity(domid, vcpu, _cpu_set(cpulist, nr_cpus))


def _action_for(rec: DomainRecord) -> Action | None:
    reason = rec.shutdown_reason
    cfg = rec.config
    return {
        ShutdownReason.POWEROFF: cfg.on_poweroff,
        ShutdownReason.REBOOT: cfg.on_reboot,
        ShutdownReason.CRASH: cfg.on_crash,
        ShutdownReason.WATCHDOG: cfg.on_watchdog,
    }.get(ShutdownReason(reason)) if reason is not None else Action.DESTROY


async def _first_of(*fns: Callable[[], Awaitable[None]]) -> None:
    """Return as soon as any of ``fns`` returns."""
    async with trio.open_nursery() as nursery:
        for fn in fns:
            async def one(fn: Callable[[], Awaitable[None]] = fn) -> None:
                await fn()
                nursery.cancel_scope.cancel()
            nursery.start_soon(one)


def _refuse_primary_console(req: DeviceRequest) -> None:
    """``console/0`` is the primary console's node (``backend/console/<D>/0``), never a device."""
    if req.kind == "console" and req.devid == PRIMARY_CONSOLE_DEVID:
        raise ConfigError("device console/0 is the primary console, which the domain "
                          "builder sets up; secondary consoles are numbered from 1")


def console_device_request(devid: int, name: str | None = None) -> DeviceRequest:
    """A secondary PV console, ``device/console/<devid>`` (``hvc<devid>`` in the guest).

    The keys libxl's ``libxl__device_console_add`` writes for a console that
    is not the primary one (Xen's ``docs/misc/console.txt``): backend
    ``protocol``; frontend ``limit``, ``type = ioemu`` (served by a device model, QEMU in Xen),
    ``output``, ``tty`` (empty: no pty) and ``protocol``; ``name`` in both
    when given. The toolstack adds ``frontend``/``backend``, the ids,
    ``online`` and ``state``.

    Args:
        devid: the console number, >= 1 (caller-controlled).
        name: an optional name (libxl's channel name), 1..64 printable ASCII.

    Raises:
        ConfigError: ``devid`` < 1 (0 is the primary console) or a bad name.
    """
    if isinstance(devid, bool) or not isinstance(devid, int) or devid < 1:
        raise ConfigError(f"console {devid!r}: secondary consoles are numbered from 1 "
                          "(0 is the primary console)")
    back = {"protocol": CONSOLE_PROTOCOL_VT100}
    front = {"limit": str(CONSOLE_DEFAULT_LIMIT), "type": CONSOLE_TYPE_IOEMU,
             "output": CONSOLE_OUTPUT_PTY, "tty": "", "protocol": CONSOLE_PROTOCOL_VT100}
    if name is not None:
        if not 1 <= len(name) <= 64 or not name.isascii() or not name.isprintable():
            raise ConfigError(f"console {devid}: name {name!r} must be 1..64 printable "
                              "ASCII characters")
        back["name"] = front["name"] = name
    return DeviceRequest("console", devid, backend=back, frontend=front)


CHANNEL_CHARDEV_OUTPUT = "chardev:libxl-channel{devid}"
"""Frontend ``output`` of a ``connection=socket`` channel: QEMU's ``-chardev`` id in libxl."""


def channel_device_request(devid: int, channel: ChannelSpec) -> DeviceRequest:
    """The console device an xl.cfg ``channel=`` entry becomes (libxl's channel keys).

    libxl's ``libxl__init_console_from_channel`` and ``libxl__device_console_add``:
    the :func:`console_device_request` keys with the channel's ``name``, plus

    backend
        ``connection`` (``pty`` or ``socket``) and, for ``socket``, ``path``
        (the Unix socket the backend listens on; dom0-owned, read-only to
        the guest);
    frontend
        ``output``: ``pty``, or ``chardev:libxl-channel<devid>`` for ``socket``
        (in Xen it names the QEMU character device proxying the console).

    Args:
        devid: the console number, >= 1: channel ``i`` of a config is
            console ``i + 1`` (caller-controlled).
        channel: the channel (user-controlled; validated here).

    Raises:
        ConfigError: ``devid`` < 1 or a bad channel (see :meth:`ChannelSpec.validate`).
    """
    channel.validate()
    req = console_device_request(devid, channel.name)
    back = {**req.backend, "connection": channel.connection}
    output = CONSOLE_OUTPUT_PTY
    if channel.connection == "socket":
        assert channel.path is not None  # validate() checked it
        back["path"] = channel.path
        output = CHANNEL_CHARDEV_OUTPUT.format(devid=devid)
    return DeviceRequest("console", devid, backend=back,
                         frontend={**req.frontend, "output": output})


def _vbd_request(disk: Any) -> DeviceRequest:
    """The toolstack's keys for one disk, as libxl writes them (needs a vbd backend)."""
    devid = _vdev_number(disk.vdev)
    return DeviceRequest("vbd", devid, backend={
        "dev": disk.vdev, "type": disk.backendtype, "mode": "r" if disk.readonly else "w",
        "device-type": disk.devtype, "removable": "0", "bootable": "1",
        "discard-enable": "1" if disk.discard else "0", "specification": disk.specification,
        "params": disk.target, "script": f"/etc/xen/scripts/{disk.script}"},
        frontend={"virtual-device": str(devid), "device-type": disk.devtype,
                  "trusted": "1" if disk.trusted else "0"})


def vbd_device_request(disk: DiskSpec) -> DeviceRequest:
    """The device a :class:`DiskSpec` becomes (libxl's vbd keys, ``io/blkif.h``).

    Raises:
        ConfigError: a bad ``vdev`` or ``access``.
    """
    if not disk.vdev:
        raise ConfigError("disk: vdev is mandatory")
    if disk.access not in ("rw", "ro"):
        raise ConfigError(f"disk {disk.vdev} access {disk.access!r}: expected rw or ro")
    return _vbd_request(disk)


def _vdev_number(vdev: str) -> int:
    """The ``virtual-device`` number of a disk name (see :func:`xlcfg.vdev_number`)."""
    return vdev_number(vdev)


def _random_mac() -> str:
    """A random MAC in 00:16:3e (callers without a toolstack; prefer Toolstack.new_mac)."""
    b = random.getrandbits(24)
    return f"{XEN_OUI}:{(b >> 16) & 0x7F:02x}:{(b >> 8) & 0xFF:02x}:{b & 0xFF:02x}"


def _vif_request(vif: Any, index: int,
                 new_mac: Callable[[], str] | None = None) -> DeviceRequest:
    """The toolstack's keys for one vif, as libxl writes them (needs a vif backend).

    A vif without ``mac`` gets ``new_mac()`` once, here: the request is the
    toolstack's private record, so the MAC never changes for this device.
    """
    devid = vif.devid if vif.devid is not None else index
    mac = vif.mac or (new_mac or _random_mac)()
    return DeviceRequest("vif", devid, backend={
        "script": f"/etc/xen/scripts/{vif.script}", "mac": mac, "bridge": vif.bridge,
        "handle": str(devid), "type": "vif", "hotplug-status": "", "mtu": str(vif.mtu)},
        frontend={"handle": str(devid), "mac": mac, "mtu": str(vif.mtu),
                  "trusted": "1" if vif.trusted else "0"})


def vif_device_request(vif: VifSpec, devid: int, new_mac: Callable[[], str]) -> DeviceRequest:
    """The device a :class:`VifSpec` becomes (``xl network-attach``; libxl's vif keys).

    Args:
        vif: the interface (caller-controlled; validated here).
        devid: its device id when ``vif.devid`` is None.
        new_mac: MAC generator for a vif without one (:meth:`Toolstack.new_mac`).

    Raises:
        ConfigError: a malformed MAC, devid or MTU.
    """
    vif.validate()
    return _vif_request(vif, devid, new_mac)
