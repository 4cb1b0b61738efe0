"""Guest programs for scheduler tests (each is a trio task started with ``nursery.start``).

Starting guests with ``nursery.start`` makes their first CPU request happen in a
fixed order, so a scenario is deterministic run to run.
"""

from __future__ import annotations

import trio

from hypervisor.sched import SchedVcpu


async def busy(v: SchedVcpu, chunk: float = 0.010, *,
               task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A CPU hog that never blocks: ``run(chunk)`` forever."""
    task_status.started()
    while True:
        await v.run(chunk)


def cpu(v: SchedVcpu) -> float:
    """Seconds of pCPU time ``v`` has had."""
    return v.cpu_time_ns / 1e9
