"""xenstored's byte-stream transport and its Unix-socket server for dom0 tools.

:func:`serve_connection` pumps one byte stream (anything with ``send_all`` /
``receive_some`` / ``aclose``) against a :class:`~.core.XenStore` connection:

* a reader task parses requests (:class:`ring.xs_wire.MessageParser`) and
  hands them to the core one by one, pausing while the connection already has
  as many unsent replies as its outstanding limit allows (20 for a domain) -
  so a client that pipelines without reading blocks only itself;
* before each request the reader asks :meth:`XenStore.input_delay`; a
  domain out of conflict credit is held (its requests wait, unread) until
  the core says go - see :mod:`.conflict`;
* a writer task sends whatever the core queued (replies and watch events);
  for a domain it takes about a ring's worth at a time, so what the guest
  has not consumed stays in the core's queue, where it is accounted and can
  expire;
* for a domain, an expiry task drops watch events that stayed unsent for
  the watch-event timeout (20 s), on a timer, whether or not the guest ever
  reads again.

A framing error (payload over 4096 bytes) ends that connection only.

:func:`serve` listens on a Unix socket; every client is privileged (dom0
tools), like C xenstored's ``/var/run/xenstored/socket``. Real
``xenstore-*`` tools find it through ``XENSTORED_PATH`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import stat
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from domu.sync import Kick
from ring.xs_wire import MessageParser, WireViolation

from .connection import Connection
from .core import XenStore

__all__ = ["ByteStream", "main", "serve", "serve_connection"]

RECEIVE_CHUNK = 65536
FLUSH_TIMEOUT = 1.0
_TRANSPORT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
SEND_CHUNK = 1 << 18
DOMAIN_SEND_CHUNK = 1024  # XENSTORE_RING_SIZE: what a guest ring holds at once


class ByteStream(Protocol):
    """The transport surface xenstored needs (trio streams satisfy it).

    A stream may also have ``try_send(data) -> int``: send what fits now
    without waiting (the number of bytes taken; ``BlockingIOError`` when
    none). :func:`serve_connection` uses it when present, so a reply that
    fits the socket buffer leaves without an event-loop turn.
    """

    async def send_all(self, data: bytes) -> None: ...
    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...
    async def aclose(self) -> None: ...


class _UnixStream:
    """A trio :class:`~trio.SocketStream` plus :meth:`try_send` (see :class:`ByteStream`)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self.send_all = stream.send_all
        self.receive_some = stream.receive_some
        self.aclose = stream.aclose

    def try_send(self, data: bytes) -> int:
        """One non-blocking ``write`` on the (non-blocking) socket: the bytes taken.

        Raises:
            BlockingIOError: the socket buffer is full.
            OSError: the peer is gone or the socket closed.
        """
        return os.write(self._stream.socket.fileno(), data)


async def serve_connection(xs: XenStore, stream: ByteStream, conn: Connection) -> None:
    """Serve ``conn`` over ``stream`` until the peer closes or breaks framing.

    Args:
        xs: the daemon core.
        stream: the byte stream (its peer is hostile).
        conn: the connection the core created for this peer.

    Returns:
        When the connection is finished; it has then been disconnected from
        the core and the stream closed. Never raises on peer behaviour.
    """
    parser = MessageParser()
    output = Kick()
    queued = Kick()
    space = Kick()

    # Replies go out from the reader itself when the writer is idle (one
    # event-loop turn per request instead of three); the writer task sends
    # whatever else is queued: watch events caused by other connections, and
    # output produced while a send is already in progress. ``sending`` keeps
    # the two from ever calling send_all at the same time.
    handling = False  # the reader is inside xs.handle() for this connection
    deferred = False  # output produced during handling, not yet signalled
    sending = False

    def on_output() -> None:
        nonlocal deferred
        queued.set()
        if handling:
            deferred = True
        else:
            output.set()

    conn.on_output = on_output
    limit = xs.outstanding_limit(conn)
    chunk = SEND_CHUNK if conn.privileged else DOMAIN_SEND_CHUNK
    try_send: Callable[[bytes], int] | None = getattr(stream, "try_send", None)
    in_flight = 0  # replies taken from the queue but not yet delivered

    async def send_queued() -> None:
        nonlocal in_flight, sending
        sending = True
        try:
            data, replies = conn.take_output_counted(xs.clock(), chunk)
            in_flight = replies
            if data:
                sent = 0
                if try_send is not None:  # what fits the socket now goes without a turn
                    with contextlib.suppress(BlockingIOError):
                        sent = try_send(data)
                if sent < len(data):
                    await stream.send_all(data[sent:])
            in_flight = 0
        finally:
            sending = False
        space.set()

    async def writer() -> None:
        while True:
            if not conn.out or sending:
                await output.wait()
                continue
            await send_queued()

    async def flush_deferred() -> None:
        nonlocal deferred
        if not deferred:
            return
        deferred = False
        if sending:
            output.set()  # the writer (or the send in progress) takes it
            return
        await send_queued()
        if conn.out:
            output.set()  # more arrived meanwhile (or past one chunk)

    async def reader() -> None:
        nonlocal handling, deferred
        while True:
            data = await stream.receive_some(RECEIVE_CHUNK)
            if not data:
                await flush_deferred()
                return
            for item in parser.feed(data):
                if isinstance(item, WireViolation):
                    await flush_deferred()
                    xs.mark_broken(conn, item.ring_error)
                    return
                if conn.replies_queued + in_flight >= limit:
                    if deferred:  # the writer must drain before we go on
                        deferred = False
                        output.set()
                    while conn.replies_queued + in_flight >= limit:
                        await space.wait()
                while (delay := xs.input_delay(conn)) is not None:
                    if deferred:
                        deferred = False
                        output.set()
                    await trio.sleep(delay)  # out of conflict credit: held, not refused
                handling = True
                try:
                    xs.handle(conn, item)
                finally:
                    handling = False
                if conn.closed:
                    return
            await flush_deferred()

    async def expirer() -> None:
        while True:
            delay = xs.event_expiry_delay(conn)
            if delay is None:
                await queued.wait()
            elif delay > 0:
                await trio.sleep(delay)  # newer events expire later: none is missed
            else:
                xs.expire_events(conn)
                await trio.lowlevel.checkpoint()

    async def guarded(fn: Callable[[], Awaitable[None]], cancel: trio.CancelScope) -> None:
        # A peer that resets or a ring that breaks ends this connection only.
        with contextlib.suppress(*_TRANSPORT_ERRORS):
            await fn()
        cancel.cancel()

    async def read_then_flush() -> None:
        await reader()
        # Deliver what is queued (e.g. the last replies), briefly, then stop.
        with trio.move_on_after(FLUSH_TIMEOUT):
            while (conn.out or in_flight) and not conn.broken:
                await space.wait()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(guarded, writer, nursery.cancel_scope)
            nursery.start_soon(guarded, read_then_flush, nursery.cancel_scope)
            if conn.event_timeout is not None:
                nursery.start_soon(expirer)
    finally:
        conn.on_output = None
        xs.disconnect(conn)
        with trio.CancelScope(shield=True), contextlib.suppress(*_TRANSPORT_ERRORS):
            await stream.aclose()


def _remove_stale(socket_path: str) -> None:
    try:
        st = os.lstat(socket_path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{socket_path} exists and is not a socket")
    os.unlink(socket_path)


async def serve(
    socket_path: str | os.PathLike[str],
    *,
    xenstore: XenStore | None = None,
    task_status: trio.TaskStatus[XenStore] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run xenstored on a Unix socket until cancelled; remove the socket on exit.

    Args:
        socket_path: where to listen (administrator-controlled); a stale
            socket there is replaced, any other file is an error.
        xenstore: the core to serve (default: a fresh one clocked by trio).
        task_status: ``nursery.start`` reports the core once listening.

    Raises:
        FileExistsError: ``socket_path`` is a non-socket file.
        OSError: the socket cannot be bound.
    """
    path = os.fspath(socket_path)
    xs = xenstore or XenStore(clock=trio.current_time)
    _remove_stale(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        sock.listen(128)
        listener = trio.SocketListener(sock)

        async def handler(stream: trio.SocketStream) -> None:
            await serve_connection(xs, _UnixStream(stream), xs.connect_socket())

        async with trio.open_nursery() as nursery:
            task_status.started(xs)
            await trio.serve_listeners(handler, [listener], handler_nursery=nursery)
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def _run_until_signal(socket_path: str) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, socket_path)
            print(f"xenstored: listening on {socket_path}", file=sys.stderr, flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def run_standalone(socket_path: str) -> int:
    """Run a standalone xenstored on ``socket_path`` in the foreground until
    SIGINT/SIGTERM; the socket is removed on exit.

    Point real tools at it with ``XENSTORED_PATH=PATH xenstore-ls /``.

    Args:
        socket_path: where to listen (user-controlled).

    Returns:
        The process exit status (0 after SIGINT/SIGTERM).
    """
    trio.run(_run_until_signal, socket_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m dom0.xenstored.unix_server --socket PATH`` (the CLI verb
    ``xensim xenstored`` does the same)."""
    parser = argparse.ArgumentParser(prog="xenstored", description=run_standalone.__doc__)
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    args: Any = parser.parse_args(argv)
    return run_standalone(args.socket)


if __name__ == "__main__":
    sys.exit(main())
