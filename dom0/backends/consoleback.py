"""consoleback: dom0's backend for secondary PV consoles (``device/console/<N>``, N >= 1).

Theory of operation
-------------------
A domain's *primary* console (``/local/domain/<D>/console``) is not a bus
device: the domain builder hands the page and port to the guest in
start_info and to the console daemon (:mod:`dom0.console.daemon`), and its
backend node ``backend/console/<D>/0`` (``state = 1`` forever) names
``/local/domain/<D>/console`` as its frontend. The backend bus drives only
devices whose frontend is ``/local/domain/<D>/device/console/<V>``, so that
node is never probed: the primary console stays with the builder and the daemon.

*Secondary* consoles run the XenBus handshake (Xen's ``docs/misc/console.txt``).
In Xen, QEMU's
``xen_console`` backend serves them, one backend instance per console, and
Linux's ``hvc_xen`` drives them as ``hvc1``, ``hvc2``... The toolstack writes
the device as libxl's ``libxl__device_console_add`` does for a non-primary
console (:func:`~dom0.toolstack.builder.console_device_request`):

backend ``/local/domain/0/backend/console/<D>/<N>`` (dom0-owned)
    ``frontend``, ``frontend-id``, ``online = 1``, ``state = 1``,
    ``protocol = vt100``, optionally ``name``; for an xl.cfg channel
    (:func:`~dom0.toolstack.builder.channel_device_request`) also
    ``connection`` (``pty`` or ``socket``) and, for ``socket``, ``path``;
frontend ``/local/domain/<D>/device/console/<N>`` (guest-owned)
    ``backend``, ``backend-id``, ``state = 1``, ``limit``, ``type = ioemu``,
    ``output`` (``pty``, or ``chardev:libxl-channel<N>`` for a socket
    channel), ``tty`` (always empty: xensim opens no ptys),
    ``protocol = vt100``, optionally ``name``.

The frontend (:mod:`domu.frontends.consolefront`) publishes at probe, like
hvc_xen's ``xencons_connect_backend``: ``ring-ref`` -- a **grant reference**
of a ``struct xencons_interface`` page, not a frame number as for the primary
console -- and ``port``, then goes to Initialised (3); the ``console`` rows of
:mod:`ring.xenbus` do the rest. The hooks:

* :meth:`ConsoleBack.probe`: nothing to publish (InitWait, 2); for
  ``connection = socket``, start listening (below);
* :meth:`ConsoleBack.map_ring`: read ``ring-ref`` and ``port``
  (guest-controlled: checked), map the page and bind the port through the
  base class, which releases both whatever happens;
* :meth:`ConsoleBack.connect`: a fresh
  :class:`~dom0.console.daemon.ConsoleDaemon` serves this one console (the
  daemon's machinery, not its domid-keyed table of primary consoles: one
  daemon per device, as QEMU runs one backend per console). The ring
  worker runs the daemon's timer and waits for the daemon to report the page
  broken;
* :meth:`ConsoleBack.disconnect`: drain what the guest queued, keep the log
  and counters, stop the daemon (attached sessions end), release page and port.

Bounds (a misbehaving guest hurts only itself): the log keeps the newest
``limit`` bytes. libxl writes ``limit`` read-only to the guest, but in xensim
the whole frontend directory is guest-owned, so the value is clamped to
:data:`MAX_LIMIT` (absent or garbage means :data:`MAX_LIMIT`). Attached
sessions have bounded queues and drop their oldest bytes; xenconsoled's rate
limit (30 events per 200 ms) slows a flooding guest down to its own ring's
pace. All of it is the daemon's (see its docstring).

Hostile indices: a guest that makes ``prod - cons`` exceed a ring's size
gets its console disabled by the daemon, which calls back; the worker then
raises :class:`~ring.errors.PeerProtocolError`, the bus counts it
(:attr:`~dom0.backends.bus.Backend.errors`) and takes this device, and only
this one, to Closing. A corrupt ``in`` ring is found when dom0 sends input:
the sender gets :class:`~dom0.console.daemon.ConsoleBroken` and the device
closes the same way.

dom0 users reach a console through the host
(``dom.consoles[N]``, :class:`dom0.host.SecondaryConsole`), which uses
:meth:`ConsoleBack.log`, :meth:`ConsoleBack.attach` and
:meth:`ConsoleBack.wait_changed`.

Channels: ``connection``
------------------------
``pty`` (or no ``connection`` key: a plain secondary console). In Xen QEMU
opens a pty and ``xl channel-list`` shows its slave. xensim opens no pty and
leaves ``tty`` empty; dom0 reaches the console through ``dom.consoles[N]``
(log, attach, send) only.

``socket``: QEMU's ``-chardev socket,path=PATH,server,nowait``. At probe the
backend listens on a Unix socket at ``path`` (:mod:`dom0.console.chardev`:
the path is checked -- absolute, fits ``sun_path``; a regular file there is
never touched, a live socket is refused, a stale one replaced; the socket is
mode 0600). A bad path or a bind error writes ``hotplug-error`` and takes the
device to Closing, so the toolstack's create or attach fails with the reason.
The socket lives as long as this instance -- across frontend reconnections --
and its file is removed when the device is unplugged or the domain destroyed
(the device's nursery ends; a client still connected is disconnected).

One client is served at a time; further clients wait in the kernel's listen
queue until it leaves (as with QEMU). For the client being served:

* **output** (guest -> client): every byte the guest writes from the moment
  the client was accepted, in order, without gaps or repeats, whatever the
  task order (a session per console connection replays that connection's log
  and skips what predates the client). Output while no client is connected
  is only in the log, which keeps the newest ``limit`` bytes: a guest that
  floods a channel nobody listens to costs that much and no more. A client
  that reads slowly has up to ``limit`` bytes queued for it, then loses the
  oldest (the daemon's ``dropped``), as QEMU discards beyond its buffer; the
  guest is never slowed down by a client.
* **input** (client -> guest): at most :data:`CHANNEL_READ_SIZE` bytes are
  read and written to the ``in`` ring (waiting for space) before the next
  read, so a guest that does not read pushes back on the client through its
  socket; while the frontend is not connected nothing more is read. Bytes
  being written when the console connection ends are dropped
  (:attr:`ConsoleBack.input_dropped`), as on a serial line whose far end left.
* end of file or an error on the socket ends that client only (QEMU, too,
  drops the connection on EOF: a client that half-closes gets no more
  output); the console and its log carry on, and the next client is
  accepted. dom0's own ``dom.consoles[N]`` sessions work alongside.

Worked example (what a guest and dom0 see)::

    await dom.attach_console(1)                    # hot-plug device/console/1
    # in the guest:  await guest.consoles[1].print("hello on hvc1")
    await dom.consoles[1].wait_for("hello on hvc1")
    await dom.consoles[1].send("input\\n")          # guest: consoles[1].readline()
    await dom.detach_console(1)

and with ``channel = [ "name=org.example.agent.0,connection=socket,path=/run/a.sock" ]``
in the domain's xl.cfg, from a shell on the host::

    socat - UNIX-CONNECT:/run/a.sock               # hvc1's output; typing goes in
"""

from __future__ import annotations

import errno as host_errno
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

from dom0.backends.bus import Backend, register_backend
from dom0.console.chardev import check_socket_path, open_unix_chardev, serve_one_at_a_time
from dom0.console.daemon import (
    ConsoleBroken,
    ConsoleDaemon,
    ConsoleGone,
    ConsoleSession,
    ConsoleStats,
)
from hypervisor.errno import Errno, XenError
from hypervisor.types import Port
from ring.console import CONSOLE_DEFAULT_LIMIT
from ring.errors import PeerProtocolError

__all__ = ["CHANNEL_READ_SIZE", "CONNECTIONS", "MAX_LIMIT", "ConsoleBack", "parse_limit"]

MAX_LIMIT = CONSOLE_DEFAULT_LIMIT
"""Most bytes of log one secondary console keeps (libxl's ``limit``, 1 MiB)."""
CONNECTIONS = ("pty", "socket")
"""Values of the backend's ``connection`` key (absent means ``pty``)."""
CHANNEL_READ_SIZE = 1024
"""Bytes read from a socket client at once: the guest's ``in`` ring size (the only input
buffered in dom0; the client's further writes wait in its socket)."""


def _number(raw: bytes | None, what: str) -> int:
    """A decimal u32 the guest wrote, checked (PeerProtocolError otherwise)."""
    if raw is None or not raw.isdigit() or len(raw) > 10 or int(raw) > 0xFFFFFFFF:
        raise PeerProtocolError(f"{what}: expected a number, got {raw!r}")
    return int(raw)


def _xen_errno(exc: OSError) -> Errno:
    name = host_errno.errorcode.get(exc.errno or 0, "EIO")
    return getattr(Errno, name, Errno.EIO)


def _socket_path(raw: bytes | None) -> str:
    """The backend's ``path`` key as a checked socket path (OSError otherwise)."""
    if not raw:
        raise OSError(host_errno.EINVAL, "connection=socket but no path")
    try:
        path = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise OSError(host_errno.EINVAL, f"path {raw!r}: not UTF-8") from None
    check_socket_path(path)
    return path


def parse_limit(raw: bytes | None) -> int:
    """The log bound for a console from its ``limit`` key (guest-writable here).

    Args:
        raw: the value, or None if absent.

    Returns:
        The value clamped to ``1..MAX_LIMIT``; :data:`MAX_LIMIT` when absent
        or not a decimal number. Never raises.
    """
    if raw is None or not raw.isdigit() or len(raw) > 10:
        return MAX_LIMIT
    return max(1, min(int(raw), MAX_LIMIT))


@register_backend
class ConsoleBack(Backend):
    """The backend of one secondary console (QEMU's ``xen_console`` in Xen).

    Attributes:
        limit: log bytes kept (from ``limit``, clamped) for this connection.
        connections: CONNECTs served so far.
        broken_reason: why the last connection's page was disabled (None
            while it is healthy).
        port: dom0's port bound to the frontend's (valid once mapped).
        removed: the bus unregistered this instance.
        connection: ``pty`` or ``socket`` (the backend's ``connection`` key).
        socket_path: where a ``socket`` channel listens (None for ``pty``).
        client_connected: a socket client is being served now.
        clients_accepted: socket clients served so far.
        input_dropped: client bytes dropped because the console connection
            they were being written to ended (at most one read of
            :data:`CHANNEL_READ_SIZE` bytes per connection that ends).
    """

    kind = "console"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit = MAX_LIMIT
        self.connections = 0
        self.broken_reason: str | None = None
        self.removed = False
        self.port = Port(0)
        self._page: memoryview | None = None
        self._serving = False
        self._daemon: ConsoleDaemon | None = None
        self._handler: Callable[[int], None] | None = None
        self._broken = trio.Event()
        self._last_log = b""
        self._last_stats: ConsoleStats | None = None
        self._changed = trio.lowlevel.ParkingLot()
        self.connection = "pty"
        self.socket_path: str | None = None
        self.client_connected = False
        self.clients_accepted = 0
        self.input_dropped = 0
        self._client_session: ConsoleSession | None = None

    # -- hooks -------------------------------------------------------------------------------

    async def probe(self) -> None:
        """Read ``connection``; for ``socket``, start listening on ``path`` (QEMU's chardev).

        The socket exists from here (InitWait, before the guest even boots)
        until the device is removed, across frontend reconnections.

        Raises:
            XenError: an unknown connection, a bad path, or the socket cannot
                be bound; ``hotplug-error`` says why and the device goes to
                Closing (the toolstack's create or attach reports it).
        """
        connection = await self.read_key("connection")
        if connection is None or connection == b"pty":
            return
        try:
            if connection != b"socket":
                raise OSError(host_errno.EINVAL,
                              f"connection {connection!r}: expected pty or socket")
            path = _socket_path(await self.read_key("path"))
            assert self._nursery is not None
            await self._nursery.start(self._hold_chardev, path)
        except OSError as exc:
            why = exc.strerror or str(exc)
            await self.write_keys({"hotplug-error": why, "hotplug-status": "error"})
            raise XenError(_xen_errno(exc), f"{self.dev.backend_path}: {why}") from None
        self.connection = "socket"
        self.socket_path = path

    async def map_ring(self) -> None:
        ref = _number(await self.read_frontend("ring-ref"), "ring-ref")
        remote_port = _number(await self.read_frontend("port"), "port")
        self._page = self.map_grant(ref)
        self.port = self.bind_port(remote_port, self._on_event)

    async def connect(self) -> None:
        self.limit = parse_limit(await self.read_frontend("limit"))
        domid = self.dev.frontend_id
        daemon = ConsoleDaemon(log_size=self.limit)
        port = self.port
        hc = self.hc

        def notify() -> None:
            hc.evtchn_send(port)  # the daemon counts a refused notify

        self.broken_reason = None
        self._broken = trio.Event()
        assert self._page is not None  # MAP_RING always precedes CONNECT
        self._handler = daemon.add_domain(
            domid, f"d{domid} console {self.dev.devid}", self._page, notify,
            limit=self.limit, on_broken=self._on_broken)
        self._daemon = daemon
        self._serving = True
        self.connections += 1
        self.start_worker(self._serve)
        self._changed.unpark_all()

    async def disconnect(self) -> None:
        self._serving = False  # no new sessions from here on
        await self.stop_worker()
        daemon, handler = self._daemon, self._handler
        self._daemon = self._handler = None
        if daemon is not None and handler is not None:
            domid = self.dev.frontend_id
            handler(self.port)  # drain what the guest queued before it went
            self._last_log = daemon.log(domid)
            self._last_stats = daemon.stats(domid)
            daemon.remove_domain(domid)
        self._page = None  # drop our view before the base class unmaps the page
        self._changed.unpark_all()
        await super().disconnect()

    async def remove(self) -> None:
        self.removed = True
        self._changed.unpark_all()

    # -- the ring worker -----------------------------------------------------------------------

    async def _serve(self) -> None:
        daemon, broken = self._daemon, self._broken
        assert daemon is not None
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)  # rate-limit periods end on its timer
            self._on_event(self.port)  # output queued before the port was bound
            await broken.wait()
            nursery.cancel_scope.cancel()
        raise PeerProtocolError(f"{self.dev.frontend_path}: {self.broken_reason}")

    def _on_event(self, port: int) -> None:
        """The bound port's handler: hand the event to this connection's daemon."""
        handler = self._handler
        if handler is not None:
            handler(port)

    def _on_broken(self, reason: str) -> None:
        """The daemon disabled the page (corrupt indices): close the device."""
        self.broken_reason = reason
        self._broken.set()
        self._changed.unpark_all()

    # -- connection=socket: the chardev ---------------------------------------------------------

    async def _hold_chardev(self, path: str, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                            ) -> None:
        """Listen on ``path`` for the instance's lifetime (ends with the device's nursery)."""
        async with open_unix_chardev(path) as listener:
            task_status.started()
            await serve_one_at_a_time(listener, self._serve_client)

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        """Bridge one socket client and the console until either side ends it.

        The client gets the guest's output from the moment it was accepted:
        ``mark`` is (connection number, output bytes so far) then, or the
        next connection's start if the console is not connected now.
        """
        stats = self.stats() if self.connected else None
        mark = ((self.connections, stats.bytes_out) if stats is not None
                else (self.connections + 1, 0))
        self.clients_accepted += 1
        self.client_connected = True
        self._changed.unpark_all()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._client_to_guest, stream, nursery.cancel_scope)
                nursery.start_soon(self._guest_to_client, stream, mark, nursery.cancel_scope)
        finally:
            self.client_connected = False
            self._client_session = None
            self._changed.unpark_all()

    async def _wait_connected(self) -> None:
        while not self.connected:
            await self._changed.park()

    async def _guest_to_client(self, stream: trio.SocketStream, mark: tuple[int, int],
                               client: trio.CancelScope) -> None:
        """Output: one session per console connection, forwarded as it comes.

        The session replays this connection's log and the bytes the client
        already had (or that predate it) are skipped, so nothing is lost or
        repeated whichever task runs first. A slow client makes the session
        queue grow up to :attr:`limit` bytes, then lose its oldest (counted
        in the daemon's ``dropped``); the guest is never slowed down.
        """
        try:
            while True:
                await self._wait_connected()
                stats = self.stats()
                assert stats is not None  # connected: the daemon serves it
                start = mark[1] if mark[0] == self.connections else 0
                skip = max(0, start - (stats.bytes_out - len(self.log())))
                async with self.attach(replay=True, queue_bytes=self.limit) as session:
                    self._client_session = session
                    self._changed.unpark_all()
                    try:
                        async for chunk in session:
                            if skip:
                                chunk, skip = chunk[skip:], max(0, skip - len(chunk))
                            if chunk:
                                await stream.send_all(chunk)
                    finally:
                        self._client_session = None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            client.cancel()

    async def _client_to_guest(self, stream: trio.SocketStream,
                               client: trio.CancelScope) -> None:
        """Input: read at most one chunk, write it to the ``in`` ring, then read more.

        Waiting for ring space (or for the console to connect) before reading
        again pushes back on the client through its socket buffer. End of
        file ends the client, as in QEMU.
        """
        try:
            while True:
                data = await stream.receive_some(CHANNEL_READ_SIZE)
                if not data:
                    return
                while (session := self._client_session) is None or not self.connected:
                    await self._changed.park()
                try:
                    await session.send(data)
                except (ConsoleGone, ConsoleBroken):  # that connection ended under it
                    self.input_dropped += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            client.cancel()

    # -- what dom0 users see -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Serving a healthy page now (output flows, input can be sent)."""
        return self._serving and self.broken_reason is None

    def log(self) -> bytes:
        """The newest (at most :attr:`limit`) bytes the guest wrote on this connection.

        Once disconnected: the last connection's log (a frontend that
        reconnects starts a new log, like a new tty session).
        """
        if self._daemon is not None:
            return self._daemon.log(self.dev.frontend_id)
        return self._last_log

    def stats(self) -> ConsoleStats | None:
        """The daemon's counters for this connection (or the last one; None before any)."""
        if self._daemon is not None:
            return self._daemon.stats(self.dev.frontend_id)
        return self._last_stats

    def attach(self, *, replay: bool = True, queue_bytes: int | None = None,
               ) -> AbstractAsyncContextManager[ConsoleSession]:
        """``async with back.attach() as session``: live output and input (``xl console -n N``).

        Args:
            replay: queue this connection's log first.
            queue_bytes: the session's queue bound (default: the daemon's).

        Returns:
            The daemon's session context manager; the session ends when the
            device disconnects (``"daemon stopped"``) or breaks (``"broken"``).

        Raises:
            ConsoleGone: the console is not connected now.
        """
        daemon = self._daemon
        if daemon is None or not self._serving:
            raise ConsoleGone(f"{self.dev.frontend_path}: console not connected")
        return daemon.attach(self.dev.frontend_id, replay=replay, queue_bytes=queue_bytes)

    async def wait_changed(self) -> None:
        """Return after the next connect, disconnect, break or removal, or a socket
        client's arrival or departure (callers bound it and re-check)."""
        await self._changed.park()
