"""The machine side of CPU scheduling: pCPUs, vCPUs, CPU demand, timers, accounting.

Theory of operation
-------------------
The trio clock is the machine clock; internally every time is an integer
number of nanoseconds (Xen's ``s_time_t``), so accounting never drifts.

*CPU demand.* Guest code consumes CPU with ``await vcpu.run(seconds)``: the call
returns once that vCPU has actually been *on a pCPU* for that long. A vCPU is
**runnable** while it has outstanding demand, is not blocked
(``SCHEDOP_block``) and is not paused; otherwise it is not runnable and uses no
CPU at all. Several tasks may call ``run`` on one vCPU; their demands are
served in FIFO order, as one CPU executes one thing at a time.

*Discrete events, no polling.* One service task (:meth:`Scheduler.run`) sleeps
until the next *decision point* and handles it: a slice end, the completion of
the running vCPU's head demand, or a timer (credit ticks and accounting,
guest single-shot timers). API calls (``run``, ``block``, ``wake``, ``pause``...)
only change state synchronously, raise per-pCPU "reschedule" flags (Xen's
``SCHEDULE_SOFTIRQ``) and wake the service task; all scheduling decisions
are taken by the service task, in pCPU order, so the outcome is deterministic.
A pass of the service task:

1. charges each pCPU whose event is due (demand consumed; completed ``run``
   calls are resumed) and flags slice ends;
2. fires due timers;
3. if guest tasks were resumed, yields twice so each resumed task runs its
   next synchronous step (trio may order a batch either way; two yields make
   the result independent of that), then
4. re-evaluates the vCPUs whose demand ran out: one that immediately asked for
   more CPU never stopped being runnable (a busy loop of ``run(0.01)`` keeps
   its slice and is not "woken"), the others stop being runnable;
5. runs the policy's ``do_schedule`` on every flagged pCPU.

Then it sleeps (``trio.move_on_at``) until the earliest pending event; an API
call that creates an earlier one moves that deadline. With
``MockClock(autojump_threshold=0)`` a simulated second of busy machine costs a
few hundred passes.

*Run states* are Xen's (``RUNSTATE_running/runnable/blocked/offline``): running
on a pCPU; runnable and waiting; blocked (explicitly, or idle: no demand); or
offline (has demand but paused or parked by a cap, or brought down with
``VCPUOP_down``: :meth:`SchedVcpu.set_online`). Time in each is accounted
per vCPU and summed per domain; ``cpu_time`` is the running time (``xl list``
Time(s)).

Worked example (2 pCPUs, round-robin, 30 ms slices)::

    t=0    A.run(0.050), B.run(0.050), C.run(0.050) -> A on cpu0, B on cpu1,
           C queued
    t=30ms slice end on both: cpu0 puts A back, runs C; cpu1 keeps B (no one
           else eligible)
    t=50ms B's demand done (50 ms of CPU); B's caller resumes; cpu1 takes A
    t=60ms C has 30 ms, A 50 ms -> A's caller resumes at 70 ms, C's at 80 ms
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import outcome
import trio

from hypervisor.errno import Errno, XenError
from hypervisor.sched.policy import SchedPolicy
from hypervisor.sched.timer import NEVER, Timer, TimerQueue
from hypervisor.types import DomId

NS_PER_S: Final = 1_000_000_000
NS_PER_MS: Final = 1_000_000

TIMER_SLOP_NS: Final = 50_000
"""Xen's default ``timer_slop`` (50 us): a guest timer fires no earlier than its
deadline and no earlier than this long after it was armed. A timer set in the
past therefore fires promptly, once, and a guest re-arming past deadlines in a
loop still lets machine time advance."""

SET_TIMER_OP_FAR_NS: Final = 1 << 50
"""``do_set_timer_op``: a timeout more than 2^50 ns (~13 days) ahead, or negative,
is treated as a Linux wrap-around bug and replaced by now + 100 ms."""

CREDIT_WEIGHT_DEFAULT: Final = 256
WEIGHT_MIN: Final = 1
WEIGHT_MAX: Final = 65535


class RunState(enum.IntEnum):
    """Xen's ``RUNSTATE_*`` (public/vcpu.h)."""

    RUNNING = 0
    RUNNABLE = 1
    BLOCKED = 2
    OFFLINE = 3


class VcpuGoneError(Exception):
    """Raised from ``SchedVcpu.run`` when the vCPU was removed while waiting."""


def duration_to_ns(seconds: float) -> int:
    """Convert a CPU-demand duration to ns.

    Args:
        seconds: non-negative seconds; ``math.inf`` means "forever".

    Returns:
        Nanoseconds (0 for zero or negative input, :data:`NEVER` for
        durations beyond ~292 years).

    Raises:
        ValueError: ``seconds`` is NaN (a bug in the caller).
    """
    s = float(seconds)
    if math.isnan(s):
        raise ValueError("CPU demand must be a number of seconds, not NaN")
    if s <= 0.0:
        return 0
    ns = s * NS_PER_S
    if ns >= NEVER:
        return NEVER
    return max(1, round(ns))


def deadline_to_ns(deadline: float) -> int:
    """Convert a guest-supplied absolute deadline (trio-clock seconds) to ns.

    Never raises: hostile values are mapped to something safe.

    Args:
        deadline: seconds on the trio clock; guest-controlled. NaN and
            ``-inf`` count as "in the past"; ``+inf`` and anything beyond the
            ``s_time_t`` range mean "never".

    Returns:
        Nanoseconds, or :data:`NEVER`.
    """
    try:
        s = float(deadline)
    except (OverflowError, TypeError, ValueError):
        # An int too large for a float is astronomically far in the future or past.
        try:
            return NEVER if int(deadline) > 0 else -1
        except (TypeError, ValueError):
            return -1
    if math.isnan(s):
        return -1
    ns = s * NS_PER_S
    if ns >= NEVER:
        return NEVER
    if ns <= -NEVER:
        return -NEVER
    return round(ns)


def parse_cpus(spec: str | Iterable[int] | None, nr_pcpus: int) -> frozenset[int]:
    """Parse an ``xl.cfg`` ``cpus=`` style hard-affinity set.

    Accepts ``None``/``"all"`` (every pCPU), ``"3"``, ``"0-3,6"``, exclusions
    ``"all,^1"`` / ``"0-7,^2-3"``, or an iterable of ints.

    Args:
        spec: the set; comes from a config file or toolstack command.
        nr_pcpus: number of physical CPUs.

    Returns:
        The non-empty set of pCPU numbers.

    Raises:
        ValueError: malformed text, a pCPU out of range, or an empty result.
    """
    if spec is None:
        return frozenset(range(nr_pcpus))
    if not isinstance(spec, str):
        cpus = frozenset(int(c) for c in spec)
    else:
        cpus_set: set[int] = set()
        for raw in spec.replace(" ", "").split(","):
            if not raw:
                raise ValueError(f"empty element in cpu list {spec!r}")
            neg = raw.startswith("^")
            item = raw[1:] if neg else raw
            if item == "all":
                rng = set(range(nr_pcpus))
            else:
                lo_s, sep, hi_s = item.partition("-")
                if not lo_s.isdigit() or (sep and not hi_s.isdigit()):
                    raise ValueError(f"bad cpu list element {raw!r}")
                lo = int(lo_s)
                hi = int(hi_s) if sep else lo
                if hi < lo:
                    raise ValueError(f"bad cpu range {raw!r}")
                if hi >= nr_pcpus:
                    raise ValueError(f"cpu {hi} out of range (0..{nr_pcpus - 1})")
                rng = set(range(lo, hi + 1))
            if neg:
                cpus_set -= rng
            else:
                cpus_set |= rng
        cpus = frozenset(cpus_set)
    bad = [c for c in cpus if not 0 <= c < nr_pcpus]
    if bad:
        raise ValueError(f"cpu {bad[0]} out of range (0..{nr_pcpus - 1})")
    if not cpus:
        raise ValueError("empty cpu set")
    return cpus


def format_cpus(cpus: Iterable[int], nr_pcpus: int) -> str:
    """Format a pCPU set the way ``xl vcpu-list`` does (``all`` or ranges).

    Args:
        cpus: the set.
        nr_pcpus: number of physical CPUs.

    Returns:
        ``"all"``, or e.g. ``"0-2,5"``; ``"none"`` for an empty set.
    """
    s = sorted(set(cpus))
    if not s:
        return "none"
    if s == list(range(nr_pcpus)):
        return "all"
    parts: list[str] = []
    start = prev = s[0]
    for c in [*s[1:], -2]:
        if c == prev + 1:
            prev = c
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = c
    return ",".join(parts)


@dataclass(frozen=True)
class VcpuInfo:
    """A snapshot of one vCPU (for ``xl vcpu-list``, ``top``).

    Times are seconds of machine time.
    """

    domid: int
    vcpu_id: int
    cpu: int
    running: bool
    blocked: bool
    runstate: RunState
    cpu_time: float
    runnable_time: float
    blocked_time: float
    offline_time: float
    affinity: frozenset[int]
    nr_switches: int
    nr_migrations: int
    nr_wakeups: int


@dataclass(frozen=True)
class DomainInfo:
    """A snapshot of one domain's scheduling state (``xl list``, ``sched-credit``)."""

    domid: int
    weight: int
    cap: int
    nr_vcpus: int
    cpu_time: float
    running: bool
    blocked: bool
    paused: bool


@dataclass(frozen=True)
class PcpuInfo:
    """A snapshot of one physical CPU."""

    cpu: int
    curr: tuple[int, int] | None
    busy_time: float
    nr_switches: int


class _Demand:
    __slots__ = ("remaining", "task")

    def __init__(self, remaining: int, task: trio.lowlevel.Task) -> None:
        self.remaining = remaining
        self.task = task


class PCpu:
    """A physical CPU: what runs on it and until when.

    Args:
        cpu: its number.
    """

    __slots__ = (
        "busy_ns",
        "cpu",
        "curr",
        "event_ns",
        "need_resched",
        "nr_switches",
        "priv",
        "slice_end",
    )

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self.curr: SchedVcpu | None = None
        self.slice_end = NEVER
        self.event_ns = NEVER
        self.need_resched = False
        self.busy_ns = 0
        self.nr_switches = 0
        self.priv: object = None


class SchedDomain:
    """A domain as the scheduler sees it: parameters, vCPUs, pause count.

    Created by :meth:`Scheduler.add_domain`; read ``weight``/``cap`` freely,
    change them only through :meth:`Scheduler.set_params`.
    """

    __slots__ = ("cap", "domid", "pause_count", "priv", "vcpus", "weight")

    def __init__(self, domid: int, weight: int, cap: int) -> None:
        self.domid = domid
        self.weight = weight
        self.cap = cap
        self.pause_count = 0
        self.vcpus: dict[int, SchedVcpu] = {}
        self.priv: object = None


class SchedVcpu:
    """A schedulable vCPU. Created by :meth:`Scheduler.add_vcpu`.

    The hypervisor's vCPU object holds one of these and forwards the guest's
    CPU use (``run``), ``SCHEDOP_block``/event delivery (``block``/``wake``),
    ``SCHEDOP_yield`` (``yield_``) and ``set_timer_op`` (``set_timer_op``).

    Attributes:
        processor: the pCPU it runs on or is queued for (policy-managed).
        timer_callback: called when the single-shot timer fires; the
            hypervisor sets it to raise VIRQ_TIMER.
        priv: the policy's per-vCPU data.
    """

    __slots__ = (
        "_blocked",
        "_charged_at",
        "_demands",
        "_down",
        "_pause",
        "_removed",
        "_rs_entry",
        "_rs_time",
        "_runnable",
        "_sched",
        "_settling",
        "_timer",
        "affinity",
        "domain",
        "is_running",
        "last_cpu",
        "nr_migrations",
        "nr_switches",
        "nr_wakeups",
        "priv",
        "processor",
        "running_since",
        "runstate",
        "timer_callback",
        "vcpu_id",
    )

    def __init__(
        self, sched: Scheduler, domain: SchedDomain, vcpu_id: int,
        affinity: frozenset[int], now: int,
    ) -> None:
        self._sched = sched
        self.domain = domain
        self.vcpu_id = vcpu_id
        self.affinity = affinity
        self.processor = min(affinity)
        self.last_cpu = -1
        self.is_running = False
        self.running_since = now
        self.priv: object = None
        self.timer_callback: Callable[[], None] | None = None
        self._demands: deque[_Demand] = deque()
        self._blocked = False
        self._down = False
        self._pause = 0
        self._removed = False
        self._runnable = False
        self._settling = False
        self._charged_at = now
        self.runstate = RunState.BLOCKED
        self._rs_entry = now
        self._rs_time = [0, 0, 0, 0]
        self.nr_switches = 0
        self.nr_migrations = 0
        self.nr_wakeups = 0
        self._timer = Timer(sched.timers, self._timer_fired)

    def __repr__(self) -> str:
        return f"<SchedVcpu d{self.domain.domid}v{self.vcpu_id} {self.runstate.name}>"

    @property
    def domid(self) -> int:
        """The owning domain's id."""
        return self.domain.domid

    @property
    def runnable(self) -> bool:
        """True while the vCPU wants and may use a pCPU."""
        return self._runnable

    @property
    def blocked(self) -> bool:
        """True while blocked by :meth:`block` (SCHEDOP_block) and not woken."""
        return self._blocked

    @property
    def paused(self) -> bool:
        """True while this vCPU or its domain is paused (or parked by a cap)."""
        return self._pause > 0 or self.domain.pause_count > 0

    @property
    def online(self) -> bool:
        """False while brought down (``VCPUOP_down``); vCPUs start online."""
        return not self._down

    @property
    def nr_demands(self) -> int:
        """How many :meth:`run` calls are waiting (for leak checks)."""
        return len(self._demands)

    @property
    def demand_ns(self) -> int:
        """Outstanding CPU demand in ns (as of the last accounting update)."""
        return sum(d.remaining for d in self._demands)

    # -- CPU use -----------------------------------------------------------------------

    async def run(self, seconds: float) -> None:
        """Consume ``seconds`` of pCPU time on this vCPU.

        Returns once the vCPU has been running on a pCPU for that long; under
        contention that takes longer in machine time. Always a checkpoint.
        Cancelling the call withdraws the rest of the demand.

        Args:
            seconds: CPU time wanted; guest-program controlled. ``<= 0`` returns
                at once, ``math.inf`` never returns (a pure CPU hog).

        Raises:
            ValueError: ``seconds`` is NaN.
            VcpuGoneError: the vCPU was (or gets) removed.
            RuntimeError: the scheduler's service task is not running (a bug
                in the caller: the call could never return).
        """
        ns = duration_to_ns(seconds)
        if self._removed:
            raise VcpuGoneError(repr(self))
        if not self._sched._running:
            raise RuntimeError(
                "CPU demand needs the scheduler service task: start it with "
                "`await nursery.start(sched.run)` (or the hypervisor's `hv.run`)")
        if ns <= 0:
            await trio.lowlevel.checkpoint()
            return
        sched = self._sched
        d = _Demand(ns, trio.lowlevel.current_task())
        sched._add_demand(self, d)

        def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
            sched._drop_demand(self, d)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def block(self) -> None:
        """SCHEDOP_block: stop being runnable until :meth:`wake`.

        Outstanding ``run`` demand is kept and resumes after the wake.
        Idempotent.
        """
        if not self._blocked:
            self._blocked = True
            # An idle vCPU (no demand, not queued, not on a pCPU) stays idle and
            # BLOCKED: nothing to re-evaluate (this is the hypervisor's hot path).
            if self._demands or self._runnable or self._settling or self.is_running:
                self._sched._reevaluate(self)

    def block_if_idle(self) -> None:
        """SCHEDOP_block from a guest kernel's idle loop: :meth:`block` unless busy.

        A simulated guest may run several tasks on one vCPU (its event loop,
        and tasks consuming CPU with :meth:`run`); a real kernel only calls
        SCHEDOP_block when none of its threads is runnable. So a vCPU with
        outstanding demand is not idle and this call leaves it runnable.
        """
        if not self._blocked and not self._demands:
            self._blocked = True
            if self._runnable or self._settling or self.is_running:
                self._sched._reevaluate(self)

    def wake(self) -> None:
        """Event delivery to a blocked vCPU (``vcpu_unblock``).

        If the vCPU then has CPU demand it becomes runnable; the credit policy
        boosts it. A no-op when not blocked (two attribute reads: event
        delivery calls it on every wake).
        """
        if self._blocked:
            self._blocked = False
            if self._demands or self._runnable or self._settling or self.is_running:
                self._sched._reevaluate(self)

    def yield_(self) -> None:
        """SCHEDOP_yield: give up the rest of the current slice.

        The vCPU stays runnable (if it has demand) but goes behind its peers.
        A no-op unless the vCPU is on a pCPU.
        """
        if self.is_running:
            self._sched.policy.yield_(self)
            self._sched.raise_softirq(self.processor)

    def pause(self) -> None:
        """Pause this vCPU (counted, like ``vcpu_pause``)."""
        self._pause += 1
        if self._pause == 1:
            self._sched._reevaluate(self)

    def unpause(self) -> None:
        """Undo one :meth:`pause`.

        Raises:
            RuntimeError: the vCPU is not paused (a bug in the caller).
        """
        if self._pause == 0:
            raise RuntimeError(f"{self!r}: unpause without pause")
        self._pause -= 1
        if self._pause == 0:
            self._sched._reevaluate(self)

    def set_online(self, online: bool) -> None:
        """``VCPUOP_up`` / ``VCPUOP_down``: bring the vCPU up or down. Idempotent.

        A down vCPU is never runnable, so it gets no pCPU; its run state is
        OFFLINE whatever else it is doing. One that is on a pCPU is taken off
        at the next scheduling pass (Xen's ``vcpu_sleep_nosync``: the
        operation is asynchronous). Outstanding ``run`` demand is kept and
        makes no progress until the vCPU is up again (Xen keeps a downed
        vCPU's context and it continues where it stopped); cancelling a
        ``run`` withdraws it as usual.

        Args:
            online: the new state.
        """
        down = not online
        if down == self._down or self._removed:
            return
        self._down = down
        self._sched._reevaluate(self)

    def set_affinity(self, cpus: str | Iterable[int] | None) -> None:
        """Set the hard affinity (``xl vcpu-pin``).

        Args:
            cpus: as accepted by :func:`parse_cpus`; toolstack controlled.

        Raises:
            XenError: EINVAL for an empty or out-of-range set.
        """
        try:
            aff = parse_cpus(cpus, len(self._sched.pcpus))
        except ValueError as e:
            raise XenError(Errno.EINVAL, str(e)) from None
        if aff == self.affinity:
            return
        self.affinity = aff
        sched = self._sched
        sched.policy.affinity_changed(self, sched.now_ns())
        sched._kick()

    # -- single-shot timer -------------------------------------------------------------

    def set_timer(self, deadline: float, callback: Callable[[], None] | None = None) -> None:
        """Arm the vCPU's single-shot timer (replaces any previous deadline).

        Args:
            deadline: absolute trio-clock seconds; guest-controlled and may be
                anything: a past value (0, negative, NaN) fires promptly,
                once; ``inf`` or beyond 2^63-1 ns never fires. A timer never
                fires sooner than :data:`TIMER_SLOP_NS` after being armed.
            callback: replaces :attr:`timer_callback` when given.
        """
        if callback is not None:
            self.timer_callback = callback
        if self._removed:
            return
        sched = self._sched
        ns = deadline_to_ns(deadline)
        if ns >= NEVER:
            self._timer.stop()
            return
        self._timer.set(max(ns, sched.now_ns() + sched.timer_slop_ns))

    def stop_timer(self) -> None:
        """Disarm the single-shot timer."""
        self._timer.stop()

    def set_timer_op(self, timeout: int) -> None:
        """``HYPERVISOR_set_timer_op`` with Xen's exact semantics.

        Args:
            timeout: guest ``s_time_t`` (ns of system time, i.e. since the
                scheduler started); guest-controlled, any 64-bit pattern.
                0 cancels; a negative value or one more than 2^50 ns ahead
                is a known Linux bug and fires in 100 ms instead.
        """
        t = int(timeout) & 0xFFFFFFFFFFFFFFFF
        if t >= 1 << 63:
            t -= 1 << 64
        sched = self._sched
        if t == 0:
            self._timer.stop()
            return
        now = sched.now_ns()
        offset = t - (now - sched.boot_ns)
        if t < 0 or offset >= SET_TIMER_OP_FAR_NS:
            self._timer.set(now + 100 * NS_PER_MS)
        else:
            self._timer.set(max(sched.boot_ns + t, now + sched.timer_slop_ns))

    @property
    def timer_deadline(self) -> float | None:
        """The armed single-shot deadline (trio seconds), or ``None``."""
        d = self._timer.deadline
        return None if d == NEVER else d / NS_PER_S

    def _timer_fired(self) -> None:
        self._sched._guests_woken = True
        cb = self.timer_callback
        if cb is not None:
            cb()

    # -- statistics --------------------------------------------------------------------

    def runstate_times(self, now: int | None = None) -> list[int]:
        """ns spent in each :class:`RunState` so far (index = state)."""
        if now is None:
            now = self._sched.now_ns()
        times = list(self._rs_time)
        times[self.runstate] += max(0, now - self._rs_entry)
        return times

    @property
    def cpu_time_ns(self) -> int:
        """Total running time in ns (live)."""
        return self.runstate_times()[RunState.RUNNING]

    def info(self) -> VcpuInfo:
        """A snapshot for ``vcpu-list`` and ``top``."""
        t = self.runstate_times()
        return VcpuInfo(
            domid=self.domain.domid,
            vcpu_id=self.vcpu_id,
            cpu=self.processor,
            running=self.is_running,
            blocked=self.runstate == RunState.BLOCKED,
            runstate=self.runstate,
            cpu_time=t[0] / NS_PER_S,
            runnable_time=t[1] / NS_PER_S,
            blocked_time=t[2] / NS_PER_S,
            offline_time=t[3] / NS_PER_S,
            affinity=self.affinity,
            nr_switches=self.nr_switches,
            nr_migrations=self.nr_migrations,
            nr_wakeups=self.nr_wakeups,
        )


def _make_policy(policy: SchedPolicy | str) -> SchedPolicy:
    if isinstance(policy, SchedPolicy):
        return policy
    if policy == "credit":
        from hypervisor.sched.credit import CreditPolicy

        return CreditPolicy()
    if policy in ("rr", "round-robin"):
        from hypervisor.sched.rr import RoundRobinPolicy

        return RoundRobinPolicy()
    raise ValueError(f"unknown scheduler {policy!r} (credit, rr)")


class Scheduler:
    """The CPU scheduler of the simulated machine.

    Start it as a service: ``await nursery.start(sched.run)``. All other
    methods are synchronous and must be called from inside ``trio.run``.

    Args:
        nr_pcpus: number of physical CPUs (>= 1); host configuration.
        policy: ``"credit"`` (default), ``"rr"``, or a policy instance.
        timer_slop_ns: minimum delay of a guest timer (see
            :data:`TIMER_SLOP_NS`).

    Raises:
        ValueError: ``nr_pcpus < 1`` or an unknown policy name.
    """

    def __init__(
        self, nr_pcpus: int, policy: SchedPolicy | str = "credit",
        *, timer_slop_ns: int = TIMER_SLOP_NS,
    ) -> None:
        if nr_pcpus < 1:
            raise ValueError("need at least one physical CPU")
        self.pcpus = [PCpu(i) for i in range(nr_pcpus)]
        self.domains: dict[int, SchedDomain] = {}
        self.timers = TimerQueue(self._timer_armed)
        self.timer_slop_ns = timer_slop_ns
        self.boot_ns = 0
        self._started = False
        self._running = False
        self._sleep_scope: trio.CancelScope | None = None
        self._sleep_until = NEVER
        self._resched_pending = False
        self._settle: list[SchedVcpu] = []
        self._guests_woken = False
        self._in_schedule = False
        self._next_cpu = 0
        self.nr_passes = 0
        self.policy = _make_policy(policy)
        self.policy.attach(self)

    # -- clock -------------------------------------------------------------------------

    @staticmethod
    def now_ns() -> int:
        """Machine time in ns (the trio clock).

        Outside ``trio.run`` (a synchronous caller building or inspecting the
        host before any event loop exists) it is 0: nothing can run then, so
        no accounting depends on it.
        """
        try:
            return round(trio.current_time() * NS_PER_S)
        except RuntimeError:
            return 0

    def system_time_ns(self) -> int:
        """Xen system time: ns since the scheduler started (``NOW()``)."""
        return self.now_ns() - self.boot_ns

    @property
    def running(self) -> bool:
        """True while the service task (:meth:`run`) is running."""
        return self._running

    @property
    def nr_pcpus(self) -> int:
        """Number of physical CPUs."""
        return len(self.pcpus)

    # -- service task ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The scheduler's service task; runs until cancelled.

        Args:
            task_status: from ``nursery.start``; signalled once running.

        Raises:
            RuntimeError: the scheduler is already running.
        """
        if self._started:
            raise RuntimeError("scheduler already started")
        self._started = True
        now = self.now_ns()
        self.boot_ns = now
        self.policy.start(now)
        self._running = True
        try:
            task_status.started()
            while True:
                deadline = self._next_deadline()
                if deadline <= self.now_ns():
                    await trio.lowlevel.checkpoint()
                else:
                    self._sleep_until = deadline
                    with trio.move_on_at(
                        math.inf if deadline >= NEVER else deadline / NS_PER_S
                    ) as scope:
                        self._sleep_scope = scope
                        await trio.sleep_forever()
                    self._sleep_scope = None
                    self._sleep_until = NEVER
                await self._pass()
        finally:
            self._sleep_scope = None
            self._running = False

    def _next_deadline(self) -> int:
        if self._resched_pending or self._settle:
            return -NEVER
        d = self.timers.next_deadline()
        for p in self.pcpus:
            if p.event_ns < d:
                d = p.event_ns
        return d

    def _kick(self) -> None:
        """Make the service task recompute its deadline now."""
        scope = self._sleep_scope
        if scope is not None:
            scope.deadline = -math.inf

    def _timer_armed(self, deadline: int) -> None:
        scope = self._sleep_scope
        if scope is not None and deadline < self._sleep_until:
            self._sleep_until = deadline
            scope.deadline = deadline / NS_PER_S

    async def _pass(self) -> None:
        self.nr_passes += 1
        now = self.now_ns()
        for p in self.pcpus:
            if p.event_ns <= now:
                v = p.curr
                if v is not None:
                    self._charge(v, now)
                if p.slice_end <= now:
                    self._raise(p)
                self._update_event(p)
        self.timers.run_due(now)
        if self._guests_woken:
            self._guests_woken = False
            # Let each resumed guest task run its next synchronous step (see
            # the module docstring); two yields make it batch-order independent.
            await trio.lowlevel.checkpoint()
            await trio.lowlevel.checkpoint()
            now = self.now_ns()
        if self._settle:
            settle, self._settle = self._settle, []
            for v in settle:
                v._settling = False
                self._reevaluate(v, now)
        self._do_softirqs(now)

    # -- pCPU events and charging ------------------------------------------------------

    def _update_event(self, p: PCpu) -> None:
        v = p.curr
        ev = p.slice_end
        if v is not None and v._runnable and v._demands:
            done = v._charged_at + v._demands[0].remaining
            if done < ev:
                ev = done
        p.event_ns = ev

    def _charge(self, v: SchedVcpu, now: int) -> None:
        """Consume ``v``'s demand for the time it has been running."""
        delta = now - v._charged_at
        if delta <= 0:
            return
        v._charged_at = now
        dq = v._demands
        if not dq:
            return
        while dq:
            d = dq[0]
            if d.remaining > delta:
                d.remaining -= delta
                return
            delta -= d.remaining
            d.remaining = 0
            dq.popleft()
            trio.lowlevel.reschedule(d.task)
            self._guests_woken = True
        if not v._settling:
            v._settling = True
            self._settle.append(v)
            self._kick()

    def _add_demand(self, v: SchedVcpu, d: _Demand) -> None:
        now = self.now_ns()
        if v.is_running:
            self._charge(v, now)
        v._demands.append(d)
        self._reevaluate(v, now)
        if v.is_running:
            self._update_event(self.pcpus[v.processor])
            self._kick()

    def _drop_demand(self, v: SchedVcpu, d: _Demand) -> None:
        # Called from the waiting task's abort function: ``d`` must be taken out
        # before charging, or charging could complete it and resume that task
        # while trio is cancelling it.
        now = self.now_ns()
        dq = v._demands
        if dq and dq[0] is d:
            dq.popleft()
            if v.is_running:
                v._charged_at = now  # run time since the last charge was d's
        else:
            try:
                dq.remove(d)
            except ValueError:
                return
            if v.is_running:
                self._charge(v, now)
        self._reevaluate(v, now)
        if v.is_running:
            self._update_event(self.pcpus[v.processor])
            self._kick()

    # -- run state ---------------------------------------------------------------------

    def _reevaluate(self, v: SchedVcpu, now: int | None = None) -> None:
        """Recompute whether ``v`` is runnable and tell the policy on a change."""
        if now is None:
            now = self.now_ns()
        new = (
            (bool(v._demands) or v._settling)
            and not v._blocked
            and v._pause == 0
            and v.domain.pause_count == 0
            and not v._removed
            and not v._down
        )
        if new != v._runnable:
            v._runnable = new
            if new:
                v.nr_wakeups += 1
                self.policy.wake(v, now)
            else:
                self.policy.sleep(v, now)
                if v.is_running:
                    self._raise(self.pcpus[v.processor])
            self._kick()
        self._sync_runstate(v, now)

    @staticmethod
    def _sync_runstate(v: SchedVcpu, now: int) -> None:
        if v.is_running:
            s = RunState.RUNNING
        elif v._runnable:
            s = RunState.RUNNABLE
        elif v._down:
            s = RunState.OFFLINE
        elif v._blocked or not (v._demands or v._settling):
            s = RunState.BLOCKED
        else:
            s = RunState.OFFLINE
        if s != v.runstate:
            v._rs_time[v.runstate] += now - v._rs_entry
            v.runstate = s
            v._rs_entry = now

    # -- rescheduling ------------------------------------------------------------------

    def _raise(self, p: PCpu) -> None:
        if not p.need_resched:
            p.need_resched = True
            self._resched_pending = True

    def raise_softirq(self, cpu: int) -> None:
        """Ask for ``cpu`` to be rescheduled at the next pass (a "tickle").

        Args:
            cpu: the pCPU; chosen by the policy or the core.
        """
        self._raise(self.pcpus[cpu])
        if not self._in_schedule:
            self._kick()

    def _do_softirqs(self, now: int) -> None:
        self._in_schedule = True
        try:
            for _ in range(64 * len(self.pcpus) + 64):
                if not self._resched_pending:
                    return
                self._resched_pending = False
                for p in self.pcpus:
                    if p.need_resched:
                        self._schedule(p, now)
            raise RuntimeError("scheduler: reschedule storm (policy bug)")
        finally:
            self._in_schedule = False

    def _schedule(self, p: PCpu, now: int) -> None:
        p.need_resched = False
        prev = p.curr
        if prev is not None:
            self._charge(prev, now)
        nxt, slice_ns = self.policy.do_schedule(p.cpu, prev, now)
        if nxt is not prev:
            if prev is not None:
                prev.is_running = False
                p.busy_ns += now - prev.running_since
                self._sync_runstate(prev, now)
            if nxt is not None:
                if nxt.is_running or not nxt._runnable or p.cpu not in nxt.affinity:
                    raise RuntimeError(f"policy picked {nxt!r} for cpu{p.cpu} (policy bug)")
                nxt.is_running = True
                nxt.processor = p.cpu
                if nxt.last_cpu != p.cpu:
                    if nxt.last_cpu >= 0:
                        nxt.nr_migrations += 1
                    nxt.last_cpu = p.cpu
                nxt.running_since = now
                nxt._charged_at = now
                nxt.nr_switches += 1
                self._sync_runstate(nxt, now)
            p.curr = nxt
            p.nr_switches += 1
        if nxt is None:
            p.slice_end = NEVER
        else:
            p.slice_end = now + max(1, slice_ns)
        self._update_event(p)

    # -- domains and vCPUs -------------------------------------------------------------

    def add_domain(
        self, domid: DomId | int, weight: int = CREDIT_WEIGHT_DEFAULT, cap: int = 0
    ) -> SchedDomain:
        """Register a domain (``sched_init_domain``).

        Args:
            domid: its id; toolstack controlled.
            weight: credit weight, 1..65535.
            cap: credit cap in percent of one pCPU, 0 = none. Validated against
                the vCPU count by :meth:`set_params`; here only ``>= 0``.

        Returns:
            The scheduler's domain record.

        Raises:
            XenError: EEXIST if the domain is known; EINVAL for bad parameters.
        """
        if domid in self.domains:
            raise XenError(Errno.EEXIST, f"domain {domid} already scheduled")
        self._check_weight(weight)
        if not 0 <= cap <= 0xFFFF:
            raise XenError(Errno.EINVAL, f"cap {cap} out of range")
        dom = SchedDomain(int(domid), weight, cap)
        self.domains[dom.domid] = dom
        self.policy.insert_domain(dom)
        return dom

    def remove_domain(self, domid: DomId | int) -> None:
        """Remove a domain and all its vCPUs (``sched_destroy_domain``).

        Tasks waiting in ``run`` on its vCPUs get :class:`VcpuGoneError`;
        its timers are stopped.

        Raises:
            XenError: ESRCH for an unknown domain.
        """
        dom = self._dom(domid)
        for vid in list(dom.vcpus):
            self.remove_vcpu(domid, vid)
        self.policy.remove_domain(dom)
        del self.domains[dom.domid]

    def add_vcpu(
        self, domid: DomId | int, vcpu_id: int, affinity: str | Iterable[int] | None = None
    ) -> SchedVcpu:
        """Create a schedulable vCPU (``sched_init_vcpu``); it starts idle.

        Args:
            domid: an added domain.
            vcpu_id: 0-based, unique within the domain.
            affinity: hard affinity (``cpus=``), see :func:`parse_cpus`.

        Returns:
            The new vCPU.

        Raises:
            XenError: ESRCH unknown domain; EEXIST duplicate id; EINVAL bad
                affinity.
        """
        dom = self._dom(domid)
        if vcpu_id in dom.vcpus or vcpu_id < 0:
            raise XenError(Errno.EEXIST, f"d{domid}v{vcpu_id} exists")
        try:
            aff = parse_cpus(affinity, len(self.pcpus))
        except ValueError as e:
            raise XenError(Errno.EINVAL, str(e)) from None
        now = self.now_ns()
        v = SchedVcpu(self, dom, vcpu_id, aff, now)
        # Spread new vCPUs over their allowed pCPUs, like Xen's initial placement.
        allowed = sorted(aff)
        v.processor = allowed[self._next_cpu % len(allowed)]
        self._next_cpu += 1
        dom.vcpus[vcpu_id] = v
        self.policy.insert_vcpu(v, now)
        return v

    def remove_vcpu(self, domid: DomId | int, vcpu_id: int) -> None:
        """Remove one vCPU; waiters in ``run`` get :class:`VcpuGoneError`.

        Raises:
            XenError: ESRCH for an unknown domain or vCPU.
        """
        dom = self._dom(domid)
        v = dom.vcpus.get(vcpu_id)
        if v is None:
            raise XenError(Errno.ESRCH, f"no vcpu {vcpu_id} in domain {domid}")
        now = self.now_ns()
        if v.is_running:
            self._charge(v, now)
        v._removed = True
        v._settling = False
        v._timer.stop()
        self._reevaluate(v, now)
        if v.is_running:
            # Deschedule now so the policy never sees a removed vCPU again.
            p = self.pcpus[v.processor]
            self._schedule(p, now)
        self.policy.remove_vcpu(v, now)
        for d in v._demands:
            trio.lowlevel.reschedule(d.task, outcome.Error(VcpuGoneError(repr(v))))
        v._demands.clear()
        if v in self._settle:
            self._settle.remove(v)
        del dom.vcpus[vcpu_id]
        self._kick()

    def vcpu(self, domid: DomId | int, vcpu_id: int) -> SchedVcpu:
        """Look up a vCPU.

        Raises:
            XenError: ESRCH if unknown.
        """
        v = self._dom(domid).vcpus.get(vcpu_id)
        if v is None:
            raise XenError(Errno.ESRCH, f"no vcpu {vcpu_id} in domain {domid}")
        return v

    def _dom(self, domid: DomId | int) -> SchedDomain:
        dom = self.domains.get(domid)
        if dom is None:
            raise XenError(Errno.ESRCH, f"no domain {domid}")
        return dom

    def pause_domain(self, domid: DomId | int) -> None:
        """``domain_pause``: none of its vCPUs gets CPU until unpaused (counted).

        Raises:
            XenError: ESRCH for an unknown domain.
        """
        dom = self._dom(domid)
        dom.pause_count += 1
        if dom.pause_count == 1:
            now = self.now_ns()
            for v in dom.vcpus.values():
                self._reevaluate(v, now)

    def unpause_domain(self, domid: DomId | int) -> None:
        """Undo one :meth:`pause_domain`.

        Raises:
            XenError: ESRCH unknown domain; EINVAL if it is not paused.
        """
        dom = self._dom(domid)
        if dom.pause_count == 0:
            raise XenError(Errno.EINVAL, f"domain {domid} is not paused")
        dom.pause_count -= 1
        if dom.pause_count == 0:
            now = self.now_ns()
            for v in dom.vcpus.values():
                self._reevaluate(v, now)

    # -- parameters (xl sched-credit) --------------------------------------------------

    @staticmethod
    def _check_weight(weight: int) -> None:
        if not isinstance(weight, int) or not WEIGHT_MIN <= weight <= WEIGHT_MAX:
            raise XenError(Errno.EINVAL, f"weight {weight!r} out of range 1..65535")

    def get_params(self, domid: DomId | int) -> tuple[int, int]:
        """``XEN_DOMCTL_SCHEDOP_getinfo``: the domain's ``(weight, cap)``.

        Raises:
            XenError: ESRCH for an unknown domain.
        """
        dom = self._dom(domid)
        return dom.weight, dom.cap

    def set_params(
        self, domid: DomId | int, weight: int | None = None, cap: int | None = None
    ) -> None:
        """``XEN_DOMCTL_SCHEDOP_putinfo`` (``xl sched-credit -d D -w W -c C``).

        Takes effect at the next accounting period.

        Args:
            domid: the domain; toolstack controlled.
            weight: new weight 1..65535, or ``None`` to keep.
            cap: new cap 0..100 * nr_vcpus (0 = none), or ``None`` to keep.

        Raises:
            XenError: ESRCH unknown domain; EINVAL out-of-range value (nothing
                is changed then).
        """
        dom = self._dom(domid)
        if weight is not None:
            self._check_weight(weight)
        if cap is not None:
            limit = 100 * max(1, len(dom.vcpus))
            if not isinstance(cap, int) or not 0 <= cap <= limit:
                raise XenError(Errno.EINVAL, f"cap {cap!r} out of range 0..{limit}")
        if weight is not None:
            dom.weight = weight
        if cap is not None:
            dom.cap = cap
        self.policy.adjust(dom)

    # -- statistics --------------------------------------------------------------------

    def domain_info(self, domid: DomId | int) -> DomainInfo:
        """A snapshot of one domain (``xl list`` Time(s) and flags).

        Raises:
            XenError: ESRCH for an unknown domain.
        """
        dom = self._dom(domid)
        now = self.now_ns()
        vs = list(dom.vcpus.values())
        cpu = sum(v.runstate_times(now)[RunState.RUNNING] for v in vs)
        return DomainInfo(
            domid=dom.domid,
            weight=dom.weight,
            cap=dom.cap,
            nr_vcpus=len(vs),
            cpu_time=cpu / NS_PER_S,
            running=any(v.is_running for v in vs),
            blocked=bool(vs) and all(v.runstate == RunState.BLOCKED for v in vs),
            paused=dom.pause_count > 0,
        )

    def vcpu_list(self, domid: DomId | int | None = None) -> list[VcpuInfo]:
        """Snapshots of every vCPU (of one domain), sorted by (domid, vcpu)."""
        doms = [self._dom(domid)] if domid is not None else list(self.domains.values())
        return [
            d.vcpus[i].info() for d in sorted(doms, key=lambda d: d.domid) for i in sorted(d.vcpus)
        ]

    def pcpu_info(self) -> list[PcpuInfo]:
        """Snapshots of the physical CPUs (busy time is live)."""
        now = self.now_ns()
        out = []
        for p in self.pcpus:
            busy = p.busy_ns
            c = p.curr
            if c is not None:
                busy += now - c.running_since
            out.append(PcpuInfo(
                cpu=p.cpu,
                curr=None if c is None else (c.domain.domid, c.vcpu_id),
                busy_time=busy / NS_PER_S,
                nr_switches=p.nr_switches,
            ))
        return out
