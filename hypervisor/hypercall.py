"""The hypercall table and the per-domain :class:`HypercallInterface`.

Theory of operation
-------------------
ONE table maps ``(hypercall number, sub-command)`` to an entry naming the
handler and who may call it:

* ``ANY``: any domain (access to other domains' resources is then governed
  by the resource itself: grant entries, unbound ports);
* ``SELF_OR_PRIV``: the target-domain argument must be the caller (or
  DOMID_SELF) unless the caller is privileged;
* ``PRIV``: privileged (control) domains only.

:meth:`HypercallDispatcher.dispatch` is the only way in. It rejects unknown
numbers/sub-commands with ENOSYS, then checks privilege *before* any handler
looks a target domain up, so an unprivileged caller gets the same EPERM
whether or not the target exists. It then passes the statistics hook and
calls the handler. Handlers raise :class:`XenError`; :meth:`call_c` is the
one place that converts it into a C-style ``-errno``. Async sub-commands
(``sched_op`` block/poll/yield) return an awaitable after the checks.

A guest holds only a :class:`HypercallInterface` bound to its own domain:
Pythonic methods (``evtchn_send(port)``, ``grant_map(...)``,
``sched_block()``...) that all funnel into :meth:`HypercallInterface.call`.
Two methods are not hypercalls: :meth:`HypercallInterface.compute` (the
guest *uses* CPU: it waits until the scheduler has run its vCPU that long)
and :meth:`HypercallInterface.system_time_ns` (reading Xen system time, which
a real guest does from shared memory).
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hypervisor import event_channel as ev
from hypervisor import grant_table as gt
from hypervisor import memory_op as mo
from hypervisor import sched_ops as so
from hypervisor.errno import Errno, XenError
from hypervisor.sched import VcpuGoneError
from hypervisor.types import DOMID_SELF, DomId, Gfn, GrantHandle, GrantRef, Port
from hypervisor.vcpu import DomainDestroyed

if TYPE_CHECKING:
    from hypervisor.domain import Domain, DomainConfig, DomainInfo, StartInfo
    from hypervisor.event_channel import EvtchnStatus
    from hypervisor.hypervisor import Hypervisor
    from hypervisor.memory import GuestMemory
    from hypervisor.sched import PcpuInfo, VcpuInfo

# __HYPERVISOR_* numbers (xen.h)
HYPERVISOR_mmu_update = 1
HYPERVISOR_memory_op = 12
HYPERVISOR_set_timer_op = 15
HYPERVISOR_xen_version = 17
HYPERVISOR_console_io = 18
HYPERVISOR_grant_table_op = 20
HYPERVISOR_vcpu_op = 24
HYPERVISOR_sched_op = 29
HYPERVISOR_event_channel_op = 32
HYPERVISOR_sysctl = 35
HYPERVISOR_domctl = 36

CONSOLEIO_write = 0
CONSOLEIO_read = 1

# VCPUOP_* (vcpu.h)
VCPUOP_up = 1
VCPUOP_down = 2
VCPUOP_is_up = 3

SCHEDOP_yield = 0
SCHEDOP_block = 1
SCHEDOP_shutdown = 2
SCHEDOP_poll = 3
SCHEDOP_remote_shutdown = 4
SCHEDOP_shutdown_code = 5

# XEN_DOMCTL_* (domctl.h; numbers from the 4.17 header, not in checks.out)
XEN_DOMCTL_createdomain = 1
XEN_DOMCTL_destroydomain = 2
XEN_DOMCTL_pausedomain = 3
XEN_DOMCTL_unpausedomain = 4
XEN_DOMCTL_getdomaininfo = 5
XEN_DOMCTL_setvcpuaffinity = 9
XEN_DOMCTL_max_mem = 11
XEN_DOMCTL_scheduler_op = 16
XEN_DOMCTL_getvcpuaffinity = 25
XEN_DOMCTL_resumedomain = 27
XEN_DOMCTL_sim_setstartinfo = 0x1000  # simulation only: libxc writes start_info itself
XEN_SYSCTL_physinfo = 3
XEN_SYSCTL_getdomaininfolist = 6
XEN_SYSCTL_getcpuinfo = 8
XEN_SYSCTL_sim_vcpu_list = 0x1000  # simulation only: libxl asks getvcpuinfo per vCPU
SET_TIMER_OP = 0  # set_timer_op has no sub-command; the table's key uses 0
MMU_SIM_map_foreign = 0  # simulation stand-in for privcmd foreign mapping


class Priv(enum.Enum):
    """Who may make a call."""

    ANY = "any domain"
    SELF_OR_PRIV = "the target domain itself, or a privileged domain"
    PRIV = "privileged domains only"


@dataclass(frozen=True)
class HypercallEntry:
    """One row of the table.

    Attributes:
        number: ``__HYPERVISOR_*``.
        cmd: sub-command number.
        name: ``"<hypercall>.<sub-command>"`` (also the statistics key).
        handler: ``handler(caller, *args, **kwargs)``.
        priv: who may call it.
        target: index of the target-domid argument (for SELF_OR_PRIV).
        is_async: the handler returns an awaitable.
        target_name: the target argument's keyword name (derived from the
            handler), so a target passed by keyword is checked too.
    """

    number: int
    cmd: int
    name: str
    handler: Callable[..., Any]
    priv: Priv
    target: int | None = None
    is_async: bool = False
    target_name: str | None = None

    def signature(self) -> inspect.Signature:
        """The handler's signature (used only to diagnose a bad argument list)."""
        return inspect.signature(self.handler)


def build_table(hv: Hypervisor) -> dict[tuple[int, int], HypercallEntry]:
    """The hypercall table of ``hv`` (the single source of truth)."""
    e, g, m, sc = hv.evtchn, hv.gnttab, hv.memory_ops, hv.sched_ops
    A, S, P = Priv.ANY, Priv.SELF_OR_PRIV, Priv.PRIV
    Row = tuple[int, str, Callable[..., Any], Priv, int | None, bool]
    rows: list[tuple[int, str, list[Row]]] = [
        (HYPERVISOR_mmu_update, "mmu_update", [
            (MMU_SIM_map_foreign, "map_foreign", hv.map_foreign, P, None, False)]),
        (HYPERVISOR_memory_op, "memory_op", [
            (mo.XENMEM_increase_reservation, "increase_reservation", m.increase_reservation,
             S, 0, False),
            (mo.XENMEM_decrease_reservation, "decrease_reservation", m.decrease_reservation,
             S, 0, False),
            (mo.XENMEM_current_reservation, "current_reservation", m.current_reservation,
             S, 0, False),
            (mo.XENMEM_maximum_reservation, "maximum_reservation", m.maximum_reservation,
             S, 0, False),
            (mo.XENMEM_populate_physmap, "populate_physmap", m.populate_physmap, S, 0, False)]),
        (HYPERVISOR_set_timer_op, "set_timer_op", [
            (SET_TIMER_OP, "set", sc.set_timer_op, A, None, False)]),
        (HYPERVISOR_xen_version, "xen_version", [(0, "version", hv.xen_version, A, None, False)]),
        (HYPERVISOR_console_io, "console_io", [
            (CONSOLEIO_write, "write", hv.console_write, A, None, False),
            (CONSOLEIO_read, "read", hv.console_read, P, None, False)]),
        (HYPERVISOR_grant_table_op, "grant_table_op", [
            (gt.GNTTABOP_map_grant_ref, "map_grant_ref", g.map, A, None, False),
            (gt.GNTTABOP_unmap_grant_ref, "unmap_grant_ref", g.unmap, A, None, False),
            (gt.GNTTABOP_setup_table, "setup_table", g.setup_table, S, 0, False),
            (gt.GNTTABOP_copy, "copy", g.copy, A, None, False),
            (gt.GNTTABOP_query_size, "query_size", g.query_size, S, 0, False)]),
        (HYPERVISOR_vcpu_op, "vcpu_op", [
            (VCPUOP_up, "up", hv.vcpu_up, A, None, False),
            (VCPUOP_down, "down", hv.vcpu_down, A, None, False),
            (VCPUOP_is_up, "is_up", hv.vcpu_is_up, A, None, False)]),
        (HYPERVISOR_sched_op, "sched_op", [
            (SCHEDOP_yield, "yield", hv.sched_yield, A, None, True),
            (SCHEDOP_block, "block", hv.sched_block, A, None, True),
            (SCHEDOP_shutdown, "shutdown", hv.sched_shutdown, A, None, False),
            (SCHEDOP_poll, "poll", hv.sched_poll, A, None, True),
            (SCHEDOP_remote_shutdown, "remote_shutdown", hv.sched_remote_shutdown, P, None, False),
            (SCHEDOP_shutdown_code, "shutdown_code", hv.sched_shutdown_code, A, None, False)]),
        (HYPERVISOR_event_channel_op, "event_channel_op", [
            (ev.EVTCHNOP_bind_interdomain, "bind_interdomain", e.bind_interdomain, A, None, False),
            (ev.EVTCHNOP_bind_virq, "bind_virq", e.bind_virq, A, None, False),
            (ev.EVTCHNOP_bind_pirq, "bind_pirq", _bind_pirq(hv), P, None, False),
            (ev.EVTCHNOP_close, "close", e.close, A, None, False),
            (ev.EVTCHNOP_send, "send", e.send, A, None, False),
            (ev.EVTCHNOP_status, "status", e.status, S, 0, False),
            (ev.EVTCHNOP_alloc_unbound, "alloc_unbound", e.alloc_unbound, S, 0, False),
            (ev.EVTCHNOP_bind_ipi, "bind_ipi", e.bind_ipi, A, None, False),
            (ev.EVTCHNOP_bind_vcpu, "bind_vcpu", e.bind_vcpu, A, None, False),
            (ev.EVTCHNOP_unmask, "unmask", e.unmask, A, None, False),
            (ev.EVTCHNOP_reset, "reset", e.reset, S, 0, False)]),
        (HYPERVISOR_sysctl, "sysctl", [
            (XEN_SYSCTL_physinfo, "physinfo", sc.physinfo, P, None, False),
            (XEN_SYSCTL_getdomaininfolist, "getdomaininfolist", hv.sysctl_getdomaininfolist,
             P, None, False),
            (XEN_SYSCTL_getcpuinfo, "getcpuinfo", sc.getcpuinfo, P, None, False),
            (XEN_SYSCTL_sim_vcpu_list, "vcpu_list", sc.vcpu_list, P, None, False)]),
        (HYPERVISOR_domctl, "domctl", [
            (XEN_DOMCTL_createdomain, "createdomain", hv.domctl_createdomain, P, None, False),
            (XEN_DOMCTL_destroydomain, "destroydomain", hv.domctl_destroydomain, P, None, False),
            (XEN_DOMCTL_pausedomain, "pausedomain", hv.domctl_pausedomain, P, None, False),
            (XEN_DOMCTL_unpausedomain, "unpausedomain", hv.domctl_unpausedomain, P, None, False),
            (XEN_DOMCTL_getdomaininfo, "getdomaininfo", hv.domctl_getdomaininfo, P, None, False),
            (XEN_DOMCTL_setvcpuaffinity, "setvcpuaffinity", sc.setvcpuaffinity, P, None, False),
            (XEN_DOMCTL_max_mem, "max_mem", hv.domctl_max_mem, P, None, False),
            (XEN_DOMCTL_scheduler_op, "scheduler_op", sc.scheduler_op, P, None, False),
            (XEN_DOMCTL_getvcpuaffinity, "getvcpuaffinity", sc.getvcpuaffinity, P, None, False),
            (XEN_DOMCTL_resumedomain, "resumedomain", hv.domctl_resumedomain, P, None, False),
            (XEN_DOMCTL_sim_setstartinfo, "setstartinfo", hv.domctl_setstartinfo,
             P, None, False)]),
    ]
    table: dict[tuple[int, int], HypercallEntry] = {}
    for number, hname, subs in rows:
        for cmd, sname, handler, priv, target, is_async in subs:
            tname = None
            if target is not None:
                params = list(inspect.signature(handler).parameters)
                tname = params[1 + target]  # params[0] is the caller
            table[(number, cmd)] = HypercallEntry(number, cmd, f"{hname}.{sname}", handler,
                                                  priv, target, is_async, tname)
    return table


def _bind_pirq(hv: Hypervisor) -> Callable[..., Port]:
    def bind_pirq(caller: Domain, pirq: int, flags: int = 0) -> Port:
        return hv.evtchn.bind_pirq(caller, pirq, flags, hv.platform.nr_pirqs)
    return bind_pirq


_ANY = Priv.ANY


def dispatch(hv: Hypervisor, caller: Domain, number: int, cmd: int,
             args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> Any:
    """The single entry point of every hypercall.

    Args:
        hv: the hypervisor.
        caller: the calling domain (bound into its interface; not forgeable
            through the interface).
        number, cmd: guest-controlled hypercall and sub-command numbers.
        args, kwargs: guest-controlled arguments.

    Returns:
        The handler's result (an awaitable for async sub-commands).

    Raises:
        XenError: ENOSYS unknown call; EPERM not allowed; EFAULT an argument
            list that does not fit the call (C: a bad argument struct); or
            the handler's.
        DomainDestroyed: the caller is dying.
    """
    try:
        entry = hv.table.get((number, cmd))
    except TypeError:  # unhashable guest junk
        entry = None
    if entry is None:
        hv.stats.hook(caller.domid, "hypercall.enosys")
        raise XenError(Errno.ENOSYS, f"hypercall {number} cmd {cmd}")
    return gate(hv, caller, entry, args, kwargs)


def gate(hv: Hypervisor, caller: Domain, entry: HypercallEntry,
         args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> Any:
    """The checks and accounting every call passes once its table entry is known.

    :func:`dispatch` finds the entry in the table by number; a
    :class:`HypercallInterface` looks the entries of its two hottest calls
    (``evtchn_send``, ``sched_block``) up once, when it is made, and enters
    here directly. Either way the caller-is-dying check, the privilege check
    and the statistics hook run on every call.

    Args:
        hv: the hypervisor.
        caller: the calling domain.
        entry: a row of ``hv.table``.
        args, kwargs: guest-controlled arguments.

    Returns:
        The handler's result.

    Raises:
        As :func:`dispatch` (except ENOSYS).
    """
    if caller.dying:
        raise DomainDestroyed(f"d{caller.domid}")
    priv = entry.priv
    if priv is not _ANY and not caller.privileged:
        if priv is Priv.PRIV:
            hv.stats.hook(caller.domid, "hypercall.eperm")
            raise XenError(Errno.EPERM, entry.name)
        # The target may come positionally or by keyword; absent means the
        # handler's default, which is always DOMID_SELF.
        ti = entry.target
        if ti is not None and len(args) > ti:
            target = args[ti]
        elif kwargs and entry.target_name in kwargs:
            target = kwargs[entry.target_name]
        else:
            target = DOMID_SELF
        if target != DOMID_SELF and target != caller.domid:
            hv.stats.hook(caller.domid, "hypercall.eperm")
            raise XenError(Errno.EPERM, entry.name)
    caller.stats[entry.name] += 1  # the statistics hook, inlined (see hypervisor.stats)
    try:
        if kwargs:
            return entry.handler(caller, *args, **kwargs)
        return entry.handler(caller, *args)
    except TypeError:
        try:
            entry.signature().bind(caller, *args, **(kwargs or {}))
        except TypeError:
            raise XenError(Errno.EFAULT, f"{entry.name}: bad argument list") from None
        raise


class HypercallInterface:
    """A domain's capability to call the hypervisor (handed out by the toolstack).

    Every method routes through :meth:`call` -> the one table. Grant
    operations return Xen's per-element GNTST codes; everything else raises
    :class:`XenError` on failure.

    Attributes:
        domid: the bound domain's id.
        memory: its :class:`GuestMemory`.
        start_info: its start_info record.
    """

    def __init__(self, hv: Hypervisor, domain: Domain) -> None:
        self._hv = hv
        self._dom = domain
        self.domid: DomId = domain.domid
        self.memory: GuestMemory = domain.memory
        self.start_info: StartInfo = domain.start_info
        table = hv.table
        self._send_entry = table[(HYPERVISOR_event_channel_op, ev.EVTCHNOP_send)]
        self._block_entry = table[(HYPERVISOR_sched_op, SCHEDOP_block)]

    @property
    def shared_info(self) -> memoryview:
        """The domain's shared_info frame through its own memory view."""
        return self.memory.frame(self._dom.shared_info_mfn)

    @property
    def nr_vcpus(self) -> int:
        """How many vCPUs this domain has."""
        return len(self._dom.vcpus)

    # -- raw -------------------------------------------------------------------------------------

    def call(self, number: int, cmd: int, *args: Any, **kwargs: Any) -> Any:
        """Raw hypercall (raises :class:`XenError`)."""
        return dispatch(self._hv, self._dom, number, cmd, args, kwargs)

    def call_c(self, number: int, cmd: int, *args: Any, **kwargs: Any) -> Any:
        """Raw synchronous hypercall, C style: the result, or ``-errno`` on failure."""
        try:
            return dispatch(self._hv, self._dom, number, cmd, args, kwargs)
        except XenError as exc:
            return exc.retval

    # -- event channels ---------------------------------------------------------------------------

    def evtchn_alloc_unbound(self, remote_dom: int, dom: int = DOMID_SELF) -> Port:
        """Allocate an unbound port in ``dom`` that ``remote_dom`` may bind."""
        return self.call(HYPERVISOR_event_channel_op, ev.EVTCHNOP_alloc_unbound, dom, remote_dom)

    def evtchn_bind_interdomain(self, remote_dom: int, remote_port: int) -> Port:
        """Bind to ``remote_dom``'s unbound port; the local port starts pending."""
        return self.call(HYPERVISOR_event_channel_op, ev.EVTCHNOP_bind_interdomain,
                         remote_dom, remote_port)

    def evtchn_bind_virq(self, virq: int, vcpu: int = 0) -> Port:
        """Bind a VIRQ."""
        return self.call(HYPERVISOR_event_channel_op, ev.EVTCHNOP_bind_virq, virq, vcpu)

    def evtchn_bind_ipi(self, vcpu: int = 0) -> Port:
        """Bind an IPI port notifying ``vcpu``."""
        return self.call(HYPERVISOR_event_channel_op, ev.EVTCHNOP_bind_ipi, vcpu)

    def evtchn_bind_pirq(self, pirq: int, flags: int = 0) -> Port:
        """Bind a physical IRQ (privileged)."""
        return self.call(HYPERVISOR_event_channel_op, ev.EVTCHNOP_bind_pirq, pirq, flags)

    def evtchn_send(self, port: int) -> None:
        """Notify the other end of ``port``."""
        gate(self._hv, self._dom, self._send_entry, (port,))

    def evtchn_close(self, port: int) -> None:
        """Close ``port``."""
        self.call(HYPERVISOR_event_channel_op, ev.EVTCHNOP_close, port)

    def evtchn_status(self, port: int, dom: int = DOMID_SELF) -> EvtchnStatus:
        """Status of ``port`` of ``dom``."""
        return self.call(HYPERVISOR_event_channel_op, ev.EVTCHNOP_status, dom, port)

    def evtchn_unmask(self, port: int) -> None:
        """Unmask ``port`` (re-raises if pending)."""
        self.call(HYPERVISOR_event_channel_op, ev.EVTCHNOP_unmask, port)

    def evtchn_bind_vcpu(self, port: int, vcpu: int) -> None:
        """Notify ``vcpu`` for ``port`` from now on."""
        self.call(HYPERVISOR_event_channel_op, ev.EVTCHNOP_bind_vcpu, port, vcpu)

    def evtchn_reset(self, dom: int = DOMID_SELF) -> None:
        """Close every port of ``dom``."""
        self.call(HYPERVISOR_event_channel_op, ev.EVTCHNOP_reset, dom)

    # -- grant tables -----------------------------------------------------------------------------

    def grant_setup_table(self, nr_frames: int, dom: int = DOMID_SELF) -> gt.SetupTableResult:
        """Grow ``dom``'s grant table to ``nr_frames`` and list its machine frames."""
        return self.call(HYPERVISOR_grant_table_op, gt.GNTTABOP_setup_table, dom, nr_frames)

    def grant_query_size(self, dom: int = DOMID_SELF) -> gt.QuerySizeResult:
        """Current and maximum grant-table frames of ``dom``."""
        return self.call(HYPERVISOR_grant_table_op, gt.GNTTABOP_query_size, dom)

    def grant_map(self, ops: Sequence[gt.MapGrantRef]) -> list[gt.MapResult]:
        """Map a batch of grants (one result with a GNTST status each)."""
        return self.call(HYPERVISOR_grant_table_op, gt.GNTTABOP_map_grant_ref, list(ops))

    def grant_map_one(self, dom: int, ref: GrantRef | int, readonly: bool = False,
                      ) -> gt.MapResult:
        """Map one grant with ``GNTMAP_host_map`` [| ``GNTMAP_readonly``]."""
        flags = gt.GNTMAP_host_map | (gt.GNTMAP_readonly if readonly else 0)
        return self.grant_map([gt.MapGrantRef(dom, ref, flags)])[0]

    def grant_unmap(self, ops: Sequence[gt.UnmapGrantRef]) -> list[int]:
        """Unmap a batch; one GNTST status each."""
        return self.call(HYPERVISOR_grant_table_op, gt.GNTTABOP_unmap_grant_ref, list(ops))

    def grant_unmap_one(self, handle: GrantHandle | int) -> int:
        """Unmap one mapping by handle; its GNTST status."""
        return self.grant_unmap([gt.UnmapGrantRef(handle)])[0]

    def grant_copy(self, ops: Sequence[gt.GntCopy | gt.GntCopyOp]) -> list[int]:
        """Hypervisor-mediated copies (records or flat tuples); one GNTST status each."""
        return self.call(HYPERVISOR_grant_table_op, gt.GNTTABOP_copy, list(ops))

    # -- memory -----------------------------------------------------------------------------------

    def populate_physmap(self, gfns: Sequence[int], extent_order: int = 0,
                         domid: int = DOMID_SELF) -> int:
        """Back extents at ``gfns``; returns extents done."""
        return self.call(HYPERVISOR_memory_op, mo.XENMEM_populate_physmap, domid, list(gfns),
                         extent_order)

    def increase_reservation(self, nr_extents: int, extent_order: int = 0,
                             domid: int = DOMID_SELF) -> list[Gfn]:
        """Add extents at the lowest free gfns; returns their first gfns."""
        return self.call(HYPERVISOR_memory_op, mo.XENMEM_increase_reservation, domid,
                         nr_extents, extent_order)

    def decrease_reservation(self, gfns: Sequence[int], extent_order: int = 0,
                             domid: int = DOMID_SELF) -> int:
        """Balloon extents out; returns extents done."""
        return self.call(HYPERVISOR_memory_op, mo.XENMEM_decrease_reservation, domid,
                         list(gfns), extent_order)

    def current_reservation(self, domid: int = DOMID_SELF) -> int:
        """Pages populated in ``domid``."""
        return self.call(HYPERVISOR_memory_op, mo.XENMEM_current_reservation, domid)

    def maximum_reservation(self, domid: int = DOMID_SELF) -> int:
        """``max_pages`` of ``domid``."""
        return self.call(HYPERVISOR_memory_op, mo.XENMEM_maximum_reservation, domid)

    def map_foreign(self, domid: int, gfn: int | None = None, mfn: int | None = None,
                    readonly: bool = False) -> memoryview:
        """Privileged: map a frame of another domain (privcmd stand-in)."""
        return self.call(HYPERVISOR_mmu_update, MMU_SIM_map_foreign, domid, gfn, mfn, readonly)

    # -- scheduling -------------------------------------------------------------------------------

    def sched_block(self, vcpu: int = 0) -> Awaitable[None]:
        """``await`` until an upcall is pending on ``vcpu`` (re-enables upcalls)."""
        return gate(self._hv, self._dom, self._block_entry, (vcpu,))

    def sched_poll(self, ports: Sequence[int], timeout: float | None = None,
                   vcpu: int = 0) -> Awaitable[bool]:
        """``await`` until a port is pending (True) or ``timeout`` seconds pass (False)."""
        return self.call(HYPERVISOR_sched_op, SCHEDOP_poll, list(ports), timeout, vcpu)

    def sched_yield(self, vcpu: int = 0) -> Awaitable[None]:
        """``await`` a scheduling point."""
        return self.call(HYPERVISOR_sched_op, SCHEDOP_yield, vcpu)

    def sched_shutdown(self, reason: int) -> None:
        """Shut this domain down with ``reason`` (``ShutdownReason``)."""
        self.call(HYPERVISOR_sched_op, SCHEDOP_shutdown, reason)

    def sched_shutdown_code(self, reason: int) -> None:
        """Record the reason a later shutdown will report."""
        self.call(HYPERVISOR_sched_op, SCHEDOP_shutdown_code, reason)

    def sched_remote_shutdown(self, domid: int, reason: int) -> None:
        """Privileged: shut another domain down."""
        self.call(HYPERVISOR_sched_op, SCHEDOP_remote_shutdown, domid, reason)

    def set_timer_op(self, timeout_ns: int, vcpu: int = 0) -> None:
        """``HYPERVISOR_set_timer_op``: VIRQ_TIMER on ``vcpu`` at system time ``timeout_ns``.

        0 cancels; see :meth:`system_time_ns` for "now". Bind VIRQ_TIMER on
        that vCPU (``evtchn_bind_virq(VIRQ_TIMER, vcpu)``) to receive it.
        """
        self.call(HYPERVISOR_set_timer_op, SET_TIMER_OP, timeout_ns, vcpu)

    def system_time_ns(self) -> int:
        """Xen system time in ns (not a hypercall: a PV guest reads its pvclock).

        Deadlines for :meth:`set_timer_op` are in this time base.
        """
        return self._hv.sched.system_time_ns()

    async def compute(self, seconds: float, vcpu: int = 0) -> None:
        """Use ``seconds`` of CPU on ``vcpu``: returns once the scheduler ran it that long.

        Not a hypercall: this is the guest *executing*. Under contention it
        takes longer in (virtual) time; while the domain is paused or shut
        down it makes no progress. Several tasks may compute on one vCPU;
        their demands are served in order. Cancelling withdraws the rest.

        An offline vCPU (``VCPUOP_down``) takes no new work: the call fails
        as for a vCPU the domain lacks. Work already under way when its vCPU
        goes down is frozen, not lost: it continues once the vCPU is up again
        (as a downed Xen vCPU continues where it stopped).

        Args:
            seconds: CPU time; ``<= 0`` is just a checkpoint.
            vcpu: which of this domain's vCPUs.

        Raises:
            DomainDestroyed: the domain is (or gets) destroyed.
            XenError: EINVAL for a bad vCPU number or an offline vCPU.
            RuntimeError: the hypervisor's service task is not running
                (``await nursery.start(hv.run)`` first); NaN ``seconds``
                (ValueError).
        """
        dom = self._dom
        if dom.dying:
            raise DomainDestroyed(f"d{dom.domid}")
        vcpus = dom.vcpus
        if not isinstance(vcpu, int) or not 0 <= vcpu < len(vcpus):
            raise XenError(Errno.EINVAL, f"no vcpu {vcpu}")
        s = vcpus[vcpu].sched
        if not s.online:
            raise XenError(Errno.EINVAL, f"vcpu {vcpu} is offline")
        if not self._hv.sched.running:
            raise RuntimeError(
                "compute() needs the hypervisor's scheduler: `await nursery.start(hv.run)`")
        s.wake()  # the task wanting CPU is runnable: its vCPU is not idle
        try:
            await s.run(seconds)
        except VcpuGoneError:
            raise DomainDestroyed(f"d{dom.domid}") from None

    # -- vCPU hot-plug ----------------------------------------------------------------------------

    def vcpu_up(self, vcpu: int) -> None:
        """``VCPUOP_up``: bring one of this domain's vCPUs up (no-op if it is up).

        Raises:
            XenError: ENOENT no such vCPU.
        """
        self.call(HYPERVISOR_vcpu_op, VCPUOP_up, vcpu)

    def vcpu_down(self, vcpu: int) -> None:
        """``VCPUOP_down``: take one of this domain's vCPUs off the CPUs (no-op if down).

        Bringing down the last vCPU that is up powers the domain off (Xen's
        rule). Work under way on the vCPU is frozen until it is up again.

        Raises:
            XenError: ENOENT no such vCPU.
        """
        self.call(HYPERVISOR_vcpu_op, VCPUOP_down, vcpu)

    def vcpu_is_up(self, vcpu: int) -> bool:
        """``VCPUOP_is_up``: whether the vCPU is up.

        Raises:
            XenError: ENOENT no such vCPU.
        """
        return bool(self.call(HYPERVISOR_vcpu_op, VCPUOP_is_up, vcpu))

    # -- console / version ------------------------------------------------------------------------

    def console_write(self, data: bytes) -> None:
        """Write to the hypervisor console."""
        self.call(HYPERVISOR_console_io, CONSOLEIO_write, data)

    def console_read(self) -> bytes:
        """Privileged: read the hypervisor console ring."""
        return self.call(HYPERVISOR_console_io, CONSOLEIO_read)

    def xen_version(self) -> int:
        """``major << 16 | minor``."""
        return self.call(HYPERVISOR_xen_version, 0)

    # -- domctl / sysctl (privileged) -------------------------------------------------------------

    def domctl_createdomain(self, config: DomainConfig) -> DomId:
        """Create a paused domain; returns its domid."""
        return self.call(HYPERVISOR_domctl, XEN_DOMCTL_createdomain, config)

    def domctl_destroydomain(self, domid: int) -> None:
        """Destroy a domain (it may linger as a zombie)."""
        self.call(HYPERVISOR_domctl, XEN_DOMCTL_destroydomain, domid)

    def domctl_pausedomain(self, domid: int) -> None:
        """Increment a domain's controller pause count."""
        self.call(HYPERVISOR_domctl, XEN_DOMCTL_pausedomain, domid)

    def domctl_unpausedomain(self, domid: int) -> None:
        """Decrement a domain's controller pause count."""
        self.call(HYPERVISOR_domctl, XEN_DOMCTL_unpausedomain, domid)

    def domctl_resumedomain(self, domid: int) -> None:
        """Clear a domain's shutdown state (after suspend)."""
        self.call(HYPERVISOR_domctl, XEN_DOMCTL_resumedomain, domid)

    def domctl_getdomaininfo(self, domid: int) -> DomainInfo:
        """Domain info with XEN_DOMINF flags."""
        return self.call(HYPERVISOR_domctl, XEN_DOMCTL_getdomaininfo, domid)

    def domctl_max_mem(self, domid: int, max_memkb: int) -> None:
        """Set a domain's memory limit in KiB."""
        self.call(HYPERVISOR_domctl, XEN_DOMCTL_max_mem, domid, max_memkb)

    def domctl_setstartinfo(self, domid: int, **fields: int | str) -> None:
        """Simulation op: set start_info store/console fields of ``domid``."""
        self.call(HYPERVISOR_domctl, XEN_DOMCTL_sim_setstartinfo, domid, **fields)

    def domctl_scheduler_op(self, domid: int, weight: int | None = None,
                            cap: int | None = None) -> so.SchedCreditParams:
        """``xl sched-credit``: get, or with ``weight``/``cap`` set, a domain's credit params.

        Returns:
            The parameters after the call.

        Raises:
            XenError: EPERM unprivileged; ESRCH no such domain; EINVAL weight
                outside 1..65535, cap outside 0..100 * vCPUs, dying domain.
        """
        if weight is None and cap is None:
            return self.call(HYPERVISOR_domctl, XEN_DOMCTL_scheduler_op, domid,
                             so.XEN_DOMCTL_SCHEDOP_getinfo)
        return self.call(HYPERVISOR_domctl, XEN_DOMCTL_scheduler_op, domid,
                         so.XEN_DOMCTL_SCHEDOP_putinfo, weight, cap)

    def domctl_setvcpuaffinity(self, domid: int, vcpu: int,
                               cpus: str | Sequence[int] | None) -> None:
        """``xl vcpu-pin``: set a vCPU's hard affinity (``"0-1"``, ``"all"``, [0, 2]...)."""
        self.call(HYPERVISOR_domctl, XEN_DOMCTL_setvcpuaffinity, domid, vcpu, cpus)

    def domctl_getvcpuaffinity(self, domid: int, vcpu: int) -> frozenset[int]:
        """A vCPU's hard affinity."""
        return self.call(HYPERVISOR_domctl, XEN_DOMCTL_getvcpuaffinity, domid, vcpu)

    def sysctl_getdomaininfolist(self, first_domid: int = 0,
                                 max_domains: int = 1024) -> list[DomainInfo]:
        """Info of every domain with id >= ``first_domid``."""
        return self.call(HYPERVISOR_sysctl, XEN_SYSCTL_getdomaininfolist, first_domid,
                         max_domains)

    def sysctl_physinfo(self) -> so.PhysInfo:
        """``xl info``: pCPUs (``nr_cpus``), memory, scheduler."""
        return self.call(HYPERVISOR_sysctl, XEN_SYSCTL_physinfo)

    def sysctl_getcpuinfo(self) -> list[PcpuInfo]:
        """Each pCPU's busy time and current vCPU."""
        return self.call(HYPERVISOR_sysctl, XEN_SYSCTL_getcpuinfo)

    def sysctl_vcpu_list(self, domid: int | None = None) -> list[VcpuInfo]:
        """``xl vcpu-list [domid]``: scheduling snapshots of vCPUs."""
        return self.call(HYPERVISOR_sysctl, XEN_SYSCTL_sim_vcpu_list, domid)
