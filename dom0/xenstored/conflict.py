"""Conflict credit: a guest whose writes keep failing others' transactions is paused.

The threat
----------
XenStore transactions are optimistic: ``TRANSACTION_END`` fails with
``EAGAIN`` if a node the transaction read changed meanwhile, and the client
retries the whole transaction. A guest that writes a node dom0's toolstack
reads inside a transaction (its own ``/local/domain/<D>/...`` keys, say), in
a tight loop, can make *every* retry fail: dom0 is starved forever.

What Xen does
-------------
* C xenstored 4.17 has no conflict-aware defence. It only rate-limits writes
  of unprivileged domains in general (``WRL``: a few hundred writes per
  second with a small burst), which slows a hammering guest but does not stop
  it from landing one write inside every retry window of a transaction.
* oxenstored (``conflict-burst-limit = 5.0``,
  ``conflict-max-history-seconds = 0.05``,
  ``conflict-rate-limit-is-aggregate = true``) keeps a short history of the
  commits of unprivileged domains. When a transaction fails with EAGAIN it
  blames every *other* domain whose commit since the transaction started
  made it fail, and takes one point of that domain's *conflict credit*
  (floor -1). A domain whose credit is at or below 0 is not served at all
  - its requests are not read. Credit comes back at one point per 0.05 s,
  handed out to one domain at a time: first to the queue of paused domains,
  then to the queue of penalised ones, up to the burst limit. dom0 and
  socket clients are "free to conflict" and are never paused.

What we do (oxenstored's scheme, with our generation counter)
-------------------------------------------------------------
:class:`ConflictCredit` is sans-IO and clock-free: the core passes ``now``
(its injectable clock; trio's clock in the transports, so tests run on
``autojump_clock``).

* ``record(domid, paths, generation)`` - the core reports every change an
  unprivileged domain applied to the global tree (a plain write, or a
  transaction commit), with the store generation at which it happened. Only
  the newest generation per (domain, path) is kept, and only while some
  transaction is open: history is bounded by the paths a domain can touch.
* ``blame(victim, start_generation, conflicting_paths, now)`` - called when
  a commit fails. A domain other than the victim is guilty if it changed a
  conflicting path after the transaction started (the generation test is
  exactly the one that made the commit fail). Each guilty domain loses one
  point, once per failed commit.
* ``delay(domid, now)`` - how long the transport must hold this domain's next
  request: None while its credit is positive, else the time to the next
  credit tick. The transport sleeps that long (trio) and asks again; the
  core never waits.

Worked example (burst 5, tick 0.05 s): guest 5 writes ``/n`` while dom0's
transaction reads and writes ``/n``. Commits 1-5 fail, each costing guest 5
a point; at 0 it is paused, so dom0's 6th attempt sees no interference and
commits. At the next tick guest 5 gets a point back and its queued writes
continue: it is delayed, never starved, and dom0 commits within
``burst + 1`` attempts whenever it retries faster than one tick.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

__all__ = ["CONFLICT_BURST_LIMIT", "CONFLICT_TICK", "ConflictCredit"]

CONFLICT_BURST_LIMIT = 5.0  # oxenstored conflict-burst-limit
CONFLICT_TICK = 0.05  # oxenstored conflict-max-history-seconds


class ConflictCredit:
    """Per-domain conflict credit and the change history it is judged by.

    Args:
        burst: initial and maximum credit; ``0`` disables the defence.
        tick: seconds per point of credit handed out.

    Attributes:
        credit: current credit of each domain that has had any (others are
            at ``burst``).
        blamed: total points taken (diagnostics).
    """

    def __init__(self, burst: float = CONFLICT_BURST_LIMIT, tick: float = CONFLICT_TICK) -> None:
        if burst < 0 or tick <= 0:
            raise ValueError("burst must be >= 0 and tick > 0")
        self.burst = burst
        self.tick = tick
        self.credit: dict[int, float] = {}
        self.blamed = 0
        self._history: dict[int, dict[str, int]] = {}
        self._paused: deque[int] = deque()
        self._penalised: deque[int] = deque()
        self._last_tick: float | None = None

    @property
    def enabled(self) -> bool:
        """False when the burst limit is 0 (no one is ever paused)."""
        return self.burst > 0

    # -- history -------------------------------------------------------

    def record(self, domid: int, paths: Iterable[str], generation: int) -> None:
        """Note that ``domid`` changed ``paths`` at store ``generation``.

        Args:
            domid: an unprivileged domain (the core never reports dom0).
            paths: nodes written, created or deleted.
            generation: the store generation of the change.
        """
        if not self.enabled:
            return
        mine = self._history.setdefault(domid, {})
        for p in paths:
            mine[p] = generation

    def trim(self, oldest_open: int | None) -> None:
        """Forget changes no open transaction can conflict with.

        Args:
            oldest_open: start generation of the oldest open transaction,
                or None if none is open (then everything is forgotten).
        """
        if oldest_open is None:
            self._history.clear()
            return
        for domid in list(self._history):
            kept = {p: g for p, g in self._history[domid].items() if g > oldest_open}
            if kept:
                self._history[domid] = kept
            else:
                del self._history[domid]

    def forget(self, domid: int) -> None:
        """The domain is gone: drop its history and credit (domid reuse)."""
        self._history.pop(domid, None)
        self.credit.pop(domid, None)
        for q in (self._paused, self._penalised):
            if domid in q:
                q.remove(domid)

    # -- credit --------------------------------------------------------

    def blame(self, victim: int | None, start: int, paths: Iterable[str], now: float) -> list[int]:
        """A transaction that started at ``start`` failed on ``paths``.

        Args:
            victim: the failing transaction's domain (never blamed), or None.
            start: the transaction's start generation.
            paths: the nodes whose change made the commit fail.
            now: current time (credit bookkeeping).

        Returns:
            The domains that lost a point, in domid order.
        """
        if not self.enabled:
            return []
        self._advance(now)
        wanted = list(paths)
        guilty = []
        for domid, changes in self._history.items():
            if domid == victim:
                continue
            if any(changes.get(p, -1) > start for p in wanted):
                guilty.append(domid)
        guilty.sort()
        for domid in guilty:
            self._decrement(domid, now)
        return guilty

    def _decrement(self, domid: int, now: float) -> None:
        before = self.credit.get(domid, self.burst)
        after = max(-1.0, before - 1.0)
        self.credit[domid] = after
        self.blamed += 1
        if before > 0 >= after:
            if not self._paused:
                self._last_tick = now  # the countdown to the next point starts now
            if domid in self._penalised:
                self._penalised.remove(domid)
            self._paused.append(domid)
        elif before >= self.burst > after:
            if self._last_tick is None or not (self._paused or self._penalised):
                self._last_tick = now
            self._penalised.append(domid)

    def _advance(self, now: float) -> None:
        """Hand out the points due since the last tick, one per tick."""
        if self._last_tick is None or not (self._paused or self._penalised):
            self._last_tick = now
            return
        due = math.floor((now - self._last_tick) / self.tick)
        while due > 0 and (self._paused or self._penalised):
            q = self._paused if self._paused else self._penalised
            domid = q.popleft()
            cred = min(self.credit.get(domid, self.burst) + 1.0, self.burst)
            self.credit[domid] = cred
            if q is self._paused and cred <= 0:
                q.append(domid)
            elif cred < self.burst:
                self._penalised.append(domid)
            else:
                del self.credit[domid]
            due -= 1
            self._last_tick += self.tick
        if not (self._paused or self._penalised):
            self._last_tick = now

    def delay(self, domid: int, now: float) -> float | None:
        """Seconds the transport must wait before serving ``domid`` again.

        Returns:
            None if the domain may be served now; else a positive delay
            (until the next credit tick), after which the caller asks again.
        """
        if not self.enabled:
            return None
        if self._paused or self._penalised:
            self._advance(now)
        if self.credit.get(domid, self.burst) > 0:
            return None
        last = self._last_tick if self._last_tick is not None else now
        return max(last + self.tick - now, 1e-9)
