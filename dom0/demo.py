"""``xensim demo``: boot a host, run two guests, show them, shut them down.

What it shows, in order: the host booting (hypervisor + dom0: xenstored,
console daemon, backend bus), two guests created from ``examples/ticker.py``
printing through their PV consoles, ``xl list``, each console's log, and a
clean ``control/shutdown`` of both - then the leak check that leaving
:func:`~dom0.host.open_host` performs. Takes well under a second.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

import trio

from dom0.host import open_host
from dom0.toolstack.config import GuestConfig

__all__ = ["load_example", "main", "run_demo"]

GUESTS = ("alice", "bob")
OUTPUT_TIMEOUT = 5.0
"""Seconds the demo waits for a guest's console output before giving up."""


def load_example(name: str) -> Callable[..., Awaitable[None]]:
    """``examples/<name>.py``'s ``main``: imported as a module if ``examples`` is on
    ``sys.path`` (a source checkout), else loaded from the file beside this package."""
    try:
        module: Any = importlib.import_module(f"examples.{name}")
    except ImportError:
        path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"xensim_examples_{name}", path)
        if spec is None or spec.loader is None:
            raise
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.main  # type: ignore[no-any-return]


async def run_demo(out: TextIO = sys.stdout) -> None:
    """The demo itself (usable from ``trio.run`` or a test)."""
    ticker = load_example("ticker")

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    async with open_host() as host:
        say("xensim: host booted (hypervisor, dom0: xenstored, console daemon, backend bus)")
        doms = []
        for name in GUESTS:
            dom = await host.create(GuestConfig(name=name, kernel=ticker, memory=16))
            say(f"xensim: created {name} as domain {dom.domid}")
            doms.append(dom)
        for dom in doms:
            await dom.console.wait_for(f"{dom.name}: idle", timeout=OUTPUT_TIMEOUT)
        say()
        say(host.format_list())
        for dom in doms:
            say()
            say(f"--- console of {dom.name} (d{dom.domid}) ---")
            say(dom.console.log().decode("utf-8", "replace").rstrip())
        say()
        for dom in doms:
            await dom.shutdown("poweroff")
            say(f"xensim: {dom.name} shut down ({dom.shutdown_reason.name.lower()})"
                if dom.shutdown_reason is not None else f"xensim: {dom.name} destroyed")
        say()
        say(host.format_list())
    say("xensim: host shut down; every resource back at its boot-time value")


def main() -> int:
    """Run the demo; exit status 0 on success."""
    trio.run(run_demo)
    return 0
