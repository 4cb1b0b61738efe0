"""The CLI side of the host daemon's control socket (see :mod:`dom0.toolstack.hostd`).

Plain blocking sockets: each CLI invocation opens one connection, sends one
request and reads its response (or its stream of events). ``console``
multiplexes the socket and stdin with :mod:`selectors`, so it works the same
whether stdin is a terminal (put in raw mode, like ``xenconsole``) or a pipe.

Usage::

    with connect() as c:                    # $XENSIM_CONTROL or the default path
        rows = c.request("list")
        for event in c.stream("top", {"iterations": 2, "delay": 0.5}):
            ...
        c.last_result                        # the stream's final result
"""

from __future__ import annotations

import contextlib
import itertools
import os
import selectors
import socket
from collections.abc import Iterator
from types import TracebackType
from typing import Any, BinaryIO

from dom0.toolstack.control import (
    FrameDecoder,
    FrameTooLarge,
    ProtocolError,
    decode_body,
    encode_frame,
)
from dom0.toolstack.paths import runtime_dir

__all__ = [
    "DETACH_KEY",
    "ControlClient",
    "HostNotRunning",
    "RemoteError",
    "connect",
    "default_control_path",
    "default_xenstore_path",
    "run_console",
]

MAX_RESPONSE = 16 << 20
"""Largest response frame the client accepts."""
DETACH_KEY = 0x1D
"""Ctrl-] detaches from a console, as in ``xl console``."""


def default_control_path() -> str:
    """``$XENSIM_CONTROL``, else ``<runtime dir>/control``."""
    return os.environ.get("XENSIM_CONTROL") or str(runtime_dir() / "control")


def default_xenstore_path() -> str:
    """``$XENSIM_XENSTORE``, else ``<runtime dir>/xenstored``."""
    return os.environ.get("XENSIM_XENSTORE") or str(runtime_dir() / "xenstored")


class HostNotRunning(Exception):
    """Nothing answers on the control socket."""


class RemoteError(Exception):
    """The daemon answered with an error (``code`` from :data:`hostd.ERROR_CODES`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ControlClient:
    """One connection to a running host daemon.

    Args:
        path: the control socket.

    Raises:
        HostNotRunning: (from the constructor) no daemon listens there.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self.sock.close()
            raise HostNotRunning(
                f"no xensim host is running (control socket {path}: {exc.strerror}); "
                "start one with 'xensim host'") from None
        except OSError as exc:
            self.sock.close()
            raise HostNotRunning(f"cannot reach the xensim host at {path}: {exc}") from None
        self._decoder = FrameDecoder(MAX_RESPONSE)
        self._queue: list[bytes] = []
        self._ids = itertools.count(1)
        self.last_result: Any = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    # -- framing -----------------------------------------------------------------------------

    def send(self, op: str, args: dict[str, Any] | None = None, req_id: int | None = None,
             ) -> None:
        """Send one request or control message."""
        self.sock.sendall(encode_frame({"op": op, "args": args or {}, "id": req_id}))

    def feed(self, data: bytes) -> None:
        """Hand received bytes to the decoder (used by :func:`run_console`)."""
        if not data:
            raise HostNotRunning("the xensim host closed the connection (did it stop?)")
        try:
            self._queue.extend(self._decoder.feed(data))
        except FrameTooLarge as exc:
            raise RemoteError("E2BIG", f"response too large: {exc}") from None

    def next_queued(self) -> dict[str, Any] | None:
        """The next fully received message, if any."""
        if not self._queue:
            return None
        try:
            msg = decode_body(self._queue.pop(0))
        except ProtocolError as exc:
            raise RemoteError("EPROTO", f"the host sent a malformed response: {exc}") from None
        if not isinstance(msg, dict):
            raise RemoteError("EPROTO", "the host sent something that is not a response")
        return msg

    def receive(self) -> dict[str, Any]:
        """Block until one message arrives."""
        while True:
            msg = self.next_queued()
            if msg is not None:
                return msg
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            self.feed(data)

    # -- requests ----------------------------------------------------------------------------

    @staticmethod
    def result_of(msg: dict[str, Any]) -> Any:
        """A final response's result, or raise its error."""
        if msg.get("ok"):
            return msg.get("result")
        err = msg.get("error") or {}
        raise RemoteError(str(err.get("code", "EPROTO")), str(err.get("message", "error")))

    def request(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """Send a request, wait for its response, return its result.

        Raises:
            RemoteError: the daemon answered with an error.
            HostNotRunning: the connection broke.
        """
        req_id = next(self._ids)
        self.send(op, args, req_id)
        return self.result_of(self.receive())

    def stream(self, op: str, args: dict[str, Any] | None = None) -> Iterator[Any]:
        """Send a streaming request; yield its events; the final result goes to
        :attr:`last_result`.

        Raises:
            RemoteError: the daemon answered with an error.
        """
        req_id = next(self._ids)
        self.send(op, args, req_id)
        while True:
            msg = self.receive()
            if "event" in msg and msg.get("ok"):
                yield msg["event"]
                continue
            self.last_result = self.result_of(msg)
            return


def connect(path: str | None = None) -> ControlClient:
    """Connect to the daemon at ``path`` (default :func:`default_control_path`)."""
    return ControlClient(path or default_control_path())


def run_console(client: ControlClient, op: str, args: dict[str, Any], stdin_fd: int,
                stdout: BinaryIO, on_event: Any = None) -> Any:
    """Attach to a console stream: output to ``stdout``, ``stdin_fd`` to the guest.

    Ctrl-] in the input detaches (the bytes before it are still sent). End
    of input keeps the session open (output continues until the domain goes
    away or the user interrupts). When stdin is a terminal it is put in raw
    mode for the session, like ``xenconsole``.

    Args:
        client: a fresh connection.
        op, args: ``console`` or ``create`` (with ``console: true``).
        stdin_fd: where input comes from.
        stdout: where output goes (binary).
        on_event: called with non-output events (e.g. ``{"created": ...}``).

    Returns:
        The stream's final result (``{"reason": ...}``).

    Raises:
        RemoteError, HostNotRunning: as :meth:`ControlClient.request`.
    """
    saved = _raw_mode(stdin_fd)
    sel = selectors.DefaultSelector()
    try:
        req_id = 1
        client.send(op, args, req_id)
        sel.register(client.sock, selectors.EVENT_READ, "sock")
        with contextlib.suppress(ValueError, OSError):
            sel.register(stdin_fd, selectors.EVENT_READ, "stdin")
        reading_stdin = "stdin" in {k.data for k in sel.get_map().values()}
        while True:
            msg = client.next_queued()
            if msg is not None:
                event = msg.get("event") if msg.get("ok") else None
                if event is None:
                    return client.result_of(msg)
                if "data" in event:
                    stdout.write(event["data"])
                    stdout.flush()
                elif on_event is not None:
                    on_event(event)
                continue
            for key, _ in sel.select():
                if key.data == "sock":
                    try:
                        data = client.sock.recv(65536)
                    except ConnectionResetError:
                        data = b""
                    client.feed(data)
                elif reading_stdin:
                    data = os.read(stdin_fd, 4096)
                    cut = data.find(bytes([DETACH_KEY]))
                    if cut >= 0:
                        if cut:
                            client.send("input", {"data": data[:cut]})
                        client.send("detach")
                    elif data:
                        client.send("input", {"data": data})
                    if cut >= 0 or not data:  # detached, or end of input
                        sel.unregister(stdin_fd)
                        reading_stdin = False
    finally:
        sel.close()
        _restore_mode(stdin_fd, saved)


def _raw_mode(fd: int) -> Any:
    try:
        if not os.isatty(fd):
            return None
        import termios
        import tty

        saved = termios.tcgetattr(fd)
        tty.setraw(fd)
        return saved
    except (OSError, ImportError):
        return None


def _restore_mode(fd: int, saved: Any) -> None:
    if saved is None:
        return
    import termios

    with contextlib.suppress(OSError):
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
