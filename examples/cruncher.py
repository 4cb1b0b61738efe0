"""A CPU-bound guest: uses ``extra`` seconds of CPU (default 0.2), then powers off.

It shows the hypervisor's scheduler at work: the time appears in ``xl list``'s
Time(s) column, and with several crunchers on few pCPUs their ``cpu_weight``
and ``cap`` decide who gets how much. Config::

    kernel = "examples.cruncher:main"
    extra = "0.5"
"""

from __future__ import annotations

import trio

from domu.guest import Guest

SLICE = 0.05
"""CPU seconds per step (so progress shows on the console)."""


async def main(guest: Guest) -> None:
    """Compute in slices on vCPU 0, print the CPU and wall time it took."""
    assert guest.cpu is not None
    total = float(guest.extra) if guest.extra else 0.2
    start = trio.current_time()
    done = 0.0
    while done < total:
        step = min(SLICE, total - done)
        await guest.cpu.run(step)
        done += step
    await guest.console.print(f"{guest.name}: used {done:.2f} s of CPU in "
                              f"{trio.current_time() - start:.2f} s")
