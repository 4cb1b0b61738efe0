"""The per-domain ring transport, with an in-memory page and event channel."""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing

from dom0.xenstored import XenStore
from dom0.xenstored.connection import Connection
from dom0.xenstored.ring_server import serve_ring
from domu.xenstore import XenStoreError, XenStoreProtocolError, open_xenstore_ring
from ring.xs_wire import HEADER, XsMessage, XsType


class FakePort:
    """One end of an event channel: notify() wakes the other end's wait()."""

    def __init__(self) -> None:
        self.peer: FakePort | None = None
        self._pending = False
        self._event = trio.Event()
        self.sent = 0

    def notify(self) -> None:
        self.sent += 1
        assert self.peer is not None
        self.peer._pending = True
        self.peer._event.set()

    async def wait(self) -> None:
        while not self._pending:
            await self._event.wait()
            self._event = trio.Event()
        self._pending = False


def port_pair() -> tuple[FakePort, FakePort]:
    a, b = FakePort(), FakePort()
    a.peer, b.peer = b, a
    return a, b


def _setup(xs: XenStore, domid: int) -> tuple[memoryview, FakePort, FakePort, Connection]:
    page = memoryview(bytearray(4096))
    guest_port, daemon_port = port_pair()
    conn = xs.introduce(domid, mfn=1000 + domid, port=1)
    tools = xs.connect_socket()
    home = f"/local/domain/{domid}".encode()
    xs.handle(tools, XsMessage(XsType.MKDIR, 1, 0, home + b"\0"))
    xs.handle(tools, XsMessage(XsType.SET_PERMS, 2, 0, home + b"\0n" + str(domid).encode() + b"\0"))
    return page, guest_port, daemon_port, conn


async def test_guest_client_over_ring() -> None:
    xs = XenStore(clock=trio.current_time)
    page, gport, dport, conn = _setup(xs, 5)
    async with trio.open_nursery() as n:
        await n.start(serve_ring, xs, conn, page, dport)
        async with open_xenstore_ring(page, gport) as client:
            big = bytes(range(256)) * 7 + b"end"  # 1795 bytes: laps the 1024-byte ring
            await client.write("data/big", big)
            assert await client.read("data/big") == big
            assert await client.read("/local/domain/5/data/big") == big
            with pytest.raises(XenStoreError) as e:
                await client.write("data/huge", b"x" * 2100)
            assert e.value.name == "ENOSPC"  # node-size quota
            with pytest.raises(XenStoreError) as e:
                await client.read("/local/domain/0/nothere")
            assert e.value.name == "EACCES"
            async with client.watch("data") as events:
                assert await events.__anext__() == "data"
                await client.write("data/x", "1")
                assert await events.__anext__() == "data/x"
            # a burst of pipelined requests past the outstanding quota
            async with trio.open_nursery() as burst:
                for i in range(60):
                    burst.start_soon(client.write, f"data/k{i}", str(i))
            assert sorted(await client.directory("data")) == sorted(
                ["big", "x"] + [f"k{i}" for i in range(60)]
            )
        n.cancel_scope.cancel()
    assert struct.unpack_from("<I", page, 2072)[0] == 0  # no error


async def _raw_guest_send(page: memoryview, port: FakePort, data: bytes) -> None:
    prod = struct.unpack_from("<I", page, 2052)[0]
    for i, b in enumerate(data):
        page[(prod + i) & 1023] = b
    struct.pack_into("<I", page, 2052, (prod + len(data)) & 0xFFFFFFFF)
    port.notify()


@pytest.mark.parametrize("attack,code", [("index", 2), ("length", 3)])
async def test_broken_ring_hurts_only_its_domain(attack: str, code: int) -> None:
    xs = XenStore(clock=trio.current_time)
    bad_page, bad_g, bad_d, bad_conn = _setup(xs, 5)
    good_page, good_g, good_d, good_conn = _setup(xs, 6)
    async with trio.open_nursery() as n:
        n.start_soon(serve_ring, xs, bad_conn, bad_page, bad_d)
        await n.start(serve_ring, xs, good_conn, good_page, good_d)
        if attack == "index":
            struct.pack_into("<I", bad_page, 2052, 5000)  # req_prod - req_cons > 1024
            bad_g.notify()
        else:
            await _raw_guest_send(bad_page, bad_g, HEADER.pack(XsType.WRITE, 1, 0, 4097))
        await trio.testing.wait_all_tasks_blocked()
        assert struct.unpack_from("<I", bad_page, 2072)[0] == code
        assert bad_conn.broken == code and bad_conn.closed
        async with open_xenstore_ring(good_page, good_g) as client:
            await client.write("ok", "yes")
            assert await client.read("ok") == b"yes"
        async with open_xenstore_ring(bad_page, bad_g) as client:
            with pytest.raises(XenStoreProtocolError):
                await client.read("ok")
        n.cancel_scope.cancel()


async def test_introduce_attaches_a_ring() -> None:
    xs = XenStore(clock=trio.current_time)
    page = memoryview(bytearray(4096))
    gport, dport = port_pair()
    async with trio.open_nursery() as n:
        def attach(conn: Connection, mfn: int, port: int) -> None:
            assert (conn.domid, mfn, port) == (9, 1234, 7)
            n.start_soon(serve_ring, xs, conn, page, dport)

        xs.attach_ring = attach
        tools = xs.connect_socket()
        xs.handle(tools, XsMessage(XsType.INTRODUCE, 1, 0, b"9\x001234\x007\x00"))
        assert tools.take_messages(0)[0] == (XsType.INTRODUCE, 1, 0, b"OK\0")
        async with open_xenstore_ring(page, gport) as client:
            assert await client.get_domain_path(9) == "/local/domain/9"
            with pytest.raises(XenStoreError) as e:
                await client.read("/local/domain/9")  # missing, parent not readable
            assert e.value.name == "EACCES"
        xs.handle(tools, XsMessage(XsType.RELEASE, 2, 0, b"9\0"))
        await trio.testing.wait_all_tasks_blocked()
        n.cancel_scope.cancel()
    assert 9 not in xs.domains
