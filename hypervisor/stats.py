"""Observability: one hook that every hypercall and every event delivery passes.

Counters are keyed by (domid, operation name), e.g. ``(1,
"event_channel_op.send")`` or ``(0, "evtchn.deliver")``. The hook is a plain
dict increment so it can sit on the hottest path.
"""

from __future__ import annotations

from collections import defaultdict


class Statistics:
    """Per-domain, per-operation counters."""

    def __init__(self) -> None:
        self._counts: defaultdict[tuple[int, str], int] = defaultdict(int)

    def hook(self, domid: int, what: str) -> None:
        """Count one ``what`` for ``domid`` (hypervisor-internal caller)."""
        self._counts[(domid, what)] += 1

    def snapshot(self) -> dict[int, dict[str, int]]:
        """``{domid: {operation: count}}`` (a copy)."""
        out: dict[int, dict[str, int]] = {}
        for (domid, what), n in self._counts.items():
            out.setdefault(domid, {})[what] = n
        return out

    def forget(self, domid: int) -> None:
        """Drop a freed domain's counters (its id may be reused)."""
        for key in [k for k in self._counts if k[0] == domid]:
            del self._counts[key]
