"""XenStore transactions with Xen's generation-count conflict detection.

Theory of operation
-------------------
Every stored write stamps the node with the next value of a global counter
``G`` (:meth:`Store.next_generation`), so a node's generation changes
whenever the node does, and a deleted-then-recreated node never repeats a
generation. A missing node has generation ``NO_GENERATION``.

A transaction keeps, per node it touched (the *accessed* list, in order):

* the generation it saw on its **first access if that access was a read**
  (``check_gen``) - reads of missing nodes count, with ``NO_GENERATION``;
* whether it **modified** the node;
* its private copy (``overlay``): the node as first read (a snapshot; stored
  nodes are immutable, so a reference is a copy), or as written/deleted.

Reads inside the transaction see the overlay first, then the global tree.
Nothing global changes until commit. ``TRANSACTION_END "T"``:

1. for every accessed node with ``check_gen``: if its global generation
   differs from the one recorded, answer ``EAGAIN`` and apply nothing;
2. check the node-count quota with the transaction's per-owner deltas;
3. copy every modified node into the global tree (fresh generation) or
   delete it, then fire the queued watch events.

``"F"`` just drops everything. Worked example (from Xen's own header)::

    I: g(A)=1 g(B)=2, G=3
    start T1                     T1 reads A: saw g(A)=1
    someone writes A: g(A)=4     T1 writes B (private)
    end T1: g(A)=4 != 1  ->  EAGAIN, B unchanged globally

A node whose first access was a write is not checked: the committed value
simply wins. In practice WRITE, MKDIR, RM and SET_PERMS all read the node (and
the parent of a node they create) first, exactly as xenstored's ``get_node``
does, so those reads are checked too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .errors import XsErr
from .store import NO_GENERATION, Event, Node, Store

__all__ = ["Access", "Transaction"]


@dataclass(slots=True)
class Access:
    """What a transaction did to one node."""

    generation: int
    check_gen: bool
    modified: bool = False


@dataclass
class Transaction:
    """A transaction's private view of the store (a :class:`~.store.View`).

    Args:
        store: the global store.
        tx_id: the id handed to the client (connection-local).
        node_limit: max distinct nodes touched (None: unlimited, privileged).
    """

    store: Store
    tx_id: int
    node_limit: int | None = None
    generation: int = 0
    overlay: dict[str, Node | None] = field(default_factory=dict)
    accessed: dict[str, Access] = field(default_factory=dict)
    owner_delta: Counter[int] = field(default_factory=Counter)
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.generation = self.store.next_generation()

    def _touch(self, path: str) -> None:
        if (
            path not in self.accessed
            and self.node_limit is not None
            and len(self.accessed) >= self.node_limit
        ):
            raise XsErr("ENOSPC")

    def read(self, path: str) -> Node | None:
        """The node as this transaction sees it (records a read access).

        Raises:
            XsErr: ``ENOSPC`` past the transaction-nodes quota.
        """
        overlay = self.overlay
        if path in overlay:
            return overlay[path]
        self._touch(path)
        node = self.store.nodes.get(path)
        self.accessed[path] = Access(
            node.generation if node is not None else NO_GENERATION, check_gen=True
        )
        overlay[path] = node
        return node

    def reserve(self, paths: list[str]) -> None:
        """Refuse up front if writing ``paths`` would pass the node quota.

        Raises:
            XsErr: ``ENOSPC``.
        """
        if self.node_limit is None:
            return
        new = {p for p in paths if p not in self.accessed}
        if len(self.accessed) + len(new) > self.node_limit:
            raise XsErr("ENOSPC")

    def _modify(self, path: str, node: Node | None) -> None:
        acc = self.accessed.get(path)
        if acc is None:
            self._touch(path)
            self.accessed[path] = Access(NO_GENERATION, check_gen=False, modified=True)
        else:
            acc.modified = True
        self.overlay[path] = node

    def write(self, path: str, node: Node, old: Node | None) -> None:
        """Write ``node`` privately (``old``: what this transaction saw)."""
        node.generation = self.store.next_generation()
        self._modify(path, node)
        if old is None:
            self.owner_delta[node.owner] += 1
        elif old.owner != node.owner:
            self.owner_delta[old.owner] -= 1
            self.owner_delta[node.owner] += 1

    def delete(self, path: str, old: Node) -> None:
        """Delete privately."""
        self._modify(path, None)
        self.owner_delta[old.owner] -= 1

    def owner_count(self, domid: int) -> int:
        """Nodes ``domid`` would own if this transaction committed now."""
        return self.store.count(domid) + self.owner_delta.get(domid, 0)

    def conflicts(self, first_only: bool = False) -> list[str]:
        """Nodes this transaction read whose global generation changed since.

        Args:
            first_only: stop at the first one (the commit check).
        """
        nodes = self.store.nodes
        out = []
        for path, acc in self.accessed.items():
            if not acc.check_gen:
                continue
            cur = nodes.get(path)
            gen = cur.generation if cur is not None else NO_GENERATION
            if gen != acc.generation:
                out.append(path)
                if first_only:
                    break
        return out

    def modified_paths(self) -> list[str]:
        """Nodes this transaction wrote or deleted."""
        return [p for p, acc in self.accessed.items() if acc.modified]

    def commit(self, node_quota: int | None, exempt: frozenset[int]) -> list[Event]:
        """Apply the transaction atomically or not at all.

        Args:
            node_quota: per-domain node limit (None: unchecked).
            exempt: domids the node limit does not apply to (privileged).

        Returns:
            The watch events to fire, in order.

        Raises:
            XsErr: ``EAGAIN`` on a conflict, ``ENOSPC`` over the node quota;
                the global store is untouched in both cases.
        """
        nodes = self.store.nodes
        if self.conflicts(first_only=True):
            raise XsErr("EAGAIN")
        if node_quota is not None:
            for domid, delta in self.owner_delta.items():
                if delta > 0 and domid not in exempt and self.owner_count(domid) > node_quota:
                    raise XsErr("ENOSPC")
        store = self.store
        owners = store.owners
        for path, acc in self.accessed.items():
            if not acc.modified:
                continue
            node = self.overlay[path]
            cur = nodes.get(path)
            if cur is not None:
                owners[cur.owner] -= 1
            if node is None:
                nodes.pop(path, None)
            else:
                node.generation = store.next_generation()
                nodes[path] = node
                owners[node.owner] += 1
        return self.events
