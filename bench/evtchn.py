"""Event-channel notify -> handler round trips per second, against trio.Event ping-pong.

Setup: one hypervisor, domains A and B connected by an interdomain event
channel. Each domain runs its own :class:`~domu.evtchn.EventDispatcher` loop
as a separate trio task (blocked in ``SCHEDOP_block`` between upcalls).

* evtchn: A's driver task sends on its port and waits on a
  :class:`~domu.evtchn.PortWaiter`; B's dispatcher wakes, runs B's handler,
  which sends back; A's dispatcher wakes and runs the waiter's handler, which
  reschedules A's driver. One round trip = two hypercall sends, two vCPU
  wakes, two bitmap scans and a task wake.
* baseline: two tasks ping-ponging with fresh ``trio.Event`` objects in the
  same ``trio.run`` (the cheapest structured "wake the other task and wait"
  trio offers).

``ratio`` = evtchn rate / trio.Event rate (target >= 0.5). Real clock; each
side runs for ~2 s (``--quick``: ~0.2 s).
"""

from __future__ import annotations

import time
from typing import Any

import trio
import trio.testing

from bench._report import Report
from domu.evtchn import EventDispatcher
from hypervisor.domain import DomainConfig
from hypervisor.hypervisor import Hypervisor

TARGET = 0.5
ROUNDS = 10
_BATCH = 100


async def _setup() -> tuple[Hypervisor, EventDispatcher, EventDispatcher, int, int, Any, Any]:
    hv = Hypervisor(memory_bytes=64 << 20, dom0_pages=16)
    dom0 = hv.interface(0)
    ids = [dom0.domctl_createdomain(DomainConfig(name=n, nr_pages=4, max_pages=4))
           for n in ("A", "B")]
    for d in ids:
        dom0.domctl_unpausedomain(d)
    a, b = (hv.interface(d) for d in ids)
    pa = a.evtchn_alloc_unbound(b.domid)
    pb = b.evtchn_bind_interdomain(a.domid, pa)
    da, db = EventDispatcher(a), EventDispatcher(b)
    send_back = b.evtchn_send
    db.bind(pb, lambda _p: send_back(pb))
    return hv, da, db, pa, pb, a, b


async def _evtchn_handler_rate(seconds: float) -> tuple[float, int]:
    """A's handler counts the round trip and sends the next ping itself."""
    hv, da, db, pa, _pb, a, _b = await _setup()
    send = a.evtchn_send
    trips = 0
    stop = False
    finished = trio.Event()

    def on_pong(_port: int) -> None:
        nonlocal trips
        trips += 1
        if stop:
            finished.set()
        else:
            send(pa)

    async with trio.open_nursery() as n:
        await n.start(db.run)
        await trio.testing.wait_all_tasks_blocked()  # B answered the initial pending event
        da.bind(pa, on_pong)  # unmask: A's dispatcher sees that answer and starts pinging
        start = time.perf_counter()
        await n.start(da.run)
        await trio.sleep(seconds)
        stop = True
        await finished.wait()
        elapsed = time.perf_counter() - start
        n.cancel_scope.cancel()
    hv.check_invariants()
    return trips / elapsed, trips


async def _evtchn_waiter_rate(seconds: float) -> tuple[float, int]:
    """A driver task sends, then awaits a PortWaiter (one extra task wake per trip)."""
    hv, da, db, pa, _pb, a, _b = await _setup()
    waiter = da.waiter(pa)
    trips = 0
    async with trio.open_nursery() as n:
        await n.start(da.run)
        await n.start(db.run)
        await waiter.wait()  # the reply to bind_interdomain's initial pending event
        send = a.evtchn_send
        wait = waiter.wait
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(_BATCH):
                send(pa)
                await wait()
            trips += _BATCH
            if time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - start
        n.cancel_scope.cancel()
    hv.check_invariants()
    return trips / elapsed, trips


async def _trio_event_rate(seconds: float) -> tuple[float, int]:
    trips = 0
    ping = [trio.Event()]
    pong = [trio.Event()]
    done = False

    async def responder() -> None:
        while True:
            await ping[0].wait()
            ping[0] = trio.Event()
            if done:
                return
            pong[0].set()

    async with trio.open_nursery() as n:
        n.start_soon(responder)
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(_BATCH):
                ev = pong[0]
                ping[0].set()
                await ev.wait()
                pong[0] = trio.Event()
            trips += _BATCH
            if time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - start
        done = True
        ping[0].set()
    return trips / elapsed, trips


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def run(quick: bool = False) -> Report:
    """Measure the round-trip rates; ``quick`` shortens each side to ~0.2 s.

    Each side runs in ``ROUNDS`` short windows, interleaved (evtchn, PortWaiter,
    trio.Event, evtchn, ...) so background load on the host hits all three
    alike; rates are the median window.
    """
    seconds = 0.2 if quick else 2.0
    rounds = 2 if quick else ROUNDS
    window = seconds / rounds
    ev: list[float] = []
    pw: list[float] = []
    base: list[float] = []
    totals = [0, 0, 0]
    for _ in range(rounds):
        for i, (fn, out) in enumerate(((_evtchn_handler_rate, ev), (_evtchn_waiter_rate, pw),
                                       (_trio_event_rate, base))):
            rate, n = trio.run(fn, window)
            out.append(rate)
            totals[i] += n
    ev_rate, pw_rate, base_rate = _median(ev), _median(pw), _median(base)
    ratio = ev_rate / base_rate
    return Report(
        title="Event-channel notify -> handler round trips vs trio.Event ping-pong "
              f"({seconds:g} s each in {rounds} interleaved windows, real clock)",
        columns=["mechanism", "round trips", "round trips/s", "us/round trip", "vs trio.Event"],
        rows=[
            ["evtchn, A handler sends next ping (2 task wakes/trip)", totals[0], ev_rate,
             1e6 / ev_rate, ratio],
            ["evtchn, A driver awaits PortWaiter (3 task wakes/trip)", totals[1], pw_rate,
             1e6 / pw_rate, pw_rate / base_rate],
            ["trio.Event ping-pong (2 task wakes/trip)", totals[2], base_rate, 1e6 / base_rate,
             1.0],
        ],
        figures={
            "evtchn_round_trips_per_s": round(ev_rate, 1),
            "evtchn_portwaiter_round_trips_per_s": round(pw_rate, 1),
            "trio_event_round_trips_per_s": round(base_rate, 1),
            "ratio": round(ratio, 3),
            "portwaiter_ratio": round(pw_rate / base_rate, 3),
            "baseline": "trio.Event ping-pong round trips",
            "target_ratio": TARGET,
            "meets_target": ratio >= TARGET,
        },
        notes=[
            f"ratio = evtchn (handler-driven) / trio.Event = {ratio:.3f} (target >= {TARGET}); "
            "rates are the median of the windows",
            "Each side's dispatcher loop is its own trio task blocked in SCHEDOP_block; the "
            "PortWaiter row adds a third task (A's driver) per round trip.",
        ],
    )
