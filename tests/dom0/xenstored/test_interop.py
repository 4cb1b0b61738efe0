"""Real clients against our xenstored: Debian's xenstore-utils and pyxs.

The xenstore-* tools (libxenstore) connect to ``$XENSTORED_PATH`` when it is
set (both the socket and the "domain device" lookups honour it), so no
``/dev/xen/xenbus`` or ``XENSTORED_RUNDIR`` is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import trio

from .conftest import Server

pytestmark = pytest.mark.interop

TOOLS = ["xenstore-read", "xenstore-write", "xenstore-ls", "xenstore-list", "xenstore-rm",
         "xenstore-chmod", "xenstore-exists", "xenstore-watch"]


def _need_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"xenstore-utils not installed (missing {', '.join(missing)}); "
                    "apt-get install xenstore-utils")


async def _run(
    server: Server, *argv: str, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, XENSTORED_PATH=server.path)
    return await trio.run_process(list(argv), env=env, capture_stdout=True,
                                  capture_stderr=True, check=check)


async def test_xenstore_utils(server: Server) -> None:
    _need_tools()
    await _run(server, "xenstore-write", "/vm/u1/name", "guest one", "/vm/u1/uuid", "u1")
    r = await _run(server, "xenstore-read", "/vm/u1/name")
    assert r.stdout == b"guest one\n"
    r = await _run(server, "xenstore-list", "/vm/u1")
    assert r.stdout.split() == [b"name", b"uuid"]
    r = await _run(server, "xenstore-exists", "/vm/u1/nope", check=False)
    assert r.returncode != 0
    await _run(server, "xenstore-chmod", "/vm/u1", "n0", "r5")
    r = await _run(server, "xenstore-ls", "-p", "/vm")
    assert b"u1" in r.stdout and b"(n0,r5)" in r.stdout
    r = await _run(server, "xenstore-ls", "/vm")
    assert b'name = "guest one"' in r.stdout
    await _run(server, "xenstore-rm", "/vm/u1")
    r = await _run(server, "xenstore-read", "/vm/u1/name", check=False)
    assert r.returncode != 0
    # relative paths from a socket client resolve under /local/domain/0
    await _run(server, "xenstore-write", "name", "Domain-0")
    assert server.xs.store.nodes["/local/domain/0/name"].value == b"Domain-0"


async def test_xenstore_watch_sees_changes(server: Server) -> None:
    _need_tools()
    env = dict(os.environ, XENSTORED_PATH=server.path)
    async with trio.open_nursery() as n:
        proc: trio.Process = await n.start(
            lambda task_status: trio.run_process(
                ["xenstore-watch", "-n", "3", "/watched"], env=env, capture_stdout=True,
                check=True, task_status=task_status,
            )
        )
        # wait until the watch is registered, then change the node twice
        while server.xs.stats()["watches"] == 0:
            await trio.sleep(0.01)
        await _run(server, "xenstore-write", "/watched/a", "1")
        await _run(server, "xenstore-write", "/watched/b", "2")
    assert proc.returncode == 0


def _pyxs_session(path: str) -> dict[str, object]:
    from pyxs import Client, PyXSError

    out: dict[str, object] = {}
    with Client(unix_socket_path=path) as c:
        c.write(b"/py/a", b"1")
        c.mkdir(b"/py/b")
        out["read"] = c.read(b"/py/a")
        out["list"] = sorted(c.list(b"/py"))
        c.set_perms(b"/py/a", [b"n0", b"r3"])
        out["perms"] = c.get_perms(b"/py/a")
        out["exists"] = c.exists(b"/py/zzz")
        out["domain_path"] = c.get_domain_path(7)
        try:
            c.read(b"/py/zzz")
        except PyXSError as e:
            out["error"] = e.args[0]
        c.transaction()
        c.write(b"/py/t", b"in-tx")
        c.commit()
        out["tx"] = c.read(b"/py/t")
        m = c.monitor()
        m.watch(b"/py", b"tok")
        ev = next(m.wait())
        out["event"] = (ev.path, ev.token)
        c.write(b"/py/c", b"3")
        ev = next(m.wait())
        out["event2"] = (ev.path, ev.token)
        m.unwatch(b"/py", b"tok")
        c.delete(b"/py")
        out["gone"] = c.exists(b"/py")
    return out


async def test_pyxs(server: Server) -> None:
    pytest.importorskip("pyxs", reason="pyxs not installed (pip install pyxs)")
    import errno

    out = await trio.to_thread.run_sync(_pyxs_session, server.path)
    assert out["read"] == b"1"
    assert out["list"] == [b"a", b"b"]
    assert out["perms"] == [b"n0", b"r3"]
    assert out["exists"] is False
    assert out["domain_path"] == b"/local/domain/7"
    assert out["error"] == errno.ENOENT
    assert out["tx"] == b"in-tx"
    assert out["event"] == (b"/py", b"tok")
    assert out["event2"] == (b"/py/c", b"tok")
    assert out["gone"] is False
