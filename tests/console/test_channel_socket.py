"""``connection=socket`` channels: dom0 listens on a real Unix socket and bridges
one client at a time to the guest's secondary console.

Real sockets, so the real clock (every wait is bounded with ``trio.fail_after``);
``wait_all_tasks_blocked`` is used only where every byte has already been handed to
the kernel, which delivers local Unix-socket data before trio's idle check. Each
test ends with the ``xen_host`` leak check, which counts open fds and channel
socket files too.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from dom0.backends.consoleback import ConsoleBack
from dom0.console.chardev import listening_sockets
from dom0.host import DomainHandle, Host, SecondaryConsole
from dom0.testing import GuestFactory
from dom0.toolstack.builder import channel_device_request
from dom0.toolstack.config import ChannelSpec, ConfigError, GuestConfig
from domu.guest import Guest

TIMEOUT = 10.0


@pytest.fixture
def sockdir() -> Iterator[str]:
    """A short directory for sockets (sun_path holds 107 bytes; pytest's tmp_path may not)."""
    d = tempfile.mkdtemp(prefix="xsch-", dir="/tmp")
    yield d
    shutil.rmtree(d)


def channel(path: str, name: str = "org.example.agent.0") -> ChannelSpec:
    return ChannelSpec(name=name, connection="socket", path=path)


def console(dom: DomainHandle, n: int = 1) -> SecondaryConsole:
    con = dom.consoles[n]
    assert isinstance(con, SecondaryConsole)
    return con


def backend(dom: DomainHandle, n: int = 1) -> ConsoleBack:
    back = console(dom, n).backend()
    assert back is not None
    return back


async def read_until(stream: trio.SocketStream, needle: bytes) -> bytes:
    data = b""
    while needle not in data:
        chunk = await stream.receive_some(4096)
        assert chunk, f"EOF before {needle!r}; got {data!r}"
        data += chunk
    return data


async def test_guest_and_socket_client_exchange_lines(guest_factory: GuestFactory,
                                                     xen_host: Host, sockdir: str) -> None:
    path = os.path.join(sockdir, "agent.sock")
    go = trio.Event()

    async def program(guest: Guest) -> None:
        agent = await guest.consoles.wait(1)
        await go.wait()
        await agent.print("hello from the guest agent")
        reply = await agent.readline()
        await guest.console.print(f"agent got: {reply}")
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        dom = await guest_factory(program, channels=[channel(path)])
        con = console(dom)
        assert (con.name, con.connection, con.path) == ("org.example.agent.0", "socket", path)
        st = os.lstat(path)  # listening from InitWait on, before the guest booted
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert listening_sockets() == [path]
        xs, d = xen_host.kernel.xs, dom.domid
        assert await xs.read(f"/local/domain/0/backend/console/{d}/1/path") == path.encode()
        assert await xs.read(f"/local/domain/{d}/device/console/1/output") == (
            b"chardev:libxl-channel1")
        assert await xs.read(f"/local/domain/{d}/device/console/1/tty") == b""

        async with await trio.open_unix_socket(path) as client:
            await con.wait_client()
            go.set()
            assert await read_until(client, b"\n") == b"hello from the guest agent\n"
            await client.send_all(b"pong\n")
            await dom.console.wait_for("agent got: pong\n")
        # dom0's view is the same console: the log has the line, the input counted
        assert con.log() == b"hello from the guest agent\n"
        stats = con.stats()
        assert stats is not None and stats.bytes_in == 5

        await dom.detach_console(1)  # unplug: the socket goes with the device
        assert not os.path.exists(path)
        assert listening_sockets() == []


async def test_destroy_with_a_client_connected_leaves_nothing(guest_factory: GuestFactory,
                                                             xen_host: Host,
                                                             sockdir: str) -> None:
    path = os.path.join(sockdir, "agent.sock")
    with trio.fail_after(TIMEOUT):
        dom = await guest_factory(channels=[channel(path)])
        async with await trio.open_unix_socket(path) as client:
            await console(dom).wait_client()
            await dom.destroy()
            assert await client.receive_some(100) == b""  # dom0 closed its end
            assert not os.path.exists(path)
            assert listening_sockets() == []
    # the leak check (fds, sockets, nodes, tasks) runs after the test


async def test_output_before_the_client_is_not_replayed(guest_factory: GuestFactory,
                                                        xen_host: Host, sockdir: str) -> None:
    path = os.path.join(sockdir, "agent.sock")
    late = trio.Event()

    async def program(guest: Guest) -> None:
        agent = await guest.consoles.wait(1)
        await agent.print("early")
        await late.wait()
        await agent.print("late")
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        dom = await guest_factory(program, channels=[channel(path)])
        await console(dom).wait_for("early\n")
        async with await trio.open_unix_socket(path) as client:
            await console(dom).wait_client()
            late.set()
            assert await read_until(client, b"late\n") == b"late\n"
        assert console(dom).log() == b"early\nlate\n"


async def test_one_client_at_a_time(guest_factory: GuestFactory, xen_host: Host,
                                    sockdir: str) -> None:
    path = os.path.join(sockdir, "agent.sock")
    lines: list[str] = []
    got_line = trio.lowlevel.ParkingLot()

    async def program(guest: Guest) -> None:
        agent = await guest.consoles.wait(1)
        while True:
            lines.append(await agent.readline())
            got_line.unpark_all()
            await agent.print(f"ack {lines[-1]}")

    async def wait_lines(n: int) -> None:
        while len(lines) < n:
            await got_line.park()

    with trio.fail_after(TIMEOUT):
        dom = await guest_factory(program, channels=[channel(path)])
        back = backend(dom)
        first = await trio.open_unix_socket(path)
        await console(dom).wait_client()
        # a second client connects (the kernel queues it) but is not served
        async with await trio.open_unix_socket(path) as second:
            await second.send_all(b"from the second\n")
            await first.send_all(b"from the first\n")
            await wait_lines(1)
            assert await read_until(first, b"\n") == b"ack from the first\n"
            await trio.testing.wait_all_tasks_blocked()
            assert lines == ["from the first"] and back.clients_accepted == 1
            await first.aclose()  # the first leaves: the second is accepted
            await wait_lines(2)
            assert lines == ["from the first", "from the second"]
            assert await read_until(second, b"\n") == b"ack from the second\n"
            assert back.clients_accepted == 2


async def test_a_client_that_vanishes_does_not_break_the_channel(
        guest_factory: GuestFactory, xen_host: Host, sockdir: str) -> None:
    path = os.path.join(sockdir, "agent.sock")
    tick, ticks = trio.open_memory_channel[int](2)

    async def program(guest: Guest) -> None:
        agent = await guest.consoles.wait(1)
        async for n in ticks:
            await agent.print(f"tick {n}")

    with trio.fail_after(TIMEOUT):
        dom = await guest_factory(program, channels=[channel(path)])
        con = console(dom)
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(path)
        await con.wait_client()
        raw.close()  # gone without a word, while output is on its way
        await tick.send(1)
        await con.wait_for("tick 1\n")
        while con.client_connected:
            await backend(dom).wait_changed()
        async with await trio.open_unix_socket(path) as client:
            await con.wait_client()
            await tick.send(2)
            assert await read_until(client, b"tick 2\n") == b"tick 2\n"
        assert con.connected and backend(dom).clients_accepted == 2


async def test_input_waits_in_the_clients_socket_not_in_dom0(guest_factory: GuestFactory,
                                                             xen_host: Host,
                                                             sockdir: str) -> None:
    path = os.path.join(sockdir, "agent.sock")
    read = trio.Event()
    received: list[bytes] = []
    payload = bytes(range(256)) * 256  # 64 KiB: the guest's in ring holds 1 KiB

    async def program(guest: Guest) -> None:
        agent = await guest.consoles.wait(1)
        await read.wait()
        total = 0
        while total < len(payload):
            chunk = await agent.read(4096)
            received.append(chunk)
            total += len(chunk)
        await guest.console.print("all read")

    with trio.fail_after(TIMEOUT):
        dom = await guest_factory(program, channels=[channel(path)])
        async with await trio.open_unix_socket(path) as client, trio.open_nursery() as n:
            await console(dom).wait_client()
            n.start_soon(client.send_all, payload)  # may wait in the kernel: that is the point
            await trio.testing.wait_all_tasks_blocked()
            stats = console(dom).stats()
            assert stats is not None and stats.bytes_in == 1024  # the ring, full; no more
            read.set()
            await dom.console.wait_for("all read")
        assert b"".join(received) == payload


async def test_a_flood_with_no_client_costs_the_log_bound(guest_factory: GuestFactory,
                                                          xen_host: Host,
                                                          sockdir: str) -> None:
    path = os.path.join(sockdir, "agent.sock")
    req = channel_device_request(1, channel(path))
    req = dataclasses.replace(req, frontend={**req.frontend, "limit": "4096"})

    async def program(guest: Guest) -> None:
        agent = await guest.consoles.wait(1)
        await agent.write(b"x" * 65536)
        await agent.print("END")
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        dom = await guest_factory(program, devices=[req])
        con = console(dom)
        await con.wait_for("END\n")
        stats = con.stats()
        assert stats is not None and len(con.log()) == 4096
        assert stats.bytes_out == 65536 + 4 and stats.log_discarded == 65536 + 4 - 4096
        assert not con.client_connected


@pytest.mark.parametrize("case", ["regular file", "live socket", "missing directory"])
async def test_a_path_that_cannot_be_used_fails_the_create(xen_host: Host, sockdir: str,
                                                           case: str) -> None:
    path = os.path.join(sockdir, "agent.sock")
    expected = {"regular file": "exists and is not a socket",
                "live socket": "something already listens on",
                "missing directory": "No such file or directory"}[case]
    other = None
    if case == "regular file":
        with open(path, "w") as f:
            f.write("precious")
    elif case == "live socket":
        other = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await other.bind(path)
        other.listen(1)
    else:
        path = os.path.join(sockdir, "missing", "agent.sock")
    try:
        with trio.fail_after(TIMEOUT), pytest.raises(ConfigError, match=expected):
            await xen_host.create(GuestConfig(name="bad", kernel="examples.hello:main",
                                              memory=4, channels=[channel(path)]))
    finally:
        if other is not None:
            other.close()
    assert [row.name for row in xen_host.list()] == ["Domain-0"]
    assert listening_sockets() == []
    if case == "regular file":
        with open(path) as f:
            assert f.read() == "precious"  # never touched


async def test_a_stale_socket_is_replaced(guest_factory: GuestFactory, xen_host: Host,
                                          sockdir: str) -> None:
    path = os.path.join(sockdir, "agent.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # a server that died without removing its socket
    dead.close()
    with trio.fail_after(TIMEOUT):
        dom = await guest_factory(channels=[channel(path)])
        async with await trio.open_unix_socket(path) as _client:
            await console(dom).wait_client()
        await dom.destroy()
    assert not os.path.exists(path)
