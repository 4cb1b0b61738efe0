"""Observability: one hook that every hypercall and every event delivery passes.

Counters are kept per domain and per operation name, e.g. ``(1,
"event_channel_op.send")`` or ``(0, "evtchn.deliver")``. Each domain's
counters are one ``defaultdict(int)`` (:meth:`Statistics.counters`), which the
hypervisor hands to the :class:`~hypervisor.domain.Domain` as ``stats``: the
hottest paths (the hypercall gate, event delivery) count with a single
in-place ``stats[name] += 1`` on the domain they already hold, with no
function call; everything else calls :meth:`Statistics.hook`. Both write the
same table.
"""

from __future__ import annotations

from collections import defaultdict


class Statistics:
    """Per-domain, per-operation counters."""

    def __init__(self) -> None:
        self._by_dom: dict[int, defaultdict[str, int]] = {}

    def counters(self, domid: int) -> defaultdict[str, int]:
        """The live counter table of ``domid`` (created on first use).

        The hypervisor stores it on the domain (``Domain.stats``); increment
        it in place, never replace it.
        """
        c = self._by_dom.get(domid)
        if c is None:
            c = self._by_dom[domid] = defaultdict(int)
        return c

    def hook(self, domid: int, what: str) -> None:
        """Count one ``what`` for ``domid`` (hypervisor-internal caller)."""
        self.counters(domid)[what] += 1

    def snapshot(self) -> dict[int, dict[str, int]]:
        """``{domid: {operation: count}}`` (a copy; domains with no counts left out)."""
        return {domid: dict(c) for domid, c in self._by_dom.items() if c}

    def forget(self, domid: int) -> None:
        """Drop a freed domain's counters (its id may be reused)."""
        self._by_dom.pop(domid, None)
