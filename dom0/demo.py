"""One-shot hosts: ``xensim run CFG...`` and ``xensim demo``.

:func:`run_guests` boots a host in-process, creates the guests, streams
every console to ``out`` with each line prefixed by the guest's name
(``[web] hello``), follows reboots (a restart is a new domain with the same
name), and returns once every guest is gone. Leaving destroys anything left
and checks for leaks, as :func:`~dom0.host.open_host` always does.

``xensim demo`` is the same with the configs bundled in
``examples/configs``: a console hello, a CPU cruncher (the credit
scheduler), a disk writer (blkfront/blkback on a temporary raw image) and
two guests pinging each other over dom0's bridge (netfront/netback). Parts
whose drivers (or guest program) are missing from this installation are
skipped, and the report says so. It finishes with a short report and the
domain list as it was right after the last guest was created (naming the
guests that had already finished by then, so are not in it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import trio

from dom0.host import DomainHandle, Host, open_host
from dom0.toolstack.config import ConfigError, GuestConfig
from dom0.toolstack.xlcfg import load_config
from hypervisor.domain import ShutdownReason

__all__ = ["GuestOutcome", "config_dir", "main", "run_demo", "run_guests"]

DEMO_IMAGE_BYTES = 1 << 20


@dataclass
class GuestOutcome:
    """What became of one configured guest.

    Attributes:
        name: its name.
        domids: every domid it had (a reboot adds one).
        reason: the last shutdown reason (None: destroyed, or never created).
        error: why it could not be created, if it could not.
        lines: console lines it printed.
    """

    name: str
    domids: list[int] = field(default_factory=list)
    reason: ShutdownReason | None = None
    error: str | None = None
    lines: int = 0

    @property
    def ok(self) -> bool:
        """Created and powered off by itself (not crashed, not destroyed)."""
        return self.error is None and self.reason == ShutdownReason.POWEROFF

    def describe(self) -> str:
        """``powered off`` / ``crashed`` / ``failed to start: ...``."""
        if self.error is not None:
            return f"failed to start: {self.error}"
        if self.reason is None:
            return "destroyed"
        return {ShutdownReason.POWEROFF: "powered off", ShutdownReason.CRASH: "crashed",
                ShutdownReason.REBOOT: "rebooted", ShutdownReason.WATCHDOG: "watchdog"}.get(
                    self.reason, self.reason.name.lower())


class _Prefixer:
    """Splits one guest's console bytes into ``[name] line`` lines."""

    def __init__(self, name: str, out: TextIO, outcome: GuestOutcome) -> None:
        self.name = name
        self.out = out
        self.outcome = outcome
        self.partial = b""

    def feed(self, data: bytes) -> None:
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            self._emit(line)

    def flush(self) -> None:
        if self.partial:
            self._emit(self.partial)
            self.partial = b""

    def _emit(self, line: bytes) -> None:
        self.outcome.lines += 1
        text = line.decode("utf-8", "replace").rstrip("\r")
        print(f"[{self.name}] {text}", file=self.out, flush=True)


async def _follow(host: Host, handle: DomainHandle, out: TextIO, outcome: GuestOutcome,
                  done: trio.Event,
                  *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Stream a guest's console (and its successors' after reboots) until it is gone."""
    try:
        await _follow_one(host, handle, out, outcome, task_status)
    finally:
        done.set()


async def _follow_one(host: Host, handle: DomainHandle, out: TextIO, outcome: GuestOutcome,
                      task_status: trio.TaskStatus[None]) -> None:
    prefix = _Prefixer(handle.name, out, outcome)
    started = False
    while True:
        outcome.domids.append(handle.domid)  # type: ignore[arg-type]
        try:
            async with handle.console.attach(replay=True) as session:
                if not started:
                    task_status.started()
                    started = True
                async for chunk in session:
                    prefix.feed(chunk)
        except KeyError:  # already torn down: its final log was kept
            if not started:
                task_status.started()
                started = True
            prefix.feed(handle.console.log())
        prefix.flush()
        await handle.record.finished.wait()
        outcome.reason = handle.shutdown_reason
        successor = handle.successor()
        if successor is None:
            return
        handle = successor


async def run_guests(configs: Sequence[GuestConfig], out: TextIO = sys.stdout, *,
                     host: Host | None = None, nr_pcpus: int = 2, scheduler: str = "credit",
                     on_all_created: Callable[[Host], None] | None = None,
                     servers: Collection[str] = ()) -> list[GuestOutcome]:
    """Create ``configs`` on a fresh host (or ``host``), stream their consoles, wait.

    Args:
        configs: the guests (created in order).
        out: where prefixed console lines go.
        host: use this running host instead of booting one.
        nr_pcpus, scheduler: the machine, when booting one.
        on_all_created: called with the host once every guest was created.
        servers: names of guests that never stop by themselves (e.g. a ping
            responder): once every other guest is done they are asked to
            shut down (``control/shutdown = poweroff``).

    Returns:
        One :class:`GuestOutcome` per config, in order.
    """
    if host is None:
        async with open_host(nr_pcpus=nr_pcpus, scheduler=scheduler) as booted:
            return await run_guests(configs, out, host=booted, on_all_created=on_all_created,
                                    servers=servers)
    outcomes = [GuestOutcome(c.name) for c in configs]
    handles: dict[str, DomainHandle] = {}
    async with trio.open_nursery() as nursery:
        clients: list[trio.Event] = []
        for config, outcome in zip(configs, outcomes):
            try:
                handle = await host.create(config)
            except Exception as exc:  # one bad guest does not stop the others
                outcome.error = str(exc) or type(exc).__name__
                print(f"xensim: {config.name}: {outcome.error}", file=out, flush=True)
                continue
            handles[config.name] = handle
            done = trio.Event()
            if config.name not in servers:
                clients.append(done)
            await nursery.start(_follow, host, handle, out, outcome, done)
        if on_all_created is not None:
            on_all_created(host)
        for done in clients:
            await done.wait()
        for name in servers:
            with contextlib.suppress(KeyError):
                nursery.start_soon(host.domain(name).shutdown)
    return outcomes


def exit_status(outcomes: Sequence[GuestOutcome]) -> int:
    """0 if every guest powered off by itself, 1 otherwise (crash, failure, destroyed)."""
    return 0 if all(o.ok for o in outcomes) else 1


def config_dir() -> Path:
    """The bundled ``examples/configs`` directory."""
    import examples

    return Path(examples.__file__).resolve().parent / "configs"


def _drivers_present(kind: str) -> bool:
    """Whether both halves of a split driver are registered (importing every driver first)."""
    from dom0.backends.bus import BACKEND_DRIVERS
    from dom0.toolstack.hostd import import_drivers
    from domu.frontends.bus import FRONTEND_DRIVERS

    import_drivers()
    return kind in BACKEND_DRIVERS and kind in FRONTEND_DRIVERS


def _demo_configs(image: str) -> tuple[list[GuestConfig], list[str]]:
    """The bundled demo guests that this installation can run, and what was skipped."""
    d = config_dir()
    configs = [load_config(d / "hello.cfg")[0], load_config(d / "cruncher.cfg")[0]]
    skipped = []
    if _drivers_present("vbd"):
        disk = f"disk=['format=raw,vdev=xvda,access=rw,target={image}']"
        configs.append(load_config(d / "disk.cfg", disk)[0])
    else:
        skipped.append("disk writer (no vbd blkfront/blkback driver registered)")
    if not _drivers_present("vif"):
        skipped.append("ping pair (no vif netfront/netback driver registered)")
    elif importlib.util.find_spec("examples.ping") is None:
        skipped.append("ping pair (guest program examples/ping.py not installed)")
    else:  # the responder first, so the pinger finds it
        configs += [load_config(d / "ping-b.cfg")[0], load_config(d / "ping-a.cfg")[0]]
    return configs, skipped


async def run_demo(out: TextIO = sys.stdout) -> int:
    """The demo itself (usable from ``trio.run`` or a test); returns the exit status."""

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    fd, image = tempfile.mkstemp(prefix="xensim-demo-", suffix=".img")
    try:
        os.ftruncate(fd, DEMO_IMAGE_BYTES)
        os.close(fd)
        configs, skipped = _demo_configs(image)
        say("xensim demo: booting a host (hypervisor with 2 pCPUs, credit scheduler; dom0: "
            "xenstored, console daemon, backend bus, toolstack)")
        say(f"xensim demo: guests from {config_dir()}: "
            + ", ".join(c.name for c in configs))
        for part in skipped:
            say(f"xensim demo: skipped {part}")
        listing: list[str] = []
        finished: list[str] = []

        def snapshot(host: Host) -> None:
            listing.append(host.format_list())
            present = {row.name for row in host.list()}
            finished.extend(c.name for c in configs if c.name not in present)

        outcomes = await run_guests(configs, out, servers={"ping-b"}, on_all_created=snapshot)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(image)
    say()
    say("xensim demo: report")
    for o in outcomes:
        doms = ", ".join(f"d{d}" for d in o.domids) or "-"
        say(f"  {o.name:<10} {doms:<8} {o.describe()}; {o.lines} console line(s)")
    for part in skipped:
        say(f"  skipped: {part}")
    say()
    say("Domain list (xl list) right after the last guest was created:")
    say(listing[0] if listing else "(no guest was created)")
    if finished:
        say(f"(not listed: {', '.join(finished)} -- already finished by then)")
    say()
    say("xensim demo: host shut down; every resource back at its boot-time value")
    return exit_status(outcomes)


def main() -> int:
    """``xensim demo``: exit status 0 when every demo guest powered off by itself."""
    return trio.run(run_demo)


def run_main(paths: Sequence[str], extra: str | None = None, *, nr_pcpus: int = 2,
             scheduler: str = "credit") -> int:
    """``xensim run CFG...``: 0 if every guest powered off by itself, 1 otherwise.

    Raises:
        ConfigError: a config file is missing or invalid (nothing was started).
    """
    from dom0.toolstack.hostd import import_drivers

    import_drivers()
    configs = []
    for path in paths:
        config, warnings = load_config(path, extra)
        for w in warnings:
            print(w, file=sys.stderr)
        configs.append(config)
    names = [c.name for c in configs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"guest name {sorted(dup)[0]!r} is used by two configs")

    async def go() -> int:
        outcomes = await run_guests(configs, sys.stdout, nr_pcpus=nr_pcpus, scheduler=scheduler)
        for o in outcomes:
            if not o.ok:
                print(f"xensim: {o.name}: {o.describe()}", file=sys.stderr)
        return exit_status(outcomes)

    return trio.run(go)
