"""The Python entry point: boot a simulated Xen host and drive it.

Usage (from ``trio.run`` or a pytest-trio test)::

    from dom0.host import open_host
    from dom0.toolstack.config import GuestConfig

    async def main():
        async with open_host() as host:
            dom = await host.create(GuestConfig(name="web", kernel="examples.hello:main"))
            print(host.format_list())                 # like `xl list`
            print(dom.console.log().decode())         # what it printed so far
            reason = await dom.wait()                 # until it is gone
    trio.run(main)

:func:`open_host` boots the hypervisor and dom0 (its kernel, xenstored,
console daemon, backend bus and toolstack) inside a nursery and yields a
:class:`Host`. Leaving the block destroys every guest and checks that every
resource (frames, ports, grants, mappings, xenstore nodes and watches, trio
tasks, open files) is back at its value right after boot; if not,
:class:`LeakError` is raised with a readable diff.

``dom.console`` is a domain's primary console; ``dom.consoles[N]`` reaches
every console by number, as ``xl console -n N`` counts them. Secondary
consoles come from the config's ``channels`` (channel ``i`` is console
``i + 1``, as in libxl), from
:func:`~dom0.toolstack.builder.console_device_request` at create time
(``host.create(config, devices=[...])``) or from
:meth:`DomainHandle.attach_console` later. A ``connection=socket`` channel is
also reachable from outside through its Unix socket
(:attr:`SecondaryConsole.path`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
import trio.testing

import dom0.backends.blkback  # registers the vbd backend
import dom0.backends.netback  # noqa: F401  (registers the vif backend)
from dom0.backends.bus import Backend
from dom0.backends.consoleback import ConsoleBack  # registers the console backend
from dom0.console.chardev import listening_sockets
from dom0.console.daemon import ConsoleGone, ConsoleSession, ConsoleStats
from dom0.kernel import Dom0Kernel
from dom0.toolstack.builder import (
    SHUTDOWN_TIMEOUT,
    DeviceRequest,
    DomainRecord,
    Toolstack,
    console_device_request,
    load_program,
    vbd_device_request,
    vif_device_request,
)
from dom0.toolstack.config import DiskSpec, GuestConfig, VifSpec
from dom0.toolstack.xlcfg import vdev_number
from domu.frontends.bus import Frontend
from domu.kernel import GuestKernel
from hypervisor.domain import DomainInfo, ShutdownReason
from hypervisor.errno import XenError
from hypervisor.hypervisor import DEFAULT_NR_PCPUS, Hypervisor

__all__ = [
    "DomainConsole",
    "DomainConsoles",
    "DomainHandle",
    "DomainRow",
    "Host",
    "LeakError",
    "SecondaryConsole",
    "open_host",
]

DEFAULT_MEMORY_MIB = 4096
DEFAULT_DOM0_MIB = 1
LIST_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"
VOLATILE_COUNTS = frozenset({"waiting_tasks"})
"""Counts that legitimately differ at rest (a parked vCPU is not a leak)."""


class LeakError(AssertionError):
    """Resources are not back at their baseline; the message is the diff."""


def diff_counts(before: Mapping[str, int], after: Mapping[str, int]) -> str:
    """Human diff of two :meth:`Host.resource_counts` snapshots ('' if equal)."""
    lines = []
    for key in sorted(set(before) | set(after)):
        if key in VOLATILE_COUNTS:
            continue
        b, a = before.get(key, 0), after.get(key, 0)
        if a != b:
            lines.append(f"  {key}: {b} -> {a} ({a - b:+d})")
    return "\n".join(lines)


@dataclass(frozen=True)
class DomainRow:
    """One ``xl list`` row."""

    name: str
    domid: int
    mem_mib: int
    vcpus: int
    state: str
    time: float

    def format(self) -> str:
        """xl's ``%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f``."""
        return (f"{self.name:<40} {self.domid:5d} {self.mem_mib:5d} {self.vcpus:5d}     "
                f"{self.state}  {self.time:8.1f}")


class DomainConsole:
    """A domain's primary console as dom0 sees it (``xl console``)."""

    def __init__(self, host: Host, rec: DomainRecord) -> None:
        self._host = host
        self._rec = rec

    def log(self) -> bytes:
        """Everything the guest printed (kept after the domain is gone)."""
        d = self._rec.domid
        daemon = self._host.kernel.console
        if d is not None and d in self._host.kernel.consoles:
            return daemon.log(d)
        return self._rec.final_console

    def attach(self, *, replay: bool = True) -> Any:
        """``async with dom.console.attach() as session``: live output and input.

        ``async for chunk in session`` yields output; ``await
        session.send(b"...")`` types into the guest.
        """
        return self._host.kernel.console.attach(self._rec.domid, replay=replay)

    async def send(self, data: bytes | str) -> None:
        """Type ``data`` into the guest's console."""
        raw = data.encode() if isinstance(data, str) else data
        async with self.attach(replay=False) as session:
            await session.send(raw)

    async def wait_for(self, needle: bytes | str, timeout: float = 10.0) -> bytes:
        """Wait until the console log contains ``needle``; return the log.

        Raises:
            TimeoutError: not within ``timeout`` seconds (trio clock).
        """
        raw = needle.encode() if isinstance(needle, str) else needle
        with trio.fail_after(timeout):
            if raw in self.log():
                return self.log()
            async with self.attach(replay=False) as session:
                if raw in self.log():
                    return self.log()
                async for _ in session:
                    if raw in self.log():
                        return self.log()
            if raw in self.log():
                return self.log()
            raise TimeoutError(f"console ended without {raw!r}")


class SecondaryConsole:
    """A domain's secondary console ``N`` as dom0 sees it (``xl console -n N``).

    Served by :class:`~dom0.backends.consoleback.ConsoleBack`: output and
    input flow while the guest's frontend is connected. Get one with
    ``dom.consoles[N]``. A channel (xl.cfg ``channel=``) is a named one;
    with ``connection=socket`` a client of its Unix socket sees the same
    output and types into the same input as this handle does.

    Attributes:
        devid: the console number (>= 1).
    """

    def __init__(self, host: Host, rec: DomainRecord, devid: int) -> None:
        self._host = host
        self._rec = rec
        self.devid = devid

    def __repr__(self) -> str:
        return f"<SecondaryConsole d{self._rec.domid} console/{self.devid}>"

    def _key(self, key: str) -> str | None:
        """A backend key as the toolstack recorded it (trusted; never read back from xenstore)."""
        for req in self._rec.devices:
            if (req.kind, req.devid) == ("console", self.devid):
                return req.backend.get(key)
        return None

    @property
    def name(self) -> str | None:
        """The channel name (None for an unnamed console)."""
        return self._key("name")

    @property
    def connection(self) -> str:
        """``socket`` for a socket channel, else ``pty`` (the default, even unnamed)."""
        return self._key("connection") or "pty"

    @property
    def path(self) -> str | None:
        """The Unix socket of a ``connection=socket`` channel (None otherwise)."""
        return self._key("path")

    @property
    def client_connected(self) -> bool:
        """A client of the channel's socket is being served now."""
        back = self.backend()
        return back is not None and back.client_connected

    async def wait_client(self, timeout: float = 10.0) -> None:
        """Wait until a client of the channel's socket is being served.

        From then on the client gets all the guest's output (earlier output
        is only in :meth:`log`).

        Raises:
            TimeoutError: not within ``timeout`` seconds (trio clock), or the
                device was unplugged first.
            ValueError: not a ``connection=socket`` channel.
        """
        if self.connection != "socket":
            raise ValueError(f"console {self.devid} is not a connection=socket channel")
        with trio.fail_after(timeout):
            while True:
                back = self.backend()
                if back is None or back.removed:
                    raise TimeoutError(f"console {self.devid} went away without a client")
                if back.client_connected:
                    return
                await back.wait_changed()

    def backend(self) -> ConsoleBack | None:
        """The backend instance serving it now (None before it exists and after unplug)."""
        d = self._rec.domid
        if d is None:
            return None
        inst = self._host.kernel.backends.instance("console", d, self.devid)
        return inst if isinstance(inst, ConsoleBack) else None

    @property
    def connected(self) -> bool:
        """Output flows and input can be sent now."""
        back = self.backend()
        return back is not None and back.connected

    def log(self) -> bytes:
        """What the guest printed on it (its backend's newest ``limit`` bytes).

        Kept after the device is unplugged or the domain is gone (the
        toolstack's record keeps it, as it keeps the primary console's).
        """
        back = self.backend()
        if back is not None:
            return back.log()
        return self._rec.final_consoles.get(self.devid, b"")

    def stats(self) -> ConsoleStats | None:
        """The console daemon's counters for it (None unless it is connected or was)."""
        back = self.backend()
        return back.stats() if back is not None else None

    def attach(self, *, replay: bool = True) -> AbstractAsyncContextManager[ConsoleSession]:
        """``async with dom.consoles[N].attach() as session``: live output and input.

        Raises:
            ConsoleGone: the console is not connected now.
        """
        back = self.backend()
        if back is None:
            raise ConsoleGone(f"{self._rec.name}: console {self.devid} has no backend")
        return back.attach(replay=replay)

    async def send(self, data: bytes | str) -> None:
        """Type ``data`` into it (waits while the guest's 1 KiB ``in`` ring is full).

        Raises:
            ConsoleGone: not connected, or it disconnected meanwhile.
            ConsoleBroken: the guest corrupted the ring's indices.
        """
        raw = data.encode() if isinstance(data, str) else data
        async with self.attach(replay=False) as session:
            await session.send(raw)

    async def wait_for(self, needle: bytes | str, timeout: float = 10.0) -> bytes:
        """Wait until its log contains ``needle``; return the log.

        Waits for the guest's frontend to connect (or reconnect) if need be.

        Raises:
            TimeoutError: not within ``timeout`` seconds (trio clock), or the
                device was unplugged first.
        """
        raw = needle.encode() if isinstance(needle, str) else needle
        with trio.fail_after(timeout):
            while raw not in self.log():
                back = self.backend()
                if back is None or back.removed:
                    raise TimeoutError(f"console {self.devid} went away without {raw!r}")
                if not back.connected:
                    await back.wait_changed()
                    continue
                async with back.attach(replay=False) as session:
                    if raw in self.log():
                        break
                    async for _ in session:  # ends when it disconnects or breaks
                        if raw in self.log():
                            break
            return self.log()


class DomainConsoles(Mapping[int, "DomainConsole | SecondaryConsole"]):
    """A domain's consoles by number, as ``xl console -n N`` counts them.

    ``consoles[0]`` is the primary console (``dom.console``); ``consoles[N]``
    is secondary console ``N`` for every ``console`` device the toolstack
    attached (:meth:`DomainHandle.attach_console`, or ``devices=`` at create).
    """

    def __init__(self, host: Host, rec: DomainRecord, primary: DomainConsole) -> None:
        self._host = host
        self._rec = rec
        self._primary = primary

    def _ids(self) -> list[int]:
        return sorted(r.devid for r in self._rec.devices if r.kind == "console")

    def __getitem__(self, n: int) -> DomainConsole | SecondaryConsole:
        """Console ``n``.

        Raises:
            KeyError: the domain has no such console.
        """
        if n == 0:
            return self._primary
        if n not in self._ids():
            raise KeyError(n)
        return SecondaryConsole(self._host, self._rec, n)

    def __iter__(self) -> Iterator[int]:
        return iter([0, *self._ids()])

    def __len__(self) -> int:
        return 1 + len(self._ids())


class DomainHandle:
    """A handle on one domain (one domid: a reboot makes a new one).

    Attributes:
        domid, name: identity.
        console: its primary console (:class:`DomainConsole`).
        consoles: every console by number (:class:`DomainConsoles`):
            ``consoles[0]`` is :attr:`console`, ``consoles[N]`` a
            :class:`SecondaryConsole`.
    """

    def __init__(self, host: Host, rec: DomainRecord) -> None:
        self._host = host
        self.record = rec
        self.domid = rec.domid
        self.name = rec.name
        self.console = DomainConsole(host, rec)
        self.consoles = DomainConsoles(host, rec, self.console)

    def __repr__(self) -> str:
        return f"<DomainHandle d{self.domid} {self.name} {self.record.state}>"

    @property
    def state(self) -> str:
        """``running`` / ``shutdown`` / ``dying`` / ``gone``."""
        return self.record.state

    @property
    def shutdown_reason(self) -> ShutdownReason | None:
        """The reason it shut down (None while it has not)."""
        r = self.record.shutdown_reason
        return ShutdownReason(r) if r is not None else None

    async def wait(self) -> ShutdownReason | None:
        """Wait until this domain is gone; return its shutdown reason (None if destroyed)."""
        await self.record.gone.wait()
        return self.shutdown_reason

    async def wait_shutdown(self) -> ShutdownReason | None:
        """Wait until the domain has shut down (or is gone); return the reason."""
        await self.record.shut.wait()
        return self.shutdown_reason

    async def shutdown(self, reason: str = "poweroff", *, wait: bool = True,
                       timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Ask the guest to shut down (``control/shutdown``); see :meth:`Toolstack.shutdown`."""
        await self._host.toolstack.shutdown(self.record, reason, wait=wait, timeout=timeout)

    async def reboot(self, *, timeout: float = SHUTDOWN_TIMEOUT) -> DomainHandle | None:
        """Reboot: returns the handle of the new domain (new domid, same name), if any."""
        await self.shutdown("reboot", timeout=timeout)
        succ = self.record.successor
        return DomainHandle(self._host, succ) if succ is not None else None

    async def destroy(self) -> None:
        """Destroy it now (``xl destroy``)."""
        await self._host.toolstack.destroy(self.record)

    def successor(self) -> DomainHandle | None:
        """The domain a restart created from this one, if any."""
        succ = self.record.successor
        return DomainHandle(self._host, succ) if succ is not None else None

    async def set_memory_target(self, kib: int) -> None:
        """``xl mem-set``: ask the guest's balloon for ``kib`` KiB; see
        :meth:`Toolstack.set_memory_target` (does not wait for the balloon).

        Raises:
            ValueError: not running, below 1 MiB or above ``maxmem``.
        """
        await self._host.toolstack.set_memory_target(self.record, kib)

    async def set_vcpus(self, n: int) -> None:
        """``xl vcpu-set``: vCPUs 0..n-1 online, the others offline; see
        :meth:`Toolstack.set_vcpus` (does not wait for the guest kernel).

        Raises:
            ValueError: not running, or ``n`` outside 1..maxvcpus.
        """
        await self._host.toolstack.set_vcpus(self.record, n)

    def _info(self) -> DomainInfo | None:
        """The hypervisor's getdomaininfo for this domain, or None once it is gone."""
        try:
            return self._host.kernel.hc.domctl_getdomaininfo(self.domid)
        except XenError:
            return None

    @property
    def online_vcpus(self) -> int:
        """vCPUs online now (``xl list``'s VCPUs column); 0 once it is gone."""
        info = self._info()
        return 0 if info is None else info.nr_online_vcpus

    @property
    def memory_kib(self) -> int:
        """KiB the domain has now (its populated pages: ``xl list``'s Mem, in KiB);
        0 once it is gone."""
        info = self._info()
        return 0 if info is None else info.tot_pages * 4

    # -- hot-plug (xl block-attach / block-detach / network-attach ...) ----------------------

    async def attach_device(self, req: DeviceRequest) -> None:
        """Hot-plug any device; see :meth:`Toolstack.attach_device`.

        Raises:
            ConfigError: no driver, duplicate device, domain not running, or
                the backend failed; nothing is left behind.
            TimeoutError: the backend did not reach InitWait in time.
        """
        await self._host.toolstack.attach_device(self.record, req)

    async def detach_device(self, kind: str, devid: int, *, force: bool = False) -> None:
        """Hot-unplug a device; see :meth:`Toolstack.detach_device`.

        Raises:
            KeyError: no such device.
            TimeoutError: unforced and the backend did not close in time.
        """
        await self._host.toolstack.detach_device(self.record, kind, devid, force=force)

    async def attach_disk(self, disk: DiskSpec) -> int:
        """``xl block-attach``: hot-plug a disk; returns its ``virtual-device`` number.

        Raises:
            ConfigError: bad vdev/access, vdev in use, the image cannot be
                opened by the backend, or the domain is not running.
            TimeoutError: the backend did not reach InitWait in time.
        """
        req = vbd_device_request(disk)
        await self.attach_device(req)
        return req.devid

    async def detach_disk(self, vdev: str | int, *, force: bool = False) -> None:
        """``xl block-detach``: hot-unplug the disk ``vdev`` (name or number).

        Raises:
            ConfigError: not a disk name.
            KeyError: no such disk.
            TimeoutError: unforced and the backend did not close in time.
        """
        devid = vdev if isinstance(vdev, int) else vdev_number(vdev)
        await self.detach_device("vbd", devid, force=force)

    async def attach_vif(self, vif: VifSpec | None = None) -> int:
        """``xl network-attach``: hot-plug a vif; returns its devid.

        Args:
            vif: the interface (default: ``VifSpec()``, bridge ``xenbr0``);
                without ``devid`` the lowest free one is used, without ``mac``
                the toolstack picks one in 00:16:3e (recorded, never changes).

        Raises:
            ConfigError: a malformed spec, devid in use, or the domain is not running.
            TimeoutError: the backend did not reach InitWait in time.
        """
        vif = vif or VifSpec()
        used = {r.devid for r in self.record.devices if r.kind == "vif"}
        devid = min(set(range(len(used) + 1)) - used)
        toolstack = self._host.toolstack
        await self.attach_device(vif_device_request(vif, devid, toolstack.new_mac))
        return vif.devid if vif.devid is not None else devid

    async def detach_vif(self, devid: int, *, force: bool = False) -> None:
        """``xl network-detach``: hot-unplug vif ``devid``.

        Raises:
            KeyError: no such vif.
            TimeoutError: unforced and the backend did not close in time.
        """
        await self.detach_device("vif", devid, force=force)

    async def attach_console(self, devid: int | None = None, *, name: str | None = None,
                             ) -> int:
        """Hot-plug a secondary console (``device/console/<N>``, ``hvc<N>`` in the guest).

        xl has no command for this (libxl adds secondary consoles at create,
        e.g. for ``channel=``); it is the same device add as for disks and vifs.

        Args:
            devid: the console number (default: the lowest free one, >= 1).
            name: an optional name, written to both directories.

        Returns:
            The console number; ``dom.consoles[N]`` reaches it.

        Raises:
            ConfigError: ``devid`` < 1, in use, a bad name, or the domain is
                not running.
            TimeoutError: the backend did not reach InitWait in time.
        """
        if devid is None:
            used = {r.devid for r in self.record.devices if r.kind == "console"}
            devid = min(set(range(1, len(used) + 2)) - used)
        await self.attach_device(console_device_request(devid, name))
        return devid

    async def detach_console(self, devid: int, *, force: bool = False) -> None:
        """Hot-unplug secondary console ``devid``.

        Raises:
            KeyError: no such console.
            TimeoutError: unforced and the backend did not close in time.
        """
        await self.detach_device("console", devid, force=force)


class Host:
    """A booted simulated host (made by :func:`open_host`).

    Attributes:
        hv: the hypervisor.
        kernel: dom0's kernel.
        toolstack: dom0's toolstack.
        guest_kernels: domid -> guest kernel (for tests and introspection).
    """

    def __init__(self, hv: Hypervisor, kernel: Dom0Kernel, toolstack: Toolstack,
                 nursery: trio.Nursery) -> None:
        self.hv = hv
        self.kernel = kernel
        self.toolstack = toolstack
        self.guest_kernels: dict[int, GuestKernel] = {}
        self._nursery = nursery
        self.baseline: dict[str, int] = {}

    async def create(self, config: GuestConfig, *,
                     devices: list[DeviceRequest] | None = None) -> DomainHandle:
        """Create a guest and return once it is running (booted).

        Raises:
            ConfigError, XenError, CreateAborted, TimeoutError: see
                :meth:`Toolstack.create`; nothing is left behind.
        """
        rec = await self.toolstack.create(config, devices=devices)
        return DomainHandle(self, rec)

    async def create_program(self, program: str | Callable[..., Awaitable[None]],
                             name: str, **config: Any) -> DomainHandle:
        """Shorthand: a guest running ``program`` with otherwise default config."""
        return await self.create(GuestConfig(name=name, kernel=program, **config))

    def domain(self, name_or_id: str | int) -> DomainHandle:
        """The live domain with that name or domid.

        Raises:
            KeyError: none.
        """
        for rec in self.toolstack.records.values():
            if rec.state == "gone":
                continue
            if rec.domid == name_or_id or rec.name == name_or_id:
                return DomainHandle(self, rec)
        raise KeyError(f"no domain {name_or_id!r}")

    async def destroy(self, dom: DomainHandle | str | int) -> None:
        """Destroy a domain (handle, name or domid)."""
        handle = dom if isinstance(dom, DomainHandle) else self.domain(dom)
        await handle.destroy()

    def list(self) -> list[DomainRow]:
        """``xl list`` rows, dom0 first."""
        rows = []
        for info in self.kernel.hc.sysctl_getdomaininfolist():
            rec = self.toolstack.records.get(info.domid)
            name = "Domain-0" if info.domid == 0 else (rec.name if rec else info.name)
            rows.append(DomainRow(name, info.domid, info.tot_pages * 4 // 1024,
                                  info.nr_online_vcpus, info.xl_state(), info.cpu_time / 1e9))
        return rows

    def format_list(self) -> str:
        """The ``xl list`` text: header and one row per domain."""
        return "\n".join([LIST_HEADER, *(r.format() for r in self.list())])

    def resource_counts(self) -> dict[str, int]:
        """Everything that could leak: hypervisor tables, xenstore, tasks, files."""
        counts = dict(self.hv.resource_counts())
        xs = self.kernel.xenstored.stats()
        for key in ("nodes", "watches", "connections", "transactions", "domains"):
            counts[f"xenstore_{key}"] = xs[key]
        counts["console_domains"] = len(self.kernel.console.domains())
        counts["backend_devices"] = len(self.kernel.backends.devices)
        counts["channel_sockets"] = len(listening_sockets())  # socket files not removed
        counts["bridge_ports"] = sum(len(b.ports) for b in self.kernel.bridges.values())
        counts["toolstack_records"] = len(self.toolstack.records)
        counts["tasks"] = _count_tasks(self._nursery)
        counts["open_fds"] = _open_fds()
        return counts

    def check_leaks(self) -> None:
        """Raise :class:`LeakError` unless every count is back at the baseline."""
        diff = diff_counts(self.baseline, self.resource_counts())
        if diff:
            raise LeakError("resources not back at baseline:\n" + diff)

    async def settle(self) -> None:
        """Let every task that can run, run (tests: before a leak check)."""
        await trio.testing.wait_all_tasks_blocked()


def _count_tasks(nursery: trio.Nursery) -> int:
    n = 0
    stack = list(nursery.child_tasks)
    while stack:
        task = stack.pop()
        n += 1
        for child in task.child_nurseries:
            stack.extend(child.child_tasks)
    return n


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux
        return 0


@asynccontextmanager
async def open_host(*, memory_mib: int = DEFAULT_MEMORY_MIB, dom0_mib: int = DEFAULT_DOM0_MIB,
                    xenstore_socket: str | None = None,
                    backend_drivers: Mapping[str, type[Backend]] | None = None,
                    frontend_drivers: Mapping[str, type[Frontend]] | None = None,
                    check_leaks: bool = True, nr_pcpus: int = DEFAULT_NR_PCPUS,
                    scheduler: str = "credit") -> AsyncIterator[Host]:
    """Boot a host: the hypervisor, dom0 and its services; yield a :class:`Host`.

    Args:
        memory_mib: machine memory (lazily backed: costs only what is used).
        dom0_mib: dom0's RAM.
        xenstore_socket: also serve xenstored on this Unix socket (for
            ``XENSTORED_PATH=... xenstore-ls``).
        backend_drivers / frontend_drivers: device type -> driver class,
            merged over the registries (:data:`~dom0.backends.bus.BACKEND_DRIVERS`,
            :data:`~domu.frontends.bus.FRONTEND_DRIVERS`, which importing a
            driver module fills): to add a type not registered by importing,
            or to replace one type's driver (e.g. a hostile one in a test).
            Every other registered type keeps its driver.
        check_leaks: on a clean exit, raise :class:`LeakError` if anything
            is not back at its post-boot value.
        nr_pcpus: physical CPUs the hypervisor's scheduler shares among vCPUs.
        scheduler: ``"credit"`` (credit1) or ``"rr"`` (Xen's ``sched=``).

    The hypervisor's scheduler service (:meth:`Hypervisor.run`) runs for the
    whole block, so guests can use CPU (``await guest.cpu.run(seconds)``).

    Raises:
        LeakError: see ``check_leaks``.
    """
    hv = Hypervisor(memory_bytes=memory_mib << 20, dom0_pages=dom0_mib * 256,
                    nr_pcpus=nr_pcpus, scheduler=scheduler)
    kernel = Dom0Kernel(hv.interface(0), backend_drivers=backend_drivers,
                        xenstore_socket=xenstore_socket)
    host_box: list[Host] = []

    def launcher(rec: DomainRecord) -> Callable[[], Awaitable[None]]:
        assert rec.domid is not None
        domid = rec.domid
        gk = GuestKernel(hv.interface(domid), load_program(rec.config.kernel),
                         frontend_drivers=frontend_drivers, on_booted=rec.booted.set)
        host_box[0].guest_kernels[domid] = gk

        async def run() -> None:
            try:
                await gk.run()
            finally:
                host_box[0].guest_kernels.pop(domid, None)
        return run

    toolstack = Toolstack(kernel, launcher)
    leak = ""
    async with hv.open_service(), trio.open_nursery() as nursery:
        await nursery.start(kernel.run)
        await nursery.start(toolstack.run)
        host = Host(hv, kernel, toolstack, nursery)
        host_box.append(host)
        await trio.testing.wait_all_tasks_blocked()
        host.baseline = host.resource_counts()
        clean = False
        try:
            yield host
            clean = True
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(SHUTDOWN_TIMEOUT):
                    await toolstack.destroy_all()
                if clean and check_leaks:
                    await trio.testing.wait_all_tasks_blocked()
                    leak = diff_counts(host.baseline, host.resource_counts())
                with trio.move_on_after(SHUTDOWN_TIMEOUT) as stopping:
                    toolstack.stop()
                    await toolstack.stopped.wait()
                    kernel.stop()  # in order, so no service loses its xenstore early
                    await kernel.stopped.wait()
            if stopping.cancelled_caught:
                nursery.cancel_scope.cancel()
    if leak:
        raise LeakError("resources not back at baseline after the host shut down:\n" + leak)
