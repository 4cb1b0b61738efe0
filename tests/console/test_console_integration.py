"""Console split driver end to end: real domains, grants, event channels, dispatchers.

Every test ends with :meth:`Host.teardown`, which destroys the guests the way
the toolstack does and checks ``resource_counts()`` and the task count are
back at their baseline.
"""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing

from dom0.console import ConsoleBroken, ConsoleError, ConsoleGone, ConsoleSession
from domu.frontends.console import ConsoleBroken as FrontBroken
from domu.frontends.console import ConsoleClosed
from hypervisor.event_channel import VIRQ_CON_RING
from tests.console.conftest import Guest, Host

_U32 = struct.Struct("<I")
IN_CONS, IN_PROD, OUT_CONS, OUT_PROD = 3072, 3076, 3080, 3084


async def read_at_least(session: ConsoleSession, n: int) -> bytes:
    """Collect session output until ``n`` bytes arrived (or the session ends)."""
    got = b""
    async for chunk in session:
        got += chunk
        if len(got) >= n:
            break
    return got


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that differ position by position (catches reordering and loss)."""
    return bytes((i * 7 + seed + i // 251) & 0xFF for i in range(n))


async def test_guest_output_reaches_log_and_session(host: Host) -> None:
    g = await host.add_guest("web")
    async with host.daemon.attach(g.domid) as session:
        await g.front.write(b"Linux version 6.1\n")
        assert await read_at_least(session, 18) == b"Linux version 6.1\n"
    assert host.daemon.log(g.domid) == b"Linux version 6.1\n"
    st = host.daemon.stats(g.domid)
    assert st.bytes_out == 18 and not st.broken and st.dropped == 0
    await host.teardown()


async def test_dom0_input_reaches_guest(host: Host) -> None:
    g = await host.add_guest("web")
    async with host.daemon.attach(g.domid) as session:
        await session.send(b"root\npassword\n")
        assert await g.front.readline() == b"root\n"
        assert await g.front.readline() == b"password\n"
    assert host.daemon.stats(g.domid).bytes_in == 14
    assert g.front.bytes_read == 14
    await host.teardown()


async def test_100k_write_completes_through_2k_ring(host: Host,
                                                    autojump_clock: trio.testing.MockClock,
                                                    ) -> None:
    g = await host.add_guest("web")
    data = pattern(100 * 1024)
    async with host.daemon.attach(g.domid, queue_bytes=200 * 1024) as session:
        await g.front.write(data)
        assert await read_at_least(session, len(data)) == data
    assert host.daemon.log(g.domid) == data
    assert g.front.bytes_written == len(data)
    assert g.front.notifications >= len(data) // 2048
    await host.teardown()


async def test_input_backpressure_through_1k_ring(host: Host) -> None:
    g = await host.add_guest("web")
    data = pattern(10 * 1024, seed=3)
    done = trio.Event()
    async with host.daemon.attach(g.domid) as session:

        async def type_it() -> None:
            await session.send(data)
            done.set()

        host.nursery.start_soon(type_it)
        await trio.testing.wait_all_tasks_blocked()
        # The guest is not reading: exactly one ring's worth is in, the sender waits.
        assert host.daemon.stats(g.domid).bytes_in == 1024
        assert not done.is_set()
        got = b""
        while len(got) < len(data):
            got += await g.front.read(300)
        await done.wait()
    assert got == data
    await host.teardown()


async def test_history_keeps_newest_bytes_within_limit(host: Host) -> None:
    g = await host.add_guest("web", limit=1000)
    data = pattern(5000)
    await g.front.write(data)
    await trio.testing.wait_all_tasks_blocked()
    assert host.daemon.log(g.domid) == data[-1000:]
    st = host.daemon.stats(g.domid)
    assert st.log_discarded == 4000 and st.bytes_out == 5000
    await host.teardown()


async def test_several_sessions_and_replay(host: Host) -> None:
    g = await host.add_guest("web")
    await g.front.write(b"boot\n")
    await trio.testing.wait_all_tasks_blocked()
    async with host.daemon.attach(g.domid) as live, \
            host.daemon.attach(g.domid, replay=True) as replayed:
        await g.front.write(b"login: ")
        assert await read_at_least(live, 7) == b"login: "
        assert await read_at_least(replayed, 12) == b"boot\nlogin: "
        # Either session can type; input from both arrives, each send contiguous.
        async with trio.open_nursery() as n:
            n.start_soon(live.send, b"a" * 700)
            n.start_soon(replayed.send, b"b" * 700)
            got = b""
            while len(got) < 1400:
                got += await g.front.read()
        assert sorted([got[:700], got[700:]]) == [b"a" * 700, b"b" * 700]
    await host.teardown()


async def test_slow_session_drops_oldest_and_never_blocks(host: Host) -> None:
    g = await host.add_guest("web")
    async with host.daemon.attach(g.domid, queue_bytes=100) as slow, \
            host.daemon.attach(g.domid) as fast:
        data = pattern(3000)
        await g.front.write(data)  # completes although `slow` reads nothing
        assert await read_at_least(fast, 3000) == data
        assert slow.queued == 100
        assert await slow.__anext__() == data[-100:]
        assert slow.dropped == 2900 and fast.dropped == 0
        assert host.daemon.stats(g.domid).dropped == 2900
    assert host.daemon.log(g.domid) == data
    await host.teardown()


async def test_flood_is_rate_limited_and_bystander_still_prompt(
        host: Host, autojump_clock: trio.testing.MockClock) -> None:
    flooder = await host.add_guest("flooder")
    quiet = await host.add_guest("quiet")
    flood = pattern(1024 * 1024, seed=5)
    finished: list[float] = []

    async def do_flood() -> None:
        await flooder.front.write(flood)
        finished.append(trio.current_time())

    start = trio.current_time()
    host.nursery.start_soon(do_flood)
    await trio.sleep(0.5)  # virtual time: the flood is well under way and limited
    assert host.daemon.stats(flooder.domid).rate_limited > 0
    async with host.daemon.attach(quiet.domid) as session:
        with trio.fail_after(0.01):  # far below one 200 ms rate-limit period
            await quiet.front.write(b"hello from quiet\n")
            assert await read_at_least(session, 17) == b"hello from quiet\n"
    while not finished:
        await trio.sleep(0.1)
    elapsed = finished[0] - start
    # 30 events per 200 ms, 2 KiB per event: 1 MiB needs about 17 periods.
    assert 3.0 < elapsed < 4.0
    fst = host.daemon.stats(flooder.domid)
    assert fst.limited_periods >= 15 and fst.bytes_out == len(flood)
    assert host.daemon.log(flooder.domid) == flood[-256 * 1024:]
    qst = host.daemon.stats(quiet.domid)
    assert qst.rate_limited == 0 and qst.limited_periods == 0
    await host.teardown()


async def test_corrupt_out_indices_break_only_that_console(host: Host) -> None:
    bad = await host.add_guest("bad")
    good = await host.add_guest("good")
    async with host.daemon.attach(bad.domid) as session:
        await bad.front.write(b"ok so far\n")
        assert await read_at_least(session, 10) == b"ok so far\n"
        cons = _U32.unpack_from(bad.page, OUT_CONS)[0]
        _U32.pack_into(bad.page, OUT_PROD, (cons + 5000) & 0xFFFFFFFF)
        for _ in range(100):  # and a storm of events on top
            bad.hc.evtchn_send(bad.gport)
            await trio.testing.wait_all_tasks_blocked()
        rest = [chunk async for chunk in session]
        assert session.end_reason == "broken"
        assert b"console disabled" in b"".join(rest)
        with pytest.raises(ConsoleBroken):
            await session.send(b"x")
    st = host.daemon.stats(bad.domid)
    assert st.broken and "out ring" in (st.broken_reason or "")
    assert st.bytes_out == 10
    assert host.daemon.log(bad.domid).startswith(b"ok so far\n")
    assert b"[xenconsoled: d1 console disabled" in host.daemon.log(bad.domid)
    # A late attach ends at once, after the replay.
    async with host.daemon.attach(bad.domid, replay=True) as late:
        assert b"console disabled" in b"".join([c async for c in late])
    # The bystander is served as before.
    await good.front.write(b"still here\n")
    await trio.testing.wait_all_tasks_blocked()
    assert host.daemon.log(good.domid) == b"still here\n"
    assert not host.daemon.stats(good.domid).broken
    await host.teardown()


async def test_corrupt_in_cons_breaks_console_on_input(host: Host) -> None:
    bad = await host.add_guest("bad")
    prod = _U32.unpack_from(bad.page, IN_PROD)[0]
    _U32.pack_into(bad.page, IN_CONS, (prod - 4000) & 0xFFFFFFFF)
    async with host.daemon.attach(bad.domid) as session:
        with pytest.raises(ConsoleBroken):
            await session.send(b"hello")
        assert [c async for c in session] and session.end_reason == "broken"
    assert "in ring" in (host.daemon.stats(bad.domid).broken_reason or "")
    await host.teardown()


async def test_drain_waits_until_dom0_has_read(host: Host,
                                               autojump_clock: trio.testing.MockClock,
                                               ) -> None:
    g = await host.add_guest("web")
    await g.front.write(b"hello\n")
    await g.front.drain()
    assert host.daemon.log(g.domid) == b"hello\n"
    quiet = await host.add_guest("quiet", serve=False)  # nobody reads its ring
    await quiet.front.write(b"x")
    with trio.move_on_after(1) as scope:
        await quiet.front.drain()
    assert scope.cancelled_caught
    async with trio.open_nursery() as nursery:
        async def drainer() -> None:
            with pytest.raises(ConsoleClosed):
                await quiet.front.drain()
        nursery.start_soon(drainer)
        await trio.testing.wait_all_tasks_blocked()
        quiet.front.close()
    await host.teardown()


async def test_on_broken_tells_the_caller_once(host: Host) -> None:
    g = await host.add_guest("bad", serve=False)
    res = host.dom0.grant_map_one(g.domid, 0)
    assert res.view is not None
    g.handle = res.handle
    reasons: list[str] = []
    handler = host.daemon.add_domain(g.domid, "bad", res.view,
                                     lambda: host.dom0.evtchn_send(g.lport),
                                     on_broken=reasons.append)
    g.served = True
    host.disp0.bind(g.lport, handler)
    _U32.pack_into(g.page, OUT_PROD, 0x7FFF0000)
    for _ in range(3):
        g.hc.evtchn_send(g.gport)
        await trio.testing.wait_all_tasks_blocked()
    assert len(reasons) == 1 and reasons[0].startswith("out ring indices corrupt")
    with pytest.raises(ConsoleBroken):
        async with host.daemon.attach(g.domid) as session:
            await session.send(b"x")
    assert len(reasons) == 1
    await host.teardown()


async def test_frontend_survives_hostile_backend_indices(host: Host) -> None:
    g = await host.add_guest("web", serve=False)
    res = host.dom0.grant_map_one(g.domid, 0)
    assert res.view is not None
    g.handle = res.handle
    _U32.pack_into(res.view, IN_PROD, 0x80000000)  # "2 GiB of input"
    host.dom0.evtchn_send(g.lport)
    with pytest.raises(FrontBroken):
        await g.front.read()
    assert g.front.closed and "corrupt" in (g.front.broken_reason or "")
    with pytest.raises(FrontBroken):
        await g.front.write(b"x")
    await host.teardown()


async def test_remove_domain_during_traffic_ends_everything(host: Host) -> None:
    g = await host.add_guest("web")
    other = await host.add_guest("other")
    outcomes: dict[str, object] = {}

    async def writer() -> None:
        try:
            await g.front.write(pattern(1024 * 1024))
        except ConsoleClosed as exc:
            outcomes["writer"] = exc

    async def viewer() -> None:
        async with host.daemon.attach(g.domid) as s:
            async for _chunk in s:
                pass
            outcomes["viewer"] = s.end_reason

    async def typist() -> None:
        async with host.daemon.attach(g.domid) as s:
            try:
                await s.send(b"y" * 5000)  # the guest never reads: this waits
            except ConsoleGone as exc:
                outcomes["typist"] = exc

    for fn in (writer, viewer, typist):
        host.nursery.start_soon(fn)
    await trio.testing.wait_all_tasks_blocked()
    assert host.daemon.stats(g.domid).bytes_in == 1024
    host.unserve(g)  # remove_domain, unbind + close the port, unmap the page
    await trio.testing.wait_all_tasks_blocked()
    assert outcomes["viewer"] == "removed"
    assert isinstance(outcomes["typist"], ConsoleGone)
    assert "writer" not in outcomes  # the guest still waits for a drain...
    g.front.close()  # ...until its kernel closes the console
    await trio.testing.wait_all_tasks_blocked()
    assert isinstance(outcomes["writer"], ConsoleClosed)
    with pytest.raises(KeyError):
        host.daemon.log(g.domid)
    await other.front.write(b"unaffected\n")
    await trio.testing.wait_all_tasks_blocked()
    assert host.daemon.log(other.domid) == b"unaffected\n"
    await host.teardown()


async def test_guest_close_wakes_blocked_writer_and_reader(host: Host) -> None:
    g = await host.add_guest("web", serve=False)  # nobody drains the ring
    outcomes: list[BaseException] = []

    async def run(coro_fn: object, *args: object) -> None:
        try:
            await coro_fn(*args)  # type: ignore[operator]
        except ConsoleClosed as exc:
            outcomes.append(exc)

    host.nursery.start_soon(run, g.front.write, b"z" * 3000)
    host.nursery.start_soon(run, g.front.readline)
    await trio.testing.wait_all_tasks_blocked()
    assert g.front.bytes_written == 2048 and not outcomes
    g.front.close()
    await trio.testing.wait_all_tasks_blocked()
    assert len(outcomes) == 2 and all(type(e) is ConsoleClosed for e in outcomes)
    with pytest.raises(ConsoleClosed):
        await g.front.write(b"more")
    await host.teardown()


async def test_hypervisor_console_via_virq_con_ring(host: Host) -> None:
    vport = host.dom0.evtchn_bind_virq(VIRQ_CON_RING)
    handler = host.daemon.add_hypervisor_console(host.dom0.console_read)
    host.disp0.bind(vport, handler)
    g = await host.add_guest("web")
    lines = [f"line {i:02d} of early boot output\n".encode() for i in range(20)]
    async with host.daemon.attach(0) as session:
        for line in lines:  # 640 bytes through a 256-byte hypervisor ring
            g.hc.console_write(line)
            await trio.testing.wait_all_tasks_blocked()
        want = b"".join(b"(d%d) " % g.domid + line for line in lines)
        assert await read_at_least(session, len(want)) == want
        with pytest.raises(ConsoleError):
            await session.send(b"no input here")
    assert host.daemon.log(0) == want
    host.disp0.unbind(vport)
    host.dom0.evtchn_close(vport)
    host.daemon.remove_domain(0)
    await host.teardown()


async def test_two_guests_interleaved_io(host: Host) -> None:
    guests: list[Guest] = [await host.add_guest(f"g{i}") for i in range(3)]
    async with trio.open_nursery() as n:
        for i, g in enumerate(guests):
            n.start_soon(g.front.write, pattern(9000, seed=i))
    await trio.testing.wait_all_tasks_blocked()
    for i, g in enumerate(guests):
        assert host.daemon.log(g.domid) == pattern(9000, seed=i)
    await host.teardown()
