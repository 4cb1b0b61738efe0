"""A socket character device: a Unix socket server for one byte stream at a time.

Theory of operation
-------------------
In Xen, an xl.cfg ``channel`` with ``connection=socket`` is served by QEMU
with ``-chardev socket,id=libxl-channel<N>,path=PATH,server,nowait``: QEMU
binds a Unix socket at PATH when the domain is created, accepts **one**
client at a time and proxies bytes between that client and the console
ring. This module is the socket half of that, with no console knowledge:
:func:`open_unix_chardev` binds and listens, :func:`serve_one_at_a_time`
accepts clients one by one and hands each connected stream to a handler
(:class:`~dom0.backends.consoleback.ConsoleBack` bridges it to the ring).

Decisions (documented, tested):

* **The path** is checked before anything touches the file system
  (:func:`check_socket_path`): absolute, at most :data:`UNIX_PATH_MAX` bytes,
  no NUL. It comes from the backend's ``path`` key, which the toolstack
  writes (dom0-owned, read-only to the guest), but it is still checked.
* **Something already there.** A non-socket file is never touched
  (``EEXIST``); a socket somebody listens on is refused (``EADDRINUSE``: two
  domains cannot share a channel socket); a stale socket nobody listens on
  (left by a process that died) is replaced. The parent directory must
  exist (``ENOENT`` otherwise). The socket is created mode 0600.
* **One client at a time**, like QEMU's chardev server: while a client is
  being served nothing is accepted; a second client's ``connect`` succeeds
  (the kernel queues it, at most :data:`LISTEN_BACKLOG` of them) but it is
  neither read nor written until the first one has gone. Further clients
  get the kernel's answer to a full backlog.
* **Removal.** Leaving :func:`open_unix_chardev` (normally or cancelled)
  closes the socket and removes the file -- only if it is still the inode
  this module created (a file someone put in its place is left alone).
  :func:`listening_sockets` lists the sockets bound and not yet removed, so
  a host's leak check can notice one left behind.

A handler that raises is a bug in the caller: it is logged with its
traceback and the next client is served; the server itself stops only when
cancelled. Worked example::

    async with open_unix_chardev("/run/xensim/web-agent.sock") as listener:
        await serve_one_at_a_time(listener, echo)   # until cancelled
    # the socket file is gone here
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable

import trio

__all__ = [
    "LISTEN_BACKLOG",
    "UNIX_PATH_MAX",
    "check_socket_path",
    "listening_sockets",
    "open_unix_chardev",
    "serve_one_at_a_time",
]

_log = logging.getLogger("xensim.console.chardev")

UNIX_PATH_MAX = 107
"""Longest socket path in bytes (``sizeof(sun_path)`` is 108 on Linux, NUL included)."""
LISTEN_BACKLOG = 4
"""Clients the kernel queues while one is being served."""
LIVENESS_TIMEOUT = 1.0
"""Seconds to wait for a connect that tells a live socket from a stale one."""
ACCEPT_RETRY_DELAY = 0.1
"""Seconds to wait after ``accept`` failed for lack of resources (EMFILE, ENOBUFS...)."""

_LISTENING: dict[str, tuple[int, int]] = {}
"""path -> (st_dev, st_ino) of every socket bound here and not yet removed."""


def listening_sockets() -> list[str]:
    """Paths of the sockets this process bound and has not removed yet (sorted)."""
    return sorted(_LISTENING)


def check_socket_path(path: str) -> None:
    """Refuse a path no socket should be bound at.

    Args:
        path: the socket path (from a dom0-owned key; checked anyway).

    Raises:
        OSError: ``EINVAL`` (relative, empty or containing NUL) or
            ``ENAMETOOLONG`` (longer than :data:`UNIX_PATH_MAX` bytes).
    """
    if not path.startswith("/") or "\0" in path:
        raise OSError(errno.EINVAL, f"{path!r}: expected an absolute path (no NUL)")
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise OSError(errno.ENAMETOOLONG,
                      f"{path!r}: longer than a Unix socket path may be ({UNIX_PATH_MAX} bytes)")


async def _is_live(path: str) -> bool:
    """Does a server accept connections on the socket at ``path``?

    A connect that neither succeeds nor is refused within
    :data:`LIVENESS_TIMEOUT` counts as live (never replace what might be).
    """
    probe = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    with probe, trio.move_on_after(LIVENESS_TIMEOUT):
        try:
            await probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except BlockingIOError:  # its backlog is full: someone listens
            return True
    return True


async def _claim(path: str) -> None:
    """Make ``path`` free for a new socket: remove a stale socket, refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    if await _is_live(path):
        raise OSError(errno.EADDRINUSE, f"something already listens on {path}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # stale: its server died without removing it


def _remove_if_ours(path: str, ident: tuple[int, int]) -> bool:
    """Unlink the socket we bound; False (logged) if it could not be removed."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == ident:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        _log.warning("chardev: cannot remove %s: %s", path, exc)
        return False
    return True


@contextlib.asynccontextmanager
async def open_unix_chardev(path: str) -> AsyncIterator[trio.SocketListener]:
    """Bind and listen on a Unix socket at ``path`` for the ``async with`` body.

    Args:
        path: where (see :func:`check_socket_path` and the module docstring
            for what may already be there).

    Yields:
        The listener (accept with :func:`serve_one_at_a_time`).

    Raises:
        OSError: a bad path, a file or a live socket in the way, a missing
            directory, or any other bind error; nothing is left behind.
    """
    check_socket_path(path)
    await _claim(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    ident: tuple[int, int] | None = None
    try:
        try:
            await sock.bind(path)
        except OSError as exc:
            raise OSError(exc.errno, f"{path}: {exc.strerror or exc}") from None
        st = os.lstat(path)
        ident = (st.st_dev, st.st_ino)
        _LISTENING[path] = ident
        os.chmod(path, 0o600)
        sock.listen(LISTEN_BACKLOG)
        yield trio.SocketListener(sock)
    finally:
        sock.close()
        if ident is not None and _remove_if_ours(path, ident):
            _LISTENING.pop(path, None)


async def serve_one_at_a_time(listener: trio.SocketListener,
                              handler: Callable[[trio.SocketStream], Awaitable[None]]) -> None:
    """Accept clients one by one; run ``handler(stream)`` for each, then close it.

    Runs until cancelled. The next client is accepted only once the handler
    for the previous one has returned.

    Args:
        listener: from :func:`open_unix_chardev`.
        handler: serves one client; returning (or raising) ends that client.
    """
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:  # out of fds or buffers: try again shortly
            _log.warning("chardev: accept failed: %s", exc)
            await trio.sleep(ACCEPT_RETRY_DELAY)
            continue
        async with stream:
            try:
                await handler(stream)
            except Exception:  # a bug in the handler: this client ends, the server carries on
                _log.exception("chardev: the client handler failed")
