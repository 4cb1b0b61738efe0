"""An async XenStore client (the guest kernel's xenbus library; dom0 uses it too).

It speaks the wire protocol of :mod:`ring.xs_wire` over any byte stream with
``send_all`` / ``receive_some`` - a Unix socket to dom0's xenstored today, the
domain's xenstore ring later. Requests are pipelined: every call picks a
fresh ``req_id``, sends, and waits; one reader task routes each reply to its
waiter and each watch event to its watch's bounded queue.

Usage::

    async with open_xenstore_unix("/run/xenstored/socket") as xs:
        await xs.write("/local/domain/0/name", b"Domain-0")
        async with xs.watch("/local/domain/0/memory") as events:
            async for path in events:
                ...
        await xs.transaction(lambda tx: tx.write("a", b"1"))   # retried on EAGAIN

Errors: a daemon error reply raises :class:`XenStoreError` carrying the wire
name (``XenStoreError("ENOENT")``); a daemon that breaks the protocol (reply
with an unknown ``req_id``, malformed payload, oversized frame, EOF) raises
:class:`XenStoreProtocolError` in every waiter and closes the client - never a
hang.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar

import trio

from ring.byte_ring import XenstoreGuest
from ring.errors import CorruptRingIndexError
from ring.xs_wire import (
    MessageParser,
    WireViolation,
    XsMessage,
    XsType,
    encode_message,
    encode_strings,
    split_strings,
)

__all__ = [
    "Transport",
    "XenStoreClient",
    "XenStoreError",
    "XenStoreProtocolError",
    "XenStoreTransaction",
    "XenstoreRingTransport",
    "open_xenstore",
    "open_xenstore_ring",
    "open_xenstore_unix",
    "read_or_none",
]

T = TypeVar("T")
WATCH_QUEUE_MAX = 256


class Transport(Protocol):
    """A byte stream to xenstored (a trio stream, or a ring adapter)."""

    async def send_all(self, data: bytes) -> None: ...
    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...


class XenStoreError(Exception):
    """xenstored refused a request.

    Attributes:
        name: the error name from the wire (``"ENOENT"``, ``"EACCES"``...).
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class XenStoreProtocolError(Exception):
    """The daemon broke the protocol or the connection ended."""


class _Waiter:
    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: XsMessage | BaseException | None = None


class Watch:
    """An active watch: an async iterator of event paths (bounded queue).

    If events arrive faster than they are consumed, the oldest are dropped
    (watches may fire spuriously and clients re-read state anyway; the most
    recent event is always kept).
    """

    def __init__(self, path: str, token: bytes) -> None:
        self.path = path
        self.token = token
        self.queue: deque[str] = deque(maxlen=WATCH_QUEUE_MAX)
        self._wake = trio.Event()
        self.dropped = 0
        self.error: BaseException | None = None

    def _push(self, path: str) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(path)
        self._wake.set()

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self._wake.set()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> str:
        while not self.queue:
            if self.error is not None:
                raise self.error
            await self._wake.wait()
            self._wake = trio.Event()
        return self.queue.popleft()


def _check(reply: XsMessage, type_: int) -> bytes:
    if reply.type == XsType.ERROR:
        items = split_strings(reply.payload)
        if not items or len(items) != 1:
            raise XenStoreProtocolError(f"malformed error reply {reply.payload!r}")
        raise XenStoreError(items[0].decode("ascii", "replace"))
    if reply.type != type_:
        raise XenStoreProtocolError(f"reply type {reply.type} to request type {type_}")
    return reply.payload


def _strings(payload: bytes) -> list[str]:
    items = split_strings(payload)
    if items is None:
        raise XenStoreProtocolError(f"reply not NUL-terminated: {payload[:40]!r}")
    return [i.decode("ascii", "replace") for i in items]


class _Ops:
    """The request methods, shared by the client and its transactions."""

    _client: XenStoreClient
    _tx_id: int

    async def _call(self, type_: int, payload: bytes) -> bytes:
        return await self._client._request(type_, self._tx_id, payload)

    async def read(self, path: str) -> bytes:
        """The value at ``path`` (raises ``XenStoreError("ENOENT")`` if absent)."""
        return await self._call(XsType.READ, encode_strings(path))

    async def write(self, path: str, value: bytes | str) -> None:
        """Set ``path`` to ``value`` (creating missing parents)."""
        v = value.encode() if isinstance(value, str) else value
        await self._call(XsType.WRITE, path.encode() + b"\0" + v)

    async def mkdir(self, path: str) -> None:
        """Create ``path`` with an empty value (no-op if it exists)."""
        await self._call(XsType.MKDIR, encode_strings(path))

    async def rm(self, path: str) -> None:
        """Remove ``path`` and everything below it."""
        await self._call(XsType.RM, encode_strings(path))

    async def directory(self, path: str) -> list[str]:
        """Child names of ``path`` (uses DIRECTORY_PART when the list is long)."""
        try:
            payload = await self._call(XsType.DIRECTORY, encode_strings(path))
        except XenStoreError as e:
            if e.name != "E2BIG":
                raise
            return await self._directory_part(path)
        return _strings(payload) if payload else []

    async def _directory_part(self, path: str) -> list[str]:
        while True:
            names: list[str] = []
            offset = 0
            gen = None
            while True:
                payload = await self._call(
                    XsType.DIRECTORY_PART, encode_strings(path, str(offset))
                )
                g, sep, rest = payload.partition(b"\0")
                if not sep:
                    raise XenStoreProtocolError("malformed DIRECTORY_PART reply")
                if gen is not None and g != gen:
                    break  # the directory changed under us: start again
                gen = g
                if rest in (b"", b"\0"):
                    return names
                done = rest.endswith(b"\0\0")
                body = rest[:-1] if done else rest
                names += _strings(body)
                offset += len(body)
                if done:
                    return names

    async def get_perms(self, path: str) -> list[str]:
        """The permission list of ``path`` (``["n0", "r5"]``; first = owner)."""
        return _strings(await self._call(XsType.GET_PERMS, encode_strings(path)))

    async def set_perms(self, path: str, perms: list[str]) -> None:
        """Replace the permission list of ``path``."""
        await self._call(XsType.SET_PERMS, encode_strings(path, *perms))

    async def get_domain_path(self, domid: int) -> str:
        """The home directory xenstored assigns to ``domid``."""
        items = _strings(await self._call(XsType.GET_DOMAIN_PATH, encode_strings(str(domid))))
        if len(items) != 1:
            raise XenStoreProtocolError("malformed GET_DOMAIN_PATH reply")
        return items[0]

    async def introduce(self, domid: int, mfn: int, port: int) -> None:
        """``XS_INTRODUCE``: tell xenstored about a new domain's ring (dom0 only).

        Args:
            domid: the new domain.
            mfn: the frame of its xenstore ring page (as xenstored maps it).
            port: the event channel xenstored should bind to.
        """
        await self._call(XsType.INTRODUCE, encode_strings(str(domid), str(mfn), str(port)))

    async def release(self, domid: int) -> None:
        """``XS_RELEASE``: xenstored forgets the domain (dom0 only)."""
        await self._call(XsType.RELEASE, encode_strings(str(domid)))

    async def exists(self, path: str) -> bool:
        """True if ``path`` can be read."""
        try:
            await self.read(path)
        except XenStoreError as e:
            if e.name == "ENOENT":
                return False
            raise
        return True


class XenStoreTransaction(_Ops):
    """Requests inside one transaction (see :meth:`XenStoreClient.transaction`)."""

    def __init__(self, client: XenStoreClient, tx_id: int) -> None:
        self._client = client
        self._tx_id = tx_id

    @property
    def tx_id(self) -> int:
        """The daemon's id for this transaction."""
        return self._tx_id


class XenStoreClient(_Ops):
    """A connection to xenstored. Create with :func:`open_xenstore`.

    Args:
        transport: the byte stream (its peer, the daemon, is trusted only to
            the extent that malformed replies raise instead of hanging).
    """

    def __init__(self, transport: Transport) -> None:
        self._client = self
        self._tx_id = 0
        self._transport = transport
        self._ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self._abandoned: set[int] = set()  # req_ids of cancelled requests
        self._watches: dict[bytes, Watch] = {}
        self._tokens = itertools.count(1)
        self._send_lock = trio.Lock()
        self._error: BaseException | None = None

    async def _request(self, type_: int, tx_id: int, payload: bytes) -> bytes:
        if self._error is not None:
            raise self._error
        req_id = next(self._ids) & 0xFFFFFFFF
        waiter = _Waiter()
        self._waiters[req_id] = waiter
        try:
            async with self._send_lock:
                await self._transport.send_all(encode_message(type_, req_id, tx_id, payload))
            await waiter.done.wait()
        finally:
            self._waiters.pop(req_id, None)
            if waiter.reply is None:  # cancelled: its reply may still come; ignore it then
                self._abandoned.add(req_id)
        reply = waiter.reply
        if isinstance(reply, BaseException):
            raise reply
        assert reply is not None
        return _check(reply, type_)

    def close(self, reason: str = "client closed") -> None:
        """Fail every pending and later request (and watch) with
        :class:`XenStoreProtocolError`; use when the connection is going away
        (for example its domain is being destroyed) so nothing waits forever.

        Args:
            reason: the message the waiters' exception carries.
        """
        self._fail(XenStoreProtocolError(reason))

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        for w in self._waiters.values():
            w.reply = exc
            w.done.set()
        for watch in self._watches.values():
            watch._fail(exc)

    async def _reader(self) -> None:
        parser = MessageParser()
        try:
            while True:
                data = await self._transport.receive_some(65536)
                if not data:
                    raise XenStoreProtocolError("xenstored closed the connection")
                for msg in parser.feed(data):
                    if isinstance(msg, WireViolation):
                        raise XenStoreProtocolError(msg.reason)
                    self._route(msg)
        except XenStoreProtocolError as exc:
            self._fail(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(XenStoreProtocolError(f"transport failed: {exc!r}"))

    def _route(self, msg: XsMessage) -> None:
        if msg.type == XsType.WATCH_EVENT:
            items = split_strings(msg.payload)
            if items is None or len(items) < 2:
                raise XenStoreProtocolError("malformed watch event")
            watch = self._watches.get(items[1])
            if watch is not None:  # events for a just-removed watch are normal
                watch._push(items[0].decode("ascii", "replace"))
            return
        if msg.req_id in self._abandoned:
            self._abandoned.discard(msg.req_id)
            return
        waiter = self._waiters.get(msg.req_id)
        if waiter is None or waiter.reply is not None:
            raise XenStoreProtocolError(f"reply with unknown req_id {msg.req_id}")
        waiter.reply = msg
        waiter.done.set()

    @asynccontextmanager
    async def watch(self, path: str, token: str | None = None) -> AsyncIterator[Watch]:
        """Watch ``path``; yields an async iterator of changed paths.

        The first event (the registration event) arrives at once. Leaving the
        block unregisters the watch.
        """
        tok = (token or f"xensim-{next(self._tokens)}").encode()
        if tok in self._watches:
            raise ValueError(f"token {tok!r} already in use on this client")
        w = Watch(path, tok)
        self._watches[tok] = w
        try:
            await self._request(XsType.WATCH, 0, encode_strings(path, tok))
            yield w
        finally:
            self._watches.pop(tok, None)
            if self._error is None:
                with trio.CancelScope(shield=True), contextlib.suppress(
                    XenStoreError, XenStoreProtocolError
                ):
                    await self._request(XsType.UNWATCH, 0, encode_strings(path, tok))

    @asynccontextmanager
    async def transaction_start(self) -> AsyncIterator[XenStoreTransaction]:
        """One transaction attempt: commits on normal exit, aborts on error.

        Raises:
            XenStoreError: ``EAGAIN`` if the commit conflicted (retry it all).
        """
        # Not cancellable: a transaction whose id we never learned could never
        # be ended, and would leak in the daemon (the daemon always answers).
        with trio.CancelScope(shield=True):
            tx_id_raw = await self._request(XsType.TRANSACTION_START, 0, b"\0")
        items = _strings(tx_id_raw)
        if len(items) != 1 or not items[0].isdigit():
            raise XenStoreProtocolError(f"bad transaction id {tx_id_raw!r}")
        tx = XenStoreTransaction(self, int(items[0]))
        try:
            yield tx
        except BaseException:
            if self._error is None:
                with trio.CancelScope(shield=True), contextlib.suppress(
                    XenStoreError, XenStoreProtocolError
                ):
                    await self._request(XsType.TRANSACTION_END, tx.tx_id, b"F\0")
            raise
        await self._request(XsType.TRANSACTION_END, tx.tx_id, b"T\0")

    async def transaction(
        self, fn: Callable[[XenStoreTransaction], Awaitable[T]], *, retries: int = 100
    ) -> T:
        """Run ``fn(tx)`` in a transaction, rerunning it on EAGAIN.

        Args:
            fn: the body; it must be safe to run again from scratch.
            retries: give up after this many conflicts.

        Returns:
            ``fn``'s result from the attempt that committed.

        Raises:
            XenStoreError: ``EAGAIN`` after ``retries`` conflicts, or any
                other daemon error.
        """
        for attempt in range(retries + 1):
            try:
                async with self.transaction_start() as tx:
                    result = await fn(tx)
                return result
            except XenStoreError as e:
                if e.name != "EAGAIN" or attempt == retries:
                    raise
        raise AssertionError("unreachable")


async def read_or_none(xs: XenStoreClient | XenStoreTransaction, path: str) -> bytes | None:
    """The value at ``path``, or None if it is missing or not readable by us
    (``ENOENT`` / ``EACCES``); any other error still raises."""
    try:
        return await xs.read(path)
    except XenStoreError as exc:
        if exc.name in ("ENOENT", "EACCES"):
            return None
        raise


@asynccontextmanager
async def open_xenstore(transport: Transport) -> AsyncIterator[XenStoreClient]:
    """A client over ``transport`` with its reader task running.

    Args:
        transport: a connected byte stream to xenstored (caller-owned).
    """
    client = XenStoreClient(transport)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client._reader)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_xenstore_unix(socket_path: str) -> AsyncIterator[XenStoreClient]:
    """A client connected to xenstored's Unix socket (dom0 tools).

    Args:
        socket_path: the socket (e.g. ``XENSTORED_PATH``).
    """
    stream = await trio.open_unix_socket(socket_path)
    async with stream, open_xenstore(stream) as client:
        yield client


class EventPort(Protocol):
    """One bound xenstore event channel: the guest's (start_info ``store_evtchn``)
    or, in xenstored's ring transport, dom0's end of it."""

    def notify(self) -> None:
        """Signal the other end (EVTCHNOP_send)."""
        ...

    async def wait(self) -> None:
        """Return after the next event on the port (events coalesce)."""
        ...


class XenstoreRingTransport:
    """The guest end of its xenstore page as a :class:`Transport`.

    Requests go into ``req``, replies and events come from ``rsp``; the
    guest notifies after every index update. Run :meth:`pump` in a nursery
    (:func:`open_xenstore_ring` does).

    Args:
        page: the guest's own xenstore page (the daemon writes ``rsp``).
        port: the guest's xenstore event channel.
    """

    def __init__(self, page: memoryview, port: EventPort) -> None:
        self.ring = XenstoreGuest(page)
        self.port = port
        self._kick = trio.Event()

    async def pump(self) -> None:
        """Turn port events into wake-ups (runs until cancelled)."""
        while True:
            await self.port.wait()
            kick, self._kick = self._kick, trio.Event()
            kick.set()

    def _check_error(self) -> None:
        if self.ring.error:
            raise XenStoreProtocolError(f"xenstored reported ring error {self.ring.error}")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Bytes xenstored queued in ``rsp`` (waits for at least one)."""
        while True:
            kick = self._kick
            try:
                data = self.ring.responses.read(max_bytes)
            except CorruptRingIndexError as exc:
                raise XenStoreProtocolError(str(exc)) from None
            if data:
                self.port.notify()
                return data
            self._check_error()
            await kick.wait()

    async def send_all(self, data: bytes) -> None:
        """Stream ``data`` into ``req``, waiting for space as needed."""
        view = memoryview(data)
        while view:
            kick = self._kick
            self._check_error()
            try:
                n = self.ring.requests.write(view)
            except CorruptRingIndexError as exc:
                raise XenStoreProtocolError(str(exc)) from None
            if n:
                view = view[n:]
                self.port.notify()
            else:
                await kick.wait()


@asynccontextmanager
async def open_xenstore_ring(page: memoryview, port: EventPort) -> AsyncIterator[XenStoreClient]:
    """A client on the guest's xenstore ring (how a guest kernel talks to xenstored).

    Args:
        page: the guest's xenstore page.
        port: its xenstore event channel.
    """
    transport = XenstoreRingTransport(page, port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(transport.pump)
        try:
            async with open_xenstore(transport) as client:
                yield client
        finally:
            nursery.cancel_scope.cancel()
