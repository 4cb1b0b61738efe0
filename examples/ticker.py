"""A guest that says hello, counts a few ticks, then idles until shut down."""

from __future__ import annotations

import trio

from domu.guest import Guest


async def main(guest: Guest) -> None:
    """Print three ticks, then wait for the toolstack's shutdown request."""
    await guest.console.print(f"{guest.name}: booted as domain {guest.domid}")
    for i in range(3):
        await guest.console.print(f"{guest.name}: tick {i}")
        await trio.sleep(0.01)
    await guest.console.print(f"{guest.name}: idle")
    await trio.sleep_forever()
