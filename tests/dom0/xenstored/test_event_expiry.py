"""Unread watch events expire on a timer (Xen 4.17 ``-w watch-event=20``)."""

from __future__ import annotations

import time

import trio
import trio.testing

from dom0.xenstored import XenStore
from dom0.xenstored.unix_server import serve_connection
from ring.xs_wire import XsMessage, XsType


def _req(xs: XenStore, conn: object, t: int, payload: bytes) -> None:
    xs.handle(conn, XsMessage(t, 1, 0, payload))  # type: ignore[arg-type]


async def test_events_for_a_guest_that_stops_reading_expire_without_draining(
    autojump_clock: trio.abc.Clock,
) -> None:
    xs = XenStore(clock=trio.current_time)
    xs.quotas.memory = 10_000
    guest = xs.introduce(5)
    tools = xs.connect_socket()
    assert tools.event_timeout is None  # dom0's events never expire
    _req(xs, tools, XsType.MKDIR, b"/local/domain/5\0")
    _req(xs, tools, XsType.SET_PERMS, b"/local/domain/5\0n5\0")
    client, daemon = trio.testing.lockstep_stream_pair()  # the guest never reads
    async with trio.open_nursery() as n:
        n.start_soon(serve_connection, xs, daemon, guest)
        _req(xs, guest, XsType.WATCH, b"flood\0tok\0")
        for i in range(2000):
            _req(xs, tools, XsType.WRITE, b"/local/domain/5/flood\0" + str(i).encode())
        await trio.testing.wait_all_tasks_blocked()
        queued = guest.event_bytes
        assert 0 < queued <= 10_000 and guest.events_dropped > 0
        dropped = guest.events_dropped
        # at most about a ring's worth is in flight; the rest stays queued
        await trio.sleep(19.9)
        assert guest.event_bytes == queued
        await trio.sleep(0.2)  # 20 s after queueing: dropped, unread, undrained
        assert guest.event_bytes == 0 and not guest.out
        assert guest.events_dropped > dropped
        # the budget is back: new events are queued again
        _req(xs, tools, XsType.WRITE, b"/local/domain/5/flood\0new")
        assert guest.event_bytes > 0
        assert abs(xs.event_expiry_delay(guest) - 20.0) < 1e-6  # type: ignore[operator]
        n.cancel_scope.cancel()
    await client.aclose()


def test_stale_events_do_not_hold_the_budget() -> None:
    """Sans-IO: a new event that does not fit first expires the stale ones."""
    now = [0.0]
    xs = XenStore(clock=lambda: now[0])
    xs.quotas.memory = 200
    guest = xs.introduce(5)
    tools = xs.connect_socket()
    _req(xs, tools, XsType.MKDIR, b"/local/domain/5\0")
    _req(xs, tools, XsType.SET_PERMS, b"/local/domain/5\0n5\0")
    _req(xs, guest, XsType.WATCH, b"w\0t\0")
    guest.take_output(now[0])
    for i in range(20):
        _req(xs, tools, XsType.WRITE, b"/local/domain/5/w\0" + str(i).encode())
    full = guest.event_bytes
    assert guest.events_dropped > 0
    now[0] = 20.0
    _req(xs, tools, XsType.WRITE, b"/local/domain/5/w\0x")
    assert guest.event_bytes < full  # the old ones expired, the new one fits
    msgs = guest.take_messages(now[0])
    assert [m[0] for m in msgs] == [XsType.WATCH_EVENT]
    # replies never expire
    _req(xs, guest, XsType.READ, b"w\0")
    now[0] = 100.0
    assert xs.expire_events(guest) == 0
    assert [m[0] for m in guest.take_messages(now[0])] == [XsType.READ]


def test_default_clock_is_monotonic() -> None:
    xs = XenStore()
    assert abs(xs.clock() - time.monotonic()) < 1.0
