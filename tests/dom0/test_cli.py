"""The ``xensim`` console script, run as a real subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ring.xs_wire import HEADER, XsType, encode_message

XENSIM = [sys.executable, "-c", "import sys; from dom0.toolstack.cli import main; sys.exit(main())"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*XENSIM, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def tmpdir_short() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="xs", dir="/tmp"))  # AF_UNIX paths are short
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_help_lists_verbs() -> None:
    r = _run("--help")
    assert r.returncode == 0
    assert "xenstored" in r.stdout


def test_no_verb_is_a_usage_error() -> None:
    r = _run()
    assert r.returncode == 2


def test_unknown_verb_is_a_usage_error() -> None:
    r = _run("frobnicate")
    assert r.returncode == 2
    assert "invalid choice" in r.stderr


def _wait_for_socket(path: Path, proc: subprocess.Popen[str]) -> socket.socket:
    """Connect to the daemon's socket, bounded by a deadline (it is a separate
    process; there is no in-process event to wait on)."""
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path))
            return s
        except OSError:
            s.close()
            time.sleep(0.02)
    raise AssertionError("xenstored did not start listening within 30 s")


def _xs_request(s: socket.socket, kind: XsType, payload: bytes) -> tuple[int, bytes]:
    s.sendall(encode_message(kind, 7, 0, payload))
    head = b""
    while len(head) < HEADER.size:
        head += s.recv(HEADER.size - len(head))
    kind_r, _req, _tx, length = HEADER.unpack(head)
    body = b""
    while len(body) < length:
        body += s.recv(length - len(body))
    return kind_r, body


def test_xenstored_serves_then_exits_cleanly_on_sigint(tmpdir_short: Path) -> None:
    sock = tmpdir_short / "xs"
    sock.touch()  # a stale leftover must not stop it starting
    proc = subprocess.Popen([*XENSIM, "xenstored", "--socket", str(sock)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with _wait_for_socket(sock, proc) as s:
            assert _xs_request(s, XsType.WRITE, b"/cli/x\0hello") == (XsType.WRITE, b"OK\0")
            assert _xs_request(s, XsType.READ, b"/cli/x\0") == (XsType.READ, b"hello")
        # a second instance refuses to steal the live socket
        second = _run("xenstored", "--socket", str(sock))
        assert second.returncode == 1
        assert "already listening" in second.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not os.path.exists(sock)
