"""A tiny split-driver pair used to exercise the buses: an echo device.

It rides on the secondary-console handshake ("console" kind, ``device/console/<n>``):
the frontend grants one page laid out like ``xencons_interface`` and an
event channel; the backend echoes every byte the guest writes to ``out``
back into ``in``. Registering the two classes is all it takes to add it.

Tests pass them as the host's drivers (``open_host(backend_drivers=...,
frontend_drivers=...)``, e.g. :data:`DRIVERS`), which replaces the registries,
so on those hosts they stand in for the real secondary-console drivers
(:mod:`dom0.backends.consoleback`, :mod:`domu.frontends.consolefront`).
"""

from __future__ import annotations

import trio

from dom0.backends.bus import Backend
from domu.evtchn import PortWaiter
from domu.frontends.bus import Frontend
from ring.byte_ring import ConsoleDaemon, ConsoleGuest
from ring.errors import PeerProtocolError


def _number(raw: bytes | None, what: str) -> int:
    if raw is None or not raw.isdigit() or len(raw) > 10:
        raise PeerProtocolError(f"{what}: expected a number, got {raw!r}")
    return int(raw)


class EchoBack(Backend):
    """Backend: map the frontend's page, echo out -> in."""

    kind = "console"

    async def probe(self) -> None:
        await self.write_key("protocol", "vt100")

    async def map_ring(self) -> None:
        ref = _number(await self.read_frontend("ring-ref"), "ring-ref")
        port = _number(await self.read_frontend("port"), "port")
        self.page = ConsoleDaemon(self.map_grant(ref))
        self.port, self.waiter = self.bind_port_waiter(port)

    async def connect(self) -> None:
        self.start_worker(self._serve)

    async def _serve(self) -> None:
        ring, port, waiter = self.page, self.port, self.waiter
        while True:
            data = ring.output.read(ring.input.free())  # raises on corrupt indices
            if data:
                ring.input.write(data)
                self.hc.evtchn_send(port)
            await waiter.wait()


class EchoFront(Frontend):
    """Frontend: one granted page + an unbound port; ``await echo(b"x")``."""

    kind = "console"

    async def talk_to_backend(self) -> None:
        gfn, view = self.alloc_page()
        self.ring = ConsoleGuest(view)
        ref = self.grant_page(gfn)
        self.port, waiter = self.alloc_port_waiter()
        assert waiter is not None
        self.waiter: PortWaiter = waiter
        await self.write_key("ring-ref", str(ref))
        await self.write_key("port", str(self.port))

    async def echo(self, data: bytes) -> bytes:
        """Send ``data`` and wait (<= 5 s) for it to come back."""
        assert self.ring.output.write(data) == len(data)
        self.hc.evtchn_send(self.port)
        got = b""
        with trio.fail_after(5):
            while len(got) < len(data):
                got += self.ring.input.read()
                if len(got) < len(data):
                    await self.waiter.wait()
        return got


DRIVERS = {"backend_drivers": {"console": EchoBack}, "frontend_drivers": {"console": EchoFront}}
