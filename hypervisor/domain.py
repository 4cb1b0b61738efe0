"""Domains: identity, lifecycle state, and the per-domain tables they own.

Theory of operation
-------------------
A :class:`Domain` bundles what Xen's ``struct domain`` holds: its id, name,
uuid, privilege, memory accounting (``tot_pages`` <= ``max_pages``), its p2m
and :class:`GuestMemory`, vCPUs, the shared_info frame, its event-channel
table, its grant table and its maptrack. The cross-domain operations live in
their own modules; :mod:`hypervisor.hypervisor` orchestrates creation and
destruction.

Lifecycle (xen-abi 11)::

    created (paused, pause_count 1) --unpause--> running/blocked
        --SCHEDOP_shutdown(reason)--> shutdown (first reason wins)
        --destroy--> dying: ports closed, own mappings dropped, RAM freed
        --last foreign mapping of its pages gone--> freed (removed from table)

A dying domain whose pages are still grant-mapped by another domain is a
*zombie*: it keeps its domid, grant table and shared_info until the last
mapping goes. Domids come from a rover (:class:`DomainTable`) that increments
and wraps below ``DOMID_FIRST_RESERVED``, skipping ids in use (zombies
included), so ids are not reused lowest-first.
"""

from __future__ import annotations

import enum
import struct
import uuid as uuidlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hypervisor.errno import Errno, XenError
from hypervisor.event_channel import DEFAULT_MAX_PORT, EvtchnTable
from hypervisor.grant_table import (
    DEFAULT_MAX_GRANT_FRAMES,
    DEFAULT_MAX_MAPTRACK_FRAMES,
    GrantTable,
    Maptrack,
)
from hypervisor.memory import P2M, GuestMemory, MachineMemory
from hypervisor.sched import RunState
from hypervisor.types import (
    DOMID_FIRST_RESERVED,
    PAGE_SHIFT,
    XEN_LEGACY_MAX_VCPUS,
    DomId,
    Mfn,
)
from hypervisor.vcpu import VCpu

if TYPE_CHECKING:
    from hypervisor.sched import Scheduler

MAX_PAUSE_COUNT = 255


class ShutdownReason(enum.IntEnum):
    """``SHUTDOWN_*`` (sched.h)."""

    POWEROFF = 0
    REBOOT = 1
    SUSPEND = 2
    CRASH = 3
    WATCHDOG = 4
    SOFT_RESET = 5


# XEN_DOMINF_* (domctl.h)
XEN_DOMINF_dying = 1 << 0
XEN_DOMINF_hvm_guest = 1 << 1
XEN_DOMINF_shutdown = 1 << 2
XEN_DOMINF_paused = 1 << 3
XEN_DOMINF_blocked = 1 << 4
XEN_DOMINF_running = 1 << 5
XEN_DOMINF_debugged = 1 << 6
XEN_DOMINF_xs_domain = 1 << 7
XEN_DOMINF_hap = 1 << 8
XEN_DOMINF_shutdownshift = 16
XEN_DOMINF_shutdownmask = 0xFF

SIF_PRIVILEGED = 1
SIF_INITDOMAIN = 2
START_INFO_MAGIC = b"xen-3.0-x86_64"
MAX_GUEST_CMDLINE = 1024
_START_INFO = struct.Struct("<32sQQI4xQI4xQI4xQ32x1024s16x")
assert _START_INFO.size == 1168  # struct start_info, x86_64


class DomainState(enum.Enum):
    """Coarse state for humans; getdomaininfo flags are the ABI."""

    PAUSED = "paused"
    RUNNING = "running"
    BLOCKED = "blocked"
    SHUTDOWN = "shutdown"
    DYING = "dying"


@dataclass
class StartInfo:
    """The PV ``start_info`` record (``xen.h``); :meth:`pack` gives Xen's 1168 bytes.

    The hypervisor fills nr_pages, shared_info and flags; the toolstack
    fills the store and console fields (``domctl setstartinfo``).
    """

    nr_pages: int
    shared_info: int  # machine address of the shared_info frame
    flags: int
    store_mfn: int = 0
    store_evtchn: int = 0
    console_mfn: int = 0
    console_evtchn: int = 0
    cmd_line: str = ""
    magic: bytes = START_INFO_MAGIC

    def pack(self) -> bytes:
        """The C struct (x86_64 layout; pt_base and module fields zero)."""
        cmd = self.cmd_line.encode()[: MAX_GUEST_CMDLINE - 1]
        return _START_INFO.pack(self.magic, self.nr_pages, self.shared_info, self.flags,
                                self.store_mfn, self.store_evtchn, self.console_mfn,
                                self.console_evtchn, 0, cmd)


@dataclass(frozen=True)
class DomainInfo:
    """``XEN_DOMCTL_getdomaininfo`` result (the fields xl uses)."""

    domid: DomId
    flags: int
    tot_pages: int
    max_pages: int
    shared_info_frame: Mfn
    nr_online_vcpus: int
    max_vcpu_id: int
    handle: uuidlib.UUID
    name: str
    cpu_time: int = 0

    @property
    def shutdown_reason(self) -> int | None:
        """The shutdown code if the shutdown flag is set."""
        if self.flags & XEN_DOMINF_shutdown:
            return (self.flags >> XEN_DOMINF_shutdownshift) & XEN_DOMINF_shutdownmask
        return None

    def xl_state(self) -> str:
        """xl list's six-column state, e.g. ``"-b----"`` or ``"---sc-"``."""
        f = self.flags
        reason = "-"
        if f & XEN_DOMINF_shutdown:
            reason = "-rscwS"[min(self.shutdown_reason or 0, 5)]
        return "".join([
            "r" if f & XEN_DOMINF_running else "-",
            "b" if f & XEN_DOMINF_blocked else "-",
            "p" if f & XEN_DOMINF_paused else "-",
            "s" if f & XEN_DOMINF_shutdown else "-",
            reason if f & XEN_DOMINF_shutdown else "-",
            "d" if f & XEN_DOMINF_dying else "-",
        ])


@dataclass(frozen=True)
class DomainConfig:
    """What ``domctl createdomain`` takes (chosen by the toolstack).

    Args:
        name: human name (xl's).
        max_pages: memory limit in 4 KiB pages.
        nr_pages: pages populated at creation (gfns 0..nr_pages-1).
        max_vcpus: vCPU count (1..32).
        domid: requested id, or 0 to take the next from the rover.
        max_evtchn_port: highest usable event-channel port.
        max_grant_frames / max_maptrack_frames: grant limits.
        privileged: control-domain privileges (only dom0 at boot by default).
        uuid: domain handle; random if None.
        cmdline: guest kernel command line for start_info.
        weight: credit scheduler weight, 1..65535 (xl.cfg ``cpu_weight``).
        cap: credit cap in % of one pCPU, 0 = none, at most 100 * max_vcpus
            (xl.cfg ``cap``).
        cpus: every vCPU's hard affinity (xl.cfg ``cpus``): ``"0-1,3"``,
            ``"all"``, pCPU numbers, or ``None`` for all pCPUs.
    """

    name: str = ""
    max_pages: int = 256
    nr_pages: int = 0
    max_vcpus: int = 1
    domid: int = 0
    max_evtchn_port: int = DEFAULT_MAX_PORT
    max_grant_frames: int = DEFAULT_MAX_GRANT_FRAMES
    max_maptrack_frames: int = DEFAULT_MAX_MAPTRACK_FRAMES
    privileged: bool = False
    uuid: uuidlib.UUID | None = None
    cmdline: str = ""
    weight: int = 256
    cap: int = 0
    cpus: str | Sequence[int] | None = None


class Domain:
    """One domain's hypervisor-side state (built only by :class:`Hypervisor`).

    Args:
        machine: machine memory.
        domid: the allocated id.
        config: the toolstack's configuration.
    """

    def __init__(self, machine: MachineMemory, domid: DomId, config: DomainConfig) -> None:
        if not 1 <= config.max_vcpus <= XEN_LEGACY_MAX_VCPUS:
            raise XenError(Errno.EINVAL, "max_vcpus must be 1..32")
        self.domid = domid
        self.name = config.name or f"Domain-{domid}"
        self.uuid = config.uuid or uuidlib.uuid4()
        self.privileged = config.privileged
        self.max_pages = config.max_pages
        self.p2m = P2M()
        self.memory = GuestMemory(machine, domid, self.p2m)
        (self.shared_info_mfn,) = machine.alloc(domid, 1)
        self.shared_info = machine.frame(self.shared_info_mfn)
        self.xenheap: list[Mfn] = [self.shared_info_mfn]
        self.evtchn = EvtchnTable(self.shared_info, config.max_evtchn_port)
        self.vcpus = [VCpu(self, i, self.shared_info) for i in range(config.max_vcpus)]
        self.grant_table = GrantTable(machine, domid, config.max_grant_frames)
        self.maptrack = Maptrack(config.max_maptrack_frames)
        self.pause_count = 1
        self.shutdown_code: int | None = None
        self.is_shut_down = False
        self.dying = False
        self.deferred_frames = 0
        self.pollers = 0
        self.runnable = False
        self._sched: Scheduler | None = None
        self.stats: defaultdict[str, int] = defaultdict(int)
        """Its statistics counters (the hypervisor installs its Statistics table here)."""
        self.start_info = StartInfo(
            nr_pages=0,
            shared_info=self.shared_info_mfn << PAGE_SHIFT,
            flags=(SIF_PRIVILEGED | SIF_INITDOMAIN) if config.privileged else 0,
            cmd_line=config.cmdline,
        )

    @property
    def tot_pages(self) -> int:
        """Pages of RAM currently populated."""
        return self.p2m.populated

    # -- the CPU scheduler ------------------------------------------------------------------

    def attach_scheduler(self, sched: Scheduler) -> None:
        """Called once the scheduler knows this domain and its vCPUs (by SchedOps).

        From now on the scheduler's pause state follows :attr:`runnable`.
        """
        self._sched = sched
        if not self.runnable:
            sched.pause_domain(self.domid)

    def detach_scheduler(self) -> None:
        """Called after the scheduler forgot this domain (destruction)."""
        self._sched = None

    @property
    def sched_attached(self) -> bool:
        """True while the domain is registered with the CPU scheduler."""
        return self._sched is not None

    @property
    def cpu_time_ns(self) -> int:
        """CPU time its vCPUs have had on pCPUs, in ns (``xl list`` Time(s))."""
        return sum(v.sched.cpu_time_ns for v in self.vcpus)

    def _update_runnable(self) -> None:
        """Recompute :attr:`runnable`; pause/unpause in the scheduler on a change."""
        was = self.runnable
        now = not (self.pause_count or self.is_shut_down or self.dying)
        if now == was:
            return
        self.runnable = now
        sched = self._sched
        if sched is not None:
            if now:
                sched.unpause_domain(self.domid)
            else:
                sched.pause_domain(self.domid)
        if now:
            for v in self.vcpus:
                v.kick()

    def pause(self) -> None:
        """Controller pause (``XEN_DOMCTL_pausedomain``).

        Raises:
            XenError: EINVAL if dying; EOVERFLOW past 255 pauses.
        """
        if self.dying:
            raise XenError(Errno.EINVAL, "domain is dying")
        if self.pause_count >= MAX_PAUSE_COUNT:
            raise XenError(Errno.EOVERFLOW, "pause count overflow")
        self.pause_count += 1
        self._update_runnable()

    def unpause(self) -> None:
        """Controller unpause (``XEN_DOMCTL_unpausedomain``).

        Raises:
            XenError: EINVAL if not paused by the controller or dying.
        """
        if self.dying or self.pause_count == 0:
            raise XenError(Errno.EINVAL, "domain is not paused")
        self.pause_count -= 1
        self._update_runnable()

    def shutdown(self, reason: int) -> bool:
        """``domain_shutdown``: record the reason (first one wins), stop the vCPUs.

        Returns:
            True if this call shut the domain down (so VIRQ_DOM_EXC is due).
        """
        if self.shutdown_code is None:
            self.shutdown_code = reason
        if self.is_shut_down or self.dying:
            return False
        self.is_shut_down = True
        self._update_runnable()
        return True

    def resume(self) -> None:
        """``XEN_DOMCTL_resumedomain``: undo a (suspend) shutdown."""
        if self.dying:
            raise XenError(Errno.EINVAL, "domain is dying")
        self.is_shut_down = False
        self.shutdown_code = None
        self._update_runnable()

    def state(self) -> DomainState:
        """Coarse human state."""
        if self.dying:
            return DomainState.DYING
        if self.is_shut_down:
            return DomainState.SHUTDOWN
        if self.pause_count:
            return DomainState.PAUSED
        if all(v.is_blocked for v in self.online_vcpus()):
            return DomainState.BLOCKED
        return DomainState.RUNNING

    def online_vcpus(self) -> list[VCpu]:
        """Its vCPUs that are up (not brought down with ``VCPUOP_down``)."""
        return [v for v in self.vcpus if v.sched.online]

    def info(self, calling: bool = False) -> DomainInfo:
        """getdomaininfo, flags per xen-abi 11.1.

        Only online vCPUs count, as in Xen (``_VPF_down`` ones are skipped):
        ``blocked``: every online vCPU waits in SCHEDOP_block/poll and wants
        no CPU. ``running``: some online vCPU is on a pCPU now -- or the
        domain is the one asking (``calling``), whose vCPU is running the
        hypercall (why ``xl list`` always shows dom0 as ``r``).
        ``nr_online_vcpus`` is their number (``xl list``'s VCPUs column);
        ``max_vcpu_id`` is that of the last vCPU, online or not.

        Args:
            calling: this domain is making the getdomaininfo call.
        """
        flags = 0
        if self.dying:
            flags |= XEN_DOMINF_dying
        if self.is_shut_down:
            flags |= XEN_DOMINF_shutdown
            flags |= ((self.shutdown_code or 0) & 0xFF) << XEN_DOMINF_shutdownshift
        if self.pause_count:
            flags |= XEN_DOMINF_paused
        online = self.online_vcpus()
        if not self.dying and not self.is_shut_down and online:
            # A shut-down domain's vCPUs are paused, not blocked (xl: ---sc-).
            if calling or any(v.sched.is_running for v in online):
                flags |= XEN_DOMINF_running
            elif all(v.is_blocked and v.sched.runstate == RunState.BLOCKED for v in online):
                flags |= XEN_DOMINF_blocked
        return DomainInfo(
            domid=self.domid, flags=flags, tot_pages=self.tot_pages, max_pages=self.max_pages,
            shared_info_frame=self.shared_info_mfn, nr_online_vcpus=len(online),
            max_vcpu_id=len(self.vcpus) - 1, handle=self.uuid, name=self.name,
            cpu_time=self.cpu_time_ns,
        )


class DomainTable:
    """domid -> Domain, with Xen's rover allocation.

    Dom0 is created with id 0 at boot; later ids come from a rover that
    increments, wraps from 0x7FEF back to 1, skips ids in use (zombies too)
    and never reaches ``DOMID_FIRST_RESERVED``.
    """

    def __init__(self) -> None:
        self._doms: dict[int, Domain] = {}
        self._rover = 0

    def get(self, domid: int) -> Domain | None:
        """The domain (live or zombie) with this id, or None."""
        return self._doms.get(domid)

    def __contains__(self, domid: int) -> bool:
        return domid in self._doms

    def __iter__(self) -> Iterator[Domain]:
        return iter(list(self._doms.values()))

    def __len__(self) -> int:
        return len(self._doms)

    def allocate_id(self, requested: int) -> DomId:
        """Pick the id for a new domain.

        Args:
            requested: toolstack's wish; 0 means "next from the rover".

        Raises:
            XenError: EINVAL reserved id; EEXIST id in use; ENOMEM none free.
        """
        if requested:
            if not 0 < requested < DOMID_FIRST_RESERVED:
                raise XenError(Errno.EINVAL, "reserved domid")
            if requested in self._doms:
                raise XenError(Errno.EEXIST, "domid in use")
            return DomId(requested)
        dom = self._rover
        for _ in range(DOMID_FIRST_RESERVED):
            dom += 1
            if dom >= DOMID_FIRST_RESERVED:
                dom = 1
            if dom not in self._doms:
                self._rover = dom
                return DomId(dom)
        raise XenError(Errno.ENOMEM, "no free domid")

    def add(self, d: Domain) -> None:
        """Insert a freshly built domain."""
        self._doms[d.domid] = d

    def remove(self, domid: int) -> None:
        """Forget a finally freed domain."""
        del self._doms[domid]
