"""Guest kernel: the PV console frontend (Linux ``drivers/tty/hvc/hvc_xen.c``).

Theory of operation
-------------------
The domain builder hands the guest one page (``struct xencons_interface``,
granted to the backend as grant ref 0) and one event channel. The page holds
two raw byte streams (see :mod:`ring.byte_ring`):

* ``out`` (2048 bytes), guest -> dom0: :meth:`ConsoleFront.write` produces;
* ``in`` (1024 bytes), dom0 -> guest: :meth:`ConsoleFront.read` consumes.

There is no framing and no XenBus handshake. Like hvc_xen we notify the
daemon only when an index moved: after a write that queued at least one
byte, and after a read that freed at least one byte of ``in``.

Waiting never loses a wakeup (drain, re-arm, check again, then wait).
:meth:`handle_event` is the
synchronous handler the guest kernel binds to the console port; it bumps an
event counter and wakes every parked task. A task that could not make
progress parks only if no event arrived since it sampled the counter *before*
touching the ring, so an event racing with the ring access is never missed::

    seq = events; n = ring.write(rest)       # 0: the ring is full
    if n == 0 and events == seq: park()       # the daemon's notify unparks us

Input is not buffered in the guest: bytes stay in the ``in`` ring until a
program reads them, so a guest that never reads pushes back on dom0 (whose
sender then waits) and costs nobody memory. The only guest-side buffer is the
bounded line buffer of :meth:`readline`.

dom0 is trusted in practice, but the page is shared: if the indices ever say
more bytes are queued than the ring holds, the console is marked broken and
every call raises :class:`ConsoleBroken` (an I/O error for the program; the
guest kernel never crashes, XSA-376 style).

Worked example (the daemon drains 2048 bytes per event)::

    front = ConsoleFront(page, lambda: hc.evtchn_send(port))
    disp.bind(port, front.handle_event)
    await front.write(b"x" * 5000)   # 2048 fit, notify, park; event: 2048 more,
                                     # notify, park; event: the last 904, notify
    line = await front.readline()    # waits for dom0 input ending in b"\\n"
    front.close()                    # any task still waiting gets ConsoleClosed
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ring.byte_ring import ConsoleGuest
from ring.errors import CorruptRingIndexError

__all__ = ["DEFAULT_READLINE_LIMIT", "ConsoleBroken", "ConsoleClosed", "ConsoleFront"]

DEFAULT_READLINE_LIMIT = 4096
"""Longest line :meth:`ConsoleFront.readline` buffers before returning it unterminated."""


class ConsoleClosed(Exception):
    """The console was closed by the guest kernel; nothing more can move."""


class ConsoleBroken(ConsoleClosed):
    """The console page's indices are corrupt; the device is unusable.

    A subclass of :class:`ConsoleClosed` so a program handles both at once.
    """


class ConsoleFront:
    """The guest end of the primary PV console.

    Args:
        page: the guest's own console page (4096 writable bytes; the page
            is shared with dom0, so its indices are peer-writable).
        notify: sends on the console event channel (the guest kernel's
            ``evtchn_send(port)``); called only after an index moved.

    Attributes:
        bytes_written: bytes queued in ``out`` so far.
        bytes_read: bytes taken from ``in`` so far.
        notifications: how many times :attr:`notify` was called.
        events: console events received (:meth:`handle_event` calls).
        broken_reason: why the console is broken (None while healthy).
    """

    def __init__(self, page: memoryview, notify: Callable[[], None]) -> None:
        self._ring = ConsoleGuest(page)
        self._notify = notify
        self._lot = trio.lowlevel.ParkingLot()
        self._write_lock = trio.Lock()
        self._rbuf = bytearray()
        self._closed = False
        self.bytes_written = 0
        self.bytes_read = 0
        self.notifications = 0
        self.events = 0
        self.broken_reason: str | None = None

    # -- event side (synchronous, called by the guest's EventDispatcher) -----------------

    def handle_event(self, port: int) -> None:
        """The console port's handler: wake every task waiting for the daemon.

        Bounded O(1) work (plus waking parked tasks), so an event storm from
        dom0 costs nothing more.

        Args:
            port: the guest's console port (dispatcher-supplied; unused).
        """
        self.events += 1
        self._lot.unpark_all()

    # -- state ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the console broke."""
        return self._closed

    def close(self) -> None:
        """Stop the console: every waiting and later call raises :class:`ConsoleClosed`.

        Idempotent. Bytes already in the rings stay there; the page and port
        belong to the caller (the guest kernel), which may release them after
        this returns.
        """
        self._closed = True
        self._lot.unpark_all()

    def _check(self) -> None:
        if self.broken_reason is not None:
            raise ConsoleBroken(self.broken_reason)
        if self._closed:
            raise ConsoleClosed("console closed")

    def _broken(self, exc: CorruptRingIndexError) -> ConsoleBroken:
        self.broken_reason = f"console ring indices corrupt: {exc}"
        self.close()
        return ConsoleBroken(self.broken_reason)

    def _kick(self) -> None:
        self.notifications += 1
        self._notify()

    # -- output (guest -> dom0) ----------------------------------------------------------

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue every byte of ``data`` in ``out``, waiting whenever it is full.

        Concurrent writers are serialised, so one call's bytes stay
        contiguous. The wait ends when the daemon drains the ring (its
        notify), or with an exception; it is cancellable (bytes already
        queued stay queued).

        Args:
            data: bytes to print (the guest program's).

        Raises:
            ConsoleClosed: the console is (or gets) closed before every byte
                was queued.
            ConsoleBroken: the indices are corrupt.
        """
        view = memoryview(bytes(data))
        async with self._write_lock:
            while True:
                self._check()
                seq = self.events
                try:
                    n = self._ring.output.write(view)
                except CorruptRingIndexError as exc:
                    raise self._broken(exc) from None
                if n:
                    self.bytes_written += n
                    view = view[n:]
                    self._kick()
                if not view:
                    return
                if n == 0 and self.events == seq:
                    await self._lot.park()

    async def drain(self) -> None:
        """Wait until dom0 has consumed every byte queued in ``out`` (like ``tcdrain``).

        The daemon notifies after it reads, which wakes this wait; it is
        cancellable.

        Raises:
            ConsoleClosed: the console is (or gets) closed first.
            ConsoleBroken: the indices are corrupt.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            self._check()
            seq = self.events
            try:
                queued = self._ring.output.queued()
            except CorruptRingIndexError as exc:
                raise self._broken(exc) from None
            if queued == 0:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            if self.events == seq:
                await self._lot.park()

    # -- input (dom0 -> guest) -----------------------------------------------------------

    async def _read_ring(self, max_bytes: int) -> bytes:
        """Wait for input and return up to ``max_bytes`` of it from ``in``."""
        while True:
            self._check()
            seq = self.events
            try:
                data = self._ring.input.read(max_bytes)
            except CorruptRingIndexError as exc:
                raise self._broken(exc) from None
            if data:
                self.bytes_read += len(data)
                self._kick()
                return data
            if self.events == seq:
                await self._lot.park()

    async def read(self, max_bytes: int = 4096) -> bytes:
        """Return up to ``max_bytes`` of input, waiting until at least one byte came.

        Args:
            max_bytes: upper bound (the program's; must be positive).

        Returns:
            1..``max_bytes`` bytes (bytes left over by :meth:`readline` first).

        Raises:
            ValueError: ``max_bytes`` < 1 (a program bug).
            ConsoleClosed: closed while waiting (or before).
            ConsoleBroken: the indices are corrupt.
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._rbuf:
            self._check()
            out = bytes(self._rbuf[:max_bytes])
            del self._rbuf[:max_bytes]
            await trio.lowlevel.cancel_shielded_checkpoint()
            return out
        return await self._read_ring(max_bytes)

    async def readline(self, limit: int = DEFAULT_READLINE_LIMIT) -> bytes:
        """Return the next line of input, including its ``b"\\n"``.

        Args:
            limit: longest line buffered (the program's); a longer run of
                bytes without a newline is returned unterminated in
                ``limit``-byte pieces, so the guest's buffer stays bounded.

        Returns:
            The line (at most ``limit`` bytes).

        Raises:
            ValueError: ``limit`` < 1.
            ConsoleClosed: closed before a full line arrived (the partial
                line stays buffered for a later :meth:`read`).
            ConsoleBroken: the indices are corrupt.
        """
        if limit < 1:
            raise ValueError("limit must be positive")
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            nl = self._rbuf.find(b"\n", 0, limit)
            if nl >= 0 or len(self._rbuf) >= limit:
                end = nl + 1 if nl >= 0 else limit
                line = bytes(self._rbuf[:end])
                del self._rbuf[:end]
                await trio.lowlevel.cancel_shielded_checkpoint()
                return line
            self._rbuf += await self._read_ring(limit - len(self._rbuf))
