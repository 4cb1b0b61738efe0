"""The demo runs end to end and the CLI verb exists."""

from __future__ import annotations

import io

from trio.testing import MockClock

from dom0.demo import run_demo
from dom0.toolstack.cli import VERBS, build_parser


async def test_demo_runs(autojump_clock: MockClock) -> None:
    out = io.StringIO()
    await run_demo(out)
    text = out.getvalue()
    assert "alice: tick 2" in text and "bob: idle" in text
    assert "Name                                        ID   Mem VCPUs\tState\tTime(s)" in text
    assert "alice shut down (poweroff)" in text
    assert "every resource back" in text


def test_demo_verb_registered() -> None:
    from dom0.toolstack import verbs  # noqa: F401

    assert "demo" in VERBS
    assert build_parser().parse_args(["demo"]).verb == "demo"
