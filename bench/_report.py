"""The one output format every benchmark shares."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Report:
    """What a benchmark measured.

    Args:
        title: one line saying what was measured and against which baseline.
        columns: table headings.
        rows: table rows (cells are formatted with ``str`` unless floats).
        figures: raw numbers; must contain ``ratio`` (float) and ``baseline``
            (str naming what the ratio is measured against).
        notes: extra lines printed under the table.
    """

    title: str
    columns: list[str]
    rows: list[list[Any]]
    figures: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if "ratio" not in self.figures or "baseline" not in self.figures:
            raise ValueError("a benchmark's figures must include 'ratio' and 'baseline'")

    def render(self) -> str:
        """The human table, then the JSON line (always last)."""
        cells = [[_fmt(c) for c in row] for row in self.rows]
        widths = [len(h) for h in self.columns]
        for row in cells:
            for i, c in enumerate(row):
                widths[i] = max(widths[i], len(c))
        lines = [self.title, ""]
        lines.append("  ".join(h.ljust(w) for h, w in zip(self.columns, widths)))
        lines.append("  ".join("-" * w for w in widths))
        for row in cells:
            lines.append("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w)
                                   for c, w in zip(row, widths)))
        lines.append("")
        lines.extend(self.notes)
        lines.append(json.dumps(self.figures, sort_keys=True))
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def _numeric(s: str) -> bool:
    return s.replace(",", "").replace(".", "", 1).lstrip("-").isdigit()
