"""``xensim console -n NUM`` and ``xensim channel-list`` against one ``xensim host``."""

from __future__ import annotations

import subprocess

from dom0.toolstack.formats import (
    CHANNEL_LIST_HEADER,
    format_channel_list,
    format_channel_row,
)
from tests.cli.conftest import CLI, REPO, Daemon
from tests.cli.test_e2e import _read_until, wait_for_console

HVC1 = ('name = "{name}"\nkernel = "tests.cli.guests:hvc1_echo"\nmemory = 8\n'
        'channel = ["name=org.example.0,connection=pty"]\n')


def _create(daemon: Daemon, name: str, text: str) -> None:
    r = daemon.xensim("create", "-q", str(daemon.cfg(name, text.format(name=name))))
    assert r.returncode == 0, r.stderr


# -- formats (pure) -----------------------------------------------------------------------------


def test_channel_list_format_is_xls() -> None:
    # xl: printf("%-3s %-2s %-5s %-6s %8s %-10s %-30s\n", ..., "") -- 31 trailing blanks
    assert CHANNEL_LIST_HEADER == "Idx BE state evt-ch ring-ref connection " + " " * 30
    # an unconnected socket channel, as in a real `xl channel-list` (xen-devel)
    row = {"idx": 0, "backend_id": 0, "state": 1, "evtch": -1, "rref": -1,
           "connection": "socket", "path": None, "tty": None}
    assert format_channel_row(row) == "0   0  1     -1     -1       socket     "
    pty = {**row, "state": 4, "evtch": 3, "rref": 8, "connection": "pty", "tty": ""}
    assert format_channel_row(pty) == "0   0  4     3      8        pty        " + " " * 31
    sock = {**row, "idx": 1, "path": "/run/a.sock"}
    want = f"1   0  1     -1     -1       socket     {'/run/a.sock':<30} "
    assert format_channel_row(sock) == want
    assert format_channel_list([]) == CHANNEL_LIST_HEADER


# -- console -n ---------------------------------------------------------------------------------


def test_console_n_attaches_to_a_channel(daemon: Daemon) -> None:
    _create(daemon, "cn1", HVC1)
    p = subprocess.Popen([*CLI, "console", "-t", "pv", "-n", "1", "cn1"], cwd=REPO,
                         env=daemon.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    assert p.stdin is not None and p.stdout is not None and p.stderr is not None
    try:
        _read_until(p.stdout, b"cn1: hvc1 ready")  # replayed history of console 1
        p.stdin.write(b"over the channel\n")
        p.stdin.flush()
        _read_until(p.stdout, b"hvc1: over the channel")
        p.stdin.write(b"\x1d")  # Ctrl-] detaches
        p.stdin.flush()
        assert p.wait(timeout=15) == 0
        assert p.stderr.read() == b""
    finally:
        p.kill()
        p.wait()
    # the primary console never saw any of it
    assert "over the channel" not in daemon.xensim("console", "cn1", input=b"\x1d").stdout
    # the console goes away under a second session: a message, and the session
    # ends normally (status 0), as the primary console's does when its domain goes
    r = daemon.xensim("console", "-n", "1", "cn1", input=b"quit\n")
    assert r.returncode == 0
    assert "hvc1: over the channel" in r.stdout and "bye" in r.stdout
    assert r.stderr == "xensim: cn1: console 1 disconnected\n"


def test_console_n_errors(daemon: Daemon) -> None:
    _create(daemon, "cn2", HVC1)
    r = daemon.xensim("console", "-n", "2", "cn2", input=b"")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "xensim: cn2 has no console 2\n")
    r = daemon.xensim("console", "-n", "1", "Domain-0", input=b"")
    assert (r.returncode, r.stderr) == (1, "xensim: Domain-0 has no console 1\n")
    r = daemon.xensim("console", "-n", "1", "nosuch", input=b"")
    assert (r.returncode, r.stderr) == (1, "xensim: domain 'nosuch' does not exist\n")
    r = daemon.xensim("console", "-t", "serial", "cn2", input=b"")
    assert r.returncode == 1 and "no emulated serial console" in r.stderr
    for bad in (["-t", "vga"], ["-n", "x"], ["-n", "-1"]):
        r = daemon.xensim("console", *bad, "cn2", input=b"")
        assert r.returncode == 2, (bad, r.stderr)
    assert daemon.xensim("destroy", "cn2").returncode == 0


# -- channel-list -------------------------------------------------------------------------------


def test_channel_list_pty_and_socket(daemon: Daemon) -> None:
    sock = daemon.dir / "cl.sock"
    text = ('name = "{name}"\nkernel = "tests.cli.guests:two_channels"\nmemory = 8\n'
            'channel = ["name=org.example.0,connection=pty", '
            f'"name=org.example.1,connection=socket,path={sock}"]\n')
    _create(daemon, "cl1", text)
    wait_for_console(daemon, "cl1", b"cl1: channels up")  # its frontends are connected
    r = daemon.xensim("channel-list", "cl1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.rstrip("\n").split("\n")
    assert lines[0] == CHANNEL_LIST_HEADER and len(lines) == 3
    idx, be, state, evtch, rref, conn = lines[1].split()
    assert (idx, be, state, conn) == ("0", "0", "4", "pty")
    pty = {"idx": 0, "backend_id": 0, "state": 4, "evtch": int(evtch), "rref": int(rref),
           "connection": "pty", "tty": ""}
    assert int(evtch) > 0 and int(rref) > 0 and lines[1] == format_channel_row(pty)
    idx, be, state, evtch, rref, conn, path = lines[2].split()
    assert (idx, be, state, conn, path) == ("1", "0", "4", "socket", str(sock))
    socket_row = {**pty, "idx": 1, "evtch": int(evtch), "rref": int(rref),
                  "connection": "socket", "path": str(sock)}
    assert lines[2] == format_channel_row(socket_row)
    # no channels: just the header; Domain-0 has none; an unknown domain is an error
    assert daemon.xensim("channel-list", "Domain-0").stdout == CHANNEL_LIST_HEADER + "\n"
    r = daemon.xensim("channel-list", "nosuch")
    assert (r.returncode, r.stderr) == (1, "xensim: domain 'nosuch' does not exist\n")
    assert daemon.xensim("channel-list").returncode == 2
    assert daemon.xensim("destroy", "cl1").returncode == 0
    assert not sock.exists()
