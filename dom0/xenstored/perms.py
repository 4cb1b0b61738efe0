"""XenStore node permissions, exactly as Xen 4.17's xenstored evaluates them.

Theory of operation
-------------------
A node's permission list is a tuple of ``Perm(domid, bits)`` entries written
on the wire as ``<letter><domid>`` strings: ``n`` none, ``r`` read, ``w``
write, ``b`` both. The *first* entry is special twice over: its domid is the
node's **owner** (full access, may change the list), and its letter is the
**default** for every domain not named later in the list.

Evaluation for a connection C (``perm_for_conn``):

1. C is privileged (dom0 / a Unix-socket client): read + write + owner.
2. C's domid is the owner, or C has a SET_TARGET target that is the owner:
   read + write + owner.
3. The first later entry naming C's domid (or C's target) gives its letter.
4. Otherwise the first entry's letter.

Entries that name a domain which does not exist, or which was created *after*
the node was last written (its domid was reused), are ignored (XSA-322); an
owner in that state is read as dom0. The caller supplies that knowledge as
``valid(domid, node_generation) -> bool``. Xen 4.17 makes the verdict sticky:
whenever xenstored reads a node it sets ``XS_PERM_IGNORE`` on such entries
(``domain_adjust_node_perms``), SET_PERMS sets it on entries naming a domain
that does not exist (``domain_alloc_permrefs``), and a node written back
keeps the flag - so a later write, which gives the node a newer generation
than a new domain reusing the domid, cannot revive the old rights. An
ignored entry stays in the list and GET_PERMS still prints it
(``xs_perm_to_string`` masks the flag): after domain 5 is gone, a node with
``n0 r5`` still shows ``n0 r5``, but a new domain 5 cannot read it.

Worked example: ``/local/domain/5/device/vbd/768`` has ``n5 r0``: domain 5
owns it (full access); dom0 reads it via ``r0`` (and anyway is privileged);
domain 7 gets the default ``n`` -> no access. ``/local/domain/5`` with
``n0 r5``: dom0 owns it, domain 5 may read, domain 7 may not.

Who decides what: the list is written by the node's owner or dom0 (peer
data, parsed by :func:`parse_perms`); connection identity is set by xenstored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import XsErr

__all__ = [
    "PERM_ENOENT_OK",
    "PERM_IGNORE",
    "PERM_NONE",
    "PERM_OWNER",
    "PERM_READ",
    "PERM_WRITE",
    "Perm",
    "PermList",
    "Principal",
    "format_perms",
    "parse_perms",
    "perm_for_conn",
]

PERM_NONE = 0x00
PERM_READ = 0x01
PERM_WRITE = 0x02
PERM_ENOENT_OK = 0x04
PERM_OWNER = 0x08
PERM_IGNORE = 0x10
_ALL = PERM_READ | PERM_WRITE | PERM_OWNER

_LETTER_TO_BITS = {"n": PERM_NONE, "r": PERM_READ, "w": PERM_WRITE, "b": PERM_READ | PERM_WRITE}
_BITS_TO_LETTER = {v: k for k, v in _LETTER_TO_BITS.items()}
_DOMID_MAX = 0xFFFF


@dataclass(frozen=True, slots=True)
class Perm:
    """One permission entry: ``domid`` gets ``bits`` (READ/WRITE)."""

    domid: int
    bits: int

    def __str__(self) -> str:
        # The IGNORE flag is internal: GET_PERMS prints the letter (as Xen does).
        return f"{_BITS_TO_LETTER[self.bits & (PERM_READ | PERM_WRITE)]}{self.domid}"

    @property
    def ignored(self) -> bool:
        """The entry names a dead or reused domid and grants nothing."""
        return bool(self.bits & PERM_IGNORE)

    def as_ignored(self) -> Perm:
        """This entry with ``XS_PERM_IGNORE`` set."""
        return Perm(self.domid, self.bits | PERM_IGNORE)


PermList = tuple[Perm, ...]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: the identity xenstored attached to a connection.

    Attributes:
        domid: the connection's domain (0 for Unix-socket clients).
        privileged: dom0 or a socket client: bypasses every check.
        target: SET_TARGET domain whose rights this connection shares.
    """

    domid: int
    privileged: bool
    target: int | None = None


def parse_perms(items: Sequence[bytes]) -> PermList:
    """Parse wire permission strings (``b"r5"``...) into a list.

    Args:
        items: peer-supplied strings, at least one.

    Returns:
        The entries in order.

    Raises:
        XsErr: ``EINVAL`` for an empty list, an unknown letter, or a bad domid.
    """
    if not items:
        raise XsErr("EINVAL")
    out = []
    for item in items:
        if len(item) < 2 or len(item) > 6:
            raise XsErr("EINVAL")
        letter = chr(item[0])
        digits = item[1:]
        if letter not in _LETTER_TO_BITS or not digits.isdigit():
            raise XsErr("EINVAL")
        domid = int(digits)
        if domid > _DOMID_MAX:
            raise XsErr("EINVAL")
        out.append(Perm(domid, _LETTER_TO_BITS[letter]))
    return tuple(out)


def format_perms(perms: PermList) -> bytes:
    """The GET_PERMS reply payload: each entry as a NUL-terminated string."""
    return b"".join(str(p).encode() + b"\0" for p in perms)


def perm_for_conn(
    who: Principal,
    perms: PermList,
    generation: int,
    valid: Callable[[int, int], bool],
    priv_domid: int = 0,
) -> int:
    """The access bits ``who`` has on a node (see the module docstring).

    Args:
        who: the requesting connection's identity (xenstored-controlled).
        perms: the node's list (owner/dom0-controlled).
        generation: the node's generation (xenstored-controlled).
        valid: ``valid(domid, generation)`` is False for entries naming a dead
            or reused domid. Entries flagged ``PERM_IGNORE`` never match.
        priv_domid: the privileged domain, which owns orphaned nodes.

    Returns:
        A mask of PERM_READ / PERM_WRITE / PERM_OWNER.
    """
    if who.privileged:
        return _ALL
    owner = perms[0].domid
    if owner != priv_domid and not valid(owner, generation):
        owner = priv_domid
    me = who.domid
    target = who.target
    if owner == me or (target is not None and owner == target):
        return _ALL
    for p in perms[1:]:
        if (
            (p.domid == me or (target is not None and p.domid == target))
            and not p.bits & PERM_IGNORE
            and valid(p.domid, generation)
        ):
            return p.bits & _ALL
    return perms[0].bits & _ALL
