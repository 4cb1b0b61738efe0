"""xenstored throughput: write+read pairs per second over the Unix socket.

The daemon runs in its own OS process (``python -m dom0.xenstored.unix_server``)
so the client never shares its event loop or GIL. Clients:

* raw, lock-step: a blocking socket sends WRITE, waits for the reply, sends
  READ, waits - the latency-bound rate one synchronous tool sees;
* raw, pipelined: the same pairs sent 32 at a time before reading the replies
  (what a pipelining client such as ours sees);
* pyxs: the third-party synchronous client;
* watches: 1000 watches registered, then each node written once and all 1000
  events received.

The issue names no baseline other than the target, so ``ratio`` is the
lock-step raw rate divided by the 10,000 pairs/s target.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench._report import Report
from ring.xs_wire import HEADER, XsType, encode_message

TARGET = 10_000.0
PIPELINE = 32


@contextmanager
def _daemon() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="xsb", dir="/tmp")
    path = os.path.join(d, "socket")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dom0.xenstored.unix_server", "--socket", path],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(path):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("xenstored did not start")
            time.sleep(0.02)
        yield path
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


class _Raw:
    """A blocking-socket client that reads whole messages."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = bytearray()

    def recv_msg(self) -> tuple[int, bytes]:
        while True:
            if len(self.buf) >= 16:
                t, _r, _x, n = HEADER.unpack_from(self.buf)
                if len(self.buf) >= 16 + n:
                    payload = bytes(self.buf[16:16 + n])
                    del self.buf[:16 + n]
                    return t, payload
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError("daemon closed")
            self.buf += data

    def close(self) -> None:
        self.sock.close()


def _pairs_lockstep(path: str, n: int) -> float:
    c = _Raw(path)
    start = time.perf_counter()
    for i in range(n):
        key = f"/bench/k{i % 100}".encode()
        c.sock.sendall(encode_message(XsType.WRITE, 1, 0, key + b"\0" + b"value"))
        assert c.recv_msg()[0] == XsType.WRITE
        c.sock.sendall(encode_message(XsType.READ, 2, 0, key + b"\0"))
        assert c.recv_msg() == (XsType.READ, b"value")
    elapsed = time.perf_counter() - start
    c.close()
    return n / elapsed


def _pairs_pipelined(path: str, n: int) -> float:
    c = _Raw(path)
    start = time.perf_counter()
    done = 0
    while done < n:
        batch = bytearray()
        for i in range(PIPELINE):
            key = f"/bench/p{i}".encode()
            batch += encode_message(XsType.WRITE, 2 * i, 0, key + b"\0" + b"value")
            batch += encode_message(XsType.READ, 2 * i + 1, 0, key + b"\0")
        c.sock.sendall(batch)
        for _ in range(2 * PIPELINE):
            t, _ = c.recv_msg()
            assert t in (XsType.WRITE, XsType.READ)
        done += PIPELINE
    elapsed = time.perf_counter() - start
    c.close()
    return done / elapsed


def _pairs_pyxs(path: str, n: int) -> float | None:
    try:
        from pyxs import Client
    except ImportError:
        return None
    with Client(unix_socket_path=path) as c:
        start = time.perf_counter()
        for i in range(n):
            key = f"/bench/y{i % 100}".encode()
            c.write(key, b"value")
            c.read(key)
        return n / (time.perf_counter() - start)


def _watches(path: str, n: int) -> tuple[float, float]:
    c = _Raw(path)
    start = time.perf_counter()
    batch = b"".join(
        encode_message(XsType.WATCH, i, 0, f"/w/{i}\0tok{i}\0".encode()) for i in range(n)
    )
    c.sock.sendall(batch)
    for _ in range(2 * n):  # OK + the registration event each
        c.recv_msg()
    registered = time.perf_counter() - start
    start = time.perf_counter()
    batch = b"".join(
        encode_message(XsType.WRITE, i, 0, f"/w/{i}\0x".encode()) for i in range(n)
    )
    c.sock.sendall(batch)
    events = 0
    replies = 0
    while replies < n or events < n:
        t, _ = c.recv_msg()
        if t == XsType.WATCH_EVENT:
            events += 1
        else:
            replies += 1
    fired = time.perf_counter() - start
    c.close()
    return registered, fired


def run(quick: bool = False) -> Report:
    """Measure xenstored over its Unix socket (see the module docstring).

    Args:
        quick: fewer iterations (smoke test; noisier numbers).

    Returns:
        The report; ``figures["ratio"]`` is lock-step pairs/s over 10,000.
    """
    n = 2_000 if quick else 20_000
    with _daemon() as path:
        _pairs_lockstep(path, 200)  # warm up
        lockstep = _pairs_lockstep(path, n)
        pipelined = _pairs_pipelined(path, n)
        pyxs_rate = _pairs_pyxs(path, n // 4)
        registered, fired = _watches(path, 1000)
    rows = [
        ["raw socket, lock-step", "write+read pairs/s", lockstep],
        [f"raw socket, pipelined x{PIPELINE}", "write+read pairs/s", pipelined],
        ["pyxs", "write+read pairs/s", pyxs_rate if pyxs_rate is not None else "n/a"],
        ["1000 watches: register", "seconds", registered],
        ["1000 watches: fire once each", "seconds", fired],
    ]
    figures = {
        "ratio": lockstep / TARGET,
        "baseline": "target 10,000 write+read pairs/s",
        "pairs_per_s_raw_lockstep": round(lockstep),
        "pairs_per_s_raw_pipelined": round(pipelined),
        "pairs_per_s_pyxs": round(pyxs_rate) if pyxs_rate is not None else None,
        "watch_register_1000_s": round(registered, 4),
        "watch_fire_1000_s": round(fired, 4),
        "iterations": n,
    }
    return Report(
        title="xenstored over a Unix socket (daemon in its own process); "
        "ratio = raw lock-step pairs/s / 10,000 target",
        columns=["client", "unit", "value"],
        rows=rows,
        figures=figures,
        notes=[
            "The issue names no baseline other than the 10,000 pairs/s target.",
            f"{os.cpu_count()} CPUs; client and daemon are separate processes.",
        ],
    )
