"""Table-driven xenstored scenarios: (connection, transaction, request, expected)."""

from __future__ import annotations

from typing import Any

import pytest

from dom0.xenstored import DomainState
from ring.xs_wire import XsType

from .scenario import GP, MK, RM, SP, TE, TS, UW, WA, D, Harness, R, w

X = XsType

# dom0 builds what libxl builds: /local/domain/<D> "n0 r<D>", data/ "n<D>".
HOMES: list[tuple[Any, ...]] = []
for _d in (5, 7):
    HOMES += [
        ("dom0", 0, (MK, (f"/local/domain/{_d}",)), "OK"),
        ("dom0", 0, (SP, (f"/local/domain/{_d}", "n0", f"r{_d}")), "OK"),
        ("dom0", 0, w(f"/local/domain/{_d}/name", f"guest{_d}"), "OK"),
        ("dom0", 0, (MK, (f"/local/domain/{_d}/data",)), "OK"),
        ("dom0", 0, (SP, (f"/local/domain/{_d}/data", f"n{_d}")), "OK"),
    ]

BASICS = [
    ("dom0", 0, w("/a/b/c", "v"), "OK"),
    ("dom0", 0, (R, ("/a/b/c",)), b"v"),
    ("dom0", 0, (R, ("/a/b",)), b""),
    ("dom0", 0, (D, ("/a",)), b"b\0"),
    ("dom0", 0, w("/a/b/d", b"bin\0ary"), "OK"),
    ("dom0", 0, (R, ("/a/b/d",)), b"bin\0ary"),
    ("dom0", 0, (D, ("/a/b",)), b"c\0d\0"),
    ("dom0", 0, (D, ("/a/b/c",)), b""),
    ("dom0", 0, (MK, ("/a/b",)), "OK"),
    ("dom0", 0, (R, ("/a/b/c",)), b"v"),
    ("dom0", 0, (GP, ("/a/b/c",)), b"n0\0"),
    ("dom0", 0, (RM, ("/a/b/zz",)), "OK"),
    ("dom0", 0, (RM, ("/a/zz/zz",)), "!ENOENT"),
    ("dom0", 0, (RM, ("/",)), "!EINVAL"),
    ("dom0", 0, (RM, ("/a",)), "OK"),
    ("dom0", 0, (R, ("/a/b/c",)), "!ENOENT"),
    ("dom0", 0, (R, ("/a",)), "!ENOENT"),
    ("dom0", 0, (X.GET_DOMAIN_PATH, ("12",)), "/local/domain/12"),
    ("dom0", 0, (X.GET_DOMAIN_PATH, ("x",)), "!EINVAL"),
    ("dom0", 0, w("name", "Domain-0"), "OK"),
    ("dom0", 0, (R, ("/local/domain/0/name",)), b"Domain-0"),
    ("dom0", 0, (X.IS_DOMAIN_INTRODUCED, ("0",)), "T"),
    ("dom0", 0, (X.IS_DOMAIN_INTRODUCED, ("42",)), "F"),
]

PERMISSIONS = [
    *HOMES,
    ("d5", 0, (R, ("name",)), b"guest5"),
    ("d5", 0, (R, ("/local/domain/5/name",)), b"guest5"),
    ("d5", 0, w("name", "evil"), "!EACCES"),
    ("d5", 0, w("data/x", "1"), "OK"),
    ("d5", 0, (GP, ("data/x",)), b"n5\0"),
    ("d5", 0, w("newdir/x", "1"), "!EACCES"),  # home is n0 r5: no create
    ("d5", 0, (R, ("nothere",)), "!ENOENT"),  # parent readable
    ("d7", 0, (R, ("/local/domain/5/nothere",)), "!EACCES"),  # parent hidden
    ("d7", 0, (R, ("/local/domain/5/name",)), "!EACCES"),
    ("d7", 0, (R, ("/local/domain/5/data/x",)), "!EACCES"),
    ("d7", 0, (D, ("/local/domain/5",)), "!EACCES"),
    ("d5", 0, (SP, ("data/x", "n7")), "!EPERM"),  # only dom0 changes owners
    ("d5", 0, (SP, ("data/x", "n5", "r7")), "OK"),
    ("d7", 0, (R, ("/local/domain/5/data/x",)), b"1"),
    ("d7", 0, w("/local/domain/5/data/x", "2"), "!EACCES"),
    ("d7", 0, (SP, ("/local/domain/5/data/x", "n7")), "!EACCES"),
    ("d7", 0, (GP, ("/local/domain/5/data/x",)), b"n5\0r7\0"),
    ("d5", 0, (SP, ("data/x", "n5", "r1", "r2", "r3", "r4", "r6")), "!ENOSPC"),
    ("d5", 0, (SP, ("data/x", "q5")), "!EINVAL"),
    ("d5", 0, (SP, ("data/x",)), "!EINVAL"),
    # The first entry's letter is everyone else's default; the owner has all.
    ("dom0", 0, w("/pub", "p"), "OK"),
    ("dom0", 0, (SP, ("/pub", "r0")), "OK"),
    ("d7", 0, (R, ("/pub",)), b"p"),
    ("d7", 0, w("/pub", "x"), "!EACCES"),
    ("dom0", 0, (SP, ("/pub", "w0", "n7")), "OK"),
    ("d5", 0, w("/pub/by5", "x"), "OK"),  # default w: may create, owns it
    ("d5", 0, (GP, ("/pub/by5",)), b"w5\0n7\0"),
    ("d7", 0, (R, ("/pub/by5",)), "!EACCES"),
    ("d7", 0, w("/pub/by7", "x"), "!EACCES"),
    ("d7", 0, (RM, ("/pub",)), "!EACCES"),  # n7 overrides the default
    ("d5", 0, (RM, ("/",)), "!EACCES"),
    ("d5", 0, w("/", "x"), "!EACCES"),
    # privileged-only operations are refused in one place
    ("d5", 0, (X.CONTROL, ("check",)), "!EACCES"),
    ("d5", 0, (X.INTRODUCE, ("9", "1", "2")), "!EACCES"),
    ("d5", 0, (X.RELEASE, ("7",)), "!EACCES"),
    ("d5", 0, (X.SET_TARGET, ("5", "7")), "!EACCES"),
    ("d5", 0, (X.IS_DOMAIN_INTRODUCED, ("7",)), "!EACCES"),
    ("d5", 0, (X.RESUME, ("5",)), "!EACCES"),
    # SET_TARGET: domain 5 gets domain 7's rights (device-model stubdom)
    ("dom0", 0, (X.SET_TARGET, ("5", "7")), "OK"),
    ("d5", 0, (R, ("/local/domain/7/name",)), b"guest7"),
    ("d5", 0, w("/local/domain/7/data/dm", "1"), "OK"),
    ("dom0", 0, (GP, ("/local/domain/7/data/dm",)), b"n5\0"),  # creator owns, as in Xen
]

WATCHES = [
    *HOMES,
    ("dom0", 0, (WA, ("/w", "t1")), "OK"),
    ("events", "dom0", [("/w", "t1")]),
    ("dom0", 0, (WA, ("/w", "t1")), "!EEXIST"),
    ("dom0", 0, (WA, ("/w", "t2")), "OK"),
    ("events", "dom0", [("/w", "t2")]),
    ("dom0", 0, w("/w/x/y", "1"), "OK"),
    ("events", "dom0", [("/w", "t1"), ("/w", "t2"), ("/w/x", "t1"), ("/w/x", "t2"),
                        ("/w/x/y", "t1"), ("/w/x/y", "t2")]),
    ("dom0", 0, (UW, ("/w", "t2")), "OK"),
    ("dom0", 0, (UW, ("/w", "t2")), "!ENOENT"),
    ("dom0", 0, w("/wx", "not below /w"), "OK"),
    ("events", "dom0", []),
    ("dom0", 0, (WA, ("/w/x/y/z", "deep")), "OK"),
    ("events", "dom0", [("/w/x/y/z", "deep")]),
    # rm of an ancestor fires the watch below it with its own path
    ("dom0", 0, (RM, ("/w/x",)), "OK"),
    ("events", "dom0", [("/w/x", "t1")]),
    ("dom0", 0, (WA, ("/w/x/y/z", "deep")), "!EEXIST"),
    # relative watches report relative paths
    ("d5", 0, (WA, ("data", "rel")), "OK"),
    ("events", "d5", [("data", "rel")]),
    ("d5", 0, w("data/k", "1"), "OK"),
    ("events", "d5", [("data/k", "rel")]),
    ("dom0", 0, w("/local/domain/5/data/k", "2"), "OK"),
    ("events", "d5", [("data/k", "rel")]),
    # no event for a node the watcher may not read
    ("d7", 0, (WA, ("/local/domain/5", "spy")), "OK"),
    ("events", "d7", [("/local/domain/5", "spy")]),
    ("dom0", 0, w("/local/domain/5/data/k", "3"), "OK"),
    ("events", "d7", []),
    ("dom0", 0, (SP, ("/local/domain/5/data/k", "n5", "r7")), "OK"),
    ("events", "d7", [("/local/domain/5/data/k", "spy")]),
    ("events", "d5", [("data/k", "rel"), ("data/k", "rel")]),
    # special watches reach only privileged watchers
    ("d5", 0, (WA, ("@releaseDomain", "rel5")), "OK"),
    ("events", "d5", [("@releaseDomain", "rel5")]),
    ("dom0", 0, (WA, ("@releaseDomain", "r")), "OK"),
    ("dom0", 0, (WA, ("@introduceDomain", "i")), "OK"),
    ("events", "dom0", [("@releaseDomain", "r"), ("@introduceDomain", "i")]),
    ("dom0", 0, (X.INTRODUCE, ("9", "100", "3")), "OK"),
    ("events", "dom0", [("@introduceDomain", "i")]),
    ("dom0", 0, (X.IS_DOMAIN_INTRODUCED, ("9",)), "T"),
    ("dom0", 0, (X.RELEASE, ("9",)), "OK"),
    ("events", "dom0", [("@releaseDomain", "r")]),
    ("events", "d5", []),
    ("dom0", 0, (X.RELEASE, ("9",)), "!ENOENT"),
    ("dom0", 0, (X.RESET_WATCHES, b"\0"), "OK"),
    ("dom0", 0, w("/w/again", "1"), "OK"),
    ("events", "dom0", []),
    ("dom0", 0, (GP, ("@releaseDomain",)), b"n0\0"),
    ("d5", 0, (SP, ("@releaseDomain", "r5")), "!EACCES"),
    ("dom0", 0, (SP, ("@releaseDomain", "n0", "r5")), "OK"),
    ("dom0", 0, (X.INTRODUCE, ("9", "100", "3")), "OK"),
    ("dom0", 0, (X.RELEASE, ("9",)), "OK"),
    ("events", "d5", [("@releaseDomain", "rel5")]),
]

TRANSACTIONS = [
    ("dom0", 0, w("/t/a", "1"), "OK"),
    ("dom0", 0, w("/t/b", "1"), "OK"),
    ("dom0", 0, (WA, ("/t", "tw")), "OK"),
    ("events", "dom0", [("/t", "tw")]),
    ("dom0", "T1", (TS, b"\0"), None),
    ("dom0", "T1", (R, ("/t/a",)), b"1"),
    ("dom0", "T1", w("/t/b", "2"), "OK"),
    ("dom0", "T1", (R, ("/t/b",)), b"2"),  # sees its own write
    ("dom0", 0, (R, ("/t/b",)), b"1"),  # others do not
    ("events", "dom0", []),  # nothing fires before commit
    ("dom0", "T1", (TE, ("T",)), "OK"),
    ("events", "dom0", [("/t/b", "tw")]),
    ("dom0", 0, (R, ("/t/b",)), b"2"),
    ("dom0", "T1", (R, ("/t/b",)), "!ENOENT"),  # transaction is gone
    # conflict: T2 read a, someone else wrote a -> EAGAIN, nothing applied
    ("dom0", "T2", (TS, b"\0"), None),
    ("dom0", "T2", (R, ("/t/a",)), b"1"),
    ("dom0", "T2", w("/t/b", "3"), "OK"),
    ("dom0", "T2", w("/t/new/deep", "3"), "OK"),
    ("dom1", 0, w("/t/a", "9"), "OK"),
    ("dom0", "T2", (TE, ("T",)), "!EAGAIN"),
    ("dom0", 0, (R, ("/t/b",)), b"2"),
    ("dom0", 0, (R, ("/t/new",)), "!ENOENT"),
    # a conflicting delete, and a read of a then-missing node that appears
    ("dom0", "T3", (TS, b"\0"), None),
    ("dom0", "T3", (R, ("/t/ghost",)), "!ENOENT"),
    ("dom1", 0, w("/t/ghost", "boo"), "OK"),
    ("dom0", "T3", w("/t/c", "1"), "OK"),
    ("dom0", "T3", (TE, ("T",)), "!EAGAIN"),
    ("dom0", 0, (R, ("/t/c",)), "!ENOENT"),
    # WRITE reads the node first (as xenstored's get_node does), so a
    # concurrent change to a node the transaction overwrote is a conflict too
    ("dom0", "T4", (TS, b"\0"), None),
    ("dom0", "T4", w("/t/a", "T4"), "OK"),
    ("dom1", 0, w("/t/a", "outside"), "OK"),
    ("dom0", "T4", (TE, ("T",)), "!EAGAIN"),
    ("dom0", 0, (R, ("/t/a",)), b"outside"),
    ("dom0", "T4b", (TS, b"\0"), None),
    ("dom0", "T4b", w("/t/a", "T4"), "OK"),
    ("dom1", 0, w("/t/b", "unrelated"), "OK"),
    ("dom0", "T4b", (TE, ("T",)), "OK"),
    ("dom0", 0, (R, ("/t/a",)), b"T4"),
    # abort discards; rm inside a transaction
    ("events", "dom0", [("/t/a", "tw"), ("/t/ghost", "tw"), ("/t/a", "tw"), ("/t/b", "tw"),
                        ("/t/a", "tw")]),
    ("dom0", "T5", (TS, b"\0"), None),
    ("dom0", "T5", (RM, ("/t",)), "OK"),
    ("dom0", "T5", (R, ("/t/a",)), "!ENOENT"),
    ("dom0", "T5", (TE, ("F",)), "OK"),
    ("dom0", 0, (R, ("/t/a",)), b"T4"),
    ("events", "dom0", []),
    ("dom0", "T6", (TS, b"\0"), None),
    ("dom0", "T6", (RM, ("/t",)), "OK"),
    ("dom0", "T6", (TS, b"\0"), "!EBUSY"),
    ("dom0", "T6", (TE, ("X",)), "!EINVAL"),
    ("dom0", "T6", (TE, ("T",)), "OK"),
    ("events", "dom0", [("/t", "tw")]),
    ("dom0", 0, (D, ("/",)), b"local\0tool\0"),
    ("dom0", 0, (TE, ("T",)), "!ENOENT"),
    ("dom0", 77, (R, ("/",)), "!ENOENT"),
    ("dom0", 0, (X.CONTROL, ("check",)), "OK"),
]

LONG = "/".join(["q" * 39] * 50 + ["q" * 43])  # 2043: "data/" + LONG is 2048
QUOTAS = [
    *HOMES,
    # 11 transactions are accepted (count > 10 refused), the 12th is not
    *[("d5", f"q{i}", (TS, b"\0"), None) for i in range(11)],
    ("d5", "q11", (TS, b"\0"), "!ENOSPC"),
    *[("d5", f"q{i}", (TE, ("F",)), "OK") for i in range(11)],
    # 129 watches are accepted, the 130th is E2BIG
    *[("d5", 0, (WA, (f"data/w{i}", "t")), "OK") for i in range(129)],
    ("d5", 0, (WA, ("data/w129", "t")), "!E2BIG"),
    ("d5", 0, (X.RESET_WATCHES, b"\0"), "OK"),
    ("d5", 0, (WA, ("data/w129", "t")), "OK"),
    # node size: 24 + 8*1 perms + value must stay < 2048
    ("d5", 0, w("data/big", "x" * 2015), "OK"),
    ("d5", 0, w("data/big", "x" * 2016), "!ENOSPC"),
    ("dom0", 0, w("/local/domain/5/data/big", "x" * 4000), "OK"),  # dom0 exempt
    # path length: relative part <= 2048 for a domain
    ("d5", 0, w("data/" + LONG, "ok"), "OK"),
    ("d5", 0, w("data/" + LONG + "q", "x"), "!EINVAL"),
    ("dom0", 0, w("/local/domain/5/data/" + LONG + "q", "x"), "OK"),
    ("dom0", 0, (RM, ("/local/domain/5/data/" + LONG[:39],)), "OK"),
    # node count, set low through CONTROL; a failed creation leaves nothing
    ("dom0", 0, (X.CONTROL, ("quota", "nodes", "5")), "OK"),
    ("d5", 0, w("data/n1", ""), "OK"),  # d5 now owns data, data/big, data/n1
    ("d5", 0, w("data/m/a/b", ""), "!ENOSPC"),  # 3 more would make 6
    ("d5", 0, (R, ("data/m",)), "!ENOENT"),
    ("d5", 0, w("data/n2", ""), "OK"),
    ("d5", 0, w("data/n3", ""), "OK"),
    ("d5", 0, w("data/n4", ""), "!ENOSPC"),
    ("d5", "tq", (TS, b"\0"), None),
    ("d5", "tq", (RM, ("data/n3",)), "OK"),
    ("d5", "tq", w("data/n4", ""), "OK"),
    ("d5", "tq", w("data/n5", ""), "!ENOSPC"),
    ("d5", "tq", (TE, ("T",)), "OK"),
    ("d5", 0, (R, ("data/n4",)), b""),
    ("dom0", 0, (X.CONTROL, ("quota", "nodes", "1000")), "OK"),
    ("dom0", 0, (X.CONTROL, ("quota", "bogus", "1")), "!EINVAL"),
    ("dom0", 0, (X.CONTROL, ("quota", "5")), None),
    ("dom0", 0, (X.CONTROL, ("quota-soft",)), None),
    ("dom0", 0, (X.CONTROL, ("nosuchcmd",)), "!EINVAL"),
    ("dom0", 0, (X.CONTROL, ("check",)), "OK"),
]


# XSA-322 as in Xen 4.17: domain 5 is released and a new domain 5 introduced.
DOMID_REUSE = [
    *HOMES,
    ("dom0", 0, w("/secret", "s"), "OK"),
    ("dom0", 0, (SP, ("/secret", "n0", "r5")), "OK"),
    ("d5", 0, (R, ("/secret",)), b"s"),
    ("dom0", 0, (SP, ("@releaseDomain", "n0", "r5")), "OK"),
    ("dom0", 0, (X.RELEASE, ("5",)), "OK"),
    ("forget", "d5"),
    # GET_PERMS still prints the entry (the IGNORE flag is internal) ...
    ("dom0", 0, (GP, ("/secret",)), b"n0\0r5\0"),
    # ... but on the special nodes it is deleted (remove_domid_from_perm)
    ("dom0", 0, (GP, ("@releaseDomain",)), b"n0\0"),
    # nodes the dead domain owned are deleted; dom0's stay
    ("dom0", 0, (R, ("/local/domain/5/data",)), "!ENOENT"),
    ("dom0", 0, (GP, ("/local/domain/5",)), b"n0\0r5\0"),
    # the new domain 5 gets nothing from the old entries
    ("d5", 0, (R, ("/secret",)), "!EACCES"),
    ("d5", 0, (GP, ("/secret",)), "!EACCES"),
    ("d5", 0, (R, ("name",)), "!EACCES"),
    ("d5", 0, (WA, ("@releaseDomain", "r")), "OK"),
    ("events", "d5", [("@releaseDomain", "r")]),  # the initial event, always
    ("dom0", 0, (X.INTRODUCE, ("9", "100", "3")), "OK"),
    ("dom0", 0, (X.RELEASE, ("9",)), "OK"),
    ("events", "d5", []),  # the special node's r5 is gone: no more events
    # a rewrite stamps a generation newer than the new domain: the flag
    # keeps the entry dead anyway
    ("dom0", 0, w("/secret", "rewritten"), "OK"),
    ("d5", 0, (R, ("/secret",)), "!EACCES"),
    ("dom0", 0, (GP, ("/secret",)), b"n0\0r5\0"),
    # a child inherits the flagged list
    ("dom0", 0, w("/secret/child", "c"), "OK"),
    ("d5", 0, (R, ("/secret/child",)), "!EACCES"),
    ("dom0", 0, (GP, ("/secret/child",)), b"n0\0r5\0"),
    # domain 7 is unaffected throughout
    ("d7", 0, (R, ("/local/domain/7/name",)), b"guest7"),
    # dom0 granting the new domain 5 explicitly works
    ("dom0", 0, (SP, ("/secret", "n0", "r5")), "OK"),
    ("d5", 0, (R, ("/secret",)), b"rewritten"),
    ("dom0", 0, (X.CONTROL, ("check",)), "OK"),
]


@pytest.mark.parametrize(
    "steps",
    [BASICS, PERMISSIONS, WATCHES, TRANSACTIONS, QUOTAS, DOMID_REUSE],
    ids=["basics", "permissions", "watches", "transactions", "quotas", "domid-reuse"],
)
def test_scenario(steps: list[tuple[Any, ...]]) -> None:
    Harness().run(steps)


def test_transaction_node_quota_and_outstanding_defaults() -> None:
    h = Harness()
    h.run(HOMES)
    h.xs.quotas.transaction_nodes = 5
    h.run([
        ("d5", "t", (TS, b"\0"), None),
        # the first read also touches data/ (asking the parent), so 4 reads fill 5
        *[("d5", "t", (R, (f"data/r{i}",)), "!ENOENT") for i in range(4)],
        ("d5", "t", (R, ("data/r4",)), "!ENOSPC"),
        ("d5", "t", (TE, ("F",)), "OK"),
    ])
    assert h.xs.outstanding_limit(h.conn("d5")) == 20


def test_domid_reuse_inherits_nothing() -> None:
    h = Harness()
    h.run([
        ("dom0", 0, w("/shared", "secret"), "OK"),
        ("dom0", 0, (SP, ("/shared", "n0", "r9")), "OK"),
        ("dom0", 0, (MK, ("/local/domain/9",)), "OK"),
        ("dom0", 0, (SP, ("/local/domain/9", "n9")), "OK"),
        ("d9", 0, (R, ("/shared",)), b"secret"),
        ("d9", 0, w("mine/a", "1"), "OK"),
        ("dom0", 0, (WA, ("@releaseDomain", "rel")), "OK"),
        ("events", "dom0", [("@releaseDomain", "rel")]),
    ])
    assert h.xs.store.count(9) == 3
    h.info.set(9, None)  # destroyed in the hypervisor
    h.xs.check_domains()
    h.run([
        ("events", "dom0", [("@releaseDomain", "rel")]),
        ("dom0", 0, (R, ("/local/domain/9",)), "!ENOENT"),  # owned nodes deleted
        ("dom0", 0, (GP, ("/shared",)), b"n0\0r9\0"),
    ])
    assert h.xs.store.count(9) == 0
    assert 9 not in h.xs.domains
    h.info.set(9, DomainState.RUNNING)  # a new domain gets domid 9
    del h.conns["d9"]
    h.run([
        ("d9", 0, (R, ("/shared",)), "!EACCES"),  # old r9 does not apply
        ("dom0", 0, w("/shared", "rewritten"), "OK"),
        ("d9", 0, (R, ("/shared",)), "!EACCES"),  # nor after a rewrite
        # Xen 4.17 keeps the entry, flagged XS_PERM_IGNORE, and GET_PERMS
        # prints it (xs_perm_to_string masks the flag); it grants nothing.
        ("dom0", 0, (GP, ("/shared",)), b"n0\0r9\0"),
        ("dom0", 0, (X.CONTROL, ("check",)), "OK"),
    ])


def test_set_perms_naming_a_missing_domain_is_ignored_at_once() -> None:
    """domain_alloc_permrefs: an entry for a domain that does not exist is
    flagged XS_PERM_IGNORE when set, so a domain created later with that
    domid - even one older than a later rewrite - gets nothing from it."""
    h = Harness()
    h.info.set(42, None)
    h.run([
        ("dom0", 0, w("/early", "x"), "OK"),
        ("dom0", 0, (SP, ("/early", "n0", "r42")), "OK"),
        ("dom0", 0, (GP, ("/early",)), b"n0\0r42\0"),
    ])
    h.info.set(42, DomainState.RUNNING)
    h.run([
        ("d42", 0, (R, ("/early",)), "!EACCES"),
        ("dom0", 0, w("/early", "y"), "OK"),  # newer than domain 42's record
        ("d42", 0, (R, ("/early",)), "!EACCES"),
        ("dom0", 0, (SP, ("/early", "n0", "r42")), "OK"),  # now it exists
        ("d42", 0, (R, ("/early",)), b"y"),
    ])


def test_shutdown_and_resume_fire_release_once_each() -> None:
    h = Harness()
    h.run([
        ("d5", 0, (X.GET_DOMAIN_PATH, ("5",)), "/local/domain/5"),
        ("dom0", 0, (WA, ("@releaseDomain", "r")), "OK"),
        ("events", "dom0", [("@releaseDomain", "r")]),
    ])
    h.info.set(5, DomainState.SHUTDOWN)
    h.xs.check_domains()
    h.xs.check_domains()
    h.run([("events", "dom0", [("@releaseDomain", "r")])])
    h.run([("dom0", 0, (X.RESUME, ("5",)), "OK"), ("dom0", 0, (X.RESUME, ("6",)), "!ENOENT")])
    h.xs.check_domains()
    h.run([("events", "dom0", [("@releaseDomain", "r")])])
    h.info.set(5, DomainState.DYING)
    h.xs.check_domains()
    h.run([("events", "dom0", [("@releaseDomain", "r")])])
    assert 5 not in h.xs.domains
    assert h.conns["d5"].closed


def test_directory_part_pages_large_directories() -> None:
    h = Harness()
    names = [f"child-with-a-long-name-{i:04d}" for i in range(400)]
    for n in names:
        h.run([("dom0", 0, w(f"/big/{n}", ""), "OK")])
    t, p = h.request("dom0", 0, (D, ("/big",)))
    assert (t, p) == (X.ERROR, b"E2BIG\0")
    got: list[str] = []
    offset = 0
    gens = set()
    while True:
        t, p = h.request("dom0", 0, (X.DIRECTORY_PART, ("/big", str(offset))))
        assert t == X.DIRECTORY_PART and len(p) <= 4096
        gen, _, rest = p.partition(b"\0")
        gens.add(gen)
        if rest == b"\0":
            break
        done = rest.endswith(b"\0\0")
        body = rest[:-1] if done else rest
        items = body[:-1].split(b"\0")
        got += [i.decode() for i in items]
        offset += len(body)
        if done:
            break
    assert got == names and len(gens) == 1


def test_thousand_level_path_needs_no_recursion() -> None:
    h = Harness()
    deep = "/d" * 1000  # 2000 characters, 1000 levels
    h.run([
        ("dom0", 0, (WA, ("/d", "top")), "OK"),
        ("dom0", 0, w(deep, "bottom"), "OK"),
        ("dom0", 0, (R, (deep,)), b"bottom"),
    ])
    h.collect()
    assert len(h.events["dom0"]) == 1 + 1000
    h.run([
        ("dom0", "t", (TS, b"\0"), None),
        ("dom0", "t", (RM, ("/d",)), "OK"),
        ("dom0", "t", (TE, ("T",)), "OK"),
        ("dom0", 0, (R, ("/d",)), "!ENOENT"),
        ("dom0", 0, (X.CONTROL, ("check",)), "OK"),
    ])
    assert len(h.xs.store.nodes) == 5
