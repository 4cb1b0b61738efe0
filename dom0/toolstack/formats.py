"""xl's output formats (``xl list``, ``xl info``...), as pure functions of plain data.

The host daemon answers with plain dicts (they travel as msgpack); these
functions turn them into exactly the text ``xl`` prints, column for column,
so scripts written against ``xl`` parse ``xensim`` output unchanged. Each
function names the ``printf`` format it reproduces; the widths are xl's
(tools/xl/xl_info.c, xl_vcpu.c, xl_sched.c, xl_utils.c).

Worked example (``xl list`` with dom0 and one guest)::

    >>> print(format_list([  # doctest: +NORMALIZE_WHITESPACE
    ...     {"name": "Domain-0", "domid": 0, "mem": 4, "vcpus": 1, "state": "r-----",
    ...      "time": 1.25},
    ...     {"name": "web", "domid": 1, "mem": 32, "vcpus": 1, "state": "-b----", "time": 0.0}]))
    Name                                        ID   Mem VCPUs	State	Time(s)
    Domain-0                                     0     4     1     r-----       1.2
    web                                          1    32     1     -b----       0.0

(``%8.1f`` rounds half to even on the binary value, as C does: 1.25 -> 1.2.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "BLOCK_LIST_HEADER",
    "CHANNEL_LIST_HEADER",
    "INFO_KEY_WIDTH",
    "LIST_HEADER",
    "NETWORK_LIST_HEADER",
    "SCHED_CREDIT_HEADER",
    "VCPU_LIST_HEADER",
    "format_bitmap",
    "format_block_list",
    "format_block_row",
    "format_channel_list",
    "format_channel_row",
    "format_info",
    "format_list",
    "format_list_row",
    "format_network_list",
    "format_network_row",
    "format_sched_credit",
    "format_sched_credit_pool",
    "format_sched_credit_row",
    "format_vcpu_list",
    "format_vcpu_row",
]

LIST_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"
"""``xl list``'s header line (the tabs are literal, as in xl)."""

VCPU_LIST_HEADER = (f"{'Name':<32} {'ID':>5} {'VCPU':>5} {'CPU':>5} {'State':>5} "
                    f"{'Time(s)':>9} Affinity (Hard / Soft)")
"""``xl vcpu-list``'s header: ``%-32s %5s %5s %5s %5s %9s %s``."""

SCHED_CREDIT_HEADER = f"{'Name':<33} {'ID':>4} {'Weight':>6} {'Cap':>4}"
"""``xl sched-credit``'s domain header: ``%-33s %4s %6s %4s``."""

CHANNEL_LIST_HEADER = f"{'Idx':<3} {'BE':<2} {'state':<5} {'evt-ch':<6} {'ring-ref':>8} " \
    f"{'connection':<10} {'':<30}"
"""``xl channel-list``'s header: ``%-3s %-2s %-5s %-6s %8s %-10s %-30s`` (the last
column, xl's ``params``, has an empty title: the line ends in 31 blanks)."""

BLOCK_LIST_HEADER = f"{'Vdev':<5} {'BE':<3} {'handle':<6} {'state':<5} {'evt-ch':<6} " \
    f"{'ring-ref':<8} {'BE-path':<30}"
"""``xl block-list``'s header: ``%-5s %-3s %-6s %-5s %-6s %-8s %-30s``."""

NETWORK_LIST_HEADER = f"{'Idx':<3} {'BE':<2} {'Mac Addr.':<17} {'handle':<6} {'state':<5} " \
    f"{'evt-ch':<6} {'tx-':>5}/{'rx-ring-ref':<5} {'BE-path':<30}"
"""``xl network-list``'s header: ``%-3s %-2s %-17s %-6s %-5s %-6s %5s/%-5s %-30s``."""

INFO_KEY_WIDTH = 23
"""``xl info`` pads every key to 23 columns, then ``": "``."""


def format_list_row(row: Mapping[str, Any]) -> str:
    """One ``xl list`` row: ``%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f``.

    Args:
        row: ``name``, ``domid``, ``mem`` (MiB), ``vcpus`` (online),
            ``state`` (six letters, :meth:`DomainInfo.xl_state`), ``time`` (s).
    """
    return (f"{row['name']:<40} {row['domid']:5d} {row['mem']:5d} {row['vcpus']:5d}     "
            f"{row['state']}  {row['time']:8.1f}")


def format_list(rows: Iterable[Mapping[str, Any]]) -> str:
    """The whole ``xl list`` text (header, then one row per domain; no final newline)."""
    return "\n".join([LIST_HEADER, *(format_list_row(r) for r in rows)])


def format_bitmap(cpus: Iterable[int], nr_cpus: int) -> str:
    """A CPU set as xl's ``print_bitmap`` prints it over ``nr_cpus`` bits.

    ``all`` when every CPU from 0 to the last is set, ``none`` when empty,
    otherwise comma-separated ranges (``0-1,3``). Like xl, a set that starts
    above 0 and runs to the last CPU prints as a range, not ``all``.
    """
    chosen = {c for c in cpus if 0 <= c < nr_cpus}
    if not chosen:
        return "none"
    if len(chosen) == nr_cpus:
        return "all"
    parts = []
    c = 0
    while c < nr_cpus:
        if c in chosen:
            start = c
            while c + 1 < nr_cpus and c + 1 in chosen:
                c += 1
            parts.append(str(start) if c == start else f"{start}-{c}")
        c += 1
    return ",".join(parts)


def format_vcpu_row(row: Mapping[str, Any], nr_cpus: int) -> str:
    """One ``xl vcpu-list`` row (``print_vcpuinfo``).

    ``%-32s %5u %5u``, then ``%5u %3c%c- `` for an online vCPU (its pCPU,
    ``r`` running, ``b`` blocked) or ``%5c %3c%cp `` with dashes for an
    offline one, then ``%9.1f  `` seconds and ``hard / soft`` affinity.

    Args:
        row: ``name``, ``domid``, ``vcpu``, ``cpu``, ``online``, ``running``,
            ``blocked``, ``time`` (s), ``hard`` and ``soft`` (CPU lists; None = all).
        nr_cpus: the host's pCPU count.
    """
    head = f"{row['name']:<32} {row['domid']:5d} {row['vcpu']:5d}"
    if row["online"]:
        sta = (f"{row['cpu']:5d} {'r' if row['running'] else '-':>3}"
               f"{'b' if row['blocked'] else '-'}- ")
    else:
        sta = f"{'-':>5} {'-':>3}-p "
    every = range(nr_cpus)
    hard = format_bitmap(every if row.get("hard") is None else row["hard"], nr_cpus)
    soft = format_bitmap(every if row.get("soft") is None else row["soft"], nr_cpus)
    return f"{head}{sta}{row['time']:9.1f}  {hard} / {soft}"


def format_vcpu_list(rows: Iterable[Mapping[str, Any]], nr_cpus: int) -> str:
    """The whole ``xl vcpu-list`` text (header first; no final newline)."""
    return "\n".join([VCPU_LIST_HEADER, *(format_vcpu_row(r, nr_cpus) for r in rows)])


def format_sched_credit_pool(pool: Mapping[str, Any]) -> str:
    """``Cpupool %s: tslice=%dms ratelimit=%dus migration-delay=%dus``."""
    return (f"Cpupool {pool['name']}: tslice={pool['tslice_ms']}ms "
            f"ratelimit={pool['ratelimit_us']}us "
            f"migration-delay={pool['migration_delay_us']}us")


def format_sched_credit_row(row: Mapping[str, Any]) -> str:
    """One ``xl sched-credit`` domain row: ``%-33s %4d %6d %4d``."""
    return f"{row['name']:<33} {row['domid']:4d} {row['weight']:6d} {row['cap']:4d}"


def format_sched_credit(pools: Sequence[Mapping[str, Any]] | None,
                        rows: Iterable[Mapping[str, Any]]) -> str:
    """``xl sched-credit`` output.

    Args:
        pools: the credit pools to announce (``xl sched-credit`` with no
            ``-d`` prints each pool's line before its domains); None for
            ``-d DOMAIN`` (header and that row only). An empty list (no
            pool runs credit1) prints nothing at all, as xl does.
        rows: ``name``, ``domid``, ``weight``, ``cap`` per domain.
    """
    body = [SCHED_CREDIT_HEADER, *(format_sched_credit_row(r) for r in rows)]
    if pools is None:
        return "\n".join(body)
    out: list[str] = []
    for pool in pools:  # xensim has a single pool, Pool-0, holding every domain
        out.append(format_sched_credit_pool(pool))
        out.extend(body)
    return "\n".join(out)


def format_info(pairs: Iterable[Sequence[Any]]) -> str:
    """``xl info``: ``key<padding to 23 columns>: value`` per line, in the given order."""
    return "\n".join(f"{key:<{INFO_KEY_WIDTH}}: {value}" for key, value in pairs)


def format_channel_row(row: Mapping[str, Any]) -> str:
    """One ``xl channel-list`` row: ``%-3d %-2d %-5d %-6d %-8d %-10s `` then the params.

    The params are xl's for ``pty`` (the frontend's ``tty``, ``%-30s ``).
    For ``socket`` xl prints nothing there; xensim prints the socket's
    ``path`` (``%-30s ``), the one place a script finds it.
    """
    line = (f"{row['idx']:<3d} {row['backend_id']:<2d} {row['state']:<5d} "
            f"{row['evtch']:<6d} {row['rref']:<8d} {row['connection']:<10} ")
    if row["connection"] == "pty":
        line += f"{row.get('tty') or '':<30} "
    elif row.get("path"):
        line += f"{row['path']:<30} "
    return line


def format_block_row(row: Mapping[str, Any]) -> str:
    """One ``xl block-list`` row: ``%-5d %-3d %-6d %-5d %-6d %-8d %-30s``.

    Args:
        row: ``devid`` (the virtual device number), ``backend_id``,
            ``frontend_id`` (xl prints it under "handle"), ``state``,
            ``evtch``, ``rref`` (-1 when absent) and ``backend`` (the path).
    """
    return (f"{row['devid']:<5d} {row['backend_id']:<3d} {row['frontend_id']:<6d} "
            f"{row['state']:<5d} {row['evtch']:<6d} {row['rref']:<8d} {row['backend']:<30}")


def format_block_list(rows: Iterable[Mapping[str, Any]]) -> str:
    """``xl block-list``: :data:`BLOCK_LIST_HEADER` then a row per disk."""
    return "\n".join([BLOCK_LIST_HEADER, *(format_block_row(r) for r in rows)])


def format_network_row(row: Mapping[str, Any]) -> str:
    """One ``xl network-list`` row: ``%-3d %-2d `` + the MAC (``%02hhx:...``, no
    blank after it) + ``%6d %5d %6d %5d/%-11d %-30s``.

    Args:
        row: ``devid``, ``backend_id``, ``mac`` (text, ``xx:xx:xx:xx:xx:xx``),
            ``state``, ``evtch``, ``rref_tx``, ``rref_rx`` (-1 when absent)
            and ``backend`` (the path). The devid is printed twice, as xl
            does (Idx and handle).
    """
    return (f"{row['devid']:<3d} {row['backend_id']:<2d} {row['mac']}"
            f"{row['devid']:>6d} {row['state']:>5d} {row['evtch']:>6d} "
            f"{row['rref_tx']:>5d}/{row['rref_rx']:<11d} {row['backend']:<30}")


def format_network_list(rows: Iterable[Mapping[str, Any]]) -> str:
    """``xl network-list``: :data:`NETWORK_LIST_HEADER` then a row per interface."""
    return "\n".join([NETWORK_LIST_HEADER, *(format_network_row(r) for r in rows)])


def format_channel_list(rows: Iterable[Mapping[str, Any]]) -> str:
    """``xl channel-list``: :data:`CHANNEL_LIST_HEADER` then a row per channel."""
    return "\n".join([CHANNEL_LIST_HEADER, *(format_channel_row(r) for r in rows)])
