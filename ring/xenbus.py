"""XenBus states and the frontend/backend handshake state machines, as tables.

Theory of operation
-------------------
Each end of a split device has a directory in xenstore with a ``state`` key
holding a :class:`XenbusState` number as a decimal string. Each end watches the
*other* end's ``state`` and reacts: the handshake is two state machines that
move each other along. This module is sans-IO: a :class:`XenbusDevice` is fed
what the driver observed (the other end's state, local events such as
"probed" or "hotplug script done") and returns a :class:`Transition` listing
the :class:`Action` s to perform, in order, and then the xenstore writes to
make (the own ``state`` key, always last). It never touches xenstore itself.

The rules live in :data:`TRANSITIONS`, one :class:`Rule` per row: (kind,
role, own state, event, guard) -> (new state, actions). An event with no
matching row raises :class:`IllegalTransition` and changes **nothing**; the
driver treats a peer-caused one as a protocol error (``fatal()``).
:func:`render_table` prints the rows of one device kind as a two-column
(frontend | backend) diagram and :func:`render_handshake` prints a whole
happy-path run, for tutorials.

Facts encoded here (Xen's ``io/xenbus.h`` and the Linux drivers):

* blkfront goes 1 -> 3 (Initialised, after publishing ring-ref and
  event-channel) -> 4 once the backend is Connected; netfront goes 1 -> 4
  directly; the secondary console frontend publishes its ring at probe (-> 3).
* Backends are only probed when their own state reads 1 (Initialising); they
  publish features and go to 2 (InitWait).
* blkback and netback switch to Connected only once the hotplug script is
  done (``hotplug-status = connected`` for vif, ``physical-device`` opened for
  vbd); until then they map the ring but keep InitWait.
* A vanished directory reads as Unknown (0): a backend then disconnects and
  unregisters; a frontend ignores it (I/O just stops).
* Seeing Connected again is idempotent: no state change, no writes (blkfront
  re-reads the size, netfront re-announces itself).
* Teardown: toolstack sets backend ``online = 0`` and ``state = 5``; the
  frontend goes to 6; the backend disconnects, goes to 6 and, being offline,
  unregisters. With ``online = 1`` a frontend that writes 1 again makes the
  backend go back to InitWait (reconnect).

Worked example (vbd, happy path)::

    front = XenbusDevice("vbd", "frontend"); back = XenbusDevice("vbd", "backend")
    back.probe()                          # -> InitWait, [PUBLISH_FEATURES], state=2
    back.hotplug_connected()              # physical-device opened: no change yet
    front.probe()                         # nothing to do while back is Initialising
    front.otherend_changed(2)             # -> Initialised, [TALK_TO_BACKEND], state=3
    back.otherend_changed(3)              # -> Connected, [MAP_RING, CONNECT], state=4
    front.otherend_changed(4)             # -> Connected, [CONNECT], state=4
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ring.errors import PeerProtocolError

__all__ = [
    "GENERIC",
    "TRANSITIONS",
    "Action",
    "IllegalTransition",
    "LocalEvent",
    "Rule",
    "Transition",
    "XenbusDevice",
    "XenbusState",
    "describe_transition",
    "parse_number",
    "parse_state",
    "render_handshake",
    "render_table",
    "render_trace",
]

DeviceKind = Literal["vbd", "vif", "console"]
Role = Literal["frontend", "backend"]
KINDS: tuple[DeviceKind, ...] = ("vbd", "vif", "console")
GENERIC = "generic"
"""The handshake of every other device type (one you write, e.g. the tutorial's ``kv``):
the frontend publishes its ring when the backend is InitWait (-> 3) and connects when
the backend is Connected (seeing Connected again is a no-op); the backend needs no
hotplug script (InitWait -> Connected as soon as the frontend is Initialised)."""
_DEVICE_TYPE = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class XenbusState(enum.IntEnum):
    """``enum xenbus_state`` (io/xenbus.h), with Xen's names and numbers."""

    Unknown = 0
    Initialising = 1
    InitWait = 2
    Initialised = 3
    Connected = 4
    Closing = 5
    Closed = 6
    Reconfiguring = 7
    Reconfigured = 8


def parse_state(value: bytes | str | int | None) -> XenbusState:
    """Interpret a ``state`` node as read from xenstore; never raises.

    Args:
        value: the node's value (peer-controlled), an int, or None when the
            node or its directory is gone.

    Returns:
        The state; :attr:`XenbusState.Unknown` for absent, empty, non-decimal
        or out-of-range values (a vanished directory reads as Unknown).
    """
    if value is None:
        return XenbusState.Unknown
    if isinstance(value, int):
        n = value
    else:
        if isinstance(value, bytes):
            try:
                value = value.decode("ascii")
            except UnicodeDecodeError:
                return XenbusState.Unknown
        value = value.rstrip("\x00").strip()
        if not value.isascii() or not value.isdigit() or len(value) > 3:
            return XenbusState.Unknown
        n = int(value)
    try:
        return XenbusState(n)
    except ValueError:
        return XenbusState.Unknown


def parse_number(raw: bytes | None, what: str, limit: int = 0xFFFFFFFF) -> int:
    """A decimal xenstore value the peer wrote (``ring-ref``, ``event-channel``...), checked.

    Args:
        raw: the value as read (peer-controlled), or None if absent.
        what: its name, for the error message.
        limit: the largest acceptable value (default: u32).

    Returns:
        The number.

    Raises:
        PeerProtocolError: absent, not plain decimal digits, or above ``limit``
            (a driver hook that lets it escape makes that device fatal).
    """
    if raw is None or not raw.isdigit() or len(raw) > 10 or int(raw) > limit:
        raise PeerProtocolError(f"{what}: expected a number <= {limit}, got {raw!r}")
    return int(raw)


class LocalEvent(enum.StrEnum):
    """Events that do not come from the other end's ``state``."""

    PROBE = "probe"
    """The driver was bound to a directory whose own state reads 1."""
    HOTPLUG_CONNECTED = "hotplug-connected"
    """Backend: hotplug script done (vif ``hotplug-status=connected``; vbd
    ``physical-device`` written and opened)."""
    TOOLSTACK_CLOSE = "toolstack-close"
    """Backend: the toolstack wrote ``online = 0`` and ``state = 5`` (detach)."""
    CLOSE = "close"
    """Local decision to shut the device down (driver unload, guest close)."""
    FATAL = "fatal"
    """``xenbus_dev_fatal``: a local error (bad keys, map failure, peer protocol error)."""
    RECONNECT = "reconnect"
    """Frontend: start again from Initialising after being Closed."""


Event = XenbusState | LocalEvent
"""A XenbusState value means "the other end was observed in this state"."""


class Action(enum.StrEnum):
    """Work the driver performs, in order, before making the writes."""

    PUBLISH_FEATURES = "publish-features"
    """Backend: write feature-* / max-* keys (in one transaction)."""
    TALK_TO_BACKEND = "talk-to-backend"
    """Frontend: read backend limits; allocate, init and grant ring pages,
    alloc_unbound event channel(s); write ring-ref*, event-channel*, protocol,
    feature keys (in one transaction)."""
    MAP_RING = "map-ring"
    """Backend: read the frontend's ring keys, map the ring(s), bind the event
    channel(s). A failure is a FATAL event."""
    CONNECT = "connect"
    """Backend: publish device details (blkback: sectors, info, sector-size,
    feature-flush-cache...) and start serving. Frontend: read the backend's
    details and start I/O (create the disk, carrier on)."""
    CHECK_RESIZE = "check-resize"
    """blkfront: backend re-announced Connected; re-read ``sectors``."""
    ANNOUNCE = "announce"
    """netfront: backend (re)connected; send a gratuitous ARP."""
    DISCONNECT = "disconnect"
    """Stop I/O; unmap / free ring(s) and grants; unbind ports. Idempotent."""
    UNREGISTER = "unregister"
    """Backend: destroy this driver instance (offline, or frontend vanished)."""


class IllegalTransition(Exception):
    """No rule for (state, event): nothing was changed.

    Attributes:
        state: the device's state, unchanged.
        event: the rejected event.
        caused_by_peer: True when the event was the other end's state (the
            driver should then treat the peer as broken, e.g. ``fatal()``);
            False for a local event (a bug in the driver).
    """

    def __init__(self, message: str, state: XenbusState, event: Event) -> None:
        super().__init__(message)
        self.state = state
        self.event = event
        self.caused_by_peer = isinstance(event, XenbusState)


@dataclass(frozen=True)
class Rule:
    """One row of the transition table.

    ``guard`` names flags that must be set (``"hotplug"``, ``"online"``,
    ``"mapped"``) or clear (``"!hotplug"``...). ``write_state`` is False when
    someone else already wrote the new state (the toolstack's detach).
    """

    kind: DeviceKind
    role: Role
    state: XenbusState
    event: Event
    new_state: XenbusState
    actions: tuple[Action, ...] = ()
    guard: tuple[str, ...] = ()
    write_state: bool = True

    def describe(self) -> str:
        """``Initialising --back InitWait--> Initialised [talk-to-backend]``-style text."""
        if isinstance(self.event, XenbusState):
            other = "back" if self.role == "frontend" else "front"
            ev = f"{other} {self.event.name}"
        else:
            ev = str(self.event)
        guard = f" if {' & '.join(self.guard)}" if self.guard else ""
        acts = f" [{', '.join(a.value for a in self.actions)}]" if self.actions else ""
        arrow = "" if self.new_state == self.state else f" -> {self.new_state.name}"
        return f"{self.state.name}: {ev}{guard}{arrow}{acts}"


@dataclass(frozen=True)
class Transition:
    """What the driver must do after an event.

    Attributes:
        old_state: state before the event.
        new_state: state after it.
        actions: to perform in this order.
        writes: ``(key, value)`` pairs relative to the device's own directory,
            to write after the actions (``state`` is always last).
        rule: the table row that matched.
    """

    old_state: XenbusState
    new_state: XenbusState
    actions: tuple[Action, ...]
    writes: tuple[tuple[str, str], ...]
    rule: Rule


# --- the table ------------------------------------------------------------------
S = XenbusState
A = Action
L = LocalEvent

_ACTIVE_FRONT = (S.Initialising, S.Initialised, S.Connected)
_IGNORED_BY_FRONT = (S.Unknown, S.Initialising, S.Initialised, S.Reconfiguring, S.Reconfigured)


def _frontend_rules(kind: DeviceKind) -> list[Rule]:
    r: list[Rule] = []

    def add(state: S, event: Event, new: S, *actions: A) -> None:
        r.append(Rule(kind, "frontend", state, event, new, tuple(actions)))

    if kind == "console":
        # hvc_xen: publishes ring-ref/port at probe and goes to Initialised.
        add(S.Initialising, L.PROBE, S.Initialised, A.TALK_TO_BACKEND)
    else:
        add(S.Initialising, L.PROBE, S.Initialising)
    if kind in ("vbd", GENERIC):
        add(S.Initialising, S.InitWait, S.Initialised, A.TALK_TO_BACKEND)
        # backend went straight to Connected (e.g. after resume): talk first
        add(S.Initialising, S.Connected, S.Connected, A.TALK_TO_BACKEND, A.CONNECT)
        add(S.Initialised, S.InitWait, S.Initialised)
        add(S.Initialised, S.Connected, S.Connected, A.CONNECT)
        add(S.Connected, S.Connected, S.Connected,
            *((A.CHECK_RESIZE,) if kind == "vbd" else ()))
    elif kind == "vif":
        add(S.Initialising, S.InitWait, S.Connected, A.TALK_TO_BACKEND)
        add(S.Initialising, S.Connected, S.Initialising)
        add(S.Connected, S.Connected, S.Connected, A.ANNOUNCE)
    else:
        add(S.Initialised, S.InitWait, S.Initialised)
        add(S.Initialised, S.Connected, S.Connected, A.CONNECT)
        add(S.Connected, S.Connected, S.Connected)
    for st in _ACTIVE_FRONT:
        for ev in _IGNORED_BY_FRONT:
            add(st, ev, st)
        # the backend is going away: Linux frontends go straight to Closed
        add(st, S.Closing, S.Closed, A.DISCONNECT)
        add(st, S.Closed, S.Closed, A.DISCONNECT)
        add(st, L.CLOSE, S.Closing, A.DISCONNECT)
        add(st, L.FATAL, S.Closing, A.DISCONNECT)
    add(S.Connected, S.InitWait, S.Connected)
    # guest-initiated close in progress
    for ev in (S.Unknown, S.Initialising, S.InitWait, S.Initialised, S.Connected,
               S.Reconfiguring, S.Reconfigured):
        add(S.Closing, ev, S.Closing)
    add(S.Closing, S.Closing, S.Closed)
    add(S.Closing, S.Closed, S.Closed)
    add(S.Closing, L.FATAL, S.Closing)
    add(S.Closing, L.CLOSE, S.Closing)
    # closed: wait for a local reconnect; the backend's moves are ignored
    for ev in S:
        add(S.Closed, ev, S.Closed)
    add(S.Closed, L.CLOSE, S.Closed)
    add(S.Closed, L.FATAL, S.Closed)
    add(S.Closed, L.RECONNECT, S.Initialising)
    return r


def _backend_rules(kind: DeviceKind) -> list[Rule]:
    r: list[Rule] = []

    def add(state: S, event: Event, new: S, *actions: A, guard: tuple[str, ...] = (),
            write_state: bool = True) -> None:
        r.append(Rule(kind, "backend", state, event, new, tuple(actions), guard, write_state))

    # which frontend states mean "my ring is published"
    ready = (S.Connected,) if kind == "vif" else (S.Initialised, S.Connected)
    hp = kind not in ("console", GENERIC)  # needs the hotplug script before Connected

    add(S.Initialising, L.PROBE, S.InitWait, A.PUBLISH_FEATURES)
    # -- InitWait: waiting for the frontend (and hotplug) --
    add(S.InitWait, S.Initialising, S.InitWait)
    for ev in ready:
        if hp:
            add(S.InitWait, ev, S.Connected, A.MAP_RING, A.CONNECT, guard=("hotplug", "!mapped"))
            add(S.InitWait, ev, S.InitWait, A.MAP_RING, guard=("!hotplug", "!mapped"))
            add(S.InitWait, ev, S.InitWait, guard=("mapped",))
        else:
            add(S.InitWait, ev, S.Connected, A.MAP_RING, A.CONNECT)
        add(S.Connected, ev, S.Connected)  # idempotent re-entry
    if kind == "vif":
        add(S.InitWait, S.Initialised, S.InitWait)
        add(S.Connected, S.Initialised, S.Connected)
    if hp:
        add(S.InitWait, L.HOTPLUG_CONNECTED, S.Connected, A.CONNECT, guard=("mapped",))
        add(S.InitWait, L.HOTPLUG_CONNECTED, S.InitWait, guard=("!mapped",))
        for st in (S.Initialising, S.Connected, S.Closing, S.Closed):
            add(st, L.HOTPLUG_CONNECTED, st)
    # frontend restarted without closing: drop the old ring, wait again
    add(S.Connected, S.Initialising, S.InitWait, A.DISCONNECT)
    # -- closing --
    for st in (S.InitWait, S.Connected):
        add(st, S.Closing, S.Closing, A.DISCONNECT)
        add(st, L.CLOSE, S.Closing, A.DISCONNECT)
        add(st, L.FATAL, S.Closing, A.DISCONNECT)
        # a frontend never enters these: blkback's "saw state %d at frontend"
        for ev in (S.InitWait, S.Reconfiguring, S.Reconfigured):
            add(st, ev, S.Closing, A.DISCONNECT)
    for st in (S.Initialising, S.InitWait, S.Connected, S.Closing, S.Closed):
        add(st, L.TOOLSTACK_CLOSE, S.Closing if st != S.Closed else S.Closed,
            write_state=False)
    for ev in (S.Initialising, S.InitWait, S.Initialised, S.Connected, S.Closing,
               S.Reconfiguring, S.Reconfigured):
        add(S.Closing, ev, S.Closing)
    add(S.Closing, L.CLOSE, S.Closing)
    add(S.Closing, L.FATAL, S.Closing)
    # -- closed, and the frontend going away --
    for st in (S.InitWait, S.Connected, S.Closing):
        add(st, S.Closed, S.Closed, A.DISCONNECT, guard=("online",))
        add(st, S.Closed, S.Closed, A.DISCONNECT, A.UNREGISTER, guard=("!online",))
    for st in (S.InitWait, S.Connected, S.Closing, S.Closed):
        add(st, S.Unknown, S.Closed, A.DISCONNECT, A.UNREGISTER)
    add(S.Closed, S.Closed, S.Closed, guard=("online",))
    add(S.Closed, S.Closed, S.Closed, A.UNREGISTER, guard=("!online",))
    add(S.Closed, S.Initialising, S.InitWait, guard=("online",))  # reconnect
    add(S.Closed, S.Initialising, S.Closed, A.UNREGISTER, guard=("!online",))
    for ev in (S.InitWait, S.Initialised, S.Connected, S.Closing, S.Reconfiguring,
               S.Reconfigured):
        add(S.Closed, ev, S.Closed)
    add(S.Closed, L.CLOSE, S.Closed)
    add(S.Closed, L.FATAL, S.Closed)
    return r


TRANSITIONS: tuple[Rule, ...] = tuple(
    rule for kind in (*KINDS, GENERIC)  # type: ignore[arg-type]
    for rule in (*_frontend_rules(kind), *_backend_rules(kind))
)
"""Every rule, for every device kind and role (data: print it, test it)."""

_INDEX: dict[tuple[str, str, XenbusState, Event], list[Rule]] = {}
for _rule in TRANSITIONS:
    _INDEX.setdefault((_rule.kind, _rule.role, _rule.state, _rule.event), []).append(_rule)


@dataclass
class XenbusDevice:
    """One end of one device's handshake (a blkfront instance, a netback vif...).

    Args:
        kind: the device type: ``"vbd"``, ``"vif"`` and ``"console"`` have their
            own rows; any other lower-case name (``[a-z][a-z0-9_-]{0,31}``)
            follows the :data:`GENERIC` rows (driver's choice).
        role: ``"frontend"`` or ``"backend"``.
        state: starting state (the value of the own ``state`` key; 1 for a
            fresh device).
        online: backend ``online`` key (toolstack-controlled).
        hotplug: True once the hotplug script is done (backend).

    Attributes:
        mapped: backend ring mapped / frontend ring allocated.
        removed: the instance unregistered; every further event is illegal.
        history: transitions taken, oldest first (for tests and tracing).
    """

    kind: DeviceKind
    role: Role
    state: XenbusState = XenbusState.Initialising
    online: bool = True
    hotplug: bool = False
    mapped: bool = False
    removed: bool = False
    history: list[Transition] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not _DEVICE_TYPE.fullmatch(self.kind) or self.role not in ("frontend", "backend"):
            raise ValueError(f"unknown device {self.kind!r}/{self.role!r}")
        self._rows = self.kind if self.kind in KINDS else GENERIC
        self.state = XenbusState(self.state)

    def _flag(self, name: str) -> bool:
        return bool(getattr(self, name))

    def _guard_ok(self, guard: Iterable[str]) -> bool:
        for g in guard:
            if g.startswith("!"):
                if self._flag(g[1:]):
                    return False
            elif not self._flag(g):
                return False
        return True

    def lookup(self, event: Event) -> Rule | None:
        """The rule that ``event`` would fire now, without firing it."""
        if self.removed:
            return None
        for rule in _INDEX.get((self._rows, self.role, self.state, event), ()):
            if self._guard_ok(rule.guard):
                return rule
        return None

    def handle(self, event: Event) -> Transition:
        """Apply one event.

        Args:
            event: a :class:`XenbusState` (the other end's observed state,
                peer-controlled) or a :class:`LocalEvent` (ours).

        Returns:
            The transition: actions to run, then writes to make.

        Raises:
            IllegalTransition: no rule matches; the device is unchanged.
        """
        rule = self.lookup(event)
        if rule is None:
            what = "removed device" if self.removed else f"state {self.state.name}"
            raise IllegalTransition(
                f"{self.kind} {self.role}: no transition from {what} on {event!r}",
                self.state, event,
            )
        old = self.state
        writes: tuple[tuple[str, str], ...] = ()
        if rule.new_state != old and rule.write_state:
            writes = (("state", str(int(rule.new_state))),)
        # commit (nothing above mutated the device)
        if event == LocalEvent.HOTPLUG_CONNECTED:
            self.hotplug = True
        elif event == LocalEvent.TOOLSTACK_CLOSE:
            self.online = False
        for action in rule.actions:
            if action in (Action.MAP_RING, Action.TALK_TO_BACKEND):
                self.mapped = True
            elif action == Action.DISCONNECT:
                self.mapped = False
            elif action == Action.UNREGISTER:
                self.removed = True
        if event == LocalEvent.RECONNECT or (
            self.role == "backend" and rule.new_state == XenbusState.InitWait
            and old == XenbusState.Closed
        ):
            self.mapped = False
        self.state = rule.new_state
        t = Transition(old, rule.new_state, rule.actions, writes, rule)
        self.history.append(t)
        return t

    # -- named entry points (Linux names) --------------------------------
    def otherend_changed(self, state: XenbusState | bytes | str | int | None) -> Transition:
        """The other end's ``state`` node changed (its watch fired).

        Args:
            state: the value read (peer-controlled); parsed with
                :func:`parse_state`, so garbage and absence read as Unknown.

        Returns:
            The transition.

        Raises:
            IllegalTransition: with ``caused_by_peer`` True; nothing changed.
        """
        return self.handle(parse_state(state))

    def frontend_changed(self, state: XenbusState | bytes | str | int | None) -> Transition:
        """Backend name for :meth:`otherend_changed`."""
        if self.role != "backend":
            raise ValueError("frontend_changed is a backend callback")
        return self.otherend_changed(state)

    def backend_changed(self, state: XenbusState | bytes | str | int | None) -> Transition:
        """Frontend name for :meth:`otherend_changed`."""
        if self.role != "frontend":
            raise ValueError("backend_changed is a frontend callback")
        return self.otherend_changed(state)

    def probe(self) -> Transition:
        """The driver was bound to this device (own state must read 1)."""
        return self.handle(LocalEvent.PROBE)

    def hotplug_connected(self) -> Transition:
        """Backend: the hotplug script finished (``hotplug-status=connected``)."""
        return self.handle(LocalEvent.HOTPLUG_CONNECTED)

    def toolstack_close(self) -> Transition:
        """Backend: the toolstack set ``online=0`` and ``state=5`` (detach)."""
        return self.handle(LocalEvent.TOOLSTACK_CLOSE)

    def close(self) -> Transition:
        """Shut the device down on our own initiative."""
        return self.handle(LocalEvent.CLOSE)

    def fatal(self) -> Transition:
        """``xenbus_dev_fatal``: a local error; go to Closing."""
        return self.handle(LocalEvent.FATAL)

    def reconnect(self) -> Transition:
        """Frontend: write Initialising again after Closed (then re-read the backend)."""
        return self.handle(LocalEvent.RECONNECT)


# --- rendering ------------------------------------------------------------------
def _header(kind: DeviceKind, width: int) -> list[str]:
    title = f"frontend ({kind})"
    return [f"{title:<{width}} | backend ({kind})", "-" * width + "-+-" + "-" * width]


def _two_columns(kind: DeviceKind, rows: Sequence[tuple[str, str]], width: int | None) -> str:
    """Lay ``(left, right)`` rows out under the frontend | backend header.

    ``width`` defaults to the longest left-hand text, so columns always line up.
    """
    if width is None:
        width = max([len(f"frontend ({kind})"), *(len(a) for a, _ in rows)])
    lines = _header(kind, width)
    lines.extend(f"{a:<{width}} | {b}".rstrip() for a, b in rows)
    return "\n".join(lines)


def render_table(kind: DeviceKind, width: int | None = None) -> str:
    """The rules of one device kind as a two-column (frontend | backend) text table.

    Rows that change nothing (ignored events) are left out.

    Args:
        kind: ``"vbd"``, ``"vif"`` or ``"console"``.
        width: left column width in characters (default: fit the longest rule).

    Returns:
        Printable text.
    """

    def rows(role: Role) -> list[str]:
        out = []
        for rule in TRANSITIONS:
            if rule.kind == kind and rule.role == role:
                if rule.new_state == rule.state and not rule.actions:
                    continue
                out.append(rule.describe())
        return out

    left, right = rows("frontend"), rows("backend")
    n = max(len(left), len(right))
    left += [""] * (n - len(left))
    right += [""] * (n - len(right))
    return _two_columns(kind, list(zip(left, right)), width)


def simulate_handshake(kind: DeviceKind) -> list[tuple[Role, Transition]]:
    """Run both ends of a device through connect and toolstack detach, in memory.

    Watches are modelled as: every write of ``state`` is delivered to the
    other end once. Backends get the hotplug event right after InitWait, as
    libxl runs the script when it sees state 2.

    Args:
        kind: the device kind.

    Returns:
        ``(role, transition)`` in the order they happened.
    """
    front = XenbusDevice(kind, "frontend")
    back = XenbusDevice(kind, "backend")
    trace: list[tuple[Role, Transition]] = []
    pending: list[tuple[XenbusDevice, Event]] = [(back, L.PROBE), (front, L.PROBE)]

    def deliver(dev: XenbusDevice, ev: Event) -> None:
        t = dev.handle(ev)
        trace.append((dev.role, t))
        peer = back if dev is front else front
        for key, value in t.writes:
            if key == "state":
                pending.append((peer, XenbusState(int(value))))
                if dev is back and t.new_state == S.InitWait and kind != "console":
                    pending.append((back, L.HOTPLUG_CONNECTED))

    while pending:
        dev, ev = pending.pop(0)
        deliver(dev, ev)
    # toolstack detach: backend online=0 and state=5, seen by the frontend
    pending.append((back, L.TOOLSTACK_CLOSE))
    pending.append((front, S.Closing))
    while pending:
        dev, ev = pending.pop(0)
        deliver(dev, ev)
    return trace


def describe_transition(t: Transition) -> str:
    """One line for a transition: the rule, then the writes it makes."""
    text = t.rule.describe()
    if t.writes:
        text += " " + ", ".join(f"{k}={v}" for k, v in t.writes)
    return text


def render_trace(kind: DeviceKind, trace: Sequence[tuple[Role, Transition]],
                 width: int | None = None) -> str:
    """A two-column sequence diagram of transitions that happened, in order.

    Use it to print a real driver pair's history the same way
    :func:`render_handshake` prints the table's own run.

    Args:
        kind: the device kind (for the header).
        trace: ``(role, transition)`` pairs in the order they happened.
        width: left column width (default: fit the longest frontend line).

    Returns:
        Printable text, one transition per line.
    """
    rows = [(describe_transition(t), "") if role == "frontend" else ("", describe_transition(t))
            for role, t in trace]
    return _two_columns(kind, rows, width)


def render_handshake(kind: DeviceKind, width: int | None = None) -> str:
    """A two-column sequence diagram of :func:`simulate_handshake` for ``kind``.

    Args:
        kind: the device kind.
        width: left column width (default: fit the longest frontend line).

    Returns:
        Printable text, one transition per line.
    """
    return render_trace(kind, simulate_handshake(kind), width)
