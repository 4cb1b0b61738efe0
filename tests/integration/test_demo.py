"""The demo runs end to end and the CLI verb exists."""

from __future__ import annotations

import io

from dom0.demo import run_demo
from dom0.toolstack.cli import VERBS, build_parser


async def test_demo_runs() -> None:
    """The real clock on purpose: the demo's disk guest does real file I/O in
    worker threads, and an autojump clock would jump while they run, firing
    teardown timeouts that never fire in real use."""
    out = io.StringIO()
    assert await run_demo(out) == 0
    text = out.getvalue()
    assert "[hello] Hello from hello" in text
    assert "[cruncher] cruncher: used 0.20 s of CPU" in text
    assert "Name                                        ID   Mem VCPUs\tState\tTime(s)" in text
    assert "hello      d1       powered off" in text
    assert "every resource back" in text


def test_demo_verb_registered() -> None:
    from dom0.toolstack import verbs  # noqa: F401

    assert "demo" in VERBS
    assert build_parser().parse_args(["demo"]).verb == "demo"
