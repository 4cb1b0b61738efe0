"""A ``xensim host`` daemon per test module, driven through real CLI subprocesses.

Every CLI call is ``python -m dom0.toolstack VERB ...`` run from the repo
root (so ``tests.cli.guests`` and ``examples`` import in the daemon too),
with ``XENSIM_CONTROL`` / ``XENSIM_XENSTORE`` pointing into a short temporary
directory (AF_UNIX paths are limited to 108 bytes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "dom0.toolstack"]
START_TIMEOUT = 30.0


@dataclass
class Daemon:
    """A running ``xensim host`` and how to talk to it."""

    dir: Path
    proc: subprocess.Popen[bytes]
    control: Path
    xenstore: Path
    log: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "XENSIM_CONTROL": str(self.control),
                "XENSIM_XENSTORE": str(self.xenstore)}

    def xensim(self, *args: str, input: str | bytes | None = None, timeout: float = 30,
               ) -> subprocess.CompletedProcess[str]:
        """Run one CLI command against this daemon."""
        data = input.encode() if isinstance(input, str) else input
        r = subprocess.run([*CLI, *args], cwd=REPO, env=self.env, input=data,
                           capture_output=True, timeout=timeout)
        return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(),
                                           r.stderr.decode())

    def cfg(self, name: str, text: str) -> Path:
        """Write an xl.cfg file into the daemon's directory."""
        path = self.dir / f"{name}.cfg"
        path.write_text(text)
        return path

    def stop(self) -> int:
        """SIGINT, wait; return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)


def _connectable(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def start_daemon(directory: Path, *extra: str) -> Daemon:
    """Start ``xensim host`` in ``directory``; return once its control socket answers."""
    control, xenstore, log = directory / "c", directory / "x", directory / "host.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*CLI, "host", "--control", str(control), "--xenstore",
                                 str(xenstore), *extra], cwd=REPO, stdout=out, stderr=out)
    deadline = time.monotonic() + START_TIMEOUT
    while not _connectable(control):  # a separate process: no event to wait on
        if proc.poll() is not None:
            raise AssertionError(f"xensim host exited: {log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("xensim host did not start listening")
        time.sleep(0.02)
    return Daemon(directory, proc, control, xenstore, log)


@contextlib.contextmanager
def running_daemon(*host_args: str, prefix: str = "xc") -> Iterator[Daemon]:
    """``xensim host HOST_ARGS...`` in a fresh directory; stopped (SIGINT) on exit,
    which must end with status 0."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    dmn = start_daemon(d, *host_args)
    try:
        yield dmn
    finally:
        rc = dmn.stop()
        log = dmn.log.read_text()
        shutil.rmtree(d, ignore_errors=True)
        assert rc == 0, log


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """One host daemon for the whole module; stopped (SIGINT) afterwards."""
    with running_daemon() as dmn:
        yield dmn


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="xc", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)
