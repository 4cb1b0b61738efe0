"""The pytest plugin as a new user's project sees it: run pytest on a small project."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

USES_HOST = """
async def test_boots(guest_factory):
    dom = await guest_factory("examples.hello:main")
    await dom.wait()
"""

LEAKS = """
async def test_leaks(autojump_clock, xen_host):
    xen_host.kernel.hc.evtchn_alloc_unbound(0)   # a port nobody closes
"""


def run_pytest(project: Path, tests: str, ini: str) -> subprocess.CompletedProcess[str]:
    """pytest on a one-file project with ``ini`` as its pytest.ini (plugin via entry point)."""
    (project / "pytest.ini").write_text(ini)
    (project / "test_it.py").write_text(tests)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_it.py"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)


def test_missing_trio_mode_says_what_to_add(tmp_path: Path) -> None:
    r = run_pytest(tmp_path, USES_HOST, "[pytest]\n")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "trio mode is off for this project" in r.stdout
    assert "[tool.pytest.ini_options]\n    trio_mode = true" in r.stdout
    assert "with no plugin" not in r.stdout  # pytest's own puzzling message never shows


def test_with_trio_mode_the_fixtures_work(tmp_path: Path) -> None:
    r = run_pytest(tmp_path, USES_HOST, "[pytest]\ntrio_mode = true\n")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_leak_is_named_in_the_summary_without_teardown_noise(tmp_path: Path) -> None:
    r = run_pytest(tmp_path, LEAKS, "[pytest]\ntrio_mode = true\n")
    assert r.returncode == 1, r.stdout + r.stderr
    summary = r.stdout.split("short test summary info")[1]
    assert "FAILED test_it.py::test_leaks - xensim leak check" in summary
    assert "ports: " in r.stdout
    assert "BrokenResourceError" not in r.stdout
