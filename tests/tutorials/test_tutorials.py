"""The tutorials cannot drift from the code they teach.

For every chapter ``docs/tutorials/NN-*.md``:

* its ``<!-- example: examples/tutorial/chNN_*.py -->`` marker names an
  existing example file;
* every ```python block is a verbatim excerpt (consecutive lines, trailing
  whitespace ignored) of that file, or of one of the library files the
  chapter names with ``<!-- source: PATH -->`` lines (a chapter that teaches
  a driver shows the driver's own modules);
* the ```text block right after ``<!-- output: PATH -->`` is exactly what
  running that example's ``main()`` prints;
* ``docs/tutorials/README.md`` links to it.

A chapter with no runnable code says so with a ``<!-- prose-only -->`` line:
it then has no example, no output block and no ```python block (all three are
checked), and is still linked from the index.

New chapters are picked up automatically.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "docs" / "tutorials"
CHAPTERS = sorted(TUTORIALS.glob("[0-9][0-9]-*.md"))

EXAMPLE_MARKER = re.compile(r"^<!-- example: (\S+) -->$", re.M)
SOURCE_MARKER = re.compile(r"^<!-- source: (\S+) -->$", re.M)
PROSE_ONLY_MARKER = re.compile(r"^<!-- prose-only -->$", re.M)
OUTPUT_MARKER = re.compile(r"^<!-- output: (\S+) -->\n```text\n(.*?)^```$", re.M | re.S)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.rstrip("\n").split("\n")]


def _prose_only(chapter: Path) -> bool:
    return bool(PROSE_ONLY_MARKER.search(chapter.read_text()))


CODE_CHAPTERS = [c for c in CHAPTERS if not _prose_only(c)]
PROSE_CHAPTERS = [c for c in CHAPTERS if _prose_only(c)]


def _example(chapter: Path) -> Path:
    found = EXAMPLE_MARKER.findall(chapter.read_text())
    assert len(found) == 1, f"{chapter.name}: needs exactly one '<!-- example: PATH -->' line"
    path = ROOT / found[0]
    assert path.is_file(), f"{chapter.name}: example {found[0]} does not exist"
    return path


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def test_there_are_chapters() -> None:
    assert CHAPTERS, "no docs/tutorials/NN-*.md found"


@pytest.mark.parametrize("chapter", CODE_CHAPTERS, ids=lambda p: p.name)
def test_code_blocks_are_excerpts_of_the_example(chapter: Path) -> None:
    example = _example(chapter)
    files = [example]
    for extra in SOURCE_MARKER.findall(chapter.read_text()):
        assert (ROOT / extra).is_file(), f"{chapter.name}: source {extra} does not exist"
        files.append(ROOT / extra)
    sources = [_lines(f.read_text()) for f in files]
    blocks = PYTHON_BLOCK.findall(chapter.read_text())
    assert blocks, f"{chapter.name} shows no code"
    for block in blocks:
        assert any(_contains(source, _lines(block)) for source in sources), (
            f"{chapter.name}: this block is not a verbatim excerpt of "
            f"{', '.join(str(f.relative_to(ROOT)) for f in files)}:\n{block}")


@pytest.mark.parametrize("chapter", PROSE_CHAPTERS, ids=lambda p: p.name)
def test_prose_only_chapter_has_no_code(chapter: Path) -> None:
    text = chapter.read_text()
    assert not EXAMPLE_MARKER.search(text), f"{chapter.name}: prose-only, but names an example"
    assert not OUTPUT_MARKER.search(text), f"{chapter.name}: prose-only, but has an output"
    assert not PYTHON_BLOCK.search(text), f"{chapter.name}: prose-only, but shows Python"


@pytest.mark.parametrize("chapter", CODE_CHAPTERS, ids=lambda p: p.name)
def test_output_block_is_what_the_example_prints(
    chapter: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = _example(chapter)
    outputs = OUTPUT_MARKER.findall(chapter.read_text())
    assert len(outputs) == 1, f"{chapter.name}: needs exactly one output marker + text block"
    (target, expected), = outputs
    assert ROOT / target == example, f"{chapter.name}: output marker names {target}"
    module_name = ".".join(example.relative_to(ROOT).with_suffix("").parts)
    module = importlib.import_module(module_name)
    capsys.readouterr()
    trio.run(module.main)
    printed = capsys.readouterr().out
    assert _lines(printed) == _lines(expected), (
        f"{chapter.name}: the output block no longer matches; the example now prints:\n"
        f"{printed}")


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_index_links_to_chapter(chapter: Path) -> None:
    index = (TUTORIALS / "README.md").read_text()
    assert f"]({chapter.name})" in index, f"README.md does not link to {chapter.name}"
