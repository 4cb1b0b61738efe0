"""Scheduler speed: simulated seconds per wall-clock second.

64 busy vCPUs (16 domains x 4 vCPUs, weights 128..1024) on 4 physical CPUs,
each vCPU looping ``await v.run(0.010)``, simulated for 10 s of machine time
under ``MockClock(autojump_threshold=0)``. The ratio is simulated time over wall
time (1.0 = real time); the target is >= 50.
"""

from __future__ import annotations

import time

import trio
import trio.testing

from bench._report import Report
from hypervisor.sched import Scheduler

NR_PCPUS = 4
NR_DOMAINS = 16
VCPUS_PER_DOMAIN = 4
WEIGHTS = (128, 256, 512, 1024)


async def _simulate(policy: str, seconds: float) -> tuple[Scheduler, float]:
    sched = Scheduler(NR_PCPUS, policy)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        for d in range(NR_DOMAINS):
            sched.add_domain(d + 1, weight=WEIGHTS[d % len(WEIGHTS)])
            for i in range(VCPUS_PER_DOMAIN):
                v = sched.add_vcpu(d + 1, i)

                async def busy(v: object = v) -> None:
                    while True:
                        await v.run(0.010)  # type: ignore[attr-defined]

                nursery.start_soon(busy)
        await trio.sleep(seconds)
        busy = sum(p.busy_time for p in sched.pcpu_info())
        nursery.cancel_scope.cancel()
    return sched, busy


def _measure(policy: str, seconds: float) -> tuple[float, Scheduler, float]:
    box: list[tuple[Scheduler, float]] = []

    async def main() -> None:
        box.append(await _simulate(policy, seconds))

    t0 = time.perf_counter()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return time.perf_counter() - t0, box[0][0], box[0][1]


def run(quick: bool = False) -> Report:
    """Measure credit and round-robin.

    Args:
        quick: simulate 1 s instead of 10 s.

    Returns:
        The report; ``ratio`` is credit's simulated seconds per wall second.
    """
    seconds = 1.0 if quick else 10.0
    rows = []
    figures: dict[str, object] = {}
    for policy in ("credit", "rr"):
        wall, sched, busy = _measure(policy, seconds)
        ratio = seconds / wall
        rows.append([policy, seconds, wall, ratio, sched.nr_passes, busy / (NR_PCPUS * seconds)])
        figures[f"{policy}_wall_s"] = round(wall, 4)
        figures[f"{policy}_ratio"] = round(ratio, 2)
    figures["ratio"] = figures["credit_ratio"]
    figures["baseline"] = "wall-clock time (1.0 = real time)"
    figures["simulated_s"] = seconds
    figures["vcpus"] = NR_DOMAINS * VCPUS_PER_DOMAIN
    figures["pcpus"] = NR_PCPUS
    return Report(
        title=(f"sched: {NR_DOMAINS * VCPUS_PER_DOMAIN} busy vCPUs on {NR_PCPUS} pCPUs, "
               f"{seconds:g} s simulated (ratio = simulated s per wall s; target >= 50)"),
        columns=["policy", "simulated s", "wall s", "ratio", "passes", "pCPU utilisation"],
        rows=rows,
        figures=figures,
        notes=["each vCPU loops `await v.run(0.010)`; trio MockClock(autojump_threshold=0)"],
    )
