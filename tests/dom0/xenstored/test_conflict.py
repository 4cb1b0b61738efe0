"""A guest hammering writes cannot starve dom0's transactions (conflict credit)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dom0.xenstored import XenStore
from dom0.xenstored.conflict import ConflictCredit
from dom0.xenstored.unix_server import serve_connection
from domu.xenstore import XenStoreError, open_xenstore
from ring.xs_wire import XsType

from .scenario import MK, SP, TE, TS, Harness, R, w

NODE = "/local/domain/5/data/n"


def _setup(h: Harness) -> None:
    h.run([
        ("dom0", 0, (MK, ("/local/domain/5/data",)), "OK"),
        ("dom0", 0, (SP, ("/local/domain/5/data", "n5")), "OK"),
        ("d5", 0, w(NODE, "0"), "OK"),
    ])


def _dom0_attempt(h: Harness, guest_writes: list[int]) -> bool:
    """One dom0 transaction that reads and writes NODE, with the guest trying
    to write NODE between the read and the commit. The guest's write is
    made only if the core lets its transport hand the request in."""
    h.txs.pop("tx", None)
    t, p = h.request("dom0", "tx", (TS, b"\0"))
    assert t == TS
    h.run([("dom0", "tx", (R, (NODE,)), None), ("dom0", "tx", w(NODE, "dom0"), "OK")])
    if h.xs.input_delay(h.conn("d5")) is None:
        guest_writes[0] += 1
        h.run([("d5", 0, w(NODE, str(guest_writes[0])), "OK")])
    t, p = h.request("dom0", "tx", (TE, ("T",)))
    if t == TE:
        return True
    assert p == b"EAGAIN\0"
    return False


def _attempts_until_commit(h: Harness, limit: int) -> int | None:
    writes = [0]
    for attempt in range(1, limit + 1):
        if _dom0_attempt(h, writes):
            return attempt
    return None


def test_without_the_defence_a_hammering_guest_starves_dom0() -> None:
    h = Harness(XenStore(clock=lambda: 0.0, conflicts=ConflictCredit(burst=0)))
    h.xs.domain_info = h.info
    _setup(h)
    assert _attempts_until_commit(h, 100) is None


def test_conflict_credit_lets_dom0_commit_and_delays_the_guest() -> None:
    now = [0.0]
    h = Harness(XenStore(clock=lambda: now[0]))
    h.xs.domain_info = h.info
    _setup(h)
    guest = h.conn("d5")
    # five conflicts spend the guest's credit; the sixth attempt commits
    assert _attempts_until_commit(h, 100) == 6
    assert h.xs.conflicts.credit[5] == 0
    assert h.xs.conflicts.blamed == 5
    delay = h.xs.input_delay(guest)
    assert delay == pytest.approx(0.05)
    # the guest is delayed, not refused: its credit comes back on the clock
    now[0] += 0.049
    assert h.xs.input_delay(guest) is not None
    now[0] += 0.002
    assert h.xs.input_delay(guest) is None
    h.run([("d5", 0, w(NODE, "again"), "OK"), ("dom0", 0, (R, (NODE,)), b"again")])
    # dom0 is never delayed, and a transaction it did not interfere with
    # blames nobody
    assert h.xs.input_delay(h.conn("dom0")) is None
    # credit refills to the burst limit and the domain leaves the books
    now[0] += 1.0
    assert h.xs.input_delay(guest) is None
    assert 5 not in h.xs.conflicts.credit


def test_only_the_domains_that_caused_the_conflict_pay() -> None:
    now = [0.0]
    h = Harness(XenStore(clock=lambda: now[0]))
    h.xs.domain_info = h.info
    _setup(h)
    h.run([
        ("dom0", 0, (MK, ("/local/domain/7/data",)), "OK"),
        ("dom0", 0, (SP, ("/local/domain/7/data", "n7")), "OK"),
        # guest 7 runs the victim transaction; guest 5 breaks it, guest 7's
        # own write and an unrelated write by domain 5 do not count
        ("d7", "t7", (TS, b"\0"), None),
        ("d7", "t7", (R, ("/local/domain/5/data/n",)), "!EACCES"),
        ("d7", "t7", (R, ("/local/domain/7/data/x",)), "!ENOENT"),
        ("d7", 0, w("/local/domain/7/data/x", "self"), "OK"),
        ("d7", "t7", (TE, ("T",)), "!EAGAIN"),
    ])
    assert h.xs.conflicts.blamed == 0  # a domain never blames itself
    h.run([
        ("d7", "t8", (TS, b"\0"), None),
        ("d7", "t8", (R, ("/local/domain/7/data/x",)), b"self"),
        ("d5", 0, w("/local/domain/5/data/unrelated", "1"), "OK"),
        ("dom0", 0, w("/local/domain/7/data/x", "dom0"), "OK"),  # dom0 is free to conflict
        ("d7", "t8", (TE, ("T",)), "!EAGAIN"),
    ])
    assert h.xs.conflicts.blamed == 0
    h.run([
        ("dom0", 0, (SP, ("/local/domain/7/data/x", "n7", "w5")), "OK"),
        ("d7", "t9", (TS, b"\0"), None),
        ("d7", "t9", (R, ("/local/domain/7/data/x",)), b"dom0"),
        ("d5", 0, w("/local/domain/7/data/x", "by5"), "OK"),
        ("d7", "t9", (TE, ("T",)), "!EAGAIN"),
    ])
    assert h.xs.conflicts.blamed == 1 and h.xs.conflicts.credit == {5: 4.0}
    # with no transaction open, no history is kept
    assert not h.xs.conflicts._history
    # a released domain leaves no credit debt to a new domain with its domid
    h.run([("dom0", 0, (XsType.RELEASE, ("5",)), "OK")])
    assert 5 not in h.xs.conflicts.credit


def test_credit_is_handed_out_one_point_per_tick_paused_first() -> None:
    cc = ConflictCredit(burst=2.0, tick=1.0)
    cc.record(1, ["/a"], 10)
    cc.record(2, ["/a"], 11)
    assert cc.blame(None, 5, ["/a"], now=0.0) == [1, 2]
    assert cc.blame(None, 5, ["/a"], now=0.0) == [1, 2]
    assert cc.credit == {1: 0.0, 2: 0.0}
    assert cc.delay(1, 0.0) == 1.0 and cc.delay(2, 0.5) == 0.5
    assert cc.delay(1, 1.0) is None  # first in the paused queue
    assert cc.delay(2, 1.0) is not None
    assert cc.delay(2, 2.0) is None
    assert cc.credit == {1: 1.0, 2: 1.0}
    assert cc.delay(1, 10.0) is None and cc.credit == {}
    cc.trim(None)
    assert cc.blame(None, 5, ["/a"], now=11.0) == []  # history forgotten
    with pytest.raises(ValueError):
        ConflictCredit(tick=0)


async def test_hammering_guest_over_transports(autojump_clock: trio.abc.Clock) -> None:
    """Real transports, trio clock: the guest writes in a tight loop while
    dom0 retries a read-modify-write transaction on the same node. Every
    dom0 transaction commits within burst + 1 attempts, and the guest keeps
    making progress between them."""
    xs = XenStore(clock=trio.current_time)
    tools = xs.connect_socket()
    guest = xs.introduce(5)
    d0_client, d0_daemon = trio.testing.memory_stream_pair()
    g_client, g_daemon = trio.testing.memory_stream_pair()
    guest_writes = 0
    attempts_per_commit: list[int] = []
    guest_progress: list[int] = []
    waited: list[float] = []

    wrote = trio.Event()

    async def hammer(g: object) -> None:
        nonlocal guest_writes, wrote
        while True:
            await g.write(NODE, str(guest_writes))  # type: ignore[attr-defined]
            guest_writes += 1
            wrote.set()
            wrote = trio.Event()

    async with trio.open_nursery() as n:
        n.start_soon(serve_connection, xs, d0_daemon, tools)
        n.start_soon(serve_connection, xs, g_daemon, guest)
        async with open_xenstore(d0_client) as d0, open_xenstore(g_client) as g:
            await d0.mkdir("/local/domain/5/data")
            await d0.set_perms("/local/domain/5/data", ["n5"])
            await g.write(NODE, "start")
            n.start_soon(hammer, g)
            for _ in range(5):
                attempts = 0
                while True:
                    attempts += 1
                    try:
                        async with d0.transaction_start() as tx:
                            value = await tx.read(NODE)
                            await tx.write(NODE, value + b"+dom0")
                        break
                    except XenStoreError as e:
                        assert e.name == "EAGAIN"
                        assert attempts < 50, "dom0 starved"
                attempts_per_commit.append(attempts)
                # the guest is delayed, not starved: its next write lands once
                # its credit regenerates (the clock jumps when all are blocked)
                before, t0 = guest_writes, trio.current_time()
                while guest_writes == before:
                    await wrote.wait()
                guest_progress.append(guest_writes - before)
                waited.append(trio.current_time() - t0)
            n.cancel_scope.cancel()
    assert all(a <= 6 for a in attempts_per_commit), attempts_per_commit
    assert max(attempts_per_commit) > 1  # the guest really did interfere
    assert all(p > 0 for p in guest_progress), guest_progress
    assert all(t <= 0.05 + 1e-6 for t in waited), waited  # at most one credit tick
    assert xs.conflicts.blamed >= 5
