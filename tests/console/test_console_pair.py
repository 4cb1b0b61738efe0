"""Front/daemon pair on one plain page, no hypervisor: edge cases and misuse.

"Events" are delivered by calling the other side's handler directly, so each
test controls exactly when a notification arrives.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from dom0.console import ConsoleDaemon, ConsoleGone
from dom0.console.daemon import _new_suffix
from domu.frontends.console import ConsoleClosed, ConsoleFront


class Pair:
    """A page, a frontend and a daemon wired to notify each other synchronously-later."""

    def __init__(self, daemon: ConsoleDaemon, domid: int = 7, **kw: int) -> None:
        self.page = memoryview(bytearray(4096))
        self.daemon = daemon
        self.to_daemon = 0
        self.to_guest = 0
        self.front = ConsoleFront(self.page, self._guest_notify)
        self.handler = daemon.add_domain(domid, "pair", self.page, self._daemon_notify, **kw)
        self.domid = domid

    def _guest_notify(self) -> None:
        self.to_daemon += 1
        self.handler(1)

    def _daemon_notify(self) -> None:
        self.to_guest += 1
        self.front.handle_event(1)


@pytest.fixture
async def daemon(nursery: trio.Nursery) -> ConsoleDaemon:
    d = ConsoleDaemon(rate_limit_events=None)
    await nursery.start(d.run)
    return d


async def test_notify_only_when_something_moved(daemon: ConsoleDaemon) -> None:
    p = Pair(daemon)
    await p.front.write(b"")
    assert p.to_daemon == 0
    await p.front.write(b"abc")
    assert p.to_daemon == 1 and p.to_guest == 1  # daemon drained and said so
    p.handler(1)  # a spurious event: nothing to read, no notify back
    assert p.to_guest == 1


async def test_readline_limit_and_leftovers(daemon: ConsoleDaemon) -> None:
    p = Pair(daemon)
    async with daemon.attach(p.domid) as s:
        await s.send(b"abcdefgh\nrest")
    assert await p.front.readline(limit=4) == b"abcd"
    assert await p.front.readline() == b"efgh\n"
    assert await p.front.read(2) == b"re"
    assert await p.front.read() == b"st"
    with pytest.raises(ValueError):
        await p.front.read(0)


async def test_daemon_stop_ends_sessions_and_senders(nursery: trio.Nursery) -> None:
    d = ConsoleDaemon()
    stopper = trio.CancelScope()

    async def run_daemon() -> None:
        with stopper:
            await d.run()

    nursery.start_soon(run_daemon)
    await trio.testing.wait_all_tasks_blocked()
    p = Pair(d)
    ended: list[str | None] = []
    errors: list[BaseException] = []

    async def view() -> None:
        async with d.attach(p.domid) as s:
            async for _ in s:
                pass
            ended.append(s.end_reason)
            try:
                await s.send(b"x")
            except ConsoleGone as exc:
                errors.append(exc)

    nursery.start_soon(view)
    await trio.testing.wait_all_tasks_blocked()
    assert ended == []
    stopper.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert ended == ["daemon stopped"] and len(errors) == 1
    with pytest.raises(ConsoleGone):
        async with d.attach(p.domid):
            pass
    with pytest.raises(RuntimeError):
        await d.run()


async def test_remove_domain_ends_session(daemon: ConsoleDaemon,
                                          nursery: trio.Nursery) -> None:
    p = Pair(daemon)
    ended: list[str | None] = []

    async def view() -> None:
        async with daemon.attach(p.domid) as s:
            async for _ in s:
                pass
            ended.append(s.end_reason)

    nursery.start_soon(view)
    await trio.testing.wait_all_tasks_blocked()
    daemon.remove_domain(p.domid)
    await trio.testing.wait_all_tasks_blocked()
    assert ended == ["removed"]


async def test_misuse_raises_loudly(daemon: ConsoleDaemon) -> None:
    p = Pair(daemon)
    with pytest.raises(ValueError):
        daemon.add_domain(p.domid, "again", p.page, lambda: None)
    with pytest.raises(ValueError):
        daemon.add_domain(9, "tiny", memoryview(bytearray(100)), lambda: None)
    with pytest.raises(ValueError):
        daemon.add_domain(9, "nolimit", memoryview(bytearray(4096)), lambda: None, limit=0)
    with pytest.raises(KeyError):
        daemon.stats(99)
    with pytest.raises(KeyError):
        async with daemon.attach(99):
            pass
    daemon.remove_domain(p.domid)
    with pytest.raises(KeyError):
        daemon.remove_domain(p.domid)
    with pytest.raises(ValueError):
        ConsoleDaemon(rate_limit_events=0)
    p.handler(1)  # a late event after removal is ignored


async def test_detached_session_cannot_send(daemon: ConsoleDaemon) -> None:
    p = Pair(daemon)
    async with daemon.attach(p.domid) as s:
        pass
    assert s.end_reason == "detached"
    with pytest.raises(ConsoleGone):
        await s.send(b"x")


async def test_cancelled_write_keeps_queued_bytes(daemon: ConsoleDaemon) -> None:
    page = memoryview(bytearray(4096))
    front = ConsoleFront(page, lambda: None)  # nobody drains
    with trio.move_on_after(1) as cs:
        await front.write(b"q" * 5000)
    assert cs.cancelled_caught and front.bytes_written == 2048
    front.close()
    front.close()  # idempotent
    with pytest.raises(ConsoleClosed):
        await front.read()


def test_new_suffix_matches_a_drop_oldest_ring() -> None:
    rng = random.Random(1234)
    for _ in range(2000):
        size = rng.randint(1, 80)
        alphabet = b"ab" if rng.random() < 0.5 else bytes(range(256))
        ring = b""
        for _ in range(6):
            old = ring
            add = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
            ring = (ring + add)[-size:]
            got = _new_suffix(old, ring)
            assert (old + got).endswith(ring)
            if len(old) + len(add) <= size:  # no wrap: exact
                assert got == add
