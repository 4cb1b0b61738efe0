"""Refresh every chapter's expected-output block from its example.

Run from the repository root after changing code a chapter teaches::

    .venv/bin/python docs/tutorials/update_outputs.py

Then read the diff: the tests in tests/tutorials/ fail until the text still
explains what the new output shows.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import sys
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
OUTPUT_BLOCK = re.compile(r"(^<!-- output: (\S+) -->\n```text\n)(.*?)(^```$)", re.M | re.S)


def run_example(path: str) -> str:
    """What the example at ``path`` (relative to the repo root) prints."""
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        trio.run(module.main)
    return out.getvalue()


def main() -> int:
    sys.path.insert(0, str(ROOT))
    for chapter in sorted((ROOT / "docs" / "tutorials").glob("[0-9][0-9]-*.md")):
        text = chapter.read_text()
        new = OUTPUT_BLOCK.sub(lambda m: m[1] + run_example(m[2]) + m[4], text)
        if new != text:
            chapter.write_text(new)
            print(f"updated {chapter.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
