"""The secondary PV console frontend (Linux ``hvc_xen``'s xenbus driver, type ``console``).

Theory of operation
-------------------
The primary console (``hvc0``) needs no handshake: the domain builder hands
the guest its page and port in start_info, and the guest kernel wraps them
in a :class:`~domu.frontends.console.ConsoleFront`. Every further console is
a bus device, ``device/console/<N>`` with N >= 1 (``hvc<N>``), served in Xen by
QEMU and in xensim by :mod:`dom0.backends.consoleback`.

The frontend bus probes it and the ``console`` rows of :mod:`ring.xenbus`
drive it. Like hvc_xen's ``xen_console_probe`` / ``xencons_connect_backend``,
:meth:`SecondaryConsoleFront.talk_to_backend` runs at probe, before the
backend has even reached InitWait: it allocates a zeroed page of the guest's
own RAM (a ``struct xencons_interface``), grants it to the backend, allocates
an unbound port for it and publishes ``ring-ref`` (the **grant reference**)
and ``port`` in one transaction; the bus then writes ``state = 3``. When the
backend is Connected the bus writes ``state = 4``; a backend that goes to
Closing or Closed makes the bus disconnect the device, and the frontend
goes straight to Closed.

The byte streams are the primary console's code: one
:class:`~domu.frontends.console.ConsoleFront` over the granted page, with its
bounded waits, no-lost-wakeup parking and index checks. Output written before
the backend connects waits in the 2 KiB ``out`` ring (the backend drains it
when it connects), as hvc_xen's does. On disconnect the console is closed
first, so every waiting writer or reader gets
:class:`~domu.frontends.console.ConsoleClosed`, then the base class closes the
port, ends the grant (deferred while the backend still maps the page) and
frees the page. A backend that corrupts the ``in`` ring indices breaks only
this console (:class:`~domu.frontends.console.ConsoleBroken` for its
callers); the guest kernel and its other consoles carry on.

Guest programs use ``guest.consoles[N]`` (:class:`domu.guest.GuestConsoles`),
the same print-like API as ``guest.console``.

Worked example (a guest program; the toolstack attached ``console/1``)::

    async def main(guest):
        hvc1 = await guest.consoles.wait(1)     # a GuestConsole over this driver
        await hvc1.print("debug channel up")
        command = await hvc1.readline()          # what dom0 typed on console 1
"""

from __future__ import annotations

from typing import Any

from domu.frontends.bus import Frontend, register_frontend
from domu.frontends.console import ConsoleFront
from domu.xenstore import XenStoreTransaction
from hypervisor.types import Gfn, Port

__all__ = ["SecondaryConsoleFront"]


@register_frontend
class SecondaryConsoleFront(Frontend):
    """The guest end of one secondary console (``hvc<N>``).

    Attributes:
        console: the byte streams over this device's page (None until the
            ring is set up at probe; closed once the device disconnects).
        port: the guest's event channel for this console.
        ring_ref: the grant reference published as ``ring-ref``.
        ring_gfn: the guest frame of the ``xencons_interface`` page.
    """

    kind = "console"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.console: ConsoleFront | None = None
        self.port: Port | None = None
        self.ring_ref: int | None = None
        self.ring_gfn: Gfn | None = None

    async def talk_to_backend(self) -> None:
        gfn, page = self.alloc_page()
        ref = self.grant_page(gfn)
        hc = self.hc
        console = ConsoleFront(page, lambda: hc.evtchn_send(port))
        port = self.alloc_port(console.handle_event)
        self.port, self.ring_ref, self.ring_gfn = port, ref, gfn

        async def publish(tx: XenStoreTransaction) -> None:
            await tx.write(f"{self.dev.path}/ring-ref", str(ref))
            await tx.write(f"{self.dev.path}/port", str(port))

        await self.xs.transaction(publish)
        self.console = console

    async def disconnect(self) -> None:
        if self.console is not None:
            self.console.close()  # waiting writers and readers get ConsoleClosed
        await super().disconnect()
