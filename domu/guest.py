"""What a guest program gets: its own domain's view, and nothing of any other.

A guest program is an async function taking one :class:`Guest`::

    async def main(guest):
        await guest.console.print(f"hello from {guest.name} (d{guest.domid})")
        line = await guest.console.readline()        # waits for dom0 input
        await guest.xenstore.write("data/greeting", line)

Returning normally powers the domain off; raising crashes it (the traceback
goes to its console); :meth:`Guest.shutdown` asks the kernel for a
poweroff / reboot / crash from inside. A ``control/shutdown`` request from
the toolstack cancels the program.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from domu.frontends.console import ConsoleFront

if TYPE_CHECKING:
    from domu.frontends.bus import Frontend
    from domu.xenstore import XenStoreClient

__all__ = ["Guest", "GuestConsole"]


class GuestConsole:
    """The guest's primary console (``hvc0``), print-like.

    Args:
        front: the console frontend driver.
    """

    def __init__(self, front: ConsoleFront) -> None:
        self.front = front

    async def write(self, data: str | bytes) -> None:
        """Write ``data`` (str is UTF-8 encoded); waits while the ring is full."""
        await self.front.write(data.encode() if isinstance(data, str) else data)

    async def print(self, *args: Any, sep: str = " ", end: str = "\n") -> None:
        """Like :func:`print`, to the console."""
        await self.write(sep.join(str(a) for a in args) + end)

    async def readline(self) -> str:
        """The next line typed on the console, without its newline (like :func:`input`)."""
        line = await self.front.readline()
        return line.decode("utf-8", "replace").rstrip("\r\n")

    async def read(self, max_bytes: int = 4096) -> bytes:
        """Whatever input is available (waits for at least one byte)."""
        return await self.front.read(max_bytes)


class Guest:
    """A guest program's handle on its own domain.

    Attributes:
        domid: this domain's id.
        name: its name (``/local/domain/<D>/name``).
        extra: the command line (xl.cfg ``extra`` / ``cmdline``).
        console: the primary console.
        xenstore: this domain's xenstore client (relative paths are under
            ``/local/domain/<D>``).
        devices: ``"<type>/<devid>"`` -> frontend driver instance, for the
            devices the frontend bus probed (disks and NICs as their
            drivers land).
    """

    def __init__(self, domid: int, name: str, extra: str, console: GuestConsole,
                 xenstore: XenStoreClient, devices: Mapping[str, Frontend],
                 request_shutdown: Callable[[str], None]) -> None:
        self.domid = domid
        self.name = name
        self.extra = extra
        self.console = console
        self.xenstore = xenstore
        self.devices = devices
        self._request_shutdown = request_shutdown

    def shutdown(self, reason: str = "poweroff") -> None:
        """Ask the kernel to shut this domain down (``poweroff``, ``reboot``, ``crash``).

        The program is cancelled at its next checkpoint; devices are closed
        and ``SCHEDOP_shutdown`` is called with the reason.

        Raises:
            ValueError: an unknown reason.
        """
        if reason not in ("poweroff", "halt", "reboot", "crash"):
            raise ValueError(f"unknown shutdown reason {reason!r}")
        self._request_shutdown(reason)
