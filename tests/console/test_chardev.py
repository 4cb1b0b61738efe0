"""The socket chardev on its own: path checks, one client at a time, a failing
handler, and removal of exactly the socket it created. Real sockets, real clock."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
import trio

from dom0.console.chardev import (
    UNIX_PATH_MAX,
    check_socket_path,
    listening_sockets,
    open_unix_chardev,
    serve_one_at_a_time,
)

TIMEOUT = 10.0


@pytest.fixture
def sockdir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="xscd-", dir="/tmp")
    yield d
    shutil.rmtree(d)


@pytest.mark.parametrize(("path", "code"), [
    ("agent.sock", errno.EINVAL),
    ("", errno.EINVAL),
    ("/run/a\0b", errno.EINVAL),
    ("/" + "a" * UNIX_PATH_MAX, errno.ENAMETOOLONG),
])
def test_bad_paths(path: str, code: int) -> None:
    with pytest.raises(OSError) as info:
        check_socket_path(path)
    assert info.value.errno == code


def test_the_longest_path_is_fine() -> None:
    check_socket_path("/" + "a" * (UNIX_PATH_MAX - 1))


async def test_a_failing_handler_ends_only_its_client(sockdir: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = os.path.join(sockdir, "s")
    served: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        data = await stream.receive_some(100)
        served.append(data)
        if data == b"boom":
            raise RuntimeError("handler bug")
        await stream.send_all(b"ok " + data)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery, open_unix_chardev(path) as listener:
            assert listening_sockets() == [path]
            nursery.start_soon(serve_one_at_a_time, listener, handler)
            with caplog.at_level(logging.ERROR, logger="xensim.console.chardev"):
                async with await trio.open_unix_socket(path) as bad:
                    await bad.send_all(b"boom")
                    assert await bad.receive_some(100) == b""  # closed after the bug
            assert "the client handler failed" in caplog.text
            async with await trio.open_unix_socket(path) as good:
                await good.send_all(b"hi")
                assert await good.receive_some(100) == b"ok hi"
            nursery.cancel_scope.cancel()
    assert served == [b"boom", b"hi"]
    assert not os.path.exists(path) and listening_sockets() == []


async def test_a_file_put_in_place_of_the_socket_is_left_alone(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")
    with trio.fail_after(TIMEOUT):
        async with open_unix_chardev(path):
            os.unlink(path)
            with open(path, "w") as f:
                f.write("not ours")
    with open(path) as f:
        assert f.read() == "not ours"
    assert listening_sockets() == []
