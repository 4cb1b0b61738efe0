"""``xensim host``: a simulated Xen host in the foreground, driven over a control socket.

Theory of operation
-------------------
:func:`run_host` boots a host with :func:`~dom0.host.open_host` (hypervisor,
scheduler, dom0's xenstored / console daemon / backend bus / toolstack),
serves xenstored on a Unix socket for Xen's own tools
(``XENSTORED_PATH=... xenstore-ls /``) and serves the **control protocol**
on a second Unix socket for the ``xensim`` CLI, until SIGINT or SIGTERM.
Leaving destroys every guest and removes both sockets.

The control protocol
~~~~~~~~~~~~~~~~~~~~
Each message is one **frame**: a 4-byte big-endian length, then that many
bytes of msgpack. A frame longer than :data:`MAX_FRAME` is refused (the
daemon answers ``E2BIG`` and closes that connection: it cannot resync). A
well-framed message that is not valid msgpack, or not a request, gets an
``EPROTO`` error and the connection carries on. Requests and responses::

    -> {"op": "list", "args": {"domains": ["web"]}, "id": 7}
    <- {"id": 7, "ok": true, "result": [{"name": "web", "domid": 1, ...}]}
    <- {"id": 7, "ok": false, "error": {"code": "ENODOMAIN",
                                         "message": "domain 'web' does not exist"}}

A connection carries one request at a time (a client that wants several at
once opens several connections; the daemon serves up to
:data:`MAX_CLIENTS`). **Streaming** ops (``console``, ``create`` with
``console: true``, ``top``) answer with any number of events, then one
final response::

    <- {"id": 8, "ok": true, "event": {"data": b"hello\\n"}}      (repeated)
    <- {"id": 8, "ok": true, "result": {"reason": "detached"}}

While a stream runs, the client may send *control messages* on the same
connection: ``{"op": "input", "args": {"data": b"..."}}`` (console input),
``{"op": "detach"}`` / ``{"op": "cancel"}`` (end the stream). A client that
vanishes mid-stream just ends its stream.

Who controls what: every byte on the control socket comes from a local
user (the socket is created mode 0600); it is still parsed defensively --
bounded frames, validated fields -- and no request can make the daemon
exit: every failure becomes an error response for that client only.
Error codes are listed in :data:`ERROR_CODES`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

from dom0.console.daemon import ConsoleError, ConsoleSession
from dom0.host import DomainHandle, Host, SecondaryConsole, open_host
from dom0.toolstack.builder import CreateAborted, DomainRecord
from dom0.toolstack.config import ConfigError
from dom0.toolstack.control import (
    ERROR_CODES,
    MAX_CLIENTS,
    FrameDecoder,
    FrameTooLarge,
    ProtocolError,
    Request,
    SocketInUse,
    claim_socket,
    decode_body,
    encode_frame,
    error_response,
    parse_request,
    request_id,
)
from dom0.toolstack.xlcfg import loads_config, parse_disk_spec, parse_vif_spec
from domu.xenstore import XenStoreError, read_or_none
from hypervisor.domain import (
    ShutdownReason,
    XEN_DOMINF_blocked,
    XEN_DOMINF_dying,
    XEN_DOMINF_paused,
    XEN_DOMINF_running,
    XEN_DOMINF_shutdown,
)
from hypervisor.errno import XenError

__all__ = ["ERROR_CODES", "HostDaemon", "OpError", "import_drivers", "run_host", "serve_control"]

_log = logging.getLogger("xensim.hostd")

READ_SIZE = 65536
INPUT_QUEUE = 64
"""Console input messages queued while the guest is slow to read (then dropped)."""
CONSOLE_CONNECT_TIMEOUT = 10.0
"""Seconds ``console -n N`` waits for a secondary console's frontend to connect."""
FRAME_TIMEOUT = 10.0
"""Seconds a client has to finish a frame it started (slow-loris bound)."""


# ------------------------------------------------------------------------------------------
# Ops
# ------------------------------------------------------------------------------------------


class OpError(Exception):
    """An op failed in a way the client should be told about."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _no_domain(ident: object) -> OpError:
    return OpError("ENODOMAIN", f"domain '{ident}' does not exist")


def _arg(args: Mapping[str, Any], key: str, kind: type | tuple[type, ...], *,
         default: Any = ..., optional: bool = False) -> Any:
    """A typed argument (client data), or EINVAL."""
    if key not in args or (optional and args[key] is None):
        if default is not ...:
            return default
        if optional:
            return None
        raise OpError("EINVAL", f"missing argument {key!r}")
    value = args[key]
    if isinstance(value, bool) and kind is int:
        raise OpError("EINVAL", f"argument {key!r} must be an integer")
    if not isinstance(value, kind):
        raise OpError("EINVAL", f"argument {key!r} has the wrong type")
    return value


def _vcpu_pin_plan(args: Mapping[str, Any], name: str, vcpus: list[int], nr_cpus: int,
                   ) -> tuple[list[int], list[int] | None]:
    """Check a ``vcpu-pin`` request (client data) against the domain and host.

    Args:
        args: the request's ``vcpu``, ``hard``, ``soft`` and ``force``
            (see :meth:`HostDaemon.op_vcpu_pin`).
        name: the domain's name, for messages.
        vcpus: the domain's vCPU ids.
        nr_cpus: the host's pCPU count.

    Returns:
        The vCPUs to pin, and their new hard affinity (sorted pCPUs), or None
        to leave it as it is.

    Raises:
        OpError: EINVAL, saying what is wrong; nothing has been changed.
    """
    from dom0.toolstack.xlcfg import parse_cpulist

    vcpu = args.get("vcpu")
    if vcpu != "all" and (not isinstance(vcpu, int) or isinstance(vcpu, bool) or vcpu < 0):
        raise OpError("EINVAL", "vcpu-pin: the VCPU is a vCPU number or 'all'")
    hard = _arg(args, "hard", str, optional=True)
    soft = _arg(args, "soft", str, optional=True)
    force = _arg(args, "force", bool, default=False)
    if force and vcpu == "all":
        raise OpError("EINVAL", "vcpu-pin: --force and 'all' as VCPU not allowed")
    if soft not in (None, "all"):
        raise OpError("EINVAL", f"vcpu-pin: soft affinity is not simulated (vcpu-list always "
                      f"shows 'all'): give '-' or 'all' for it, not '{soft}'")
    if hard is None and soft is None and not force:  # libxl: no cpumap and no flag
        raise OpError("EINVAL", "vcpu-pin: nothing to change: the hard affinity is '-' and "
                      "no soft affinity is given")
    if vcpu == "all":
        targets = list(vcpus)
    elif vcpu in vcpus:
        targets = [vcpu]
    else:
        ids = f"0-{len(vcpus) - 1}" if len(vcpus) > 1 else "0"  # a domain's ids are 0..n-1
        raise OpError("EINVAL", f"vcpu-pin: {name} has no vCPU {vcpu} "
                      f"(it has {len(vcpus)}: {ids})")
    if hard is None:
        return targets, None
    try:
        cpus = parse_cpulist(hard, nr_cpus)
    except ConfigError as exc:
        raise OpError("EINVAL", f"vcpu-pin: {exc}") from None
    if not cpus:
        raise OpError("EINVAL", f"vcpu-pin: CPULIST `{hard}' leaves no pCPU to run on")
    return targets, sorted(cpus)


Stream = Callable[["_Client", Request, "trio.MemoryReceiveChannel[bytes]"], Awaitable[Any]]


class HostDaemon:
    """The control protocol's server side, over one booted :class:`Host`.

    Args:
        host: the running host.
        scheduler: its scheduler's name (``info``, ``sched-credit``).
    """

    def __init__(self, host: Host, scheduler: str = "credit") -> None:
        self.host = host
        self.scheduler = scheduler
        self.clients = 0
        self.ops: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "ping": self.op_ping, "list": self.op_list, "destroy": self.op_destroy,
            "shutdown": self.op_shutdown, "reboot": self.op_reboot, "pause": self.op_pause,
            "unpause": self.op_unpause, "mem-set": self.op_mem_set, "info": self.op_info,
            "block-attach": self.op_block_attach, "block-detach": self.op_block_detach,
            "network-attach": self.op_network_attach,
            "network-detach": self.op_network_detach,
            "sched-credit": self.op_sched_credit, "vcpu-list": self.op_vcpu_list,
            "vcpu-pin": self.op_vcpu_pin, "vcpu-set": self.op_vcpu_set,
            "channel-list": self.op_channel_list, "block-list": self.op_block_list,
            "network-list": self.op_network_list,
        }
        self.streams: dict[str, Stream] = {
            "create": self.stream_create, "console": self.stream_console, "top": self.stream_top,
        }

    # -- domain lookup ------------------------------------------------------------------------

    def _records(self) -> list[DomainRecord]:
        return sorted((r for r in self.host.toolstack.records.values()
                       if r.state != "gone" and r.domid is not None),
                      key=lambda r: r.domid or 0)

    def resolve(self, ident: object) -> int:
        """A domain name or id (client data) -> domid (0 for ``Domain-0``).

        Raises:
            OpError: ENODOMAIN.
        """
        if not isinstance(ident, str | int) or isinstance(ident, bool):
            raise OpError("EINVAL", "a domain is a name or a domid")
        text = str(ident)
        if text in ("0", "Domain-0"):
            return 0
        for rec in self._records():
            if rec.name == text or (text.isdigit() and rec.domid == int(text)):
                assert rec.domid is not None
                return rec.domid
        raise _no_domain(text)

    def guest(self, ident: object, what: str) -> DomainHandle:
        """A guest's handle; dom0 is refused for ``what``.

        Raises:
            OpError: ENODOMAIN; EINVAL for Domain-0.
        """
        domid = self.resolve(ident)
        if domid == 0:
            raise OpError("EINVAL", f"{what}: not possible on Domain-0")
        return DomainHandle(self.host, self.host.toolstack.records[domid])

    def _name(self, domid: int, fallback: str = "") -> str:
        if domid == 0:
            return "Domain-0"
        rec = self.host.toolstack.records.get(domid)
        return rec.name if rec is not None else fallback

    # -- plain ops ----------------------------------------------------------------------------

    async def op_ping(self, args: dict[str, Any]) -> Any:
        """Liveness and identity."""
        return {"pid": os.getpid(), "version": _version(), "scheduler": self.scheduler}

    async def op_list(self, args: dict[str, Any]) -> Any:
        """``xl list [DOMAIN...]``: rows, dom0 first."""
        wanted = _arg(args, "domains", list, default=[])
        ids = {self.resolve(d) for d in wanted}
        rows = []
        for r in self.host.list():
            if ids and r.domid not in ids:
                continue
            rows.append({"name": r.name, "domid": r.domid, "mem": r.mem_mib, "vcpus": r.vcpus,
                         "state": r.state, "time": r.time})
        return rows

    async def op_destroy(self, args: dict[str, Any]) -> Any:
        """``xl destroy DOMAIN``."""
        dom = self.guest(args.get("domain"), "destroy")
        await dom.destroy()
        return {"domid": dom.domid}

    async def op_shutdown(self, args: dict[str, Any]) -> Any:
        """``xl shutdown [-w] DOMAIN`` / ``-a``: write ``control/shutdown = poweroff``."""
        wait = _arg(args, "wait", bool, default=False)
        if _arg(args, "all", bool, default=False):
            doms = [DomainHandle(self.host, r) for r in self._records()
                    if r.state == "running"]
        else:
            doms = [self.guest(args.get("domain"), "shutdown")]
        async with trio.open_nursery() as nursery:
            for dom in doms:
                nursery.start_soon(lambda d=dom: d.shutdown("poweroff", wait=wait))
        return {"domids": [d.domid for d in doms]}

    async def op_reboot(self, args: dict[str, Any]) -> Any:
        """``xl reboot [-w] DOMAIN``: ``control/shutdown = reboot`` (a new domid follows)."""
        dom = self.guest(args.get("domain"), "reboot")
        wait = _arg(args, "wait", bool, default=False)
        await dom.shutdown("reboot", wait=wait)
        succ = dom.successor() if wait else None
        return {"domid": dom.domid, "new_domid": succ.domid if succ else None}

    async def op_pause(self, args: dict[str, Any]) -> Any:
        """``xl pause DOMAIN``: controller pause count + 1."""
        dom = self.guest(args.get("domain"), "pause")
        self.host.kernel.hc.domctl_pausedomain(dom.domid)
        return {"domid": dom.domid}

    async def op_unpause(self, args: dict[str, Any]) -> Any:
        """``xl unpause DOMAIN``: controller pause count - 1."""
        dom = self.guest(args.get("domain"), "unpause")
        self.host.kernel.hc.domctl_unpausedomain(dom.domid)
        return {"domid": dom.domid}

    async def op_mem_set(self, args: dict[str, Any]) -> Any:
        """``xl mem-set DOMAIN MEM``: see :meth:`Toolstack.set_memory_target`."""
        dom = self.guest(args.get("domain"), "mem-set")
        kib = _arg(args, "kib", int)
        try:
            static_max = await self.host.toolstack.set_memory_target(dom.record, kib)
        except ValueError as exc:
            raise OpError("EINVAL", f"mem-set: {exc}") from None
        return {"domid": dom.domid, "target_kib": kib, "static_max_kib": static_max}

    async def op_info(self, args: dict[str, Any]) -> Any:
        """``xl info``: ordered (key, value) pairs."""
        hc = self.host.kernel.hc
        phys = hc.sysctl_physinfo()
        ver = hc.xen_version()
        major, minor = ver >> 16, ver & 0xFFFF
        mib = 256  # pages per MiB
        pairs: list[tuple[str, Any]] = [
            ("host", socket.gethostname()), ("release", _version()),
            ("version", f"xensim {_version()} (simulated Xen on trio)"),
            ("machine", platform.machine() or "x86_64"),
            ("nr_cpus", phys.nr_cpus), ("max_cpu_id", phys.max_cpu_id),
            ("nr_nodes", phys.nr_nodes), ("cores_per_socket", phys.cores_per_socket),
            ("threads_per_core", phys.threads_per_core),
            ("cpu_mhz", f"{phys.cpu_khz // 1000}.{phys.cpu_khz % 1000:03d}"),
            ("hw_caps", ":".join(["00000000"] * 8)), ("virt_caps", "pv"),
            ("total_memory", phys.total_pages // mib), ("free_memory", phys.free_pages // mib),
            ("sharing_freed_memory", 0), ("sharing_used_memory", 0),
            ("outstanding_claims", 0), ("free_cpus", 0),
            ("xen_major", major), ("xen_minor", minor), ("xen_extra", "-xensim"),
            ("xen_version", f"{major}.{minor}-xensim"),
            ("xen_caps", "xen-3.0-x86_64 hvm-3.0-x86_64"),
            ("xen_scheduler", phys.scheduler), ("xen_pagesize", 4096),
            ("platform_params", "virt_start=0xffff800000000000"),
            ("xen_changeset", ""), ("xen_commandline", f"sched={phys.scheduler}"),
            ("cc_compiler", f"Python {platform.python_version()}"),
            ("cc_compile_by", ""), ("cc_compile_domain", ""), ("cc_compile_date", ""),
            ("build_id", ""), ("xend_config_format", 4),
        ]
        return [list(p) for p in pairs]

    async def op_block_attach(self, args: dict[str, Any]) -> Any:
        """``xl block-attach DOMAIN DISKSPEC``."""
        dom = self.guest(args.get("domain"), "block-attach")
        disk = parse_disk_spec(_arg(args, "spec", str))
        attach = getattr(dom, "attach_disk", None)
        if attach is None:
            raise OpError("ENOTSUP", "block-attach: this host has no disk hot-plug")
        devid = await attach(disk)
        return {"domid": dom.domid, "devid": devid, "vdev": disk.vdev}

    async def op_block_detach(self, args: dict[str, Any]) -> Any:
        """``xl block-detach DOMAIN VDEV``."""
        dom = self.guest(args.get("domain"), "block-detach")
        vdev = _arg(args, "vdev", str)
        detach = getattr(dom, "detach_disk", None)
        if detach is None:
            raise OpError("ENOTSUP", "block-detach: this host has no disk hot-plug")
        try:
            await detach(int(vdev) if vdev.isdigit() else vdev,
                         force=_arg(args, "force", bool, default=False))
        except KeyError:
            raise OpError("ENODEV", f"{dom.name} has no disk {vdev}") from None
        return {"domid": dom.domid}

    async def op_network_attach(self, args: dict[str, Any]) -> Any:
        """``xl network-attach DOMAIN VIFSPEC``."""
        dom = self.guest(args.get("domain"), "network-attach")
        used = {r.devid for r in dom.record.devices if r.kind == "vif"}
        vif = parse_vif_spec(_arg(args, "spec", str), max(used, default=-1) + 1)
        vif.validate()
        attach = getattr(dom, "attach_vif", None)
        if attach is not None:
            devid = await attach(vif)
        else:
            from dom0.toolstack.builder import _vif_request

            devid = vif.devid if vif.devid is not None else max(used, default=-1) + 1
            await dom.attach_device(_vif_request(vif, devid))
        return {"domid": dom.domid, "devid": devid}

    async def op_network_detach(self, args: dict[str, Any]) -> Any:
        """``xl network-detach DOMAIN DEVID|MAC``."""
        dom = self.guest(args.get("domain"), "network-detach")
        which = _arg(args, "device", str).lower()
        devid = None
        for r in dom.record.devices:
            if r.kind == "vif" and (str(r.devid) == which
                                    or str(r.backend.get("mac", "")).lower() == which):
                devid = r.devid
        if devid is None:
            raise OpError("ENODEV", f"{dom.name} has no network device {which}")
        detach = getattr(dom, "detach_vif", None)
        if detach is not None:
            await detach(devid)
        else:
            await dom.detach_device("vif", devid)
        return {"domid": dom.domid, "devid": devid}

    def _credit_pool(self) -> dict[str, Any]:
        policy = self.host.hv.sched.policy
        return {"name": "Pool-0", "tslice_ms": getattr(policy, "tslice_ms", 30),
                "ratelimit_us": getattr(policy, "ratelimit", 1_000_000) // 1000,
                "migration_delay_us": 0}

    async def op_sched_credit(self, args: dict[str, Any]) -> Any:
        """``xl sched-credit [-d DOMAIN [-w W] [-c CAP]]``."""
        hc = self.host.kernel.hc
        is_credit = self.host.hv.sched.policy.name == "credit"
        ident = args.get("domain")
        weight = _arg(args, "weight", int, optional=True)
        cap = _arg(args, "cap", int, optional=True)
        if ident is None:
            if weight is not None or cap is not None:
                raise OpError("EINVAL", "sched-credit: -w/-c need a domain (-d)")
            if not is_credit:
                return {"pools": [], "rows": []}
            rows = []
            for info in hc.sysctl_getdomaininfolist():
                try:
                    p = hc.domctl_scheduler_op(info.domid)
                except XenError:  # dying
                    continue
                rows.append({"name": self._name(info.domid, info.name), "domid": info.domid,
                             "weight": p.weight, "cap": p.cap})
            return {"pools": [self._credit_pool()], "rows": rows}
        domid = self.resolve(ident)
        if not is_credit:
            raise OpError("EINVAL", f"sched-credit: the host's scheduler is "
                          f"{self.host.hv.sched.policy.name}, not credit")
        p = hc.domctl_scheduler_op(domid, weight=weight, cap=cap)
        return {"pools": None, "rows": [{"name": self._name(domid), "domid": domid,
                                         "weight": p.weight, "cap": p.cap}]}

    async def op_vcpu_list(self, args: dict[str, Any]) -> Any:
        """``xl vcpu-list [DOMAIN...]``."""
        from hypervisor.sched import RunState

        hc = self.host.kernel.hc
        wanted = _arg(args, "domains", list, default=[])
        ids = [self.resolve(d) for d in wanted]
        infos = []
        for domid in ids or [None]:
            infos.extend(hc.sysctl_vcpu_list(domid))
        rows = [{"name": self._name(v.domid, f"d{v.domid}"), "domid": v.domid,
                 "vcpu": v.vcpu_id, "cpu": v.cpu, "online": v.runstate != RunState.OFFLINE,
                 "running": v.running, "blocked": v.blocked, "time": v.cpu_time,
                 "hard": sorted(v.affinity), "soft": None} for v in infos]
        return {"nr_cpus": hc.sysctl_physinfo().nr_cpus, "rows": rows}

    async def op_vcpu_pin(self, args: dict[str, Any]) -> Any:
        """``xl vcpu-pin [-f] DOMAIN VCPU|all HARD|- [SOFT|-]``: set hard affinity.

        Args (client data, checked by :func:`_vcpu_pin_plan` before anything
        changes): ``domain``; ``vcpu``, a vCPU number or ``"all"``; ``hard``,
        a CPULIST (xl.cfg ``cpus=`` syntax) or None to leave it; ``soft``,
        None or ``"all"`` (soft affinity is not simulated); ``force``.
        Domain-0 may be pinned, as with xl.

        Returns:
            ``domid``, the ``vcpus`` pinned and their new ``hard`` affinity
            (None when it was left alone).
        """
        domid = self.resolve(args.get("domain"))
        hc = self.host.kernel.hc
        vcpus = [v.vcpu_id for v in hc.sysctl_vcpu_list(domid)]
        targets, cpus = _vcpu_pin_plan(args, self._name(domid, f"d{domid}"), vcpus,
                                       hc.sysctl_physinfo().nr_cpus)
        if cpus is not None:
            for vcpu in targets:
                hc.domctl_setvcpuaffinity(domid, vcpu, cpus)
        return {"domid": domid, "vcpus": targets, "hard": cpus}

    async def op_vcpu_set(self, args: dict[str, Any]) -> Any:
        """``xl vcpu-set [-i] DOMAIN N``: vCPUs 0..N-1 online, the others offline.

        Args (client data): ``domain``; ``vcpus``, N (1..maxvcpus);
        ``ignore_host`` (xl's ``-i``): without it, asking for more vCPUs than
        are online *and* than the host has pCPUs is refused, as xl does.
        See :meth:`Toolstack.set_vcpus`; the guest kernel follows on its own.

        Returns:
            ``domid``, ``vcpus`` (N) and ``max_vcpus``.
        """
        dom = self.guest(args.get("domain"), "vcpu-set")
        n = _arg(args, "vcpus", int)
        ignore_host = _arg(args, "ignore_host", bool, default=False)
        hc = self.host.kernel.hc
        if not ignore_host:
            host_cpus = hc.sysctl_physinfo().nr_cpus
            try:
                online = hc.domctl_getdomaininfo(dom.domid).nr_online_vcpus
            except XenError:
                raise OpError("EINVAL", f"vcpu-set: {dom.record.name} is not running") from None
            if n > online and n > host_cpus:
                raise OpError("EINVAL", f"vcpu-set: you are overcommitting! You have "
                              f"{host_cpus} physical CPUs and want {n} vCPUs! Aborting, use "
                              f"--ignore-host to continue")
        try:
            max_vcpus = await self.host.toolstack.set_vcpus(dom.record, n)
        except ValueError as exc:
            raise OpError("EINVAL", f"vcpu-set: {exc}") from None
        return {"domid": dom.domid, "vcpus": n, "max_vcpus": max_vcpus}

    async def op_channel_list(self, args: dict[str, Any]) -> Any:
        """``xl channel-list DOMAIN...``: every secondary console, from xenstore.

        As libxl's ``libxl_device_channel_getinfo``: the devices listed under
        ``/libxl/<D>/device/console`` (console ``N`` >= 1 is channel ``N - 1``),
        the backend domain from the recorded backend path, ``state``,
        ``port`` and ``ring-ref`` from the frontend (-1 when absent or not a
        number: the guest writes them), ``connection``/``name``/``path`` from
        the dom0-owned backend directory and, for ``pty``, the frontend's
        ``tty`` (``/NO-SUCH-PATH`` when absent, as libxl).
        """
        rows: list[dict[str, Any]] = []
        for domid in self._resolve_all(args, "channel-list"):
            rows.extend(await self._channels(domid))
        return {"rows": rows}

    async def op_block_list(self, args: dict[str, Any]) -> Any:
        """``xl block-list DOMAIN...``: every virtual disk, from xenstore.

        As libxl's ``libxl_device_disk_getinfo``: the devices under
        ``/libxl/<D>/device/vbd`` in devid order, the backend path recorded
        there (a device without one, or with one that names no backend
        domain, is skipped, as xl skips a disk whose getinfo fails),
        ``state``, ``event-channel`` and ``ring-ref`` from the frontend (-1
        when absent or not a number: the guest writes them; a multi-page ring
        has ``ring-ref0``... instead, so -1 as in libxl), and the domain
        itself as ``frontend_id``.
        """
        xs = self.host.kernel.xs
        rows: list[dict[str, Any]] = []
        for domid in self._resolve_all(args, "block-list"):
            for devid, backend, backend_id, fe in await self._devices(domid, "vbd"):
                rows.append({
                    "domid": domid, "devid": devid, "backend_id": backend_id,
                    "frontend_id": domid, "backend": backend,
                    "state": _xs_int(await _xs_text(xs, f"{fe}/state")),
                    "evtch": _xs_int(await _xs_text(xs, f"{fe}/event-channel")),
                    "rref": _xs_int(await _xs_text(xs, f"{fe}/ring-ref")),
                })
        return {"rows": rows}

    async def op_network_list(self, args: dict[str, Any]) -> Any:
        """``xl network-list DOMAIN...``: every virtual interface, from xenstore.

        As libxl's ``libxl_device_nic_getinfo``: the devices under
        ``/libxl/<D>/device/vif`` in devid order with their recorded backend
        path (skipped when missing or unparsable), ``state``,
        ``event-channel``, ``tx-ring-ref`` and ``rx-ring-ref`` from the
        frontend (-1 when absent or not a number). The MAC comes from the
        dom0-owned backend directory (libxl keeps its own copy under
        ``/libxl``; xensim's toolstack writes it to the backend only);
        ``00:00:00:00:00:00`` if it is missing or malformed.
        """
        xs = self.host.kernel.xs
        rows: list[dict[str, Any]] = []
        for domid in self._resolve_all(args, "network-list"):
            for devid, backend, backend_id, fe in await self._devices(domid, "vif"):
                mac = (await _xs_text(xs, f"{backend}/mac") or "").lower()
                rows.append({
                    "domid": domid, "devid": devid, "backend_id": backend_id,
                    "backend": backend,
                    "mac": mac if _MAC.fullmatch(mac) else "00:00:00:00:00:00",
                    "state": _xs_int(await _xs_text(xs, f"{fe}/state")),
                    "evtch": _xs_int(await _xs_text(xs, f"{fe}/event-channel")),
                    "rref_tx": _xs_int(await _xs_text(xs, f"{fe}/tx-ring-ref")),
                    "rref_rx": _xs_int(await _xs_text(xs, f"{fe}/rx-ring-ref")),
                })
        return {"rows": rows}

    def _resolve_all(self, args: dict[str, Any], op: str) -> list[int]:
        """The ``domains`` argument of a ``*-list`` op, resolved (all or nothing)."""
        wanted = _arg(args, "domains", list)
        if not wanted:
            raise OpError("EINVAL", f"{op}: no domain given")
        return [self.resolve(ident) for ident in wanted]

    async def _devices(self, domid: int, kind: str) -> list[tuple[int, str, int, str]]:
        """``(devid, backend path, backend domid, frontend path)`` for each
        device of ``kind`` that libxl's records (``/libxl/<D>/device/<kind>``)
        describe, in devid order."""
        xs = self.host.kernel.xs
        lib = f"/libxl/{domid}/device/{kind}"
        try:
            names = await xs.directory(lib)
        except XenStoreError:
            return []
        out = []
        for devid in sorted(int(x) for x in names if x.isdigit() and len(x) <= 10):
            backend = await _xs_text(xs, f"{lib}/{devid}/backend")
            m = None if backend is None else _BACKEND_PATH.match(backend)
            if backend is None or m is None:
                continue  # libxl's getinfo fails and xl skips the device
            out.append((devid, backend, int(m.group(1)),
                        f"/local/domain/{domid}/device/{kind}/{devid}"))
        return out

    async def _channels(self, domid: int) -> list[dict[str, Any]]:
        xs = self.host.kernel.xs
        rows = []
        for n, backend, backend_id, fe in await self._devices(domid, "console"):
            if n < 1:
                continue  # console 0 is the primary console, not a channel
            connection = await _xs_text(xs, f"{backend}/connection") or "pty"
            row: dict[str, Any] = {
                "domid": domid, "idx": n - 1, "backend_id": backend_id,
                "state": _xs_int(await _xs_text(xs, f"{fe}/state")),
                "evtch": _xs_int(await _xs_text(xs, f"{fe}/port")),
                "rref": _xs_int(await _xs_text(xs, f"{fe}/ring-ref")),
                "connection": connection,
                "name": await _xs_text(xs, f"{backend}/name"),
                "path": await _xs_text(xs, f"{backend}/path"),
                "tty": None,
            }
            if connection == "pty":
                tty = await _xs_text(xs, f"{fe}/tty")
                row["tty"] = "/NO-SUCH-PATH" if tty is None else tty
            rows.append(row)
        return rows

    # -- streams ------------------------------------------------------------------------------

    async def stream_create(self, client: _Client, req: Request,
                            control: trio.MemoryReceiveChannel[bytes]) -> Any:
        """``xl create CFG [-c]``: build; with ``console`` stream its console at once."""
        args = req.args
        text = _arg(args, "config", str)
        filename = _arg(args, "filename", str, default="<control>")
        extra = _arg(args, "extra", str, optional=True)
        config, warnings = loads_config(text, filename, extra)
        handle = await self.host.create(config)
        created = {"domid": handle.domid, "name": handle.name, "warnings": warnings}
        if not _arg(args, "console", bool, default=False):
            return created
        await client.send({"id": req.id, "ok": True, "event": {"created": created}})
        # no checkpoint between create returning and attaching: nothing is missed
        return await self._console(client, req, control, handle.domid, replay=True)

    async def stream_console(self, client: _Client, req: Request,
                             control: trio.MemoryReceiveChannel[bytes]) -> Any:
        """``xl console [-n NUM] DOMAIN``: output as events, input as control messages.

        ``num`` 0 (the default) is the primary console; ``num`` >= 1 is
        secondary console ``num`` (``device/console/<num>``, a channel).
        """
        domid = self.resolve(req.args.get("domain"))
        replay = _arg(req.args, "replay", bool, default=True)
        num = _arg(req.args, "num", int, default=0)
        if num < 0:
            raise OpError("EINVAL", f"console: invalid console number {num}")
        if num == 0:
            return await self._console(client, req, control, domid, replay=replay)
        return await self._secondary_console(client, req, control, domid, num, replay)

    async def _secondary_console(self, client: _Client, req: Request,
                                 control: trio.MemoryReceiveChannel[bytes], domid: int,
                                 num: int, replay: bool) -> Any:
        """Secondary console ``num``: its backend's session, streamed like the primary's."""
        name = self._name(domid, str(domid))
        if domid == 0:
            raise OpError("ENODEV", f"{name} has no console {num}")
        handle = DomainHandle(self.host, self.host.toolstack.records[domid])
        try:
            con = handle.consoles[num]
        except KeyError:
            raise OpError("ENODEV", f"{name} has no console {num}") from None
        assert isinstance(con, SecondaryConsole)
        with trio.move_on_after(CONSOLE_CONNECT_TIMEOUT):
            while (back := con.backend()) is not None and not back.removed \
                    and not back.connected:
                await back.wait_changed()
        back = con.backend()
        if back is None or back.removed or not back.connected:
            raise OpError("EFAILED", f"{name}: console {num} is not connected "
                          "(the guest has not connected its frontend)")
        try:
            attach = back.attach(replay=replay)
        except ConsoleError as exc:
            raise OpError("EFAILED", f"{name}: console {num}: {exc}") from None
        result = await self._stream_session(client, req, control, attach, name)
        if result["reason"] in ("daemon stopped", "removed"):
            result = {"reason": "disconnected",
                      "message": f"{name}: console {num} disconnected"}
        elif result["reason"] == "broken":
            result = {"reason": "broken",
                      "message": f"{name}: console {num} broke (the guest corrupted its ring)"}
        return result

    async def _console(self, client: _Client, req: Request,
                       control: trio.MemoryReceiveChannel[bytes], domid: int,
                       replay: bool) -> Any:
        attach = self.host.kernel.console.attach(domid, replay=replay)
        return await self._stream_session(client, req, control, attach,
                                          self._name(domid, str(domid)))

    async def _stream_session(self, client: _Client, req: Request,
                              control: trio.MemoryReceiveChannel[bytes],
                              attach: AbstractAsyncContextManager[ConsoleSession],
                              name: str = "") -> dict[str, Any]:
        """Stream one console session: output as events, input from control messages."""
        try:
            session = await attach.__aenter__()
        except KeyError:
            raise OpError("ENODOMAIN", f"domain '{name}' has no console (it is gone)") from None
        except ConsoleError as exc:
            raise OpError("EFAILED", f"console: {exc}") from None
        reason = "detached"
        try:
            inputs_tx, inputs_rx = trio.open_memory_channel[bytes](INPUT_QUEUE)
            async with trio.open_nursery() as nursery:

                async def output() -> None:
                    nonlocal reason
                    async for chunk in session:
                        await client.send({"id": req.id, "ok": True, "event": {"data": chunk}})
                    reason = session.end_reason or "ended"
                    nursery.cancel_scope.cancel()

                async def typist() -> None:
                    async for data in inputs_rx:
                        with contextlib.suppress(ConsoleError):
                            await session.send(data)

                async def commands() -> None:
                    async for body in control:
                        msg = _control_message(body)
                        if msg is None or msg.op in ("detach", "cancel"):
                            break
                        data = msg.args.get("data") if msg.op == "input" else None
                        if isinstance(data, bytes | str):
                            raw = data.encode() if isinstance(data, str) else data
                            with contextlib.suppress(trio.WouldBlock):
                                inputs_tx.send_nowait(raw)  # a slow guest loses input
                    nursery.cancel_scope.cancel()

                nursery.start_soon(output)
                nursery.start_soon(typist)
                nursery.start_soon(commands)
        finally:
            with trio.CancelScope(shield=True):
                await attach.__aexit__(None, None, None)
        return {"reason": reason}

    def snapshot(self) -> dict[str, Any]:
        """Raw counters for ``top`` (derived values are the client's job)."""
        hc = self.host.kernel.hc
        phys = hc.sysctl_physinfo()
        ver = hc.xen_version()
        devs = _device_counters(self.host)
        doms = []
        for info in hc.sysctl_getdomaininfolist():
            f = info.flags
            reason = info.shutdown_reason
            d = devs.get(info.domid, {})
            doms.append({
                "name": self._name(info.domid, info.name), "domid": info.domid,
                "flags": {"dying": bool(f & XEN_DOMINF_dying),
                          "shutdown": bool(f & XEN_DOMINF_shutdown),
                          "blocked": bool(f & XEN_DOMINF_blocked),
                          "crashed": reason == ShutdownReason.CRASH,
                          "paused": bool(f & XEN_DOMINF_paused),
                          "running": bool(f & XEN_DOMINF_running)},
                "cpu_ns": info.cpu_time, "mem_kib": info.tot_pages * 4,
                "maxmem_kib": info.max_pages * 4, "vcpus": info.nr_online_vcpus,
                **{k: d.get(k, 0) for k in _COUNTER_KEYS},
            })
        return {"now": trio.current_time(), "xen_version": f"{ver >> 16}.{ver & 0xFFFF}-xensim",
                "nr_cpus": phys.nr_cpus, "cpu_mhz": phys.cpu_khz // 1000,
                "total_kib": phys.total_pages * 4, "free_kib": phys.free_pages * 4,
                "domains": doms}

    async def stream_top(self, client: _Client, req: Request,
                         control: trio.MemoryReceiveChannel[bytes]) -> Any:
        """``xl top``: a snapshot every ``delay`` s, ``iterations`` times (0 = until cancelled)."""
        delay = _arg(req.args, "delay", int | float, default=1.0)
        iterations = _arg(req.args, "iterations", int, default=0)
        if not 0.01 <= delay <= 3600 or iterations < 0:
            raise OpError("EINVAL", "top: delay must be 0.01..3600 s, iterations >= 0")
        sent = 0
        while True:
            await client.send({"id": req.id, "ok": True, "event": self.snapshot()})
            sent += 1
            if iterations and sent >= iterations:
                return {"frames": sent}
            with trio.move_on_after(delay):
                with contextlib.suppress(trio.EndOfChannel):
                    await control.receive()  # any control message (or EOF) ends it
                return {"frames": sent}

    # -- dispatch -----------------------------------------------------------------------------

    async def handle(self, client: _Client, req: Request,
                     control: trio.MemoryReceiveChannel[bytes]) -> dict[str, Any]:
        """Run one request; every failure becomes an error response."""
        try:
            if req.op in self.streams:
                result = await self.streams[req.op](client, req, control)
            elif req.op in self.ops:
                result = await self.ops[req.op](req.args)
            else:
                return error_response(req.id, "EUNKNOWNOP", f"unknown op {req.op!r}")
        except OpError as exc:
            return error_response(req.id, exc.code, str(exc))
        except ConfigError as exc:
            return error_response(req.id, "ECONFIG", str(exc))
        except XenError as exc:
            return error_response(req.id, "EXEN", f"{req.op}: {exc}")
        except (TimeoutError, trio.TooSlowError) as exc:
            return error_response(req.id, "ETIMEDOUT", f"{req.op}: timed out ({exc})")
        except CreateAborted as exc:
            return error_response(req.id, "EFAILED", f"{req.op}: {exc}")
        except _ClientGone:
            raise
        except Exception as exc:
            _log.exception("op %s failed", req.op)
            return error_response(req.id, "EINTERNAL",
                                  f"{req.op}: internal error: {type(exc).__name__}: {exc}")
        return {"id": req.id, "ok": True, "result": result}

    async def serve_client(self, stream: trio.abc.Stream) -> None:
        """One connection: read frames, answer requests one at a time; never raises."""
        client = _Client(stream)
        self.clients += 1
        try:
            if self.clients > MAX_CLIENTS:
                await client.send(error_response(None, "EBUSY", "too many clients"))
                return
            await self._serve(client)
        except (_ClientGone, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # a daemon bug: this client loses, everyone else carries on
            if not _client_went_away(exc):
                _log.exception("control client failed")
        finally:
            self.clients -= 1
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await stream.aclose()

    async def _serve(self, client: _Client) -> None:
        frames_tx, frames_rx = trio.open_memory_channel[bytes](16)
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                decoder = FrameDecoder()
                async with frames_tx:
                    while True:
                        if decoder.pending:
                            with trio.move_on_after(FRAME_TIMEOUT):
                                data = await client.receive()
                                if data is None:
                                    return
                                bodies = decoder.feed(data)
                                for body in bodies:
                                    await frames_tx.send(body)
                                continue
                            return  # an unfinished frame for too long: drop the client
                        data = await client.receive()
                        if data is None:
                            return
                        try:
                            bodies = decoder.feed(data)
                        except FrameTooLarge as exc:
                            await client.send(error_response(None, exc.code, str(exc)))
                            return
                        for body in bodies:
                            await frames_tx.send(body)

            async def guarded_reader() -> None:
                try:
                    await reader()
                except FrameTooLarge as exc:
                    with contextlib.suppress(_ClientGone):
                        await client.send(error_response(None, exc.code, str(exc)))
                except _ClientGone:
                    pass

            nursery.start_soon(guarded_reader)
            async for body in frames_rx:
                try:
                    obj = decode_body(body)
                    req = parse_request(obj)
                except ProtocolError as exc:
                    rid = None
                    with contextlib.suppress(ProtocolError):
                        rid = request_id(decode_body(body))
                    await client.send(error_response(rid, exc.code, str(exc)))
                    continue
                await client.send(await self.handle(client, req, frames_rx))
            nursery.cancel_scope.cancel()


def _client_went_away(exc: BaseException) -> bool:
    """``exc`` (possibly a nursery's exception group) only says the client left."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_client_went_away(e) for e in exc.exceptions)
    return isinstance(exc, _ClientGone | trio.BrokenResourceError | trio.ClosedResourceError)


_COUNTER_KEYS = ("nets", "net_tx_bytes", "net_rx_bytes", "vbds", "vbd_oo", "vbd_rd",
                 "vbd_wr", "vbd_rsect", "vbd_wsect")


def _stat(instance: Any, name: str, key: str | None = None) -> int:
    """A backend's counter from its ``stats`` object (0 if the driver has none)."""
    value = getattr(getattr(instance, "stats", None), name, None)
    if key is not None:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _device_counters(host: Host) -> dict[int, dict[str, int]]:
    """Per-domain block and network counters from dom0's backend instances.

    blkback's ``BlkbackStats``: VBD_RD/VBD_WR are read/write requests,
    VBD_RSECT/VBD_WSECT the bytes moved in 512-byte sectors, VBD_OO the
    passes that found the ring full. netback's ``NetbackStats`` already
    count from the guest's point of view (tx = sent by the guest), as
    xentop's NETTX/NETRX do.
    """
    out: dict[int, dict[str, int]] = {}
    for (kind, domid, _devid), runner in list(host.kernel.backends.devices.items()):
        inst = getattr(runner, "instance", None)
        c = out.setdefault(domid, dict.fromkeys(_COUNTER_KEYS, 0))
        if kind == "vbd":
            c["vbds"] += 1
            c["vbd_oo"] += _stat(inst, "ring_full")
            c["vbd_rd"] += _stat(inst, "requests", "read")
            c["vbd_wr"] += _stat(inst, "requests", "write")
            c["vbd_rsect"] += _stat(inst, "bytes_read") // 512
            c["vbd_wsect"] += _stat(inst, "bytes_written") // 512
        elif kind == "vif":
            c["nets"] += 1
            c["net_tx_bytes"] += _stat(inst, "tx_bytes")
            c["net_rx_bytes"] += _stat(inst, "rx_bytes")
    return out


_BACKEND_PATH = re.compile(r"^/local/domain/(\d+)/backend/")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


async def _xs_text(xs: Any, path: str) -> str | None:
    """A xenstore value as text, or None if it does not exist."""
    raw = await read_or_none(xs, path)
    return None if raw is None else raw.decode("utf-8", "replace")


def _xs_int(text: str | None) -> int:
    """A guest-written number, or -1 (absent or not a decimal number)."""
    if text is None or not text.isdigit() or len(text) > 10:
        return -1
    return int(text)


def _control_message(body: bytes) -> Request | None:
    """A control message during a stream, or None if it is garbage (which ends the stream)."""
    try:
        return parse_request(decode_body(body))
    except ProtocolError:
        return None


class _ClientGone(Exception):
    """The client's connection broke."""


class _Client:
    """One control connection's transport (send is serialised)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._send_lock = trio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        data = encode_frame(message)
        try:
            async with self._send_lock:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise _ClientGone() from None

    async def receive(self) -> bytes | None:
        try:
            data = await self.stream.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return None
        return data or None


def import_drivers() -> None:
    """Import every backend (``dom0.backends.*``) and frontend (``domu.frontends.*``) module,
    so each registers its driver; a module that fails to import is logged and skipped."""
    import importlib
    import pkgutil

    import dom0.backends
    import domu.frontends

    for pkg in (dom0.backends, domu.frontends):
        for mod in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
            try:
                importlib.import_module(mod.name)
            except Exception:  # a half-written driver must not stop the host
                _log.warning("driver module %s failed to import", mod.name, exc_info=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xensim")
    except PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------------------------
# Sockets and the daemon's life
# ------------------------------------------------------------------------------------------


async def serve_control(path: str, daemon: HostDaemon, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                        ) -> None:
    """Listen on ``path`` (mode 0600) and serve control clients until cancelled.

    The socket file is removed on exit.
    """
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(MAX_CLIENTS)
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(daemon.serve_client, [listener],
                                       handler_nursery=nursery)
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def run_host(control_path: str, xenstore_path: str | None, *, nr_pcpus: int = 2,
                   scheduler: str = "credit", memory_mib: int = 4096,
                   announce: Callable[[str], None] | None = None) -> int:
    """Run a host until SIGINT/SIGTERM; return the exit status.

    Args:
        control_path: the control socket (administrator's choice).
        xenstore_path: the xenstored socket, or None for none.
        nr_pcpus, scheduler, memory_mib: the simulated machine.
        announce: called with one-line status messages (default: stderr).

    Returns:
        0 after a clean shutdown; 1 if a socket path is taken.
    """
    say = announce or (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        claim_socket(control_path)
        if xenstore_path is not None:
            claim_socket(xenstore_path)
    except (SocketInUse, OSError) as exc:
        say(f"xensim: {exc}")
        return 1
    import_drivers()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_host(xenstore_socket=xenstore_path, check_leaks=False,
                             nr_pcpus=nr_pcpus, scheduler=scheduler,
                             memory_mib=memory_mib) as host:
            daemon = HostDaemon(host, scheduler)
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_control, control_path, daemon)
                say(f"xensim host: running (pid {os.getpid()}); control socket {control_path}"
                    + (f", xenstore socket {xenstore_path}" if xenstore_path else "")
                    + "; Ctrl-C to stop")
                async for signum in signals:
                    say(f"xensim host: {signal.Signals(signum).name}: destroying "
                        f"{len(host.toolstack.records)} guest(s) and shutting down")
                    break
                nursery.cancel_scope.cancel()
    say("xensim host: stopped")
    return 0
