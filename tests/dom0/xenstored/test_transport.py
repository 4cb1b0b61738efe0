"""The Unix-socket transport and the async client, including hostile peers."""

from __future__ import annotations

import os
import socket
import struct

import pytest
import trio
import trio.testing

from dom0.xenstored import XenStore
from dom0.xenstored.unix_server import serve_connection
from domu.xenstore import (
    XenStoreError,
    XenStoreProtocolError,
    open_xenstore,
    open_xenstore_unix,
)
from ring.xs_wire import HEADER, MessageParser, XsMessage, XsType, encode_message

from .conftest import Server


async def _raw(path: str) -> trio.SocketStream:
    return await trio.open_unix_socket(path)


async def _roundtrip(stream: trio.abc.Stream, parser: MessageParser, raw: bytes) -> XsMessage:
    await stream.send_all(raw)
    while True:
        data = await stream.receive_some(65536)
        assert data, "server closed"
        got = parser.feed(data)
        if got:
            assert isinstance(got[0], XsMessage)
            return got[0]


async def test_client_basics(server: Server) -> None:
    async with open_xenstore_unix(server.path) as xs:
        await xs.write("/vm/1/name", "guest")
        assert await xs.read("/vm/1/name") == b"guest"
        await xs.write("rel", b"\x00bin")  # relative to /local/domain/0
        assert await xs.read("/local/domain/0/rel") == b"\x00bin"
        assert await xs.directory("/vm/1") == ["name"]
        assert await xs.directory("/vm/1/name") == []
        await xs.mkdir("/vm/2")
        await xs.set_perms("/vm/2", ["n0", "r5"])
        assert await xs.get_perms("/vm/2") == ["n0", "r5"]
        assert await xs.exists("/vm/2") and not await xs.exists("/vm/3")
        with pytest.raises(XenStoreError) as e:
            await xs.read("/nope")
        assert e.value.name == "ENOENT"
        await xs.rm("/vm")
        assert not await xs.exists("/vm/1/name")
        for i in range(300):
            await xs.write(f"/many/a-fairly-long-child-name-{i:05d}", "")
        assert len(await xs.directory("/many")) == 300  # via DIRECTORY_PART


async def test_pipelined_requests(server: Server) -> None:
    async with open_xenstore_unix(server.path) as xs:
        results: dict[int, bytes] = {}

        async def one(i: int) -> None:
            await xs.write(f"/p/{i}", str(i))
            results[i] = await xs.read(f"/p/{i}")

        async with trio.open_nursery() as n:
            for i in range(200):
                n.start_soon(one, i)
        assert results == {i: str(i).encode() for i in range(200)}


async def test_watch_iterator_and_unwatch(server: Server) -> None:
    async with open_xenstore_unix(server.path) as xs, open_xenstore_unix(server.path) as other:
        await xs.mkdir("/w")
        async with xs.watch("/w") as events:
            assert await events.__anext__() == "/w"
            await other.write("/w/a", "1")
            assert await events.__anext__() == "/w/a"
            await other.rm("/w")
            assert await events.__anext__() == "/w"
        assert server.xs.stats()["watches"] == 0


async def test_transaction_helper_retries(server: Server) -> None:
    async with open_xenstore_unix(server.path) as xs, open_xenstore_unix(server.path) as other:
        await xs.write("/counter", "0")
        attempts = 0

        async def bump(tx: object) -> int:
            nonlocal attempts
            attempts += 1
            value = int(await tx.read("/counter"))  # type: ignore[attr-defined]
            if attempts == 1:
                await other.write("/counter", "10")  # conflicting change
            await tx.write("/counter", str(value + 1))  # type: ignore[attr-defined]
            return value + 1

        assert await xs.transaction(bump) == 11
        assert attempts == 2
        assert await xs.read("/counter") == b"11"
        with pytest.raises(RuntimeError):
            async with xs.transaction_start() as tx:
                await tx.write("/counter", "99")
                raise RuntimeError("abort")
        assert await xs.read("/counter") == b"11"
        assert server.xs.stats()["transactions"] == 0


async def test_client_rejects_unknown_req_id() -> None:
    client_end, daemon_end = trio.testing.memory_stream_pair()
    async with open_xenstore(client_end) as xs:
        async def fake_daemon() -> None:
            await daemon_end.receive_some(65536)
            await daemon_end.send_all(encode_message(XsType.READ, 999, 0, b"x"))

        async with trio.open_nursery() as n:
            n.start_soon(fake_daemon)
            with pytest.raises(XenStoreProtocolError):
                await xs.read("/a")
        with pytest.raises(XenStoreProtocolError):
            await xs.read("/a")


async def test_client_rejects_malformed_error_and_eof() -> None:
    client_end, daemon_end = trio.testing.memory_stream_pair()
    async with open_xenstore(client_end) as xs:
        async def fake_daemon() -> None:
            data = await daemon_end.receive_some(65536)
            _, req_id, _, _ = HEADER.unpack_from(data)
            await daemon_end.send_all(encode_message(XsType.ERROR, req_id, 0, b"ENOENT"))
            await daemon_end.receive_some(65536)
            await daemon_end.aclose()

        async with trio.open_nursery() as n:
            n.start_soon(fake_daemon)
            with pytest.raises(XenStoreProtocolError):
                await xs.read("/a")
            with pytest.raises(XenStoreProtocolError):
                await xs.read("/b")


BAD_REQUESTS = [
    (XsType.READ, b"/a", "EINVAL"),  # missing NUL
    (XsType.READ, b"/a\0extra\0", "EINVAL"),  # two strings where one is expected
    (XsType.READ, b"", "EINVAL"),
    (XsType.WRITE, b"/no-nul-anywhere", "EINVAL"),
    (XsType.READ, b"//a\0", "EINVAL"),
    (XsType.READ, b"/a/\0", "EINVAL"),
    (XsType.WRITE, b"\0v", "EINVAL"),  # empty path: relative "" -> trailing /
    (XsType.READ, b"/a b\0", "EINVAL"),
    (XsType.READ, "/caf\u00e9".encode() + b"\0", "EINVAL"),
    (XsType.READ, b"/\xff\xfe\0", "EINVAL"),
    (XsType.READ, b"/" + b"a" * 3072 + b"\0", "EINVAL"),
    (XsType.READ, b"@releaseDomain\0", "EINVAL"),  # special names only for watches
    (XsType.WATCH, b"/a\0", "EINVAL"),
    (XsType.SET_PERMS, b"/a\0x5\0", "EINVAL"),
    (XsType.TRANSACTION_END, b"T", "EINVAL"),
    (XsType.INTRODUCE, b"abc\0", "EINVAL"),
    (XsType.GET_DOMAIN_PATH, b"-1\0", "EINVAL"),
    (20, b"", "ENOSYS"),  # removed XS_RESTRICT
    (XsType.WATCH_EVENT, b"/a\0t\0", "ENOSYS"),
    (XsType.ERROR, b"EINVAL\0", "ENOSYS"),
    (XsType.TYPE_COUNT, b"", "ENOSYS"),
    (XsType.INVALID, b"", "ENOSYS"),
    (0x7FFFFFFF, b"", "ENOSYS"),
]


async def test_hostile_requests_get_errors_and_server_survives(server: Server) -> None:
    stream = await _raw(server.path)
    parser = MessageParser()
    for i, (t, payload, err) in enumerate(BAD_REQUESTS):
        reply = await _roundtrip(stream, parser, encode_message(t, i, 0, payload))
        expected = (XsType.ERROR, i, err.encode() + b"\0")
        assert (reply.type, reply.req_id, reply.payload) == expected, t
    reply = await _roundtrip(stream, parser, encode_message(XsType.READ, 1, 0, b"/\0"))
    assert reply.type == XsType.READ
    await stream.aclose()


async def test_oversized_frame_kills_only_that_connection(server: Server) -> None:
    good = await _raw(server.path)
    bad = await _raw(server.path)
    await bad.send_all(HEADER.pack(XsType.WRITE, 1, 0, 5000) + b"x" * 5000)
    assert await bad.receive_some(100) == b""  # closed, no reply
    await bad.aclose()
    reply = await _roundtrip(good, MessageParser(), encode_message(XsType.READ, 7, 0, b"/\0"))
    assert (reply.type, reply.req_id) == (XsType.READ, 7)
    await good.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert server.xs.stats()["connections"] == 0


async def test_clients_vanishing_mid_stream(server: Server) -> None:
    for _ in range(20):
        s = socket.socket(socket.AF_UNIX)
        s.connect(server.path)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(b"".join(encode_message(XsType.DIRECTORY, i, 0, b"/\0") for i in range(200)))
        s.sendall(HEADER.pack(XsType.READ, 1, 0, 10)[:9])  # and a torn header
        s.close()  # reset with replies unread
    await trio.testing.wait_all_tasks_blocked()
    async with open_xenstore_unix(server.path) as xs:
        assert "local" in await xs.directory("/")
    await trio.testing.wait_all_tasks_blocked()
    assert server.xs.stats()["connections"] == 0


async def test_outstanding_quota_back_pressure() -> None:
    """A domain pipelining past 20 unanswered requests is simply not read."""
    xs = XenStore(clock=trio.current_time)
    conn = xs.introduce(5)
    tools = xs.connect_socket()
    guest, daemon = trio.testing.lockstep_stream_pair()
    async with trio.open_nursery() as n:
        n.start_soon(serve_connection, xs, daemon, conn)
        requests = b"".join(
            encode_message(XsType.GET_DOMAIN_PATH, i, 0, b"5\0") for i in range(100)
        )
        n.start_soon(guest.send_all, requests)
        await trio.testing.wait_all_tasks_blocked()
        assert conn.requests == 20
        assert conn.replies_queued <= 20
        # everyone else is still served
        xs.handle(tools, XsMessage(XsType.READ, 1, 0, b"/\0"))
        assert tools.take_messages(0)[0][0] == XsType.READ
        parser = MessageParser()
        got: list[XsMessage] = []
        while len(got) < 100:
            got += [m for m in parser.feed(await guest.receive_some(65536))
                    if isinstance(m, XsMessage)]
        assert [m.req_id for m in got] == list(range(100))
        await guest.aclose()
    assert conn.closed


async def test_watch_flood_is_bounded_and_events_expire(autojump_clock: trio.abc.Clock) -> None:
    xs = XenStore(clock=trio.current_time)
    xs.quotas.memory = 10_000
    conn = xs.introduce(5)
    tools = xs.connect_socket()

    def req(c: object, t: int, payload: bytes) -> None:
        xs.handle(c, XsMessage(t, 1, 0, payload))  # type: ignore[arg-type]

    req(tools, XsType.MKDIR, b"/local/domain/5\0")
    req(tools, XsType.SET_PERMS, b"/local/domain/5\0n5\0")
    req(conn, XsType.WATCH, b"flood\0tok\0")
    conn.take_output(trio.current_time())
    for i in range(2000):
        req(tools, XsType.WRITE, b"/local/domain/5/flood\0" + str(i).encode())
    assert conn.event_bytes <= 10_000
    assert conn.events_dropped > 0
    await trio.sleep(21)  # unread events older than 20 s are dropped
    assert conn.take_output(trio.current_time()) == b""
    tools.take_output(0)
    # an event whose payload would exceed 4096 bytes is dropped, not sent
    big_token = b"t" * 4000
    req(tools, XsType.WATCH, b"/local/domain/5/" + b"x" * 100 + b"\0" + big_token + b"\0")
    msgs = tools.take_messages(trio.current_time())
    assert [m[0] for m in msgs] == [XsType.WATCH]
    assert xs.events_too_big == 1


async def test_unix_socket_is_removed_on_exit(tmp_path: object) -> None:
    import tempfile

    from dom0.xenstored.unix_server import serve

    d = tempfile.mkdtemp(prefix="xs", dir="/tmp")
    path = os.path.join(d, "s")
    with trio.CancelScope() as cs:
        async with trio.open_nursery() as n:
            await n.start(serve, path)
            assert os.path.exists(path)
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.sendall(struct.pack("<IIII", XsType.READ, 1, 0, 2) + b"/\0")
            cs.cancel()
    s.close()
    assert not os.path.exists(path)
    os.rmdir(d)


async def test_internal_bug_fails_one_request_and_daemon_keeps_serving(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in one handler answers EIO to that request only; the daemon,
    that connection and every other connection keep being served."""
    handler, flags = server.xs._table[XsType.READ]

    def broken(conn, msg, tx):  # type: ignore[no-untyped-def]
        if msg.payload.startswith(b"/boom"):
            raise RuntimeError("simulated bug")
        return handler(conn, msg, tx)

    monkeypatch.setitem(server.xs._table, XsType.READ, (broken, flags))
    async with open_xenstore_unix(server.path) as a, open_xenstore_unix(server.path) as b:
        await a.write("/ok", "1")
        with pytest.raises(XenStoreError) as e:
            await a.read("/boom")
        assert e.value.name == "EIO"
        assert await a.read("/ok") == b"1"
        assert await b.read("/ok") == b"1"
    assert server.xs.stats()["internal_errors"] == 1
    assert "simulated bug" in caplog.text


async def test_open_transaction_bookkeeping_follows_every_way_a_transaction_ends(
    server: Server,
) -> None:
    """The core counts open transactions by start generation (so a commit is
    not O(connections)); the count must match the connections' own tables
    after commit, abort, RESET_WATCHES and disconnect."""
    xs = server.xs

    def consistent() -> None:
        live = sorted(tx.generation for c in xs.connections.values()
                      for tx in c.transactions.values())
        counted = sorted(xs._open_tx_generations.elements())
        assert counted == live

    class Abort(Exception):
        pass

    async with open_xenstore_unix(server.path) as a, open_xenstore_unix(server.path) as b:
        async with a.transaction_start() as t1:
            with pytest.raises(Abort):
                async with b.transaction_start():
                    consistent()
                    assert len(list(xs._open_tx_generations.elements())) == 2
                    raise Abort  # the client ends it with "F"
            consistent()
            await t1.write("/x", "1")
        consistent()  # committed
        left_open = b.transaction_start()
        await left_open.__aenter__()  # never ended: the disconnect must drop it
        consistent()
        assert xs._open_tx_generations
    await trio.testing.wait_all_tasks_blocked()  # the server sees both sockets close
    consistent()
    assert not xs._open_tx_generations


async def test_client_close_fails_pending_requests_and_watches(server: Server) -> None:
    """close() wakes every waiter (a request in flight, a watch iterator) with a
    protocol error instead of leaving them waiting forever."""
    async with open_xenstore_unix(server.path) as xs:
        errors: list[BaseException] = []

        async def watching() -> None:
            try:
                async with xs.watch("/w") as events:
                    async for _ in events:
                        pass
            except XenStoreProtocolError as exc:
                errors.append(exc)

        async with trio.open_nursery() as n:
            n.start_soon(watching)
            await trio.testing.wait_all_tasks_blocked()
            xs.close("domain going away")
        assert len(errors) == 1 and "domain going away" in str(errors[0])
        with pytest.raises(XenStoreProtocolError):
            await xs.read("/w")


async def test_introduce_and_release_through_the_client(server: Server) -> None:
    async with open_xenstore_unix(server.path) as xs:
        await xs.introduce(7, 1234, 5)
        assert await xs.get_domain_path(7) == "/local/domain/7"
        await xs.release(7)
        with pytest.raises(XenStoreError):
            await xs.release(7)


async def test_inline_replies_and_writer_events_interleave_without_loss(
    server: Server,
) -> None:
    """Replies leave from the reader task when the writer is idle; watch events
    caused by other connections leave from the writer. With one connection
    pipelining requests while another's writes fire its watch, every reply
    arrives in order, every event arrives, and the two never send at once."""
    n = 300
    async with open_xenstore_unix(server.path) as watcher, \
            open_xenstore_unix(server.path) as writer, watcher.watch("/inter") as events:
        assert await events.__anext__() == "/inter"  # fires once on registration
        got_events: list[str] = []
        replies: list[bytes] = []

        async def write_all() -> None:
            for i in range(n):
                await writer.write(f"/inter/k{i}", str(i))

        async def read_back() -> None:
            for i in range(n):  # interleaved with the events it receives
                await watcher.write(f"/mine/{i}", str(i))
                replies.append(await watcher.read(f"/mine/{i}"))

        async def collect() -> None:
            async for path in events:
                got_events.append(path)
                if len(got_events) == n + 1:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_all)
            nursery.start_soon(read_back)
            nursery.start_soon(collect)
    assert replies == [str(i).encode() for i in range(n)]
    # the first write also creates /inter itself, which fires the watch too
    assert got_events == ["/inter"] + [f"/inter/k{i}" for i in range(n)]


async def test_replies_larger_than_the_socket_buffer_arrive_whole_and_in_order(
    server: Server,
) -> None:
    """A reply goes out with one non-blocking write when it fits the socket
    buffer; when it does not (a client that pipelines big reads and does not
    read back yet), the rest follows through the stream: nothing is lost,
    duplicated or reordered."""
    value = bytes(range(250)) * 16  # 4000 bytes: near the 4096-byte payload limit
    async with open_xenstore_unix(server.path) as xs:
        await xs.write("/big", value)
    stream = await _raw(server.path)
    n = 200  # ~800 KiB of replies, far beyond a Unix socket's buffer
    await stream.send_all(b"".join(
        encode_message(XsType.READ, i, 0, b"/big\0") for i in range(n)))
    await trio.testing.wait_all_tasks_blocked()  # the daemon fills the buffer first
    parser = MessageParser()
    got: list[XsMessage] = []
    while len(got) < n:
        data = await stream.receive_some(65536)
        assert data, "server closed"
        for item in parser.feed(data):
            assert isinstance(item, XsMessage)
            got.append(item)
    assert [m.req_id for m in got] == list(range(n))
    assert all(m.type == XsType.READ and m.payload == value for m in got)
    await stream.aclose()


async def test_unix_stream_try_send_takes_what_fits_then_refuses() -> None:
    """The non-blocking send the Unix transport adds: bytes taken while the
    buffer has room, BlockingIOError once it is full, nothing written twice."""
    from dom0.xenstored.unix_server import _UnixStream

    a, b = trio.socket.socketpair()
    ours = _UnixStream(trio.SocketStream(a))
    chunk = b"x" * 65536
    total = 0
    with pytest.raises(BlockingIOError):
        for _ in range(1000):
            total += ours.try_send(chunk)
    assert 0 < total < 1000 * len(chunk)
    peer = trio.SocketStream(b)
    received = 0
    while received < total:
        received += len(await peer.receive_some(1 << 20))
    assert received == total
    await ours.aclose()
    await peer.aclose()
