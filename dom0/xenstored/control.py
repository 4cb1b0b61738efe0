"""``XS_CONTROL`` commands (what ``xenstore-control`` sends), privileged only.

Supported: ``check``, ``log [on|off]``, ``memreport``, ``print <text>``,
``quota [<name> <value> | <domid>]``, ``quota-soft [<value>]``, ``help``.
Replies are text plus a NUL, as in C xenstored; ``check`` and setters reply
``OK``. An unknown command or bad argument is ``EINVAL``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import XsErr
from .quota import QUOTA_HELP

if TYPE_CHECKING:
    from .core import XenStore

__all__ = ["check_store", "run_control"]

_HELP = {
    "check": "check store consistency",
    "help": "this list",
    "log": "[on|off] switch request logging",
    "memreport": "show memory and object usage",
    "print": "<string> print string to the log",
    "quota": "[[<quota> <val>]|<domid>] show or set hard limits, or a domain's usage",
    "quota-soft": "[<val>] show or set the soft memory limit",
}


def check_store(xs: XenStore) -> list[str]:
    """Consistency problems of the tree (empty when healthy).

    Checks that every node's parent exists and lists it, every listed child
    exists, and the per-owner node counts match the tree.
    """
    from collections import Counter

    problems = []
    nodes = xs.store.nodes
    owners: Counter[int] = Counter()
    for path, node in nodes.items():
        owners[node.owner] += 1
        prefix = "" if path == "/" else path
        for child in node.children:
            if f"{prefix}/{child}" not in nodes:
                problems.append(f"{path}: missing child {child}")
        if path != "/":
            i = path.rfind("/")
            parent = nodes.get(path[:i] if i > 0 else "/")
            if parent is None or path[i + 1:] not in parent.children:
                problems.append(f"{path}: not listed by its parent")
    for domid, count in xs.store.owners.items():
        if (count != owners.get(domid, 0) and domid in owners) or (count and domid not in owners):
            problems.append(f"owner {domid}: counted {count}, tree has {owners.get(domid, 0)}")
    return problems


def _text(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode() + b"\0"


def run_control(xs: XenStore, args: list[bytes]) -> bytes:
    """Execute one CONTROL request.

    Args:
        xs: the daemon.
        args: the request's strings (privileged caller, still validated).

    Returns:
        The reply payload.

    Raises:
        XsErr: ``EINVAL`` for unknown commands or arguments.
    """
    if not args:
        raise XsErr("EINVAL")
    try:
        cmd = args[0].decode("ascii")
        rest = [a.decode("ascii") for a in args[1:]]
    except UnicodeDecodeError:
        raise XsErr("EINVAL") from None
    if cmd == "check":
        problems = check_store(xs)
        if problems:
            return _text(problems)
        return b"OK\0"
    if cmd == "help":
        return _text([f"{k:<12}{v}" for k, v in _HELP.items()])
    if cmd == "log":
        if rest and rest[0] not in ("on", "off"):
            raise XsErr("EINVAL")
        if rest:
            xs.logging = rest[0] == "on"
        return b"OK\0"
    if cmd == "print":
        return b"OK\0"
    if cmd == "memreport":
        return _text([f"{k}: {v}" for k, v in xs.stats().items()])
    if cmd == "quota":
        q = xs.quotas
        if not rest:
            rows = [f"{n + ':':<22}{q.get(n):>8}  {QUOTA_HELP[n]}" for n in q.names()]
            return _text(["Quota settings:", *rows])
        if len(rest) == 1 and rest[0].isdigit():
            domid = int(rest[0])
            if domid not in xs.domains:
                raise XsErr("ENOENT")
            dom = xs.domains[domid]
            conn = dom.conn
            return _text(
                [
                    f"Domain {domid}:",
                    f"nodes:                {xs.store.count(domid):>8}",
                    f"watches:              {len(conn.watches) if conn else 0:>8}",
                    f"transactions:         {len(conn.transactions) if conn else 0:>8}",
                    f"outstanding:          {conn.replies_queued if conn else 0:>8}",
                ]
            )
        if len(rest) == 2 and rest[1].isdigit():
            try:
                q.set(rest[0], int(rest[1]))
            except (KeyError, ValueError):
                raise XsErr("EINVAL") from None
            return b"OK\0"
        raise XsErr("EINVAL")
    if cmd == "quota-soft":
        if not rest:
            soft = xs.quotas.memory_soft
            return _text(["Soft quota settings:", f"memory:               {soft:>8}"])
        if len(rest) == 2 and rest[0] == "memory" and rest[1].isdigit():
            xs.quotas.memory_soft = int(rest[1])
            return b"OK\0"
        raise XsErr("EINVAL")
    raise XsErr("EINVAL")
