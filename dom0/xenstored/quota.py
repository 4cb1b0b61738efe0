"""Per-domain limits of xenstored (``docs/misc/xenstore.txt``), at Xen 4.17's defaults.

All limits apply to unprivileged connections only; dom0 and Unix-socket
clients are exempt. They are readable and settable through ``CONTROL quota``
(hard limits) and ``CONTROL quota-soft`` (the memory warning level), with the
names used by ``xenstore-control quota``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["QUOTA_HELP", "Quotas"]


@dataclass
class Quotas:
    """Mutable limit settings (administrator-controlled via CONTROL).

    Attributes:
        nodes: nodes a domain may own (``-E``); a new node is refused when the
            owner already has this many (ENOSPC).
        node_size: node record size (``-S``); a write is refused when the
            record would be >= this (ENOSPC).
        watches: watches per domain (``-W``); refused when count > this (E2BIG).
        transactions: open transactions per connection (``-t``); START refused
            when open > this (ENOSPC).
        permissions: entries per node (``-A``); refused when > this (ENOSPC).
        path_max: relative path length (``-M``); longer paths are EINVAL.
        transaction_nodes: distinct nodes touched in one transaction; refused
            at >= this (ENOSPC).
        outstanding: unanswered requests per domain before xenstored stops
            reading the domain's input (back-pressure).
        memory: bytes of queued output per connection (hard); watch events
            beyond it are dropped.
        memory_soft: the warning level reported by ``quota-soft``.
        watch_event_timeout: seconds an unread watch event may wait.
    """

    nodes: int = 1000
    node_size: int = 2048
    watches: int = 128
    transactions: int = 10
    permissions: int = 5
    path_max: int = 2048
    transaction_nodes: int = 1024
    outstanding: int = 20
    memory: int = 2 * 1024 * 1024 + 512 * 1024
    memory_soft: int = 2 * 1024 * 1024
    watch_event_timeout: float = 20.0

    def names(self) -> list[str]:
        """The CONTROL names of the hard limits (``node_size`` -> ``node-size``)."""
        return [f.name.replace("_", "-") for f in fields(self) if f.name != "memory_soft"]

    def get(self, name: str) -> int | float:
        """Value of the limit called ``name`` (CONTROL spelling).

        Raises:
            KeyError: unknown name (the CONTROL handler answers EINVAL).
        """
        attr = name.replace("-", "_")
        if attr not in {f.name for f in fields(self)}:
            raise KeyError(name)
        return getattr(self, attr)

    def set(self, name: str, value: int) -> None:
        """Change the limit called ``name`` (administrator input).

        Raises:
            KeyError: unknown name.
            ValueError: negative value.
        """
        self.get(name)
        if value < 0:
            raise ValueError(value)
        setattr(self, name.replace("-", "_"), value)


QUOTA_HELP = {
    "nodes": "Nodes per domain",
    "node-size": "Max. size of a node record",
    "watches": "Watches per domain",
    "transactions": "Transactions per connection",
    "permissions": "Permission entries per node",
    "path-max": "Max. length of a relative path",
    "transaction-nodes": "Max. number of accessed nodes per transaction",
    "outstanding": "Outstanding requests per domain",
    "memory": "Queued output bytes per connection",
    "watch-event-timeout": "Seconds an unread watch event is kept",
}
