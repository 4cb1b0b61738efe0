"""Guest programs for the CLI tests (importable as ``tests.cli.guests`` from the repo root)."""

from __future__ import annotations

from domu.guest import Guest


async def crash(guest: Guest) -> None:
    """Print a line, then crash (the program raises)."""
    await guest.console.print(f"{guest.name}: about to crash")
    raise RuntimeError("deliberate crash")
