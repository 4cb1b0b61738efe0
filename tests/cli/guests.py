"""Guest programs for the CLI tests (importable as ``tests.cli.guests`` from the repo root)."""

from __future__ import annotations

from domu.guest import Guest


async def crash(guest: Guest) -> None:
    """Print a line, then crash (the program raises)."""
    await guest.console.print(f"{guest.name}: about to crash")
    raise RuntimeError("deliberate crash")


async def hvc1_echo(guest: Guest) -> None:
    """Echo lines typed on secondary console 1 (``hvc1: <line>``) until ``quit``.

    Prints ``NAME: hvc1 ready`` on console 1 first; ``quit`` powers it off.
    """
    hvc1 = await guest.consoles.wait(1)
    await hvc1.print(f"{guest.name}: hvc1 ready")
    while True:
        line = await hvc1.readline()
        if line == "quit":
            await hvc1.print("bye")
            await hvc1.drain()
            return
        await hvc1.print(f"hvc1: {line}")


async def two_channels(guest: Guest) -> None:
    """Wait until consoles 1 and 2 are connected, say so on the primary console,
    then power off when ``quit`` is typed there."""
    for n in (1, 2):
        await guest.consoles.wait(n)
    await guest.console.print(f"{guest.name}: channels up")
    while await guest.console.readline() != "quit":
        pass


async def devices_up(guest: Guest) -> None:
    """Use disk ``xvda`` and wait for carrier on vif 0, say so on the console,
    then power off when ``quit`` is typed there."""
    await guest.disk("xvda").read(0, 512)
    await guest.nic(0).wait_carrier()
    await guest.console.print(f"{guest.name}: devices up")
    while await guest.console.readline() != "quit":
        pass
