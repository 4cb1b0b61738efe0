"""xenstored's per-domain ring transport (the guest's xenstore page + event channel).

A domain talks to xenstored through one 4 KiB page (``xenstore_domain_interface``:
``req`` and ``rsp`` byte rings, see :mod:`ring.byte_ring`) and one event
channel. This module turns that pair into the byte stream
:func:`~.unix_server.serve_connection` already knows how to serve, so the
ring adds no protocol logic of its own:

* ``receive_some`` copies whatever the guest queued in ``req`` (indices read
  once; a ``prod - cons > 1024`` index is corrupt), notifies the guest that
  space was freed, and otherwise waits for the next event;
* ``send_all`` streams a reply into ``rsp`` in as many chunks as fit,
  notifying after each, waiting for the guest to consume when full.

A corrupt index or a frame over 4096 bytes marks *this* connection broken:
xenstored writes ``XENSTORE_ERROR_RINGIDX`` (2) or ``XENSTORE_ERROR_PROTO``
(3) into the page's ``error`` field, notifies, and stops reading; nobody else
is affected. Like C xenstored in 4.17, ``server_features`` is 0 (no
reconnection support).

The hypervisor side is abstract: the lead supplies an :class:`EventPort`
(``notify`` = ``EVTCHNOP_send`` on the bound port; ``wait`` = the dom0
kernel's "next event on this port", coalescing like the pending bit) and the
mapped page (grant ref 1 / the INTRODUCE mfn). :attr:`XenStore.attach_ring`
is the hook INTRODUCE calls to start :func:`serve_ring` for a new domain.
"""

from __future__ import annotations

import trio

from domu.xenstore import EventPort
from ring.byte_ring import XenstoreDaemon
from ring.errors import CorruptRingIndexError
from ring.xs_wire import XENSTORE_ERROR_RINGIDX

from .connection import Connection
from .core import XenStore
from .unix_server import serve_connection

__all__ = ["EventPort", "XenstoreRingStream", "serve_ring"]


class XenstoreRingStream:
    """The daemon end of a xenstore page as a byte stream.

    Args:
        page: the mapped page (guest-controlled contents).
        port: the event channel bound to the guest's xenstore port.
    """

    def __init__(self, page: memoryview, port: EventPort) -> None:
        self.ring = XenstoreDaemon(page)
        self.port = port
        self.error = 0
        self.closed = False
        self._kick = trio.Event()

    async def pump(self) -> None:
        """Turn port events into wake-ups for both directions (runs forever)."""
        while True:
            await self.port.wait()
            kick, self._kick = self._kick, trio.Event()
            kick.set()

    def _broken(self, code: int) -> trio.BrokenResourceError:
        self.error = code
        return trio.BrokenResourceError(f"xenstore ring error {code}")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Bytes the guest queued in ``req`` (waits for at least one)."""
        while True:
            if self.closed:
                raise trio.ClosedResourceError
            kick = self._kick  # taken before checking: no lost wake-up
            try:
                data = self.ring.requests.read(max_bytes)
            except CorruptRingIndexError:
                raise self._broken(XENSTORE_ERROR_RINGIDX) from None
            if data:
                self.port.notify()  # the guest may be waiting for space
                return data
            await kick.wait()

    async def send_all(self, data: bytes) -> None:
        """Stream ``data`` into ``rsp``, waiting for space as needed."""
        view = memoryview(data)
        while view:
            if self.closed:
                raise trio.ClosedResourceError
            kick = self._kick
            try:
                n = self.ring.responses.write(view)
            except CorruptRingIndexError:
                raise self._broken(XENSTORE_ERROR_RINGIDX) from None
            if n:
                view = view[n:]
                self.port.notify()
            else:
                await kick.wait()

    async def aclose(self) -> None:
        """Stop using the page (the caller unmaps it and unbinds the port)."""
        self.closed = True
        await trio.lowlevel.checkpoint()


async def serve_ring(
    xs: XenStore,
    conn: Connection,
    page: memoryview,
    port: EventPort,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve one domain's xenstore ring until it closes or breaks.

    Args:
        xs: the daemon core.
        conn: the domain's connection (from :meth:`XenStore.introduce`).
        page: the domain's mapped xenstore page (guest-controlled).
        port: the event channel to the guest.
        task_status: reports readiness to ``nursery.start``.

    Returns:
        When the connection ended. If the guest broke the protocol, the
        page's ``error`` field holds the XENSTORE_ERROR_* code and
        ``conn.broken`` the same value.
    """
    stream = XenstoreRingStream(page, port)
    stream.ring.set_server_features(0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.pump)
        task_status.started()
        await serve_connection(xs, stream, conn)
        nursery.cancel_scope.cancel()
    code = stream.error or conn.broken
    if code:
        conn.broken = code
        stream.ring.set_error(code)
        port.notify()
