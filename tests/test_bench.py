"""The benchmark runner's contract (no timings asserted here: performance
targets live in the benchmarks themselves)."""

from __future__ import annotations

import importlib
import json

import pytest
import trio

from bench.__main__ import available
from bench._report import Report
from bench.ring import DEPTH, ring_run


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


@pytest.mark.parametrize("idle_polls", [0, 1])
def test_ring_bench_notifies_once_per_batch_when_polling(idle_polls: int) -> None:
    """The ring benchmark's loop moves requests, and its notification count
    follows from the backend's wait policy (whatever the machine's speed):
    a backend that polls one more pass always finds the refill there, so only
    the responses notify (one per batch of DEPTH); one that re-arms at once
    also needs one for the refills that come after it looked (about half)."""
    done, notifies, _elapsed = trio.run(ring_run, 0.05, idle_polls)
    assert done >= 4 * DEPTH
    batches = done // DEPTH
    if idle_polls:
        assert batches <= notifies <= batches + 2  # plus the first kick
    else:
        assert batches <= notifies <= 2 * batches + 2
