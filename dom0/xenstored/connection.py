"""One client connection's state inside xenstored (transport-independent).

The core appends replies and watch events to :attr:`Connection.out`; a
transport drains it with :meth:`Connection.take_output` and tells the core
how many requests are still unanswered through :attr:`replies_queued`.
Everything queued is bounded:

* replies: the transport stops reading requests while ``replies_queued``
  reaches the outstanding limit (20 for a domain);
* watch events: at most ``event_bytes_max`` bytes are queued; newer events
  past that are dropped (and counted). An event still unsent
  ``event_timeout`` seconds after it was queued is dropped (Xen 4.17
  ``check_event_timeout``, ``-w watch-event=20``): on a timer
  (:meth:`Connection.expire_events`, which transports run at
  :meth:`Connection.next_event_expiry`), when the queue is drained, and
  before a new event is refused for lack of budget - so a guest that stops
  reading its ring holds at most 20 s worth of events, and its budget comes
  back. Replies never expire; a message already handed to the transport is
  never dropped half-written.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ring.xs_wire import HEADER

from .perms import Principal
from .transaction import Transaction

__all__ = ["Connection", "Watch"]


@dataclass(eq=False, slots=True)
class Watch:
    """A registered watch.

    Attributes:
        path: canonical watched path (or ``@`` name).
        token: the client's opaque token (bytes, echoed back).
        relative: the client gave a relative path; events are relative too.
        conn: the owning connection.
    """

    path: str
    token: bytes
    relative: bool
    conn: Connection


@dataclass(eq=False)
class Connection:
    """A client of xenstored: a Unix-socket tool or a domain's ring.

    Attributes:
        conn_id: unique number (diagnostics).
        domid: the domain it speaks for (0 for socket clients).
        privileged: bypasses permissions and quotas.
        is_socket: a dom0 Unix-socket client (no ring).
        target: SET_TARGET domain.
        home: ``/local/domain/<domid>`` for relative paths.
    """

    conn_id: int
    domid: int
    privileged: bool
    is_socket: bool
    home: str
    target: int | None = None
    watches: dict[tuple[str, bytes], Watch] = field(default_factory=dict)
    transactions: dict[int, Transaction] = field(default_factory=dict)
    next_tx_id: int = 1
    out: deque[tuple[float | None, bytes]] = field(default_factory=deque)
    replies_queued: int = 0
    event_bytes: int = 0
    event_bytes_max: int = 16 * 1024 * 1024
    event_timeout: float | None = None
    events_dropped: int = 0
    requests: int = 0
    errors: int = 0
    closed: bool = False
    broken: int = 0
    on_output: Callable[[], None] | None = None
    on_close: Callable[[], None] | None = None
    principal: Principal = field(init=False)

    def __post_init__(self) -> None:
        self.refresh_principal()

    def refresh_principal(self) -> None:
        """Recompute the identity used for permission checks."""
        self.principal = Principal(self.domid, self.privileged, self.target)

    # -- output queue --------------------------------------------------

    def queue_reply(self, data: bytes) -> None:
        """Queue an encoded reply (always accepted: bounded by the transport)."""
        self.out.append((None, data))
        self.replies_queued += 1
        if self.on_output is not None:
            self.on_output()

    def queue_event(self, data: bytes, now: float) -> bool:
        """Queue an encoded watch event unless the event budget is spent.

        Returns:
            False if the event was dropped.
        """
        if self.event_bytes + len(data) > self.event_bytes_max:
            self.expire_events(now)  # stale events must not hold the budget
        if self.event_bytes + len(data) > self.event_bytes_max:
            self.events_dropped += 1
            return False
        self.out.append((now, data))
        self.event_bytes += len(data)
        if self.on_output is not None:
            self.on_output()
        return True

    def take_output(self, now: float, max_bytes: int = 1 << 20) -> bytes:
        """Remove and return queued bytes in order (at least one message if any).

        Args:
            now: the current time, for expiring stale watch events.
            max_bytes: stop after this many bytes (transport's choice).
        """
        return self.take_output_counted(now, max_bytes)[0]

    def take_output_counted(self, now: float, max_bytes: int = 1 << 20) -> tuple[bytes, int]:
        """Like :meth:`take_output`, also returning how many replies it took.

        A transport counts those replies as outstanding until they have been
        delivered (written to the socket or ring).
        """
        out = self.out
        chunks: list[bytes] = []
        size = 0
        replies = 0
        timeout = self.event_timeout
        while out and size < max_bytes:
            stamp, data = out.popleft()
            if stamp is None:
                self.replies_queued -= 1
                replies += 1
            else:
                self.event_bytes -= len(data)
                if timeout is not None and stamp + timeout <= now:
                    self.events_dropped += 1
                    continue
            chunks.append(data)
            size += len(data)
        return b"".join(chunks), replies

    def next_event_expiry(self) -> float | None:
        """When the oldest queued watch event expires (None: nothing will)."""
        if self.event_timeout is None:
            return None
        for stamp, _ in self.out:
            if stamp is not None:
                return stamp + self.event_timeout
        return None

    def expire_events(self, now: float) -> int:
        """Drop queued watch events that have waited ``event_timeout`` seconds.

        Args:
            now: the current time (same clock as the stamps).

        Returns:
            How many events were dropped (also added to ``events_dropped``).
        """
        timeout = self.event_timeout
        if timeout is None or not self.event_bytes:
            return 0
        kept: deque[tuple[float | None, bytes]] = deque()
        dropped = 0
        for item in self.out:
            stamp, data = item
            if stamp is not None and stamp + timeout <= now:
                self.event_bytes -= len(data)
                dropped += 1
            else:
                kept.append(item)
        if dropped:
            self.out = kept
            self.events_dropped += dropped
        return dropped

    def take_messages(self, now: float) -> list[tuple[int, int, int, bytes]]:
        """Drain the queue as decoded ``(type, req_id, tx_id, payload)`` tuples (tests)."""
        raw = self.take_output(now, max_bytes=1 << 62)
        msgs = []
        pos = 0
        while pos < len(raw):
            t, r, x, n = HEADER.unpack_from(raw, pos)
            msgs.append((t, r, x, raw[pos + 16:pos + 16 + n]))
            pos += 16 + n
        return msgs

    def clear(self) -> None:
        """Forget watches, transactions and queued output (reset / close)."""
        self.watches.clear()
        self.transactions.clear()
        self.out.clear()
        self.replies_queued = 0
        self.event_bytes = 0

