"""A guest that echoes console input until told to stop.

Each line typed on its console comes back as ``echo: <line>``; the line
``quit`` powers it off, ``crash`` makes it crash. It also stops on the
toolstack's ``control/shutdown`` (its program is then cancelled).
"""

from __future__ import annotations

from domu.guest import Guest


async def main(guest: Guest) -> None:
    """Echo lines until ``quit``."""
    await guest.console.print(f"{guest.name}: ready")
    while True:
        line = await guest.console.readline()
        if line == "quit":
            await guest.console.print("bye")
            return
        if line == "crash":
            raise RuntimeError("asked to crash")
        await guest.console.print(f"echo: {line}")
