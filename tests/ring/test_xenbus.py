"""XenBus handshake state machines, table-driven: (role, state, event) -> (new, writes)."""

from __future__ import annotations

import collections

import pytest

from ring.xenbus import (
    TRANSITIONS,
    Action,
    IllegalTransition,
    LocalEvent,
    XenbusDevice,
    XenbusState,
    parse_state,
    render_handshake,
    render_table,
    simulate_handshake,
)

S = XenbusState
L = LocalEvent
A = Action

# (kind, role, state, flags, event) -> (new state, actions, writes)
CASES = [
    ("vbd", "backend", S.Initialising, {}, L.PROBE,
     S.InitWait, (A.PUBLISH_FEATURES,), (("state", "2"),)),
    ("vbd", "frontend", S.Initialising, {}, S.InitWait,
     S.Initialised, (A.TALK_TO_BACKEND,), (("state", "3"),)),
    ("vbd", "frontend", S.Initialised, {}, S.Connected,
     S.Connected, (A.CONNECT,), (("state", "4"),)),
    ("vbd", "frontend", S.Connected, {}, S.Connected, S.Connected, (A.CHECK_RESIZE,), ()),
    ("vbd", "backend", S.InitWait, {"hotplug": True}, S.Initialised,
     S.Connected, (A.MAP_RING, A.CONNECT), (("state", "4"),)),
    ("vbd", "backend", S.InitWait, {}, S.Initialised, S.InitWait, (A.MAP_RING,), ()),
    ("vbd", "backend", S.InitWait, {"mapped": True}, L.HOTPLUG_CONNECTED,
     S.Connected, (A.CONNECT,), (("state", "4"),)),
    ("vbd", "backend", S.Connected, {}, S.Connected, S.Connected, (), ()),
    ("vif", "frontend", S.Initialising, {}, S.InitWait,
     S.Connected, (A.TALK_TO_BACKEND,), (("state", "4"),)),
    ("vif", "backend", S.InitWait, {"hotplug": True}, S.Initialised, S.InitWait, (), ()),
    ("vif", "backend", S.InitWait, {}, S.Connected, S.InitWait, (A.MAP_RING,), ()),
    ("vif", "backend", S.InitWait, {"hotplug": True}, S.Connected,
     S.Connected, (A.MAP_RING, A.CONNECT), (("state", "4"),)),
    ("vif", "frontend", S.Connected, {}, S.Connected, S.Connected, (A.ANNOUNCE,), ()),
    ("console", "frontend", S.Initialising, {}, L.PROBE,
     S.Initialised, (A.TALK_TO_BACKEND,), (("state", "3"),)),
    ("console", "backend", S.InitWait, {}, S.Initialised,
     S.Connected, (A.MAP_RING, A.CONNECT), (("state", "4"),)),
    # teardown
    ("vbd", "backend", S.Connected, {}, L.TOOLSTACK_CLOSE, S.Closing, (), ()),
    ("vbd", "frontend", S.Connected, {}, S.Closing, S.Closed, (A.DISCONNECT,), (("state", "6"),)),
    ("vbd", "backend", S.Closing, {"online": False}, S.Closed,
     S.Closed, (A.DISCONNECT, A.UNREGISTER), (("state", "6"),)),
    ("vif", "backend", S.Closing, {"online": True}, S.Closed,
     S.Closed, (A.DISCONNECT,), (("state", "6"),)),
    ("vbd", "backend", S.Connected, {}, S.Closing, S.Closing, (A.DISCONNECT,), (("state", "5"),)),
    ("vbd", "frontend", S.Connected, {}, L.CLOSE, S.Closing, (A.DISCONNECT,), (("state", "5"),)),
    ("vbd", "frontend", S.Closing, {}, S.Closing, S.Closed, (), (("state", "6"),)),
    # frontend vanished / backend vanished
    ("vif", "backend", S.Connected, {}, S.Unknown,
     S.Closed, (A.DISCONNECT, A.UNREGISTER), (("state", "6"),)),
    ("vif", "frontend", S.Connected, {}, S.Unknown, S.Connected, (), ()),
    # reconnect
    ("vbd", "backend", S.Closed, {"online": True}, S.Initialising,
     S.InitWait, (), (("state", "2"),)),
    ("vbd", "backend", S.Closed, {"online": False}, S.Initialising, S.Closed, (A.UNREGISTER,), ()),
    ("vbd", "frontend", S.Closed, {}, L.RECONNECT, S.Initialising, (), (("state", "1"),)),
    ("vbd", "backend", S.Connected, {}, S.Initialising,
     S.InitWait, (A.DISCONNECT,), (("state", "2"),)),
    # a frontend in a state it never uses is fatal for the backend
    ("vbd", "backend", S.Connected, {}, S.InitWait, S.Closing, (A.DISCONNECT,), (("state", "5"),)),
    ("vbd", "backend", S.Connected, {}, L.FATAL, S.Closing, (A.DISCONNECT,), (("state", "5"),)),
]


@pytest.mark.parametrize(
    ("kind", "role", "state", "flags", "event", "new", "actions", "writes"), CASES)
def test_transition_table(kind, role, state, flags, event, new, actions, writes) -> None:
    dev = XenbusDevice(kind, role, state, **flags)
    t = dev.handle(event)
    assert (t.new_state, t.actions, t.writes) == (new, actions, writes)
    assert dev.state == new


@pytest.mark.parametrize(
    ("kind", "role", "state", "event"),
    [
        ("vbd", "backend", S.InitWait, L.PROBE),  # only probed in Initialising
        ("vbd", "backend", S.Connected, L.PROBE),
        ("vbd", "backend", S.Initialising, S.Initialised),  # not probed yet
        ("vif", "frontend", S.Connected, L.PROBE),
        ("vbd", "frontend", S.Connected, L.RECONNECT),
        ("vbd", "frontend", S.Initialising, L.HOTPLUG_CONNECTED),
        ("vbd", "frontend", S.Initialising, L.TOOLSTACK_CLOSE),
    ],
)
def test_illegal_transition_raises_and_changes_nothing(kind, role, state, event) -> None:
    dev = XenbusDevice(kind, role, state, hotplug=True)
    before = (dev.state, dev.online, dev.hotplug, dev.mapped, dev.removed, len(dev.history))
    with pytest.raises(IllegalTransition) as info:
        dev.handle(event)
    assert info.value.caused_by_peer == isinstance(event, XenbusState)
    assert (dev.state, dev.online, dev.hotplug, dev.mapped, dev.removed,
            len(dev.history)) == before


def test_removed_device_accepts_nothing() -> None:
    dev = XenbusDevice("vbd", "backend", S.Connected)
    dev.otherend_changed(None)  # directory vanished -> Unknown
    assert dev.removed and dev.state == S.Closed
    with pytest.raises(IllegalTransition):
        dev.otherend_changed(1)


def test_netback_waits_for_hotplug_in_either_order() -> None:
    back = XenbusDevice("vif", "backend")
    back.probe()
    t = back.frontend_changed("4")
    assert t.actions == (A.MAP_RING,) and back.state == S.InitWait
    assert back.frontend_changed(b"4").actions == ()  # watch fired again: coalesced
    t = back.hotplug_connected()
    assert t.writes == (("state", "4"),) and t.actions == (A.CONNECT,)
    assert back.frontend_changed("4").writes == ()


def test_parse_state() -> None:
    assert parse_state(b"4") == S.Connected
    assert parse_state("6\x00") == S.Closed
    for bad in (None, b"", b"9", b"-1", b"x", b"\xff", "٣", "4444", 99):
        assert parse_state(bad) == S.Unknown
    assert [int(s) for s in S] == list(range(9))


def test_table_is_deterministic_data() -> None:
    keys = collections.Counter((r.kind, r.role, r.state, r.event, r.guard) for r in TRANSITIONS)
    assert max(keys.values()) == 1
    # guarded alternatives never overlap: for any flags at most one rule matches
    for kind in ("vbd", "vif", "console"):
        for role in ("frontend", "backend"):
            for state in S:
                for event in [*S, *L]:
                    for hotplug in (False, True):
                        for online in (False, True):
                            for mapped in (False, True):
                                dev = XenbusDevice(kind, role, state, online=online,
                                                   hotplug=hotplug, mapped=mapped)
                                matches = [r for r in TRANSITIONS
                                           if (r.kind, r.role, r.state, r.event)
                                           == (kind, role, state, event)
                                           and dev._guard_ok(r.guard)]
                                assert len(matches) <= 1


@pytest.mark.parametrize("kind", ["vbd", "vif", "console"])
def test_full_handshake_and_detach(kind: str) -> None:
    trace = simulate_handshake(kind)  # type: ignore[arg-type]
    front = [t for role, t in trace if role == "frontend"]
    back = [t for role, t in trace if role == "backend"]
    front_states = [t.new_state for t in front if t.writes]
    expected = {"vbd": [S.Initialised, S.Connected, S.Closed],
                "vif": [S.Connected, S.Closed],
                "console": [S.Initialised, S.Connected, S.Closed]}[kind]
    assert front_states == expected
    assert [t.new_state for t in back if t.writes] == [S.InitWait, S.Connected, S.Closed]
    assert back[-1].actions == (A.DISCONNECT, A.UNREGISTER)
    text = render_handshake(kind)  # type: ignore[arg-type]
    assert "frontend" in text and "backend" in text
    table = render_table(kind)  # type: ignore[arg-type]
    assert " | " in table and "probe" in table


def test_flapping_frontend_reaches_a_consistent_state() -> None:
    back = XenbusDevice("vbd", "backend", hotplug=True)
    back.probe()
    connects = disconnects = 0
    for _ in range(1000):
        for st in (S.Initialised, S.Connected, S.Closing, S.Closed, S.Initialising):
            t = back.frontend_changed(int(st))
            connects += t.actions.count(A.MAP_RING)
            disconnects += t.actions.count(A.DISCONNECT)
    assert back.state == S.InitWait and not back.mapped
    assert connects == 1000
