"""The smallest guest program: print a greeting and power off.

Run it with ``xensim demo`` or::

    async with open_host() as host:
        dom = await host.create(GuestConfig(name="hello", kernel="examples.hello:main"))
        await dom.wait()
"""

from __future__ import annotations

from domu.guest import Guest


async def main(guest: Guest) -> None:
    """Print who we are, then return (which powers the domain off)."""
    await guest.console.print(f"Hello from {guest.name} (domain {guest.domid})!")
    if guest.extra:
        await guest.console.print(f"extra: {guest.extra}")
