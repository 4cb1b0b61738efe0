"""Guest creation time as the host fills up: does the N-th guest cost what the first did?

For N = 1, 100 and 500 (quick: 1, 20, 50) guests on one host, each guest is
created with the full path - domain build, xenstore layout, INTRODUCE (dom0
maps its xenstore page and serves the ring), console handed to the console
daemon, guest kernel boot (xenstore ring connected, frontends probed) - and
the wall time of each ``host.create`` is recorded; the guests stay up, so the
last one is created beside N - 1 running guests. One guest is created and
destroyed first to warm up imports and caches.

Each "first" and "last" figure is the median of the first / last
``WINDOW`` (10) creations, so one full garbage collection landing on a
single creation does not decide the result (the raw first and last samples
are reported too).

Target: the last guest costs at most 1.5x the first. ``ratio`` = first / last
for the largest N, so ``ratio >= 0.667`` means the target holds; ``baseline``
is the creation time of the first guest.
"""

from __future__ import annotations

import gc
import statistics
import time

import trio

from bench._report import Report
from dom0.host import open_host
from dom0.toolstack.config import GuestConfig
from domu.guest import Guest

SIZES = (1, 100, 500)
QUICK_SIZES = (1, 20, 50)
TARGET_RATIO = 1 / 1.5
WINDOW = 10


async def _idle(guest: Guest) -> None:
    await trio.sleep_forever()


async def _measure(n: int) -> tuple[list[float], float]:
    async with open_host(memory_mib=max(1024, 2 * n + 64)) as host:
        warm = await host.create(GuestConfig(name="warmup", kernel=_idle, memory=1))
        await warm.destroy()
        gc.collect()
        times = []
        start = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            await host.create(GuestConfig(name=f"g{i}", kernel=_idle, memory=1))
            times.append(time.perf_counter() - t0)
        total = time.perf_counter() - start
    return times, total


def run(quick: bool = False) -> Report:
    """Measure; returns the shared report (``ratio`` = first / last at the largest N)."""
    rows = []
    figures: dict[str, object] = {}
    ratio = 0.0
    for n in QUICK_SIZES if quick else SIZES:
        times, total = trio.run(_measure, n)
        w = min(WINDOW, n)
        first, last = statistics.median(times[:w]), statistics.median(times[-w:])
        ratio = first / last
        rows.append([n, first * 1e3, last * 1e3, last / first, total, n / total])
        figures[f"n{n}_first_ms"] = round(first * 1e3, 3)
        figures[f"n{n}_last_ms"] = round(last * 1e3, 3)
        figures[f"n{n}_mean_ms"] = round(sum(times) / n * 1e3, 3)
        figures[f"n{n}_raw_first_ms"] = round(times[0] * 1e3, 3)
        figures[f"n{n}_raw_last_ms"] = round(times[-1] * 1e3, 3)
    figures["ratio"] = round(ratio, 3)
    figures["baseline"] = "creation time of the first guest"
    figures["target_ratio"] = round(TARGET_RATIO, 3)
    return Report(
        title="Guest creation time, first vs last guest on one host "
              "(ratio = first/last at the largest N; >= 0.667 means last <= 1.5x first)",
        columns=["guests", "first ms", "last ms", "last/first", "total s", "guests/s"],
        rows=rows,
        figures=figures,
        notes=["Console-only guests (1 MiB each), created one after another; all stay up.",
               f"first/last = median of the first/last {WINDOW} creations."],
    )
