"""The hypervisor object: owns machine memory, domains and every mechanism.

Theory of operation
-------------------
:class:`Hypervisor` builds machine memory, the domain table, the event
channel / grant table / memory services, the console, the physical platform
and the statistics hook, then creates dom0 (privileged, domid 0, unpaused as
Xen does at the end of boot). Guests never hold this object: the toolstack
hands each domain a :class:`~hypervisor.hypercall.HypercallInterface`
(:meth:`Hypervisor.interface`), which carries the domain's
:class:`~hypervisor.memory.GuestMemory` and start_info and routes every call
through the one hypercall table.

This module also holds the handlers that orchestrate several mechanisms:
domain creation and destruction (with zombies and VIRQ_DOM_EXC), sched_op,
vcpu_op (vCPU hot-plug), domctl, console_io and the simulation's foreign-mapping stand-in.

The CPU scheduler (:class:`~hypervisor.sched.Scheduler`, ``hv.sched``) is
the hypervisor's one asynchronous service: everything else is synchronous
and works without an event loop, but guest CPU consumption
(``HypercallInterface.compute``) and guest timers (``set_timer_op``) need
:meth:`Hypervisor.run` to be running: ``await nursery.start(hv.run)``.

Worked example::

    hv = Hypervisor(memory_bytes=64 << 20)
    dom0 = hv.interface(0)
    domid = dom0.domctl_createdomain(DomainConfig(name="guest", max_pages=64, nr_pages=16))
    guest = hv.interface(domid)
    port = dom0.evtchn_alloc_unbound(remote_dom=domid)
    gport = guest.evtchn_bind_interdomain(0, port)
    dom0.domctl_unpausedomain(domid)
    async with trio.open_nursery() as n:
        await n.start(hv.run)
        await guest.compute(0.010)      # 10 ms of pCPU time
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from hypervisor.console import DEFAULT_CONRING_SIZE, HypervisorConsole
from hypervisor.domain import Domain, DomainConfig, DomainInfo, DomainTable, ShutdownReason
from hypervisor.errno import Errno, XenError
from hypervisor.event_channel import (
    ECS_INTERDOMAIN,
    ECS_PIRQ,
    ECS_VIRQ,
    EVTCHN_2L_NR_CHANNELS,
    VIRQ_CON_RING,
    VIRQ_DOM_EXC,
    EventChannels,
)
from hypervisor.grant_table import (
    INITIAL_GRANT_FRAMES,
    GNTMAP_readonly,
    GrantTables,
    GTF_reading,
    GTF_writing,
)
from hypervisor.hypercall import HypercallInterface, build_table
from hypervisor.memory import DEFAULT_MACHINE_BYTES, MachineMemory
from hypervisor.memory_op import MemoryOps
from hypervisor.platform import DEFAULT_NR_PIRQS, Platform
from hypervisor.sched import Scheduler
from hypervisor.sched_ops import SchedOps
from hypervisor.stats import Statistics
from hypervisor.types import DOMID_SELF, INVALID_MFN, DomId, Gfn

XEN_VERSION = (4, 17)
XENVER_version = 0
DEFAULT_DOM0_PAGES = 256
DEFAULT_NR_PCPUS = 2


class Hypervisor:
    """The simulated Xen host.

    Args:
        memory_bytes: machine memory size (lazily backed).
        memory_path: back machine memory with this file (shared mapping).
        dom0_pages: RAM populated for dom0 at boot.
        dom0_max_pages: dom0's limit (defaults to ``dom0_pages``).
        nr_pirqs: physical IRQ lines.
        console_size: bytes kept by the hypervisor console ring.
        nr_pcpus: physical CPUs the scheduler shares among vCPUs.
        scheduler: ``"credit"`` (credit1, default) or ``"rr"`` (Xen's
            ``sched=`` boot option).
        dom0_vcpus: dom0's vCPU count.

    Raises:
        ValueError: ``nr_pcpus < 1`` or an unknown scheduler.
    """

    def __init__(self, memory_bytes: int = DEFAULT_MACHINE_BYTES, memory_path: str | None = None,
                 dom0_pages: int = DEFAULT_DOM0_PAGES, dom0_max_pages: int | None = None,
                 nr_pirqs: int = DEFAULT_NR_PIRQS,
                 console_size: int = DEFAULT_CONRING_SIZE, *,
                 nr_pcpus: int = DEFAULT_NR_PCPUS, scheduler: str = "credit",
                 dom0_vcpus: int = 1) -> None:
        self.sched = Scheduler(nr_pcpus, scheduler)
        self._started = False
        self.machine = MachineMemory(memory_bytes, memory_path)
        self.machine.on_deferred_release = self._frame_released
        self.stats = Statistics()
        self.domains = DomainTable()
        self.evtchn = EventChannels(self.domains.get, self.stats.hook)
        self.gnttab = GrantTables(self.machine, self.domains.get)
        self.memory_ops = MemoryOps(self.machine, self.domains.get)
        self.sched_ops = SchedOps(self.sched, self.domains.get, self.evtchn, self.machine)
        self.console = HypervisorConsole(console_size)
        self.platform = Platform(self._deliver_pirq, nr_pirqs)
        self.table = build_table(self)
        self.dom0 = self._build(DomId(0), DomainConfig(
            name="Domain-0", max_pages=dom0_max_pages or dom0_pages, nr_pages=dom0_pages,
            max_vcpus=dom0_vcpus, privileged=True,
            # dom0 binds two ports per guest (xenstore, console): give it the
            # whole 2-level space, as Xen does, not a guest's 1023.
            max_evtchn_port=EVTCHN_2L_NR_CHANNELS - 1))
        self.dom0.unpause()

    # -- the asynchronous service ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """The hypervisor's service task: the CPU scheduler. Runs until cancelled.

        Start it once, before guests compute: ``await nursery.start(hv.run)``.
        Until it runs, everything but CPU consumption (``compute`` raises
        RuntimeError) and guest timers (armed, fire once it runs) works.

        Raises:
            RuntimeError: it was already started.
        """
        if self._started:
            raise RuntimeError("the hypervisor is already started (hv.run runs once)")
        self._started = True
        async with trio.open_nursery() as nursery:
            await nursery.start(self.sched.run)
            task_status.started()

    @asynccontextmanager
    async def open_service(self) -> AsyncIterator[Hypervisor]:
        """Run :meth:`run` for the duration of the block (cancelled on exit).

        For boot code whose own nursery waits for its children to finish::

            async with hv.open_service():
                ...  # dom0 services, guests

        After the block, ``compute`` raises RuntimeError instead of hanging.
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self.run)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    # -- capabilities ----------------------------------------------------------------------

    def interface(self, domid: int) -> HypercallInterface:
        """The hypercall interface of domain ``domid`` (toolstack hands it out).

        Raises:
            KeyError: no such domain (a toolstack bug).
        """
        d = self.domains.get(domid)
        if d is None:
            raise KeyError(f"no domain {domid}")
        return HypercallInterface(self, d)

    # -- creation / destruction --------------------------------------------------------------

    def _build(self, domid: DomId, config: DomainConfig) -> Domain:
        d = Domain(self.machine, domid, config)
        d.stats = self.stats.counters(domid)
        try:
            self.sched_ops.attach(d, config)  # paused in the scheduler, like the domain
            d.grant_table.grow(INITIAL_GRANT_FRAMES)
            if config.nr_pages:
                if config.nr_pages > config.max_pages:
                    raise XenError(Errno.ENOMEM, "nr_pages > max_pages")
                self.memory_ops.populate(d, range(config.nr_pages), 0)
                if d.tot_pages != config.nr_pages:
                    raise XenError(Errno.ENOMEM, "could not populate initial memory")
        except BaseException:
            self.sched_ops.detach(d)
            self.machine.free(d.p2m.clear_all() + d.xenheap + d.grant_table.release_frames())
            raise
        d.start_info.nr_pages = d.tot_pages
        self.domains.add(d)
        return d

    def create_domain(self, config: DomainConfig) -> Domain:
        """Create a paused domain (``XEN_DOMCTL_createdomain`` body).

        Args:
            config: toolstack-chosen configuration.

        Raises:
            XenError: EINVAL/EEXIST bad requested id, vCPU count, scheduler
                weight/cap or cpus; ENOMEM no free id or not enough memory
                (nothing is left allocated).
        """
        domid = self.domains.allocate_id(config.domid)
        return self._build(domid, config)

    def destroy_domain(self, d: Domain) -> None:
        """Relinquish everything ``d`` holds; free it unless it is a zombie.

        Removes it from the CPU scheduler (tasks in ``compute`` get
        DomainDestroyed), closes its ports (peers become unbound), drops its own grant
        mappings, frees its RAM (frames still mapped by others are deferred)
        and raises VIRQ_DOM_EXC in dom0. If nothing is deferred the domain
        is freed at once (VIRQ_DOM_EXC again); otherwise it stays dying until
        the last foreign mapping of its pages is unmapped. Idempotent.
        """
        if d.dying:
            return
        d.dying = True
        d._update_runnable()
        for v in d.vcpus:
            v.kill()
        self.sched_ops.detach(d)
        self.evtchn.close_all(d)
        self.gnttab.release_mappings(d)
        d.deferred_frames += self.machine.free(d.p2m.clear_all())
        self._dom_exc()
        if not d.deferred_frames:
            self._final_free(d)

    def _final_free(self, d: Domain) -> None:
        self.machine.free(d.xenheap + d.grant_table.release_frames())
        d.xenheap = []
        self.domains.remove(d.domid)
        self.stats.forget(d.domid)
        self._dom_exc()

    def _frame_released(self, owner: DomId) -> None:
        d = self.domains.get(owner)
        if d is None:
            return
        d.deferred_frames -= 1
        if d.dying and not d.deferred_frames:
            self._final_free(d)

    def _dom_exc(self) -> None:
        dom0 = self.domains.get(0)
        if dom0 is not None and not dom0.dying:
            self.evtchn.send_global_virq(dom0, VIRQ_DOM_EXC)

    def _deliver_pirq(self, pirq: int) -> bool:
        for d in self.domains:
            if d.privileged and not d.dying and self.evtchn.send_pirq(d, pirq):
                return True
        return False

    def _target(self, domid: int) -> Domain:
        d = self.domains.get(domid)
        if d is None:
            raise XenError(Errno.ESRCH, f"no domain {domid}")
        return d

    # -- sched_op handlers (caller = calling domain; args guest-controlled) -------------------

    @staticmethod
    def _vcpu(caller: Domain, vcpu: int) -> Any:
        if not 0 <= vcpu < len(caller.vcpus):
            raise XenError(Errno.EINVAL, f"no vcpu {vcpu}")
        return caller.vcpus[vcpu]

    def sched_yield(self, caller: Domain, vcpu: int = 0) -> Any:
        """``SCHEDOP_yield`` (returns the awaitable)."""
        return self._vcpu(caller, vcpu).yield_()

    def sched_block(self, caller: Domain, vcpu: int = 0) -> Any:
        """``SCHEDOP_block`` (returns the awaitable; on every idle loop's hot path)."""
        vcpus = caller.vcpus
        if 0 <= vcpu < len(vcpus):
            return vcpus[vcpu].block()
        raise XenError(Errno.EINVAL, f"no vcpu {vcpu}")

    def sched_poll(self, caller: Domain, ports: Sequence[int], timeout: float | None = None,
                   vcpu: int = 0) -> Any:
        """``SCHEDOP_poll`` (returns the awaitable)."""
        return self._vcpu(caller, vcpu).poll(list(ports), timeout)

    @staticmethod
    def _reason(reason: int) -> int:
        if reason not in ShutdownReason._value2member_map_:
            raise XenError(Errno.EINVAL, f"bad shutdown reason {reason}")
        return reason

    def sched_shutdown(self, caller: Domain, reason: int) -> None:
        """``SCHEDOP_shutdown``: shut the caller down (first reason wins)."""
        if caller.shutdown(self._reason(reason)):
            self._dom_exc()

    def sched_shutdown_code(self, caller: Domain, reason: int) -> None:
        """``SCHEDOP_shutdown_code``: record the reason a later shutdown reports."""
        reason = self._reason(reason)
        if caller.shutdown_code is None:
            caller.shutdown_code = reason

    def sched_remote_shutdown(self, caller: Domain, domid: int, reason: int) -> None:
        """``SCHEDOP_remote_shutdown`` (privileged)."""
        d = self._target(domid)
        if d.shutdown(self._reason(reason)):
            self._dom_exc()

    # -- vcpu_op handlers (any domain, its own vCPUs; args guest-controlled) -----------------

    @staticmethod
    def _own_vcpu(caller: Domain, vcpuid: object) -> Any:
        """``domain_vcpu``: the caller's vCPU, or ENOENT (EINVAL for a non-integer)."""
        if isinstance(vcpuid, bool) or not isinstance(vcpuid, int):
            raise XenError(Errno.EINVAL, "vcpu id must be an integer")
        if not 0 <= vcpuid < len(caller.vcpus):
            raise XenError(Errno.ENOENT, f"no vcpu {vcpuid}")
        return caller.vcpus[vcpuid]

    def vcpu_up(self, caller: Domain, vcpuid: int) -> int:
        """``VCPUOP_up``: make one of the caller's vCPUs runnable again (no-op if up).

        Every simulated vCPU counts as initialised (there is no register
        state to load), so Xen's EINVAL for an uninitialised vCPU never
        happens.

        Returns:
            0.

        Raises:
            XenError: ENOENT no such vCPU; EINVAL a non-integer id.
        """
        v = self._own_vcpu(caller, vcpuid)
        v.sched.set_online(True)
        return 0

    def vcpu_down(self, caller: Domain, vcpuid: int) -> int:
        """``VCPUOP_down``: take one of the caller's vCPUs off the CPUs (no-op if down).

        As Xen's ``do_vcpu_op``: bringing down the last vCPU that is up
        instead shuts the domain down with ``SHUTDOWN_poweroff`` (the vCPU
        stays up). A vCPU on a pCPU leaves it at the next scheduling pass.

        Returns:
            0.

        Raises:
            XenError: ENOENT no such vCPU; EINVAL a non-integer id.
        """
        v = self._own_vcpu(caller, vcpuid)
        if not any(o is not v and o.sched.online for o in caller.vcpus):
            if caller.shutdown(ShutdownReason.POWEROFF):
                self._dom_exc()
            return 0
        v.sched.set_online(False)
        return 0

    def vcpu_is_up(self, caller: Domain, vcpuid: int) -> int:
        """``VCPUOP_is_up``: 1 if the vCPU is up, else 0.

        Raises:
            XenError: ENOENT no such vCPU; EINVAL a non-integer id.
        """
        return 1 if self._own_vcpu(caller, vcpuid).sched.online else 0

    # -- domctl / sysctl handlers (privileged) ------------------------------------------------

    def domctl_createdomain(self, caller: Domain, config: DomainConfig) -> DomId:
        """``XEN_DOMCTL_createdomain``; returns the new domid."""
        return self.create_domain(config).domid

    def domctl_destroydomain(self, caller: Domain, domid: int) -> None:
        """``XEN_DOMCTL_destroydomain`` (EINVAL on oneself)."""
        d = self._target(domid)
        if d is caller:
            raise XenError(Errno.EINVAL, "cannot destroy oneself")
        self.destroy_domain(d)

    def domctl_pausedomain(self, caller: Domain, domid: int) -> None:
        """``XEN_DOMCTL_pausedomain`` (EINVAL on oneself, EOVERFLOW past 255)."""
        d = self._target(domid)
        if d is caller:
            raise XenError(Errno.EINVAL, "cannot pause oneself")
        d.pause()

    def domctl_unpausedomain(self, caller: Domain, domid: int) -> None:
        """``XEN_DOMCTL_unpausedomain``."""
        d = self._target(domid)
        if d is caller:
            raise XenError(Errno.EINVAL, "cannot unpause oneself")
        d.unpause()

    def domctl_resumedomain(self, caller: Domain, domid: int) -> None:
        """``XEN_DOMCTL_resumedomain``: clear a shutdown (after suspend)."""
        self._target(domid).resume()

    def domctl_getdomaininfo(self, caller: Domain, domid: int) -> DomainInfo:
        """``XEN_DOMCTL_getdomaininfo`` (``cpu_time`` in ns from the scheduler)."""
        d = self._target(domid)
        return d.info(calling=d is caller)

    def domctl_max_mem(self, caller: Domain, domid: int, max_memkb: int) -> None:
        """``XEN_DOMCTL_max_mem``: set ``max_pages`` from KiB (may be below tot_pages)."""
        if max_memkb < 0:
            raise XenError(Errno.EINVAL, "negative max_memkb")
        self._target(domid).max_pages = max_memkb >> 2

    def domctl_setstartinfo(self, caller: Domain, domid: int, **fields: int | str) -> None:
        """Simulation op: the domain builder records store/console fields in start_info.

        (Real libxc writes start_info into guest memory itself.)
        """
        d = self._target(domid)
        allowed = {"store_mfn", "store_evtchn", "console_mfn", "console_evtchn", "cmd_line"}
        for k, v in fields.items():
            if k not in allowed:
                raise XenError(Errno.EINVAL, f"start_info field {k!r} not settable")
            setattr(d.start_info, k, v)
        # The builder populates RAM after createdomain; start_info describes
        # the memory the domain has when it is handed its start_info.
        d.start_info.nr_pages = d.tot_pages

    def sysctl_getdomaininfolist(self, caller: Domain, first_domid: int = 0,
                                 max_domains: int = 1024) -> list[DomainInfo]:
        """``XEN_SYSCTL_getdomaininfolist``: info of domains with id >= ``first_domid``."""
        ds = sorted((d for d in self.domains if d.domid >= first_domid), key=lambda d: d.domid)
        return [d.info(calling=d is caller) for d in ds[: max(max_domains, 0)]]

    def map_foreign(self, caller: Domain, domid: int, gfn: int | None = None,
                    mfn: int | None = None, readonly: bool = False) -> memoryview:
        """Privileged foreign mapping (privcmd / ``mmu_update`` with a foreign domid).

        Used by the domain builder and by dom0 daemons that map a guest's
        ring by frame number. The view is not reference-counted: drop it
        before destroying the domain. Exactly one of ``gfn``/``mfn``.

        Raises:
            XenError: ESRCH; EINVAL bad frame (not owned by ``domid``).
        """
        d = self._target(domid)
        if (gfn is None) == (mfn is None):
            raise XenError(Errno.EINVAL, "give exactly one of gfn, mfn")
        if gfn is not None:
            m = d.p2m.get(gfn)
            if m == INVALID_MFN:
                raise XenError(Errno.EINVAL, f"gfn {gfn:#x} not populated")
        else:
            m = mfn  # type: ignore[assignment]
            if not 0 <= m < self.machine.nr_frames:
                raise XenError(Errno.EINVAL, f"mfn {m:#x} out of range")
        if self.machine.owner[m] != d.domid:
            raise XenError(Errno.EINVAL, "frame not owned by that domain")
        view = self.machine.frame(m)
        return view.toreadonly() if readonly else view

    # -- console / version -------------------------------------------------------------------

    def console_write(self, caller: Domain, data: bytes) -> None:
        """``CONSOLEIO_write``: append to the console ring; raise VIRQ_CON_RING."""
        self.console.write(caller.domid, bytes(data), caller.privileged)
        dom0 = self.domains.get(0)
        if dom0 is not None and not dom0.dying:
            self.evtchn.send_global_virq(dom0, VIRQ_CON_RING)

    def console_read(self, caller: Domain) -> bytes:
        """``CONSOLEIO_read`` (privileged)."""
        return self.console.read()

    def xen_version(self, caller: Domain, cmd: int = XENVER_version) -> int:
        """``XENVER_version``: ``major << 16 | minor``."""
        if cmd != XENVER_version:
            raise XenError(Errno.ENOSYS, f"xen_version cmd {cmd}")
        return XEN_VERSION[0] << 16 | XEN_VERSION[1]

    # -- observability -----------------------------------------------------------------------

    def statistics(self) -> dict[int, dict[str, int]]:
        """Per-domain, per-operation counters (hypercalls and event deliveries)."""
        return self.stats.snapshot()

    def resource_counts(self) -> dict[str, int]:
        """Everything that could leak; integration tests compare before/after."""
        doms = list(self.domains)
        return {
            "frames": self.machine.allocated,
            "domains": len(doms),
            "zombies": sum(1 for d in doms if d.dying),
            "ports": sum(d.evtchn.in_use() for d in doms),
            "grant_pins": sum(d.grant_table.pins() for d in doms),
            "maptrack": sum(d.maptrack.in_use for d in doms),
            "deferred_frames": self.machine.deferred_count(),
            "waiting_tasks": sum(1 for d in doms for v in d.vcpus if v.is_blocked),
            **self.sched_ops.counts(),
        }

    def check_invariants(self, grant_flags: bool = True) -> None:
        """Cross-check every table (tests call this after each step).

        Args:
            grant_flags: also check that every pinned grant entry shows
                ``GTF_reading`` (and ``GTF_writing`` exactly when a writable
                pin exists). Those bits live in granter-writable memory, so a
                test with a hostile granter that scribbles over them passes
                False; everything else checked is hypervisor-private.

        Raises:
            AssertionError: describing the first inconsistency found.
        """
        frames = 0
        mt_pins: dict[tuple[int, int], list[int]] = {}
        mfn_refs: dict[int, int] = {}
        for d in self.domains:
            t = d.evtchn
            assert 0 not in t.chans, f"d{d.domid}: port 0 allocated"
            assert not set(t._free) & set(t.chans), f"d{d.domid}: port both free and used"
            for port, c in t.chans.items():
                assert 0 < port <= t.max_port
                assert c.state != 0
                if c.state == ECS_INTERDOMAIN:
                    assert c.peer is not None and self.domains.get(c.peer.domid) is c.peer
                    pc = c.peer.evtchn.chans.get(c.peer_port)
                    assert pc is not None and pc.state == ECS_INTERDOMAIN, "asymmetric link"
                    assert pc.peer is d and pc.peer_port == port, "asymmetric link"
                elif c.state == ECS_VIRQ:
                    assert d.vcpus[c.notify_vcpu].virq_to_port.get(c.virq) == port
                elif c.state == ECS_PIRQ:
                    assert t.pirq_to_port.get(c.pirq) == port
                else:
                    assert c.peer is None
            for v in d.vcpus:
                for virq, port in v.virq_to_port.items():
                    c = t.chans.get(port)
                    assert c is not None and c.state == ECS_VIRQ and c.virq == virq
            assert not d.dying or d.deferred_frames > 0, f"d{d.domid}: dying but not a zombie"
            assert d.deferred_frames == self.machine.deferred_count(d.domid)
            for gfn, mfn in d.p2m.items():
                assert self.machine.owner[mfn] == d.domid, f"d{d.domid} gfn {gfn} mis-owned"
            frames += d.tot_pages + len(d.xenheap) + len(d.grant_table.frames)
            for _h, e in d.maptrack.live():
                ro = 0 if e.flags & GNTMAP_readonly else 1
                mt_pins.setdefault((e.granter.domid, e.ref), [0, 0])[ro] += 1
                mfn_refs[e.mfn] = mfn_refs.get(e.mfn, 0) + 1
                assert self.domains.get(e.granter.domid) is e.granter
        sdoms = self.sched.domains
        for d in self.domains:
            sd = sdoms.get(d.domid)
            if d.dying:
                assert sd is None and not d.sched_attached, f"d{d.domid}: dying but scheduled"
                continue
            assert sd is not None and d.sched_attached, f"d{d.domid}: not scheduled"
            assert sorted(sd.vcpus) == list(range(len(d.vcpus))), f"d{d.domid}: sched vcpus"
            for v in d.vcpus:
                assert v.sched is sd.vcpus[v.vcpu_id], f"d{d.domid}v{v.vcpu_id}: sched vcpu"
                assert v.sched.online or not v.sched.runnable, \
                    f"d{d.domid}v{v.vcpu_id}: offline but runnable"
            assert any(v.sched.online for v in d.vcpus), f"d{d.domid}: no vCPU online"
            assert (sd.pause_count > 0) == (not d.runnable), f"d{d.domid}: sched pause state"
        assert set(sdoms) <= {d.domid for d in self.domains}, "scheduled domain without a domain"
        for d in self.domains:
            gt = d.grant_table
            for ref, act in gt.active.items():
                want = mt_pins.pop((d.domid, ref), [0, 0])
                assert [act.pin_r, act.pin_w] == want, f"d{d.domid} ref {ref}: pins {want}"
                if grant_flags and gt.frames:
                    flags = gt.read_entry(ref)[0]
                    assert flags & GTF_reading, f"d{d.domid} ref {ref}: pinned, no GTF_reading"
                    assert bool(flags & GTF_writing) == bool(act.pin_w), \
                        f"d{d.domid} ref {ref}: GTF_writing does not match the writable pins"
        assert not mt_pins, f"mappings without active entries: {mt_pins}"
        for mfn, n in mfn_refs.items():
            assert self.machine.refs(mfn) == n, f"mfn {mfn:#x}: refs mismatch"
        assert self.machine.allocated == frames + self.machine.deferred_count(), "frame leak"


__all__ = ["DOMID_SELF", "DomainConfig", "Gfn", "Hypervisor"]
