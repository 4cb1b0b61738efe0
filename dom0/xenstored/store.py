"""The XenStore tree: nodes, generations, and the operations on them.

The tree is a flat ``dict`` from absolute path to :class:`Node`; a node lists
its children's names. A flat map means no operation ever recurses over tree
depth: lookups are one dict probe, creating ``/a/.../z`` walks up to the
nearest existing ancestor in a loop, and removing a subtree uses an explicit
stack. A 1000-level path is as cheap as any other.

Nodes are never mutated once stored: a change builds a new :class:`Node` and
stores it. That makes a transaction's snapshot a dict of node references
(see :mod:`dom0.xenstored.transaction`).

Every stored write stamps the node with a fresh value of the global
generation counter (``Store.next_generation``); transactions compare these
stamps at commit. Access goes through a *view*: :class:`DirectView` for the
global tree, :class:`~dom0.xenstored.transaction.Transaction` for a
transaction's private view; both offer ``read``/``write``/``delete``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .errors import XsErr
from .paths import basename, get_parent
from .perms import PERM_READ, PERM_WRITE, Perm, PermList, Principal, perm_for_conn
from .quota import Quotas

__all__ = [
    "NODE_HEADER_SIZE",
    "NO_GENERATION",
    "DirectView",
    "Event",
    "Node",
    "Store",
    "TreeOps",
    "View",
]

NO_GENERATION = -1
# struct xs_tdb_record_hdr: u64 generation + 3 x u32, padded to 24 bytes.
NODE_HEADER_SIZE = 24
PERM_ENTRY_SIZE = 8


class Node:
    """One immutable tree node.

    Attributes:
        value: the node's bytes (written by whoever may write the node).
        perms: the permission list; ``perms[0].domid`` is the owner.
        children: ordered child names (dict used as an ordered set).
        childlen: sum of ``len(name) + 1`` over children (the C record size).
        generation: stamp of the last write (xenstored-controlled).
    """

    __slots__ = ("childlen", "children", "generation", "perms", "value")

    def __init__(
        self,
        value: bytes,
        perms: PermList,
        children: dict[str, None] | None = None,
        childlen: int = 0,
        generation: int = 0,
    ) -> None:
        self.value = value
        self.perms = perms
        self.children: dict[str, None] = children if children is not None else {}
        self.childlen = childlen
        self.generation = generation

    @property
    def owner(self) -> int:
        """The owner domid as stored (first permission entry)."""
        return self.perms[0].domid

    def record_size(self) -> int:
        """Size of the C xenstored record (the ``node-size`` quota measure)."""
        return (
            NODE_HEADER_SIZE + PERM_ENTRY_SIZE * len(self.perms) + len(self.value) + self.childlen
        )

    def with_value(self, value: bytes) -> Node:
        """A copy with another value (children shared: they are never mutated)."""
        return Node(value, self.perms, self.children, self.childlen)

    def with_perms(self, perms: PermList) -> Node:
        """A copy with another permission list."""
        return Node(self.value, perms, self.children, self.childlen)

    def with_child(self, name: str) -> Node:
        """A copy with ``name`` appended to the children."""
        children = dict(self.children)
        children[name] = None
        return Node(self.value, self.perms, children, self.childlen + len(name) + 1)

    def without_child(self, name: str) -> Node:
        """A copy with ``name`` removed from the children (if present)."""
        if name not in self.children:
            return self
        children = dict(self.children)
        del children[name]
        return Node(self.value, self.perms, children, self.childlen - len(name) - 1)

    def children_payload(self) -> bytes:
        """The DIRECTORY reply: each child name plus NUL."""
        return b"".join(c.encode() + b"\0" for c in self.children)


@dataclass(frozen=True, slots=True)
class Event:
    """A change to announce to watchers.

    Attributes:
        path: the changed node (absolute).
        exact: fire only watches on exactly ``path`` (subtree removal).
        perms: permission lists that grant visibility (node's, or its old
            list for SET_PERMS / removal), with the node generation.
    """

    path: str
    exact: bool
    perms: tuple[tuple[PermList, int], ...]


class Store:
    """The global tree, its generation counter and per-owner node counts.

    Args:
        priv_domid: the privileged domain that owns ``/`` (normally 0).
    """

    def __init__(self, priv_domid: int = 0) -> None:
        self.priv_domid = priv_domid
        self.generation = 1
        root_perms = (Perm(priv_domid, 0),)
        self.nodes: dict[str, Node] = {"/": Node(b"", root_perms, generation=0)}
        self.owners: Counter[int] = Counter({priv_domid: 1})
        # The nodes xenstored creates for itself, owned by dom0 with no access for
        # anyone else ("n0"), as Xen's xenstored does at start.
        view = DirectView(self)
        for path in ("/local", "/local/domain", "/tool", "/tool/xenstored"):
            parent_path = get_parent(path)
            parent = self.nodes[parent_path]
            view.write(parent_path, parent.with_child(basename(path)), parent)
            view.write(path, Node(b"", root_perms), None)

    def next_generation(self) -> int:
        """Take the next value of the global generation counter."""
        g = self.generation
        self.generation = g + 1
        return g

    def count(self, domid: int) -> int:
        """Nodes currently owned by ``domid``."""
        return self.owners.get(domid, 0)


class View(Protocol):
    """How tree operations see the store (global or inside a transaction)."""

    store: Store

    def read(self, path: str) -> Node | None: ...
    def write(self, path: str, node: Node, old: Node | None) -> None: ...
    def delete(self, path: str, old: Node) -> None: ...
    def reserve(self, paths: list[str]) -> None: ...
    def owner_count(self, domid: int) -> int: ...


class DirectView:
    """Operations on the global tree, applied at once."""

    __slots__ = ("journal", "store")

    def __init__(self, store: Store) -> None:
        self.store = store
        # When a list, every path written or deleted is appended (the core
        # uses it to record unprivileged changes for conflict credit).
        self.journal: list[str] | None = None

    def read(self, path: str) -> Node | None:
        """The node at ``path`` or None."""
        return self.store.nodes.get(path)

    def write(self, path: str, node: Node, old: Node | None) -> None:
        """Store ``node`` at ``path`` (``old`` is what it replaces, for accounting)."""
        store = self.store
        node.generation = store.next_generation()
        store.nodes[path] = node
        if self.journal is not None:
            self.journal.append(path)
        if old is None:
            store.owners[node.owner] += 1
        elif old.owner != node.owner:
            store.owners[old.owner] -= 1
            store.owners[node.owner] += 1

    def delete(self, path: str, old: Node) -> None:
        """Remove the single node at ``path``."""
        store = self.store
        del store.nodes[path]
        store.owners[old.owner] -= 1
        if self.journal is not None:
            self.journal.append(path)

    def reserve(self, paths: list[str]) -> None:
        """No per-operation node budget outside transactions."""

    def owner_count(self, domid: int) -> int:
        """Nodes owned by ``domid``."""
        return self.store.count(domid)


class TreeOps:
    """Permission-checked tree operations (xenstored_core.c semantics).

    Args:
        quotas: the limit settings (administrator-controlled).
        valid: ``valid(domid, generation)``; False for permission entries
            naming a dead or reused domain.
        priv_domid: the privileged domain.
    """

    def __init__(
        self, quotas: Quotas, valid: Callable[[int, int], bool], priv_domid: int = 0
    ) -> None:
        self.quotas = quotas
        self.valid = valid
        self.priv_domid = priv_domid

    def carry(self, node: Node) -> Node:
        """``node`` as xenstored reads it (``domain_adjust_node_perms``).

        Entries after the first that name a dead domain, or a domain newer
        than the node (a reused domid), get ``XS_PERM_IGNORE``; they stay in
        the list (GET_PERMS prints them) but grant nothing. Writing the node
        back keeps the flag, so the fresh generation a write stamps cannot
        revive the rights for a new domain with the old domid. An orphaned
        owner reads as the privileged domain.
        """
        perms = node.perms
        gen = node.generation
        valid = self.valid
        priv = self.priv_domid
        owner = perms[0]
        stale_owner = owner.domid != priv and not valid(owner.domid, gen)
        if not stale_owner and all(
            p.ignored or p.domid == priv or valid(p.domid, gen) for p in perms[1:]
        ):
            return node
        if stale_owner:
            owner = Perm(priv, owner.bits)
        rest = tuple(
            p if p.ignored or p.domid == priv or valid(p.domid, gen) else p.as_ignored()
            for p in perms[1:]
        )
        new = node.with_perms((owner, *rest))
        new.generation = gen
        return new

    def perm(self, who: Principal, node: Node) -> int:
        """Access bits ``who`` has on ``node``."""
        return perm_for_conn(who, node.perms, node.generation, self.valid, self.priv_domid)

    def get_node(self, who: Principal, view: View, path: str, want: int) -> Node:
        """Read ``path`` for an operation needing ``want`` access.

        Raises:
            XsErr: ``EACCES`` if denied; ``ENOENT`` if missing and the nearest
                existing ancestor grants ``who`` some of ``want``, else
                ``EACCES`` (no information leak).
        """
        node = view.read(path)
        if node is not None:
            if self.perm(who, node) & want == want:
                return node
            err = "EACCES"
        else:
            err = "ENOENT"
        if who.privileged:
            raise XsErr(err)
        # errno_from_parents: ask the nearest existing ancestor.
        p = path
        ancestor = None
        while p != "/":
            p = get_parent(p)
            ancestor = view.read(p)
            if ancestor is not None:
                break
        if ancestor is not None and self.perm(who, ancestor) & want:
            raise XsErr(err)
        raise XsErr("EACCES")

    def _check_size(self, who: Principal, node: Node) -> None:
        if not who.privileged and node.record_size() >= self.quotas.node_size:
            raise XsErr("ENOSPC")

    def create(self, who: Principal, view: View, path: str, value: bytes) -> list[Event]:
        """Create ``path`` and any missing ancestors (caller checked access).

        All checks happen before anything is stored, so a refused creation
        leaves nothing behind.

        Raises:
            XsErr: ``ENOSPC`` for node-count, node-size or transaction quotas.
        """
        missing = [path]
        p = get_parent(path)
        parent = view.read(p)
        while parent is None:
            missing.append(p)
            p = get_parent(p)
            parent = view.read(p)
        missing.reverse()
        parent = self.carry(parent)
        if not who.privileged and view.owner_count(who.domid) + len(missing) > self.quotas.nodes:
            raise XsErr("ENOSPC")
        # Build top-down: each new node inherits its parent's list; an
        # unprivileged creator becomes the owner.
        perms = parent.perms
        if not who.privileged:
            perms = (Perm(who.domid, perms[0].bits), *perms[1:])
        new_parent = parent.with_child(basename(missing[0]))
        self._check_size(who, new_parent)
        built: list[tuple[str, Node]] = []
        for i, name in enumerate(missing):
            if i + 1 < len(missing):
                child = basename(missing[i + 1])
                node = Node(b"", perms, {child: None}, len(child) + 1)
            else:
                node = Node(value, perms)
            self._check_size(who, node)
            built.append((name, node))
        view.reserve([p, *missing])
        view.write(p, new_parent, view.read(p))
        for name, node in built:
            view.write(name, node, None)
        return [Event(name, False, ((node.perms, node.generation),)) for name, node in built]

    def write(self, who: Principal, view: View, path: str, value: bytes) -> list[Event]:
        """WRITE: set ``path``'s value, creating it (and ancestors) if needed."""
        try:
            node = self.get_node(who, view, path, PERM_WRITE)
        except XsErr as e:
            if e.name != "ENOENT":
                raise
            return self.create(who, view, path, value)
        new = self.carry(node).with_value(value)
        self._check_size(who, new)
        view.reserve([path])
        view.write(path, new, node)
        return [Event(path, False, ((new.perms, new.generation),))]

    def mkdir(self, who: Principal, view: View, path: str) -> list[Event]:
        """MKDIR: create ``path`` with an empty value; no-op if it exists."""
        try:
            self.get_node(who, view, path, PERM_WRITE)
        except XsErr as e:
            if e.name != "ENOENT":
                raise
            return self.create(who, view, path, b"")
        return []

    def rm(self, who: Principal, view: View, path: str) -> list[Event]:
        """RM: remove ``path`` and its whole subtree (iteratively).

        Raises:
            XsErr: ``EINVAL`` for ``/``; ``ENOENT`` if neither the node nor
                its parent exists; access errors as :meth:`get_node`.
        """
        try:
            node = self.get_node(who, view, path, PERM_WRITE)
        except XsErr as e:
            if e.name == "ENOENT" and path != "/" and view.read(get_parent(path)) is not None:
                return []
            raise
        if path == "/":
            raise XsErr("EINVAL")
        parent_path = get_parent(path)
        parent = view.read(parent_path)
        if parent is None:  # pragma: no cover - parents of existing nodes exist
            raise XsErr("EINVAL")
        # Collect the subtree with an explicit stack, then delete children first.
        order: list[tuple[str, Node]] = []
        stack = [(path, node)]
        while stack:
            p, n = stack.pop()
            order.append((p, n))
            prefix = p if p != "/" else ""
            for child in n.children:
                cp = f"{prefix}/{child}"
                cn = view.read(cp)
                if cn is not None:
                    stack.append((cp, cn))
        view.reserve([parent_path, *(p for p, _ in order)])
        events = [Event(path, False, ((node.perms, node.generation),))]
        for p, n in reversed(order):
            events.append(Event(p, True, ((n.perms, n.generation),)))
            view.delete(p, n)
        view.write(parent_path, self.carry(parent).without_child(basename(path)), parent)
        return events

    def set_perms(self, who: Principal, view: View, path: str, perms: PermList) -> list[Event]:
        """SET_PERMS: replace the list (owner or dom0 only; owner change dom0 only).

        Raises:
            XsErr: ``ENOSPC`` too many entries; ``EACCES`` not the owner;
                ``EPERM`` an unprivileged caller changing the owner.
        """
        from .perms import PERM_OWNER

        if not who.privileged and len(perms) > self.quotas.permissions:
            raise XsErr("ENOSPC")
        node = self.get_node(who, view, path, PERM_WRITE | PERM_OWNER)
        if not who.privileged and perms[0].domid != node.perms[0].domid:
            raise XsErr("EPERM")
        new = node.with_perms(perms)
        self._check_size(who, new)
        view.reserve([path])
        view.write(path, new, node)
        return [Event(path, False, ((new.perms, new.generation), (node.perms, node.generation)))]

    def read(self, who: Principal, view: View, path: str) -> Node:
        """A node ``who`` may read (READ, DIRECTORY, GET_PERMS)."""
        return self.get_node(who, view, path, PERM_READ)
