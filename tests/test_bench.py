"""The benchmark runner's contract (no timings asserted here: performance
targets live in the benchmarks themselves)."""

from __future__ import annotations

import importlib
import json

import pytest

from bench.__main__ import available
from bench._report import Report


def test_every_benchmark_module_exposes_run() -> None:
    names = available()
    assert {"evtchn", "ring", "sched", "xenstore"} <= set(names)
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        assert callable(module.run), name


def test_report_needs_ratio_and_baseline() -> None:
    with pytest.raises(ValueError, match="ratio"):
        Report("t", ["a"], [[1]], {"baseline": "x"})
    with pytest.raises(ValueError, match="baseline"):
        Report("t", ["a"], [[1]], {"ratio": 1.0})


def test_render_ends_with_one_json_object() -> None:
    r = Report("title", ["path", "rate"], [["ring", 1234.5], ["chan", 12.0]],
               {"ratio": 2.0, "baseline": "chan"}, notes=["a note"])
    lines = r.render().splitlines()
    assert lines[0] == "title"
    assert json.loads(lines[-1]) == {"ratio": 2.0, "baseline": "chan"}
    assert any("1,234" in line or "1,235" in line for line in lines)
    assert "a note" in lines
