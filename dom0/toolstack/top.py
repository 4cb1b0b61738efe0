"""``xensim top``: a xentop-style live view of the host's domains.

Theory of operation
-------------------
The host daemon streams *snapshots* (plain dicts of raw counters: each
domain's CPU nanoseconds, pages, vCPUs, block and network counters, plus the
host's clock) every ``delay`` seconds. Everything derived -- CPU % over the
interval, memory %, the summary line's state counts -- is computed here, on
the client, from two consecutive snapshots, exactly as xentop derives CPU %
from two ``xenstat`` samples: ``(cpu_ns - prev_cpu_ns) / (now - prev_now)``.
The first frame has no previous sample, so CPU % is 0.0 there (as in xentop).

Layout (xentop's)::

    xentop - 12:00:01   Xen 4.17-xensim
    3 domains: 1 running, 2 blocked, 0 paused, 0 crashed, 0 dying, 0 shutdown
    Mem: 4194304k total, 69632k used, 4124672k free    CPUs: 2 @ 2000MHz
          NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) VCPUS ...

Columns are right-aligned to xentop's default widths; STATE is ``dsbcpr``
order (not ``xl list``'s). Interactive mode redraws in place with ANSI
"home + clear" sequences; batch mode (``-b``, or ``--iterations``) prints
frames one after the other, separated by a blank line, like ``xentop -b``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["COLUMNS", "format_frame", "format_header", "format_row", "state_letters"]

COLUMNS: tuple[tuple[str, int], ...] = (
    ("NAME", 10), ("STATE", 6), ("CPU(sec)", 10), ("CPU(%)", 6), ("MEM(k)", 10),
    ("MEM(%)", 6), ("MAXMEM(k)", 10), ("MAXMEM(%)", 9), ("VCPUS", 5), ("NETS", 4),
    ("NETTX(k)", 8), ("NETRX(k)", 8), ("VBDS", 4), ("VBD_OO", 8), ("VBD_RD", 8),
    ("VBD_WR", 8), ("VBD_RSECT", 10), ("VBD_WSECT", 10), ("SSID", 4),
)
"""xentop's fields and default widths, in display order."""

CLEAR = "\x1b[H\x1b[2J"
"""Cursor home + clear screen (interactive redraw)."""


def state_letters(flags: Mapping[str, bool]) -> str:
    """xentop's STATE: ``d s b c p r`` in that order, ``-`` when clear."""
    return "".join(letter if flags.get(key) else "-" for letter, key in (
        ("d", "dying"), ("s", "shutdown"), ("b", "blocked"), ("c", "crashed"),
        ("p", "paused"), ("r", "running")))


def _cpu_pct(dom: Mapping[str, Any], prev: Mapping[int, Mapping[str, Any]] | None,
             interval: float) -> float:
    if prev is None or interval <= 0:
        return 0.0
    before = prev.get(dom["domid"])
    if before is None:
        return 0.0
    return max(0.0, (dom["cpu_ns"] - before["cpu_ns"]) / 1e9 / interval * 100.0)


def format_row(dom: Mapping[str, Any], total_kib: int, cpu_pct: float) -> str:
    """One domain's line (every field right-aligned to xentop's width)."""
    mem = dom["mem_kib"]
    maxmem = dom.get("maxmem_kib")
    values: list[str] = [
        dom["name"][:10] if len(dom["name"]) > 10 else dom["name"],
        state_letters(dom["flags"]),
        str(int(dom["cpu_ns"] // 1_000_000_000)),
        f"{cpu_pct:.1f}",
        str(mem),
        f"{100.0 * mem / total_kib:.1f}" if total_kib else "0.0",
        "no limit" if maxmem is None else str(maxmem),
        "n/a" if maxmem is None or not total_kib else f"{100.0 * maxmem / total_kib:.1f}",
        str(dom["vcpus"]), str(dom["nets"]),
        str(dom["net_tx_bytes"] // 1024), str(dom["net_rx_bytes"] // 1024),
        str(dom["vbds"]), str(dom["vbd_oo"]), str(dom["vbd_rd"]), str(dom["vbd_wr"]),
        str(dom["vbd_rsect"]), str(dom["vbd_wsect"]), "0",
    ]
    return " ".join(f"{v:>{w}}" for v, (_, w) in zip(values, COLUMNS))


def format_header() -> str:
    """The column header line."""
    return " ".join(f"{h:>{w}}" for h, w in COLUMNS)


def format_frame(snap: Mapping[str, Any], prev: Mapping[str, Any] | None = None,
                 *, clock: float | None = None) -> str:
    """A whole xentop screen from one snapshot (and the previous one, for CPU %).

    Args:
        snap: a ``top`` snapshot from the host daemon: ``now`` (host seconds),
            ``xen_version``, ``nr_cpus``, ``cpu_mhz``, ``total_kib``,
            ``free_kib`` and ``domains`` (dicts with ``name``, ``domid``,
            ``flags``, ``cpu_ns``, ``mem_kib``, ``maxmem_kib``, ``vcpus``,
            ``nets``, ``net_tx_bytes``, ``net_rx_bytes``, ``vbds``, ``vbd_oo``,
            ``vbd_rd``, ``vbd_wr``, ``vbd_rsect``, ``vbd_wsect``).
        prev: the snapshot before it, or None for the first frame.
        clock: wall-clock time for the title (default: now).
    """
    doms: Sequence[Mapping[str, Any]] = snap["domains"]
    prev_doms = None if prev is None else {d["domid"]: d for d in prev["domains"]}
    interval = 0.0 if prev is None else snap["now"] - prev["now"]
    counts = {k: sum(1 for d in doms if d["flags"].get(k)) for k in (
        "running", "blocked", "paused", "crashed", "dying", "shutdown")}
    total, free = snap["total_kib"], snap["free_kib"]
    title = time.strftime("%H:%M:%S", time.localtime(clock))
    lines = [
        f"xentop - {title}   Xen {snap['xen_version']}",
        f"{len(doms)} domains: {counts['running']} running, {counts['blocked']} blocked, "
        f"{counts['paused']} paused, {counts['crashed']} crashed, {counts['dying']} dying, "
        f"{counts['shutdown']} shutdown",
        f"Mem: {total}k total, {total - free}k used, {free}k free    "
        f"CPUs: {snap['nr_cpus']} @ {snap['cpu_mhz']}MHz",
        format_header(),
    ]
    lines.extend(format_row(d, total, _cpu_pct(d, prev_doms, interval)) for d in doms)
    return "\n".join(lines)
