"""README's two commands are the contract with a new user and with CI."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text)


def test_readme_gives_a_demo_and_a_test_command() -> None:
    commands = _readme_commands()
    assert any(c.endswith("xensim demo") for c in commands), commands
    assert any("pytest" in c and ".[test]" in c for c in commands), commands


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_cmd = next(c for c in _readme_commands() if "pytest" in c)
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci_lines


def test_readme_python_example_runs(tmp_path: Path) -> None:
    """The README's Python example is run exactly as printed."""
    import subprocess
    import sys

    text = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"```python\n(.+?)```", text, re.S)
    script = tmp_path / "example.py"
    script.write_text(block)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "hello from domain 1" in r.stdout
    assert "shut down: POWEROFF" in r.stdout
    assert r.stdout.splitlines()[0].startswith("Name")
