"""Byte rings: the console page (``xencons_interface``) and the xenstore page
(``xenstore_domain_interface``).

Theory of operation
-------------------
A byte ring is a power-of-two byte array plus two free-running u32 indices in
the same page: the producer writes bytes at ``prod & (size - 1)`` and then
publishes ``prod``; the consumer reads from ``cons & (size - 1)`` up to
``prod`` and then publishes ``cons``. ``prod - cons`` (mod 2**32) is the number
of queued bytes; it is never more than ``size``. If it is, the peer has
scribbled on the indices: the operation raises
:class:`~ring.errors.CorruptRingIndexError` (xenstored's
``XENSTORE_ERROR_RINGIDX``; xenconsoled ignores the ring), which the caller
turns into "connection broken". It never surfaces as an ``IndexError``.

There is no framing: the console is a raw byte stream; xenstore messages
(16-byte header + payload, see ``ring/xs_wire.py``) are streamed in as many
chunks as the ring needs. Writes under backpressure are *partial*:
:meth:`ByteRingProducer.write` returns how many bytes fitted. After every
index update that moved something, signal the event channel.

Page layouts (Xen's ``io/console.h`` and ``io/xs_wire.h``; checked against the real
headers by the C interop tests)::

    console   in[1024] @0    out[2048] @1024   in_cons @3072  in_prod @3076
                                               out_cons @3080 out_prod @3084
    xenstore  req[1024] @0   rsp[1024] @1024   req_cons @2048 req_prod @2052
              rsp_cons @2056 rsp_prod @2060 server_features @2064
              connection @2068 error @2072

Direction: console ``out`` is guest -> dom0, ``in`` is dom0 -> guest;
xenstore ``req`` is guest -> daemon, ``rsp`` is daemon -> guest.

Worked example (console, guest side, with the daemon slow)::

    guest = ConsoleGuest(page)
    guest.output.write(b"x" * 3000)     # -> 2048: the ring is full
    daemon = ConsoleDaemon(page)
    daemon.output.read(100)             # -> 100 bytes; out_cons += 100
    guest.output.write(b"x" * 952)      # -> 100 more fit
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ring.errors import CorruptRingIndexError
from ring.xs_wire import (  # the constants live in xs_wire.h in Xen too
    XENSTORE_CONNECTED,
    XENSTORE_ERROR_COMM,
    XENSTORE_ERROR_NONE,
    XENSTORE_ERROR_PROTO,
    XENSTORE_ERROR_RINGIDX,
    XENSTORE_RECONNECT,
    XENSTORE_RING_SIZE,
    XENSTORE_SERVER_FEATURE_ERROR,
    XENSTORE_SERVER_FEATURE_RECONNECTION,
)

__all__ = [
    "CONSOLE_IN",
    "CONSOLE_OUT",
    "XENSTORE_CONNECTED",
    "XENSTORE_ERROR_COMM",
    "XENSTORE_ERROR_NONE",
    "XENSTORE_ERROR_PROTO",
    "XENSTORE_ERROR_RINGIDX",
    "XENSTORE_RECONNECT",
    "XENSTORE_REQ",
    "XENSTORE_RING_SIZE",
    "XENSTORE_RSP",
    "XENSTORE_SERVER_FEATURE_ERROR",
    "XENSTORE_SERVER_FEATURE_RECONNECTION",
    "ByteRingConsumer",
    "ByteRingLayout",
    "ByteRingProducer",
    "ConsoleDaemon",
    "ConsoleGuest",
    "XenstoreDaemon",
    "XenstoreGuest",
]

_M = 0xFFFFFFFF
_U32 = struct.Struct("<I")
PAGE_SIZE = 4096

# --- xenstore page constants (io/xs_wire.h) ---------------------------------

# struct xenstore_domain_interface: indices and control words from offset 2048
XENSTORE_SERVER_FEATURES_OFFSET = 2064
XENSTORE_CONNECTION_OFFSET = 2068
XENSTORE_ERROR_OFFSET = 2072
XENSTORE_INTERFACE_SIZE = 2076


class ByteRingLayout(NamedTuple):
    """Where one direction of a byte ring lives in its page."""

    data_offset: int
    size: int
    cons_offset: int
    prod_offset: int


# struct xencons_interface { char in[1024]; char out[2048];
#     XENCONS_RING_IDX in_cons, in_prod, out_cons, out_prod; } /* 3088 */
CONSOLE_IN = ByteRingLayout(0, 1024, 3072, 3076)
CONSOLE_OUT = ByteRingLayout(1024, 2048, 3080, 3084)
XENCONS_INTERFACE_SIZE = 3088
assert struct.calcsize("<1024s2048sIIII") == XENCONS_INTERFACE_SIZE

# struct xenstore_domain_interface { char req[1024]; char rsp[1024];
#     XENSTORE_RING_IDX req_cons, req_prod, rsp_cons, rsp_prod;
#     uint32_t server_features, connection, error; } /* 2076 */
XENSTORE_REQ = ByteRingLayout(0, XENSTORE_RING_SIZE, 2048, 2052)
XENSTORE_RSP = ByteRingLayout(1024, XENSTORE_RING_SIZE, 2056, 2060)
assert struct.calcsize("<1024s1024sIIIIIII") == XENSTORE_INTERFACE_SIZE


def _page(page: memoryview) -> memoryview:
    mv = memoryview(page)
    if mv.format != "B" or mv.itemsize != 1:
        mv = mv.cast("B")
    if mv.nbytes != PAGE_SIZE:
        raise ValueError(f"a ring page is {PAGE_SIZE} bytes, got {mv.nbytes}")
    if mv.readonly:
        raise ValueError("ring page is read-only")
    return mv


class _ByteRingEnd:
    """Shared plumbing of both ends of one byte-ring direction."""

    __slots__ = ("_data", "_mask", "_page", "layout")

    def __init__(self, page: memoryview, layout: ByteRingLayout) -> None:
        if layout.size & (layout.size - 1):
            raise ValueError("byte ring size must be a power of two")
        self._page = _page(page)
        self.layout = layout
        self._data = self._page[layout.data_offset : layout.data_offset + layout.size]
        self._mask = layout.size - 1

    @property
    def cons(self) -> int:
        """The shared consumer index (as stored in the page)."""
        return _U32.unpack_from(self._page, self.layout.cons_offset)[0]

    @property
    def prod(self) -> int:
        """The shared producer index (as stored in the page)."""
        return _U32.unpack_from(self._page, self.layout.prod_offset)[0]

    def _snapshot(self) -> tuple[int, int, int]:
        """Read both indices once; return ``(cons, prod, queued)`` or raise if corrupt."""
        cons = self.cons
        prod = self.prod
        queued = (prod - cons) & _M
        if queued > self.layout.size:
            raise CorruptRingIndexError(
                f"byte ring prod={prod:#x} cons={cons:#x}: {queued} > {self.layout.size}"
            )
        return cons, prod, queued

    def queued(self) -> int:
        """Bytes written but not yet consumed.

        Raises:
            CorruptRingIndexError: ``prod - cons > size`` (peer scribbled).
        """
        return self._snapshot()[2]


class ByteRingProducer(_ByteRingEnd):
    """The writing end of one byte-ring direction.

    Args:
        page: the 4096-byte page (ours or mapped from the peer).
        layout: which direction, e.g. :data:`CONSOLE_OUT` for a guest.
    """

    __slots__ = ()

    def free(self) -> int:
        """Bytes that can be written now.

        Raises:
            CorruptRingIndexError: the indices are inconsistent.
        """
        return self.layout.size - self._snapshot()[2]

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write as much of ``data`` as fits and publish the new producer index.

        The consumer index (peer-controlled) is read once.

        Args:
            data: bytes to send (ours).

        Returns:
            How many leading bytes of ``data`` were written (0 when full).
            Notify the peer when this is > 0.

        Raises:
            CorruptRingIndexError: ``prod - cons > size``; nothing written.
        """
        _cons, prod, queued = self._snapshot()
        n = min(len(data), self.layout.size - queued)
        if n == 0:
            return 0
        src = memoryview(data).cast("B")[:n]
        start = prod & self._mask
        first = min(n, self.layout.size - start)
        self._data[start : start + first] = src[:first]
        if first < n:
            self._data[: n - first] = src[first:]
        _U32.pack_into(self._page, self.layout.prod_offset, (prod + n) & _M)
        return n


class ByteRingConsumer(_ByteRingEnd):
    """The reading end of one byte-ring direction.

    Args:
        page: the 4096-byte page (ours or mapped from the peer).
        layout: which direction, e.g. :data:`CONSOLE_OUT` for the daemon.
    """

    __slots__ = ()

    def available(self) -> int:
        """Bytes ready to read.

        Raises:
            CorruptRingIndexError: the indices are inconsistent.
        """
        return self._snapshot()[2]

    def read(self, max_bytes: int | None = None) -> bytes:
        """Copy out up to ``max_bytes`` queued bytes and publish the consumer index.

        The producer index (peer-controlled) is read once; the bytes are
        copied out of the page once.

        Args:
            max_bytes: upper bound (ours); None for everything queued.

        Returns:
            The bytes (empty when nothing is queued). Notify the peer when
            non-empty: it may be waiting for space.

        Raises:
            CorruptRingIndexError: ``prod - cons > size``; nothing consumed.
        """
        cons, _prod, queued = self._snapshot()
        n = queued if max_bytes is None else max(0, min(queued, max_bytes))
        if n == 0:
            return b""
        start = cons & self._mask
        first = min(n, self.layout.size - start)
        out = bytes(self._data[start : start + first])
        if first < n:
            out += bytes(self._data[: n - first])
        _U32.pack_into(self._page, self.layout.cons_offset, (cons + n) & _M)
        return out


# --- console page --------------------------------------------------------
class ConsoleGuest:
    """The guest's view of its console page: writes ``out``, reads ``in``.

    Args:
        page: the console page (guest memory).
    """

    __slots__ = ("input", "output")

    def __init__(self, page: memoryview) -> None:
        self.output = ByteRingProducer(page, CONSOLE_OUT)
        self.input = ByteRingConsumer(page, CONSOLE_IN)


class ConsoleDaemon:
    """xenconsoled's view of a guest console page: reads ``out``, writes ``in``.

    Args:
        page: the mapped console page (guest-controlled contents).
    """

    __slots__ = ("input", "output")

    def __init__(self, page: memoryview) -> None:
        self.output = ByteRingConsumer(page, CONSOLE_OUT)
        self.input = ByteRingProducer(page, CONSOLE_IN)


# --- xenstore page -------------------------------------------------------
class _XenstorePage:
    __slots__ = ("_page",)

    def __init__(self, page: memoryview) -> None:
        self._page = _page(page)

    def _get(self, off: int) -> int:
        return _U32.unpack_from(self._page, off)[0]

    def _set(self, off: int, value: int) -> None:
        _U32.pack_into(self._page, off, value & _M)

    @property
    def server_features(self) -> int:
        """``server_features`` bits (XENSTORE_SERVER_FEATURE_*), written by the daemon."""
        return self._get(XENSTORE_SERVER_FEATURES_OFFSET)

    @property
    def connection(self) -> int:
        """``connection``: XENSTORE_CONNECTED (0) or XENSTORE_RECONNECT (1)."""
        return self._get(XENSTORE_CONNECTION_OFFSET)

    @property
    def error(self) -> int:
        """``error``: XENSTORE_ERROR_* written by the daemon (0 = none)."""
        return self._get(XENSTORE_ERROR_OFFSET)


class XenstoreGuest(_XenstorePage):
    """The guest's view of its xenstore page: writes ``req``, reads ``rsp``.

    Args:
        page: the xenstore page (guest memory).

    Attributes:
        requests: producer of the ``req`` stream.
        responses: consumer of the ``rsp`` stream (replies and watch events).
    """

    __slots__ = ("requests", "responses")

    def __init__(self, page: memoryview) -> None:
        super().__init__(page)
        self.requests = ByteRingProducer(page, XENSTORE_REQ)
        self.responses = ByteRingConsumer(page, XENSTORE_RSP)

    def request_reconnect(self) -> None:
        """Write ``connection = XENSTORE_RECONNECT`` (then notify the daemon)."""
        self._set(XENSTORE_CONNECTION_OFFSET, XENSTORE_RECONNECT)


class XenstoreDaemon(_XenstorePage):
    """xenstored's view of a guest's xenstore page: reads ``req``, writes ``rsp``.

    Everything in the page is guest-controlled.

    Args:
        page: the mapped xenstore page.

    Attributes:
        requests: consumer of the ``req`` stream.
        responses: producer of the ``rsp`` stream.
    """

    __slots__ = ("requests", "responses")

    def __init__(self, page: memoryview) -> None:
        super().__init__(page)
        self.requests = ByteRingConsumer(page, XENSTORE_REQ)
        self.responses = ByteRingProducer(page, XENSTORE_RSP)

    def set_server_features(self, features: int) -> None:
        """Advertise XENSTORE_SERVER_FEATURE_* bits (daemon's choice; bits only ever added)."""
        self._set(XENSTORE_SERVER_FEATURES_OFFSET, features)

    def set_error(self, error: int) -> None:
        """Report XENSTORE_ERROR_* and stop talking on this ring (daemon's choice)."""
        self._set(XENSTORE_ERROR_OFFSET, error)

    def reset(self) -> None:
        """Complete a guest-requested reconnect.

        Empties both rings (all four indices 0), clears ``error`` and writes
        ``connection = XENSTORE_CONNECTED``. The daemon must also drop the
        connection's queued data, watches and transactions, then notify.
        """
        for off in (2048, 2052, 2056, 2060):
            self._set(off, 0)
        self._set(XENSTORE_ERROR_OFFSET, XENSTORE_ERROR_NONE)
        self._set(XENSTORE_CONNECTION_OFFSET, XENSTORE_CONNECTED)
