"""dom0: the console daemon (Xen's ``tools/console/daemon/io.c``, xenconsoled).

Theory of operation
-------------------
One :class:`ConsoleDaemon` serves the primary console of every guest. The
caller (the dom0 kernel / toolstack glue) maps each guest's console page
(grant ref 0), binds an interdomain port, and hands both to
:meth:`ConsoleDaemon.add_domain`, which returns the synchronous handler to
bind to that port. Everything the daemon reads from a page is guest-controlled.

**On each event** (``_on_event``; never awaits, so it is atomic) the daemon

1. applies the rate limit (below); a limited domain's event is only recorded;
2. copies everything queued in ``out`` (at most 2048 bytes: one ring) once,
   with ``prod - cons`` checked by :mod:`ring.byte_ring`;
3. appends the bytes to the domain's bounded history and to every attached
   session's bounded queue, publishes ``out_cons`` and notifies the guest
   (only if something moved);
4. wakes input senders: the guest may have consumed ``in``.

So the work per event is bounded and never blocks on a slow reader.

**History.** Each domain keeps its newest ``limit`` bytes (``console/limit``;
default :data:`DEFAULT_LOG_SIZE`). Older bytes are discarded and counted.
(xenconsoled's ``--overflow-data=discard`` keeps the *start* of its tty
buffer and drops the middle, because that buffer feeds a pty; ours is a
scroll-back history, so the newest bytes are the useful ones.)

**Rate limit** (xenconsoled's ``RATE_LIMIT_ALLOWANCE`` = 30 events per
``RATE_LIMIT_PERIOD`` = 200 ms). xenconsoled counts events per domain; once
a domain has used its allowance in the current period it leaves the port
*masked* until the period ends, then unmasks (Xen re-raises a pending event)
and catches up. We do the same without touching dom0's mask bits: an event
arriving while the domain is limited only sets ``deferred`` (coalesced, like
a pending bit on a masked port) and counts ``rate_limited``; the
:meth:`ConsoleDaemon.run` timer ends the period and replays one deferred
event. Meanwhile the guest's 2 KiB ring fills and its writer waits: the
flooder slows itself to roughly ``allowance * 2048`` bytes per period, and
nobody else is affected. Worked example with the defaults: a guest printing
1 MiB in 2 KiB ring-fulls gets 30 ring-fulls (60 KiB) through at t=0, its
31st event is deferred, and at t=0.2 the timer replays it: 30 more... so the
MiB takes about 3.4 s, while another guest's ``hello`` arrives at once.

**Corrupt indices.** If a guest makes ``prod - cons`` exceed a ring's size
(in ``out``, or ``in_cons`` in ``in``), xenconsoled silently ignores the
ring. We go one step further: the console is marked *broken* (the page is
never read or written again), a warning is logged, a daemon marker is
appended to the history and sessions, sessions end and senders get
:class:`ConsoleBroken`. Only that domain is affected; no guest input can make
the handler raise. ``add_domain(on_broken=...)`` tells the caller (the
secondary-console backend, :mod:`dom0.backends.consoleback`, takes its device
to Closing).

**Sessions** (``xl console``). :meth:`ConsoleDaemon.attach` yields a
:class:`ConsoleSession`: ``async for chunk in session`` gets the output from
attach time on (optionally replaying the history first) and ``await
session.send(data)`` types into the guest's 1024-byte ``in`` ring, waiting
for space (the guest's notify after reading wakes it). Each session's queue
holds at most ``session_queue_bytes``; a reader that falls behind loses the
oldest queued bytes (counted in :attr:`ConsoleSession.dropped` and the
domain's ``dropped`` statistic) and never slows the daemon. Iteration ends
(normally) when the domain is removed or broken, or the daemon stops.

**Hypervisor console.** :meth:`ConsoleDaemon.add_hypervisor_console` serves
dom0's own console: Xen's console ring read with ``CONSOLEIO_read``. The
hypervisor raises ``VIRQ_CON_RING`` in dom0 after every ``CONSOLEIO_write``;
the returned handler (bound to that VIRQ) re-reads the ring and appends what
is new, so nothing polls. It appears as domid 0 (:meth:`log`, :meth:`attach`;
no input).

**Timing.** All time comes from trio's clock (``trio.current_time()``), so
tests drive it with ``autojump_clock``. :meth:`ConsoleDaemon.run` must be
running for rate-limited domains to catch up; when it stops every session
ends.

Usage::

    daemon = ConsoleDaemon()
    await nursery.start(daemon.run)
    handler = daemon.add_domain(domid, "web", mapped_page, lambda: dom0.evtchn_send(lport),
                                limit=int(console_limit_key))
    disp.bind(lport, handler)
    async with daemon.attach(domid, replay=True) as session:
        await session.send(b"root\\n")
        async for chunk in session:
            ...
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from hypervisor.errno import XenError
from ring.byte_ring import ConsoleDaemon as ConsoleRing
from ring.console import XENCONSOLED_RATE_LIMIT_EVENTS, XENCONSOLED_RATE_LIMIT_PERIOD_MS
from ring.errors import CorruptRingIndexError

__all__ = [
    "DEFAULT_LOG_SIZE",
    "DEFAULT_SESSION_QUEUE_BYTES",
    "HYPERVISOR_CONSOLE_DOMID",
    "ConsoleBroken",
    "ConsoleDaemon",
    "ConsoleError",
    "ConsoleGone",
    "ConsoleSession",
    "ConsoleStats",
]

logger = logging.getLogger("xensim.console")

DEFAULT_LOG_SIZE = 64 * 1024
"""Bytes of history kept per domain unless ``add_domain(limit=...)`` says otherwise."""
DEFAULT_SESSION_QUEUE_BYTES = 64 * 1024
"""Bytes an attached session may have queued before its oldest are dropped."""
HYPERVISOR_CONSOLE_DOMID = 0
"""The key of the hypervisor console (dom0's own console) in :meth:`ConsoleDaemon.log`."""


class ConsoleError(Exception):
    """A console operation cannot proceed (base class)."""


class ConsoleGone(ConsoleError):
    """The domain's console was removed, the session detached, or the daemon stopped."""


class ConsoleBroken(ConsoleError):
    """The guest corrupted its console page's indices; the console is disabled."""


@dataclass(frozen=True)
class ConsoleStats:
    """A snapshot of one domain's console counters.

    Attributes:
        bytes_out: bytes read from the guest's ``out`` ring (guest output).
        bytes_in: bytes written to the guest's ``in`` ring (input).
        events: guest events serviced.
        rate_limited: guest events deferred because the allowance was used up.
        limited_periods: periods in which the domain hit its allowance.
        log_discarded: oldest history bytes discarded to respect ``limit``.
        dropped: bytes attached sessions lost because their reader was slow.
        notify_errors: dom0 notifications the hypervisor refused.
        broken: the console is disabled (corrupt indices).
        broken_reason: why (None while healthy).
    """

    bytes_out: int
    bytes_in: int
    events: int
    rate_limited: int
    limited_periods: int
    log_discarded: int
    dropped: int
    notify_errors: int
    broken: bool
    broken_reason: str | None


@dataclass(eq=False)
class _Console:
    """Daemon-private state of one served console (never shared with a guest)."""

    domid: int
    name: str
    limit: int
    ring: ConsoleRing | None = None
    notify: Callable[[], None] | None = None
    on_broken: Callable[[str], None] | None = None
    reader: Callable[[], bytes] | None = None
    hv_snapshot: bytes = b""
    history: bytearray = field(default_factory=bytearray)
    sessions: set[ConsoleSession] = field(default_factory=set)
    input_lot: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)
    input_lock: trio.Lock = field(default_factory=trio.Lock)
    # rate limiting (xenconsoled's event_count / next_period)
    event_count: int = 0
    next_period: float = -math.inf
    limited: bool = False
    deferred: bool = False
    # lifecycle
    removed: bool = False
    broken_reason: str | None = None
    # counters
    bytes_out: int = 0
    bytes_in: int = 0
    events: int = 0
    rate_limited: int = 0
    limited_periods: int = 0
    log_discarded: int = 0
    dropped: int = 0
    notify_errors: int = 0

    @property
    def ended(self) -> str | None:
        """Why no more output can come (None while live)."""
        if self.removed:
            return "removed"
        if self.broken_reason is not None:
            return "broken"
        return None


class ConsoleSession:
    """One attached viewer of a console (``xl console``); made by :meth:`ConsoleDaemon.attach`.

    ``async for chunk in session`` yields output (each chunk is everything
    queued at that moment) until the console ends. Only dom0 code holds a
    session; the bytes in it are guest output.

    Attributes:
        domid: the console's domain.
        dropped: bytes this session lost because it read too slowly.
        end_reason: why iteration ended (None while live): ``"removed"``,
            ``"broken"``, ``"detached"`` or ``"daemon stopped"``.
    """

    def __init__(self, daemon: ConsoleDaemon, con: _Console, max_bytes: int) -> None:
        self._daemon = daemon
        self._con = con
        self._max = max_bytes
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._lot = trio.lowlevel.ParkingLot()
        self.domid = con.domid
        self.dropped = 0
        self.end_reason: str | None = None

    @property
    def queued(self) -> int:
        """Bytes waiting to be read by this session."""
        return self._queued

    def _feed(self, data: bytes) -> None:
        """Queue ``data`` (guest bytes); drop the oldest beyond the bound. Never blocks."""
        if self.end_reason is not None or not data:
            return
        lost = 0
        if len(data) > self._max:
            lost += len(data) - self._max
            data = data[-self._max :]
        self._chunks.append(data)
        self._queued += len(data)
        while self._queued > self._max:
            excess = self._queued - self._max
            head = self._chunks[0]
            if len(head) <= excess:
                self._chunks.popleft()
                self._queued -= len(head)
                lost += len(head)
            else:
                self._chunks[0] = head[excess:]
                self._queued -= excess
                lost += excess
        if lost:
            self.dropped += lost
            self._con.dropped += lost
        self._lot.unpark_all()

    def _end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        self._lot.unpark_all()

    def __aiter__(self) -> ConsoleSession:
        return self

    async def __anext__(self) -> bytes:
        """The next output chunk; waits for one (cancellable).

        Raises:
            StopAsyncIteration: the console ended and everything queued was read.
        """
        while True:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._chunks:
                out = b"".join(self._chunks)
                self._chunks.clear()
                self._queued = 0
                await trio.lowlevel.cancel_shielded_checkpoint()
                return out
            if self.end_reason is not None:
                raise StopAsyncIteration
            await self._lot.park()

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Type ``data`` into the guest's ``in`` ring, waiting for space as needed.

        Concurrent senders to one console are serialised (each call's bytes
        stay contiguous). Cancellable; bytes already written stay written.

        Args:
            data: input bytes (dom0 user's).

        Raises:
            ConsoleGone: the session detached, the domain was removed or the
                daemon stopped (possibly after part of ``data`` was sent).
            ConsoleBroken: the guest corrupted its indices.
            ConsoleError: the console takes no input (hypervisor console).
        """
        if self.end_reason in ("detached", "daemon stopped"):
            raise ConsoleGone(f"d{self.domid}: session {self.end_reason}")
        await self._daemon._send_input(self._con, bytes(data))


class ConsoleDaemon:
    """xenconsoled: serves every domain's console page.

    All options are dom0's choice (keyword-only).

    Args:
        log_size: default history bytes kept per domain.
        rate_limit_events: events a domain may cause per period before it
            is deferred (xenconsoled: 30); None disables rate limiting.
        rate_limit_period: period length in seconds of trio's clock
            (xenconsoled: 0.2).
        session_queue_bytes: default queue bound of an attached session.

    Raises:
        ValueError: a non-positive size, allowance or period.
    """

    def __init__(self, *, log_size: int = DEFAULT_LOG_SIZE,
                 rate_limit_events: int | None = XENCONSOLED_RATE_LIMIT_EVENTS,
                 rate_limit_period: float = XENCONSOLED_RATE_LIMIT_PERIOD_MS / 1000,
                 session_queue_bytes: int = DEFAULT_SESSION_QUEUE_BYTES) -> None:
        if log_size < 1 or session_queue_bytes < 1:
            raise ValueError("log_size and session_queue_bytes must be positive")
        if rate_limit_events is not None and rate_limit_events < 1:
            raise ValueError("rate_limit_events must be positive (or None)")
        if rate_limit_period <= 0:
            raise ValueError("rate_limit_period must be positive")
        self.log_size = log_size
        self.rate_limit_events = rate_limit_events
        self.rate_limit_period = rate_limit_period
        self.session_queue_bytes = session_queue_bytes
        self._consoles: dict[int, _Console] = {}
        self._limited: set[_Console] = set()
        self._timer_lot = trio.lowlevel.ParkingLot()
        self._running = False
        self._stopped = False

    # -- service -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """The daemon's timer: ends rate-limit periods and replays deferred events.

        Start with ``await nursery.start(daemon.run)``; runs until cancelled.
        On exit every session ends (``"daemon stopped"``) and waiting senders
        get :class:`ConsoleGone`; the daemon cannot be restarted.

        Raises:
            RuntimeError: already running or already stopped (a dom0 bug).
        """
        if self._running or self._stopped:
            raise RuntimeError("ConsoleDaemon.run may be started once")
        self._running = True
        task_status.started()
        try:
            while True:
                deadline = min((c.next_period for c in self._limited), default=math.inf)
                with trio.move_on_at(deadline):
                    await self._timer_lot.park()
                self._end_periods(trio.current_time())
        finally:
            self._running = False
            self._stopped = True
            for con in self._consoles.values():
                for s in list(con.sessions):
                    s._end("daemon stopped")
                con.input_lot.unpark_all()

    def _end_periods(self, now: float) -> None:
        """Unmask every limited console whose period is over; replay its deferred event."""
        for con in [c for c in self._limited if c.next_period <= now]:
            self._limited.discard(con)
            con.limited = False
            con.event_count = 0
            con.next_period = now + self.rate_limit_period
            if con.deferred:
                con.deferred = False
                self._on_event(con)

    # -- domains -------------------------------------------------------------------------

    def add_domain(self, domid: int, name: str, page: memoryview, notify: Callable[[], None],
                   *, limit: int | None = None,
                   on_broken: Callable[[str], None] | None = None) -> Callable[[int], None]:
        """Serve the console of ``domid``.

        Args:
            domid: the guest (dom0's toolstack).
            name: for log messages (toolstack).
            page: dom0's writable mapping of the guest's console page (grant
                ref 0); its contents are guest-controlled. The daemon stops
                touching it when :meth:`remove_domain` returns.
            notify: sends on dom0's local console port.
            limit: history bytes kept (``/local/domain/<D>/console/limit``,
                written by the toolstack and read-only to the guest);
                default ``log_size``.
            on_broken: called once, with the reason, when the guest corrupts
                the page's indices and the console is disabled (e.g. a
                backend driver then takes its device to Closing). It runs
                inside the event handler or an input sender, so it must not
                block or raise.

        Returns:
            The handler to bind to dom0's local port in its dispatcher. It
            services whatever is queued, so if the page may already hold
            output, call it once after binding.

        Raises:
            ValueError: ``domid`` already served, bad ``limit`` or page.
        """
        if domid in self._consoles:
            raise ValueError(f"console of d{domid} already served")
        con = self._new_console(domid, name, limit)
        con.ring = ConsoleRing(page)
        con.notify = notify
        con.on_broken = on_broken
        self._consoles[domid] = con
        logger.debug("console: serving d%d (%s)", domid, name)

        def handle_console_event(_port: int) -> None:
            self._on_event(con)

        return handle_console_event

    def add_hypervisor_console(self, reader: Callable[[], bytes], *,
                               limit: int | None = None) -> Callable[[int], None]:
        """Serve dom0's own console: the hypervisor's console ring, as domid 0.

        Reads what is already in the ring at once (boot messages).

        Args:
            reader: returns the whole current contents of Xen's console
                ring, e.g. dom0's ``HypercallInterface.console_read``
                (contents include domU-written, ``(dN)``-prefixed lines).
            limit: history bytes kept; default ``log_size``.

        Returns:
            The handler to bind to dom0's ``VIRQ_CON_RING`` port (the
            hypervisor raises it after every console write).

        Raises:
            ValueError: already added (or a guest was added as domid 0).

        Note:
            ``CONSOLEIO_read`` returns the ring, not an index, so new bytes
            are found by overlapping the previous snapshot with the new one.
            Once the ring has wrapped, output that repeats the previous
            snapshot exactly cannot be told apart from no output; unwrapped
            output is exact.
        """
        if HYPERVISOR_CONSOLE_DOMID in self._consoles:
            raise ValueError("d0 console already served")
        con = self._new_console(HYPERVISOR_CONSOLE_DOMID, "Xen", limit)
        con.reader = reader
        self._consoles[HYPERVISOR_CONSOLE_DOMID] = con

        def handle_con_ring(_port: int) -> None:
            self._on_hypervisor_console(con)

        self._on_hypervisor_console(con)
        return handle_con_ring

    def _new_console(self, domid: int, name: str, limit: int | None) -> _Console:
        if limit is None:
            limit = self.log_size
        if limit < 1:
            raise ValueError("console limit must be positive")
        return _Console(domid, name, limit)

    def remove_domain(self, domid: int) -> None:
        """Stop serving ``domid``: forget its history, end its sessions, fail its senders.

        After this returns the page and notify callable are no longer used;
        the caller then unbinds and closes its port and unmaps the page.
        Late events on the old handler are ignored.

        Raises:
            KeyError: ``domid`` is not served (a dom0 bug).
        """
        con = self._consoles.pop(domid)
        con.removed = True
        con.ring = None
        con.notify = None
        con.on_broken = None
        con.reader = None
        self._limited.discard(con)
        for s in list(con.sessions):
            s._end("removed")
        con.input_lot.unpark_all()
        logger.debug("console: d%d (%s) removed", domid, con.name)

    def _get(self, domid: int) -> _Console:
        con = self._consoles.get(domid)
        if con is None:
            raise KeyError(f"no console for d{domid}")
        return con

    def domains(self) -> list[int]:
        """The domids served now (sorted)."""
        return sorted(self._consoles)

    def log(self, domid: int) -> bytes:
        """The newest (at most ``limit``) bytes of ``domid``'s output.

        Raises:
            KeyError: ``domid`` is not served.
        """
        return bytes(self._get(domid).history)

    def stats(self, domid: int) -> ConsoleStats:
        """A snapshot of ``domid``'s counters.

        Raises:
            KeyError: ``domid`` is not served.
        """
        c = self._get(domid)
        return ConsoleStats(c.bytes_out, c.bytes_in, c.events, c.rate_limited,
                            c.limited_periods, c.log_discarded, c.dropped, c.notify_errors,
                            c.broken_reason is not None, c.broken_reason)

    # -- sessions ------------------------------------------------------------------------

    @asynccontextmanager
    async def attach(self, domid: int, *, replay: bool = False,
                     queue_bytes: int | None = None) -> AsyncIterator[ConsoleSession]:
        """Attach a viewer to ``domid``'s console for the ``async with`` body.

        Args:
            domid: the console (dom0 user's choice).
            replay: queue the history first (bounded like any output).
            queue_bytes: this session's queue bound; default
                ``session_queue_bytes``.

        Yields:
            The :class:`ConsoleSession`. If the console is already broken
            it ends right after the replay.

        Raises:
            KeyError: ``domid`` is not served.
            ConsoleGone: the daemon has stopped.
            ValueError: non-positive ``queue_bytes``.
        """
        con = self._get(domid)
        if self._stopped:
            raise ConsoleGone("console daemon stopped")
        qb = self.session_queue_bytes if queue_bytes is None else queue_bytes
        if qb < 1:
            raise ValueError("queue_bytes must be positive")
        session = ConsoleSession(self, con, qb)
        if replay:
            session._feed(bytes(con.history))
        if con.ended is not None:
            session._end(con.ended)
        else:
            con.sessions.add(session)
        try:
            await trio.lowlevel.checkpoint()
            yield session
        finally:
            con.sessions.discard(session)
            session._end("detached")

    # -- the event path (synchronous; guest-controlled data) ----------------------------

    def _on_event(self, con: _Console) -> None:
        """One event from ``con``'s guest: rate-limit, then service. Never raises on guest data."""
        if con.ended is not None or con.ring is None:
            return
        allowance = self.rate_limit_events
        if allowance is not None:
            if con.limited:
                con.deferred = True
                con.rate_limited += 1
                return
            now = trio.current_time()
            if now >= con.next_period:
                con.next_period = now + self.rate_limit_period
                con.event_count = 0
            con.event_count += 1
        con.events += 1
        self._service(con)
        if (allowance is not None and con.event_count >= allowance and con.ended is None
                and not con.limited):
            con.limited = True
            con.limited_periods += 1
            self._limited.add(con)
            self._timer_lot.unpark_all()

    def _service(self, con: _Console) -> None:
        """Drain ``out`` once (<= one ring of bytes), record it, notify, wake senders."""
        ring = con.ring
        if ring is None:
            return
        try:
            data = ring.output.read()
        except CorruptRingIndexError as exc:
            self._break(con, f"out ring indices corrupt: {exc}")
            return
        if data:
            con.bytes_out += len(data)
            self._emit(con, data)
            self._notify(con)
        con.input_lot.unpark_all()

    def _on_hypervisor_console(self, con: _Console) -> None:
        if con.reader is None:
            return
        snap = con.reader()
        new = _new_suffix(con.hv_snapshot, snap)
        con.hv_snapshot = snap
        con.events += 1
        if new:
            con.bytes_out += len(new)
            self._emit(con, new)

    def _emit(self, con: _Console, data: bytes) -> None:
        """Append ``data`` to the bounded history and every session's queue."""
        h = con.history
        h += data
        excess = len(h) - con.limit
        if excess > 0:
            del h[:excess]
            con.log_discarded += excess
        for s in con.sessions:
            s._feed(data)

    def _notify(self, con: _Console) -> None:
        if con.notify is None:
            return
        try:
            con.notify()
        except XenError as exc:  # e.g. the caller closed its port early
            con.notify_errors += 1
            logger.warning("console: d%d notify failed: %s", con.domid, exc)

    def _break(self, con: _Console, reason: str) -> None:
        """Disable ``con`` for good: its guest scribbled on the indices."""
        con.broken_reason = reason
        con.ring = None
        self._limited.discard(con)
        con.limited = con.deferred = False
        logger.warning("console: d%d (%s) broken: %s", con.domid, con.name, reason)
        self._emit(con, f"\r\n[xenconsoled: d{con.domid} console disabled: {reason}]\r\n"
                   .encode())
        for s in list(con.sessions):
            s._end("broken")
        con.sessions.clear()
        con.input_lot.unpark_all()
        if con.on_broken is not None:
            con.on_broken(reason)

    # -- input ----------------------------------------------------------------------------

    def _check_input(self, con: _Console) -> ConsoleRing:
        if con.broken_reason is not None:
            raise ConsoleBroken(f"d{con.domid}: {con.broken_reason}")
        if con.removed:
            raise ConsoleGone(f"d{con.domid}: console removed")
        if self._stopped:
            raise ConsoleGone("console daemon stopped")
        if con.ring is None:
            raise ConsoleError(f"d{con.domid}: this console takes no input")
        return con.ring

    async def _send_input(self, con: _Console, data: bytes) -> None:
        view = memoryview(data)
        async with con.input_lock:
            while True:
                ring = self._check_input(con)
                try:
                    n = ring.input.write(view)
                except CorruptRingIndexError as exc:
                    self._break(con, f"in ring indices corrupt: {exc}")
                    raise ConsoleBroken(f"d{con.domid}: {con.broken_reason}") from None
                if n:
                    con.bytes_in += n
                    view = view[n:]
                    self._notify(con)
                if not view:
                    return
                if n == 0:
                    await con.input_lot.park()


def _new_suffix(old: bytes, new: bytes) -> bytes:
    """The bytes appended to a drop-oldest ring between snapshots ``old`` and ``new``.

    ``new`` is ``old[d:] + appended`` for the smallest consistent ``d`` (the
    largest overlap); with no overlap at all everything in ``new`` is new.
    """
    if new.startswith(old):
        return new[len(old):]
    probe = new[:_PROBE]
    tail = max(1, len(old) - len(probe) + 1)
    d = old.find(probe, 1) if probe else -1
    while 0 < d < tail:  # candidates found by searching for the probe (fast, C-level)
        if new.startswith(old[d:]):
            return new[len(old) - d:]
        d = old.find(probe, d + 1)
    for d in range(tail, len(old)):  # overlaps shorter than the probe
        if new.startswith(old[d:]):
            return new[len(old) - d:]
    return new


_PROBE = 32
