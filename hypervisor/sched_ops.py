"""The CPU scheduler's side of the hypervisor: domain registration and scheduling calls.

Theory of operation
-------------------
:mod:`hypervisor.sched` is a self-contained scheduler (pCPUs, credit1/RR
policies, CPU demand in virtual time, single-shot timers). This module wires
it to domains and exposes it through the hypercall table:

* **Registration** (:meth:`SchedOps.attach`, ``sched_init_domain``): when a
  domain is built it is added with its ``DomainConfig`` weight and cap, one
  :class:`~hypervisor.sched.SchedVcpu` per vCPU (hard affinity from
  ``cpus``), each vCPU's single-shot timer raising that vCPU's VIRQ_TIMER, and
  it is paused in the scheduler exactly while the domain is not runnable
  (created paused, controller pause, shutdown, dying;
  :meth:`~hypervisor.domain.Domain._update_runnable` keeps them in step).
  :meth:`SchedOps.detach` (``sched_destroy_domain``) runs when the domain is
  destroyed, not when a zombie is finally freed: a dying domain never runs.
* **CPU use**: guests consume CPU with ``HypercallInterface.compute``; waits
  in ``SCHEDOP_block``/``SCHEDOP_poll`` mark the vCPU blocked (see
  :mod:`hypervisor.vcpu`), so event delivery is a wake-up and the credit
  policy BOOSTs an I/O-bound vCPU past CPU hogs.
* **Calls** (handlers below; ``caller`` is the calling domain, everything
  else is guest- or toolstack-controlled): ``HYPERVISOR_set_timer_op`` (any
  domain, for its own vCPUs), ``XEN_DOMCTL_scheduler_op`` (credit
  weight/cap), ``XEN_DOMCTL_{set,get}vcpuaffinity``, ``XEN_SYSCTL_physinfo``,
  ``XEN_SYSCTL_getcpuinfo`` and a simulation-only vCPU listing for
  ``xl vcpu-list`` (all control-domain only).

Worked example (dom0's toolstack, ``xl sched-credit -d 3 -w 512`` then
``xl vcpu-pin 3 0 1``)::

    dom0.domctl_scheduler_op(3)               -> SchedCreditParams(weight=256, cap=0)
    dom0.domctl_scheduler_op(3, weight=512)   -> SchedCreditParams(weight=512, cap=0)
    dom0.domctl_setvcpuaffinity(3, 0, "1")
    [v.cpu for v in dom0.sysctl_vcpu_list(3)] -> [1] (once it has run)
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final

from hypervisor.errno import Errno, XenError
from hypervisor.event_channel import VIRQ_TIMER
from hypervisor.sched import PcpuInfo, Scheduler, VcpuInfo

if TYPE_CHECKING:
    from hypervisor.domain import Domain, DomainConfig
    from hypervisor.event_channel import EventChannels
    from hypervisor.memory import MachineMemory

# XEN_DOMCTL_SCHEDOP_* (domctl.h): the ``cmd`` of XEN_DOMCTL_scheduler_op
XEN_DOMCTL_SCHEDOP_putinfo: Final = 0
XEN_DOMCTL_SCHEDOP_getinfo: Final = 1

# XEN_SCHEDULER_* (domctl.h); "rr" has no Xen number, the simulation uses 0.
XEN_SCHEDULER_CREDIT: Final = 5
SCHEDULER_IDS: Final = {"credit": XEN_SCHEDULER_CREDIT, "rr": 0}

SIM_CPU_KHZ: Final = 2_000_000
"""The simulated pCPUs' nominal clock (``xl info`` cpu_mhz 2000)."""


@dataclass(frozen=True)
class SchedCreditParams:
    """``struct xen_domctl_sched_credit``: a domain's credit parameters.

    Attributes:
        weight: relative share, 1..65535 (default 256).
        cap: at most this % of one pCPU, 0 = uncapped.
    """

    weight: int
    cap: int


@dataclass(frozen=True)
class PhysInfo:
    """``struct xen_sysctl_physinfo`` (the fields ``xl info`` prints), plus the scheduler.

    Attributes:
        nr_cpus: online physical CPUs.
        max_cpu_id: highest pCPU number.
        threads_per_core, cores_per_socket, nr_nodes: the topology (one
            socket, one NUMA node, no SMT).
        cpu_khz: nominal clock.
        total_pages, free_pages: machine memory in 4 KiB frames.
        scheduler: the scheduler's name (``XEN_SYSCTL_sched_id`` in Xen).
        sched_id: its ``XEN_SCHEDULER_*`` number.
    """

    nr_cpus: int
    max_cpu_id: int
    threads_per_core: int
    cores_per_socket: int
    nr_nodes: int
    cpu_khz: int
    total_pages: int
    free_pages: int
    scheduler: str
    sched_id: int


def _int(value: object, what: str) -> int:
    """A guest-supplied integer, or EINVAL (never a Python TypeError)."""
    if isinstance(value, bool):
        raise XenError(Errno.EINVAL, f"{what} must be an integer")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise XenError(Errno.EINVAL, f"{what} must be an integer") from None


class SchedOps:
    """Scheduler registration of domains and the scheduling hypercall handlers.

    Args:
        sched: the host's scheduler.
        lookup: domid -> Domain (live or zombie) or None.
        evtchn: event channels (VIRQ_TIMER delivery).
        machine: machine memory (``physinfo`` page counts).
    """

    def __init__(self, sched: Scheduler, lookup: Callable[[int], Domain | None],
                 evtchn: EventChannels, machine: MachineMemory) -> None:
        self.sched = sched
        self._lookup = lookup
        self._evtchn = evtchn
        self._machine = machine

    # -- registration (hypervisor-internal) ------------------------------------------------

    def attach(self, d: Domain, config: DomainConfig) -> None:
        """Register a freshly built (paused) domain and its vCPUs.

        Args:
            d: the domain; must not be registered yet.
            config: its toolstack configuration (``weight``, ``cap``, ``cpus``).

        Raises:
            XenError: EINVAL for a weight outside 1..65535, a cap outside
                0..100 * vCPUs or a bad ``cpus`` set; EEXIST if the domid is
                already registered. Nothing stays registered on failure.
        """
        sched = self.sched
        weight = _int(config.weight, "weight")
        cap = _int(config.cap, "cap")
        sched.add_domain(d.domid, weight, 0)
        try:
            cpus = config.cpus
            if cpus is not None and not isinstance(cpus, str):
                cpus = [_int(c, "cpu") for c in cpus]
            for v in d.vcpus:
                sv = sched.add_vcpu(d.domid, v.vcpu_id, affinity=cpus)
                sv.timer_callback = partial(self._evtchn.send_vcpu_virq, d, v.vcpu_id, VIRQ_TIMER)
                v.sched = sv
            if cap:
                sched.set_params(d.domid, cap=cap)
        except BaseException:
            sched.remove_domain(d.domid)
            raise
        d.attach_scheduler(sched)

    def detach(self, d: Domain) -> None:
        """Remove ``d`` from the scheduler (destruction); idempotent.

        Tasks waiting in ``compute`` on its vCPUs are resumed with an error
        (the interface turns it into :class:`~hypervisor.vcpu.DomainDestroyed`)
        and its vCPU timers stop. Its accumulated CPU time stays readable.
        """
        if d.sched_attached:
            self.sched.remove_domain(d.domid)
            d.detach_scheduler()

    def _target(self, domid: object) -> Domain:
        d = self._lookup(_int(domid, "domid"))
        if d is None:
            raise XenError(Errno.ESRCH, f"no domain {domid}")
        if d.dying:
            raise XenError(Errno.EINVAL, f"domain {domid} is dying")
        return d

    @staticmethod
    def _vcpu_id(d: Domain, vcpu: object) -> int:
        i = _int(vcpu, "vcpu")
        if not 0 <= i < len(d.vcpus):
            raise XenError(Errno.EINVAL, f"no vcpu {i} in domain {d.domid}")
        return i

    # -- HYPERVISOR_set_timer_op (any domain, its own vCPUs) ---------------------------------

    def set_timer_op(self, caller: Domain, timeout: int, vcpu: int = 0) -> None:
        """``HYPERVISOR_set_timer_op``: arm (or with 0 cancel) a vCPU's one-shot timer.

        When it fires, VIRQ_TIMER is raised on that vCPU (delivered if the
        guest bound it there with ``bind_virq``, else dropped).

        Args:
            caller: the calling domain.
            timeout: absolute Xen system time in ns (see
                ``HypercallInterface.system_time_ns``); guest-controlled, any
                64-bit pattern: 0 cancels, a past value fires promptly (after
                the 50 us slop), a negative one or one more than 2^50 ns ahead
                fires in 100 ms (Xen's workaround for a Linux bug).
            vcpu: which of the caller's vCPUs (Xen: the calling one).

        Raises:
            XenError: EFAULT for a non-integer timeout (C: a bad argument);
                EINVAL for a bad vCPU.
        """
        i = self._vcpu_id(caller, vcpu)
        if isinstance(timeout, bool):
            raise XenError(Errno.EFAULT, "set_timer_op: timeout is not an s_time_t")
        try:
            t = operator.index(timeout)
        except TypeError:
            raise XenError(Errno.EFAULT, "set_timer_op: timeout is not an s_time_t") from None
        caller.vcpus[i].sched.set_timer_op(t)

    # -- domctl / sysctl (control domain only; the table checks that) ------------------------

    def scheduler_op(self, caller: Domain, domid: int, cmd: int = XEN_DOMCTL_SCHEDOP_getinfo,
                     weight: int | None = None, cap: int | None = None) -> SchedCreditParams:
        """``XEN_DOMCTL_scheduler_op`` with the credit parameters (``xl sched-credit``).

        Args:
            caller: the calling (control) domain.
            domid: the target domain.
            cmd: ``XEN_DOMCTL_SCHEDOP_getinfo`` or ``_putinfo``.
            weight: putinfo: new weight 1..65535, ``None`` keeps it (Xen: 0).
            cap: putinfo: new cap 0..100 * vCPUs (0 = none), ``None`` keeps it.

        Returns:
            The domain's parameters after the call.

        Raises:
            XenError: ESRCH no such domain; EINVAL dying domain, unknown
                ``cmd`` or an out-of-range value (then nothing changes).
        """
        d = self._target(domid)
        c = _int(cmd, "cmd")
        if c == XEN_DOMCTL_SCHEDOP_putinfo:
            self.sched.set_params(d.domid, weight=weight, cap=cap)
        elif c != XEN_DOMCTL_SCHEDOP_getinfo:
            raise XenError(Errno.EINVAL, f"scheduler_op cmd {c}")
        w, cp = self.sched.get_params(d.domid)
        return SchedCreditParams(weight=w, cap=cp)

    def setvcpuaffinity(self, caller: Domain, domid: int, vcpu: int,
                        cpus: str | Iterable[int] | None) -> None:
        """``XEN_DOMCTL_setvcpuaffinity`` (hard affinity, ``xl vcpu-pin``).

        Args:
            caller: the calling (control) domain.
            domid: the target domain.
            vcpu: its vCPU.
            cpus: ``"0-1,3"``, ``"all"``, ``None`` (= all) or pCPU numbers.

        Raises:
            XenError: ESRCH no such domain; EINVAL dying domain, bad vCPU, or
                an empty, malformed or out-of-range set.
        """
        d = self._target(domid)
        i = self._vcpu_id(d, vcpu)
        if cpus is not None and not isinstance(cpus, str):
            try:
                cpus = [_int(c, "cpu") for c in cpus]
            except TypeError:
                raise XenError(Errno.EINVAL, "cpus is not a cpu list") from None
        d.vcpus[i].sched.set_affinity(cpus)

    def getvcpuaffinity(self, caller: Domain, domid: int, vcpu: int) -> frozenset[int]:
        """``XEN_DOMCTL_getvcpuaffinity``: a vCPU's hard affinity.

        Raises:
            XenError: ESRCH no such domain; EINVAL dying domain or bad vCPU.
        """
        d = self._target(domid)
        return d.vcpus[self._vcpu_id(d, vcpu)].sched.affinity

    def vcpu_list(self, caller: Domain, domid: int | None = None) -> list[VcpuInfo]:
        """Simulation sysctl: every vCPU's scheduling snapshot (``xl vcpu-list``).

        Real libxl makes one ``XEN_DOMCTL_getvcpuinfo`` per vCPU; one call
        returning them all is the simulation's shortcut.

        Args:
            caller: the calling (control) domain.
            domid: one domain, or ``None`` for every live domain.

        Raises:
            XenError: ESRCH no such domain; EINVAL dying domain.
        """
        if domid is None:
            return self.sched.vcpu_list()
        return self.sched.vcpu_list(self._target(domid).domid)

    def getcpuinfo(self, caller: Domain) -> list[PcpuInfo]:
        """``XEN_SYSCTL_getcpuinfo``: each pCPU's busy time and what it runs now."""
        return self.sched.pcpu_info()

    def physinfo(self, caller: Domain) -> PhysInfo:
        """``XEN_SYSCTL_physinfo`` (``xl info``): pCPUs, memory, scheduler."""
        n = self.sched.nr_pcpus
        m = self._machine
        name = self.sched.policy.name
        return PhysInfo(
            nr_cpus=n, max_cpu_id=n - 1, threads_per_core=1, cores_per_socket=n, nr_nodes=1,
            cpu_khz=SIM_CPU_KHZ, total_pages=m.nr_frames, free_pages=m.nr_frames - m.allocated,
            scheduler=name, sched_id=SCHEDULER_IDS.get(name, 0),
        )

    # -- observability -----------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Scheduler objects that could leak (for ``Hypervisor.resource_counts``)."""
        vs = [v for sd in self.sched.domains.values() for v in sd.vcpus.values()]
        return {
            "sched_domains": len(self.sched.domains),
            "sched_vcpus": len(vs),
            "sched_demands": sum(v.nr_demands for v in vs),
        }
