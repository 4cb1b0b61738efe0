"""Xen's credit scheduler (credit1, ``xen/common/sched/credit.c``) as a policy.

Theory of operation
-------------------
*Currency.* Every vCPU holds ``credit``; running costs 10 credits per ms
(``CSCHED_CREDITS_PER_MSEC``), so a pCPU burns 300 credits per 30 ms
timeslice. Credit is burnt from the running vCPU on every tick (each pCPU ticks
every 10 ms while it runs a vCPU) and at every context switch.

*Accounting* (``csched_acct``), every timeslice (30 ms), hands out the pool's
``300 * nr_pcpus`` credits among the *active* domains, in proportion to
``weight * active vCPUs``. A domain's share is limited to what its active
vCPUs can burn in one period (``300`` each) and, if capped, to
``ceil(cap * 300 / 100)``; what a limited domain cannot use is re-offered to
the domains after it. Each domain's share is split evenly over its active
vCPUs. Then each vCPU's priority is recomputed: credit >= 0 is **UNDER**,
< 0 is **OVER** (and clamped at -300). A vCPU whose credit exceeds +300 is not
using its share: it leaves the active list (stops earning) with its credit
halved; it re-joins at the next tick that finds it running. A vCPU of a
capped domain whose credit is below minus its per-vCPU cap is **parked**
(paused) until an accounting period brings its credit back to >= 0.

*Priorities and runqueues.* Each pCPU has a runqueue ordered by priority,
FIFO within one: **BOOST** (0) > UNDER (-1) > OVER (-2). A vCPU that wakes up
(becomes runnable after being blocked/idle/paused) while UNDER, and is not
parked, is **boosted**: it preempts UNDER/OVER vCPUs, giving I/O-bound guests
low wake-up latency; it drops back to UNDER at the first tick that finds it
running (so a CPU hog cannot stay boosted). A runqueue is re-sorted
(UNDER before OVER, stably) at the first tick after each accounting.

*Choosing* (``csched_schedule``). The running vCPU, if still runnable, goes
back into the queue behind every vCPU of equal or higher priority (a
yielding one also behind one lower-priority vCPU), and the head runs for a
30 ms slice. Rate limiting: a runnable vCPU that has run less than 1 ms is
not preempted (unless it yields). If the head is OVER or the queue is empty,
the pCPU first tries to *steal*: it scans the other busy pCPUs' queues for a
vCPU of strictly higher priority whose hard affinity allows this pCPU. A
waking vCPU is queued on its pCPU and *tickles* it if that pCPU idles or runs
something of lower priority, otherwise one idle pCPU it may run on (which
will steal it). The system is work conserving: an OVER vCPU still runs when
nothing UNDER wants the pCPU; only a cap takes CPU away.

Worked example: 2 pCPUs, vCPUs A, B (weight 256), C (512), D (1024), all busy.
The pool earns 600 credits per 30 ms. Shares by ``weight``: D 300, C 150,
A 75, B 75 -- D's 300 is exactly the most one vCPU can burn, so nothing is
redistributed. D stays UNDER (earns what it burns) and thus always wins a
pCPU over the OVER vCPUs; C, A and B alternate on the other pCPU, each
running while UNDER and falling behind once OVER, so over time they get
0.5, 0.25 and 0.25 of a pCPU. With ``cap=25`` on a lone busy vCPU: it earns 75
credits a period, runs a whole period (-300 + 75 = -225 < -75: parked), is
parked for three periods (-150, -75, 0: unparked) -> 30 ms of every 120 ms.

Deviations from credit.c, all deliberate and small: no soft affinity, NUMA or
SMT topology (every pCPU is one core of one node); credit burning carries the
sub-credit remainder exactly instead of Xen's ``residual`` arithmetic; the
rate-limit slice is ``max(ratelimit - runtime, 100 us)``; instead of the
tick-time migration of a running vCPU to an idle core (``csched_unit_acct``),
a pCPU left with queued work tickles one idle pCPU that may steal it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from hypervisor.sched.policy import SchedPolicy
from hypervisor.sched.timer import NEVER, Timer

if TYPE_CHECKING:
    from hypervisor.sched.core import SchedDomain, Scheduler, SchedVcpu

CSCHED_DEFAULT_WEIGHT: Final = 256
CSCHED_TICKS_PER_TSLICE: Final = 3
CSCHED_DEFAULT_TSLICE_MS: Final = 30
CSCHED_CREDITS_PER_MSEC: Final = 10
CSCHED_DEFAULT_RATELIMIT_US: Final = 1000
CSCHED_MIN_TIMER_NS: Final = 100_000
"""``XEN_SYSCTL_SCHED_RATELIMIT_MIN``: never set a slice shorter than 100 us."""

CSCHED_PRI_TS_BOOST: Final = 0
CSCHED_PRI_TS_UNDER: Final = -1
CSCHED_PRI_TS_OVER: Final = -2
CSCHED_PRI_IDLE: Final = -64

_NS_PER_MS: Final = 1_000_000
_NS_PER_CREDIT: Final = _NS_PER_MS // CSCHED_CREDITS_PER_MSEC


class CreditVcpu:
    """Per-vCPU credit state (``struct csched_unit``)."""

    __slots__ = (
        "active",
        "credit",
        "migrate",
        "on_runq",
        "parked",
        "pri",
        "sdom",
        "start_time",
        "v",
        "yielding",
    )

    def __init__(self, v: SchedVcpu, sdom: CreditDom) -> None:
        self.v = v
        self.sdom = sdom
        self.credit = 0
        self.pri = CSCHED_PRI_TS_UNDER
        self.active = False
        self.parked = False
        self.yielding = False
        self.migrate = False
        self.on_runq = False
        # While running: when burning last stopped (absolute ns). While not
        # running: minus the not-yet-burnt run time (<= 0, carried over).
        self.start_time = 0


class CreditDom:
    """Per-domain credit state (``struct csched_dom``)."""

    __slots__ = ("active_vcpus", "dom")

    def __init__(self, dom: SchedDomain) -> None:
        self.dom = dom
        self.active_vcpus: list[CreditVcpu] = []


class CreditPcpu:
    """Per-pCPU credit state (``struct csched_pcpu``)."""

    __slots__ = ("runq", "runq_sort_last", "ticker")

    def __init__(self, ticker: Timer) -> None:
        self.runq: list[CreditVcpu] = []
        self.runq_sort_last = 0
        self.ticker = ticker


class CreditPolicy(SchedPolicy):
    """Xen's credit1 scheduler.

    Args:
        tslice_ms: timeslice and accounting period (Xen: 1..1000, default 30).
        ratelimit_us: minimum run time before preemption (0 disables,
            default 1000).

    Raises:
        ValueError: out-of-range parameters.
    """

    name = "credit"

    def __init__(
        self, tslice_ms: int = CSCHED_DEFAULT_TSLICE_MS,
        ratelimit_us: int = CSCHED_DEFAULT_RATELIMIT_US,
    ) -> None:
        if not 1 <= tslice_ms <= 1000:
            raise ValueError("tslice_ms must be 1..1000")
        if ratelimit_us and not 100 <= ratelimit_us <= 500_000:
            raise ValueError("ratelimit_us must be 0 or 100..500000")
        if ratelimit_us * 1000 > tslice_ms * _NS_PER_MS:
            ratelimit_us = tslice_ms * 1000
        self.tslice_ms = tslice_ms
        self.tslice = tslice_ms * _NS_PER_MS
        self.ticks_per_tslice = CSCHED_TICKS_PER_TSLICE if tslice_ms >= 3 else 1
        self.tick_period = self.tslice // self.ticks_per_tslice
        self.credits_per_tslice = CSCHED_CREDITS_PER_MSEC * tslice_ms
        self.ratelimit = ratelimit_us * 1000
        self.active_doms: list[CreditDom] = []
        self.credit_balance = 0
        self.runq_sort = 0
        self.idlers: set[int] = set()
        self.pcpu: list[CreditPcpu] = []
        self._acct_timer: Timer | None = None
        self._last_tickle = 0
        self._balance_bias = 0
        self.nr_accts = 0

    # -- setup -------------------------------------------------------------------------

    def attach(self, sched: Scheduler) -> None:
        """Bind to the scheduler; create per-pCPU state and timers."""
        super().attach(sched)
        s = self.sched
        self.pcpu = [CreditPcpu(Timer(s.timers, self._make_tick(c))) for c in range(s.nr_pcpus)]
        self.idlers = set(range(s.nr_pcpus))
        self._acct_timer = Timer(s.timers, self._acct)

    def start(self, now: int) -> None:
        """Arm the accounting master timer (one period from now)."""
        assert self._acct_timer is not None
        self._acct_timer.set(now + self.tslice)

    @property
    def credit_total(self) -> int:
        """Credits handed out per accounting period (300 per pCPU)."""
        return self.credits_per_tslice * self.sched.nr_pcpus

    def params(self) -> dict[str, int]:
        """``tslice_ms``, ``ratelimit_us``, ``migration_delay_us`` for display."""
        return {
            "tslice_ms": self.tslice_ms,
            "ratelimit_us": self.ratelimit // 1000,
            "migration_delay_us": 0,
        }

    def insert_domain(self, dom: SchedDomain) -> None:
        """Attach credit state to a new domain."""
        dom.priv = CreditDom(dom)

    def insert_vcpu(self, v: SchedVcpu, now: int) -> None:
        """Attach credit state (credit 0, UNDER, inactive) to a new vCPU."""
        sdom = v.domain.priv
        assert isinstance(sdom, CreditDom)
        v.priv = CreditVcpu(v, sdom)

    def remove_vcpu(self, v: SchedVcpu, now: int) -> None:
        """Forget a vCPU: off the runqueue and the active list."""
        svc = self._svc(v)
        if svc.on_runq:
            self._runq_remove(svc)
        svc.parked = False
        if svc.active:
            self._acct_stop(svc)

    @staticmethod
    def _svc(v: SchedVcpu) -> CreditVcpu:
        svc = v.priv
        assert isinstance(svc, CreditVcpu)
        return svc

    # -- runqueues ---------------------------------------------------------------------

    def _runq_insert(self, svc: CreditVcpu) -> None:
        runq = self.pcpu[svc.v.processor].runq
        pri = svc.pri
        i = 0
        n = len(runq)
        while i < n and runq[i].pri >= pri:
            i += 1
        if svc.yielding and i < n:
            i += 1  # behind one lower-priority vCPU
        runq.insert(i, svc)
        svc.on_runq = True

    def _runq_remove(self, svc: CreditVcpu) -> None:
        self.pcpu[svc.v.processor].runq.remove(svc)
        svc.on_runq = False

    def _runq_sort(self, cpu: int) -> None:
        spc = self.pcpu[cpu]
        if spc.runq_sort_last == self.runq_sort:
            return
        spc.runq_sort_last = self.runq_sort
        rq = spc.runq
        if rq:
            rq[:] = [s for s in rq if s.pri >= CSCHED_PRI_TS_UNDER] + [
                s for s in rq if s.pri < CSCHED_PRI_TS_UNDER
            ]

    def _home(self, v: SchedVcpu) -> None:
        """Make sure ``v.processor`` is in its hard affinity."""
        if v.processor not in v.affinity:
            v.processor = min(v.affinity)

    # -- credit ------------------------------------------------------------------------

    def _burn(self, svc: CreditVcpu, now: int) -> None:
        delta = now - svc.start_time
        if delta <= 0:
            return
        credits = delta // _NS_PER_CREDIT
        svc.credit -= credits
        svc.start_time += credits * _NS_PER_CREDIT

    def _acct_start(self, svc: CreditVcpu) -> None:
        if svc.active:
            return
        svc.active = True
        sdom = svc.sdom
        sdom.active_vcpus.insert(0, svc)
        if len(sdom.active_vcpus) == 1:
            self.active_doms.insert(0, sdom)
        timer = self._acct_timer
        if timer is not None and not timer.active and self.sched._started:
            # Accounting idled while nobody was active; resume on the period grid.
            now = self.sched.now_ns()
            since = now - self.sched.boot_ns
            timer.set(now + self.tslice - since % self.tslice)

    def _acct_stop(self, svc: CreditVcpu) -> None:
        svc.active = False
        sdom = svc.sdom
        sdom.active_vcpus.remove(svc)
        if not sdom.active_vcpus:
            self.active_doms.remove(sdom)

    def _acct(self) -> None:
        """``csched_acct``: distribute one period's credit; recompute priorities."""
        self.nr_accts += 1
        sched = self.sched
        now = sched.now_ns()
        cpt = self.credits_per_tslice
        weight_total = sum(d.dom.weight * len(d.active_vcpus) for d in self.active_doms)
        credit_total = self.credit_total
        if self.credit_balance < 0:
            credit_total -= self.credit_balance
        if weight_total == 0:
            # Nothing active: Xen keeps ticking uselessly; we stop until a vCPU
            # becomes active again (re-armed on the same period grid).
            self.credit_balance = 0
            return
        weight_left = weight_total
        credit_balance = 0
        credit_xtra = False
        for sdom in list(self.active_doms):
            dom = sdom.dom
            nact = len(sdom.active_vcpus)
            weight_left -= dom.weight * nact
            credit_peak = nact * cpt
            if self.credit_balance < 0:
                credit_peak += (
                    -self.credit_balance * dom.weight * nact + weight_total - 1
                ) // weight_total
            credit_cap = 0
            if dom.cap != 0:
                credit_cap = (dom.cap * cpt + 99) // 100
                credit_peak = min(credit_peak, credit_cap)
                credit_cap = (credit_cap + nact - 1) // nact
            credit_fair = (credit_total * dom.weight * nact + weight_total - 1) // weight_total
            if credit_fair < credit_peak:
                credit_xtra = True
            else:
                if weight_left != 0:
                    # Give other domains a chance at unused credits.
                    credit_total += (
                        (credit_fair - credit_peak) * weight_total + weight_left - 1
                    ) // weight_left
                if credit_xtra:
                    # Keep domains with spare credit at the head for next time.
                    self.active_doms.remove(sdom)
                    self.active_doms.insert(0, sdom)
                credit_fair = credit_peak
            credit_fair = (credit_fair + nact - 1) // nact
            for svc in list(sdom.active_vcpus):
                svc.credit += credit_fair
                credit = svc.credit
                if credit < 0:
                    svc.pri = CSCHED_PRI_TS_OVER
                    if dom.cap != 0 and credit < -credit_cap and not svc.parked:
                        svc.parked = True
                        svc.v.pause()
                    if credit < -cpt:
                        svc.credit = credit = -cpt
                else:
                    svc.pri = CSCHED_PRI_TS_UNDER
                    if svc.parked:
                        # Unpause first, then clear the flag: no boost for this wake.
                        svc.v.unpause()
                        svc.parked = False
                    if credit > cpt:
                        self._acct_stop(svc)
                        svc.credit = credit = credit // 2
                credit_balance += credit
        self.credit_balance = credit_balance
        self.runq_sort += 1
        assert self._acct_timer is not None
        self._acct_timer.set(now + self.tslice)

    def _make_tick(self, cpu: int) -> Callable[[], None]:
        def tick() -> None:
            self._tick(cpu)

        return tick

    def _tick(self, cpu: int) -> None:
        """``csched_tick``: burn the running vCPU's credit, end its boost."""
        sched = self.sched
        now = sched.now_ns()
        curr = sched.pcpus[cpu].curr
        if curr is not None:
            svc = self._svc(curr)
            if svc.pri == CSCHED_PRI_TS_BOOST:
                svc.pri = CSCHED_PRI_TS_UNDER
            self._burn(svc, now)
            if not svc.active:
                self._acct_start(svc)
        self._runq_sort(cpu)
        self.pcpu[cpu].ticker.set(now + self.tick_period)

    # -- wake / sleep / yield ----------------------------------------------------------

    def wake(self, v: SchedVcpu, now: int) -> None:
        """``csched_unit_wake``: boost if UNDER (and not parked), queue, tickle."""
        svc = self._svc(v)
        if v.is_running or svc.on_runq:
            return
        if svc.pri == CSCHED_PRI_TS_UNDER and not svc.parked:
            svc.pri = CSCHED_PRI_TS_BOOST
        self._home(v)
        self._runq_insert(svc)
        self._tickle(svc)

    def sleep(self, v: SchedVcpu, now: int) -> None:
        """``csched_unit_sleep``: off the runqueue (the core reschedules if running)."""
        svc = self._svc(v)
        if svc.on_runq:
            self._runq_remove(svc)

    def yield_(self, v: SchedVcpu) -> None:
        """``csched_unit_yield``: mark; the next insert goes behind peers."""
        self._svc(v).yielding = True

    def affinity_changed(self, v: SchedVcpu, now: int) -> None:
        """Move a queued vCPU to an allowed pCPU; evict a running one."""
        svc = self._svc(v)
        if v.processor in v.affinity:
            return
        if v.is_running:
            svc.migrate = True
            self.sched.raise_softirq(v.processor)
        elif svc.on_runq:
            self._runq_remove(svc)
            self._home(v)
            self._runq_insert(svc)
            self._tickle(svc)
        else:
            self._home(v)

    def _cur_pri(self, cpu: int) -> int:
        curr = self.sched.pcpus[cpu].curr
        return CSCHED_PRI_IDLE if curr is None else self._svc(curr).pri

    def _tickle(self, new: CreditVcpu) -> None:
        """``__runq_tickle``: decide which pCPU(s) should reschedule for ``new``."""
        sched = self.sched
        v = new.v
        cpu = v.processor
        cur_pri = self._cur_pri(cpu)
        idlers = self.idlers
        target: int | None = None
        if (
            (len(v.affinity) == 1 and cpu in idlers)  # exclusively pinned, idle
            or cur_pri == CSCHED_PRI_IDLE
            or (not idlers and new.pri > cur_pri)
        ):
            target = cpu
        elif idlers:
            suitable = [c for c in sorted(v.affinity) if c in idlers]
            if not suitable:
                if new.pri > cur_pri:
                    curr = sched.pcpus[cpu].curr
                    if curr is not None and any(c in idlers for c in curr.affinity):
                        self._svc(curr).migrate = True
                    target = cpu
            else:
                # Cycle through suitable idlers (opt_tickle_one_idle).
                after = [c for c in suitable if c > self._last_tickle]
                target = after[0] if after else suitable[0]
                self._last_tickle = target
        if target is not None:
            idlers.discard(target)
            sched.raise_softirq(target)

    # -- scheduling --------------------------------------------------------------------

    def do_schedule(
        self, cpu: int, prev: SchedVcpu | None, now: int
    ) -> tuple[SchedVcpu | None, int]:
        """``csched_schedule``: pick the next vCPU for ``cpu``."""
        sched = self.sched
        scurr: CreditVcpu | None = None
        if prev is not None:
            scurr = self._svc(prev)
            self._burn(scurr, now)
            runtime = now - prev.running_since
            if (
                self.ratelimit
                and not scurr.yielding
                and not scurr.migrate
                and prev.runnable
                and cpu in prev.affinity
                and runtime < self.ratelimit
            ):
                # Rate limiting: keep running, but not for less than MIN_TIMER.
                return prev, max(self.ratelimit - runtime, CSCHED_MIN_TIMER_NS)
            scurr.start_time -= now
            if prev.runnable:
                if scurr.migrate or cpu not in prev.affinity:
                    self._migrate_away(scurr)
                else:
                    self._runq_insert(scurr)
            scurr.yielding = False
            scurr.migrate = False
        runq = self.pcpu[cpu].runq
        snext: CreditVcpu | None = runq[0] if runq else None
        if snext is not None and snext.pri > CSCHED_PRI_TS_OVER:
            runq.pop(0)
            snext.on_runq = False
        else:
            stolen = self._load_balance(cpu, CSCHED_PRI_IDLE if snext is None else snext.pri)
            if stolen is not None:
                snext = stolen
            elif snext is not None:
                runq.pop(0)
                snext.on_runq = False
        ticker = self.pcpu[cpu].ticker
        if snext is None:
            self.idlers.add(cpu)
            if prev is not None:
                ticker.stop()
            return None, NEVER
        self.idlers.discard(cpu)
        if snext is not scurr or prev is not None:
            snext.start_time += now
        if prev is None:
            since = now - sched.boot_ns
            ticker.set(now + self.tick_period - since % self.tick_period)
        # Work left queued here while a pCPU idles: let an idler steal it.
        if runq and self.idlers:
            for s in runq:
                ok = [c for c in sorted(s.v.affinity) if c in self.idlers]
                if ok:
                    self.idlers.discard(ok[0])
                    sched.raise_softirq(ok[0])
                    break
        return snext.v, self.tslice

    def _migrate_away(self, svc: CreditVcpu) -> None:
        """Requeue a descheduled runnable vCPU on an idle pCPU it may use."""
        v = svc.v
        target = next((c for c in sorted(v.affinity) if c in self.idlers), None)
        if target is None:
            target = v.processor if v.processor in v.affinity else min(v.affinity)
        v.processor = target
        self._runq_insert(svc)
        self._tickle(svc)

    def _load_balance(self, cpu: int, pri: int) -> CreditVcpu | None:
        """``csched_load_balance``: steal higher-priority work from a busy peer."""
        sched = self.sched
        n = sched.nr_pcpus
        start = self._balance_bias
        for k in range(n):
            peer = (start + k) % n
            if peer == cpu or peer in self.idlers:
                continue
            pp = sched.pcpus[peer]
            if pp.curr is None:
                continue  # don't steal from an idle pCPU: it picks its own work
            runq = self.pcpu[peer].runq
            if not runq:  # nr_runnable <= 1
                continue
            for svc in runq:
                if svc.pri <= pri:
                    break
                if cpu in svc.v.affinity:
                    runq.remove(svc)
                    svc.on_runq = False
                    svc.v.processor = cpu
                    self._balance_bias = (peer + 1) % n
                    return svc
        return None

    # -- inspection --------------------------------------------------------------------

    def vcpu_credit(self, v: SchedVcpu) -> tuple[int, int, bool, bool]:
        """``(credit, priority, active, parked)`` of a vCPU (for tests and dumps)."""
        svc = self._svc(v)
        return svc.credit, svc.pri, svc.active, svc.parked
