"""Guest kernel: the event-channel upcall dispatcher (Linux ``events_2l.c``).

Theory of operation
-------------------
The guest's vCPU task sleeps in ``SCHEDOP_block``. When the hypervisor
marks an upcall pending it wakes, and :meth:`EventDispatcher.do_upcall`
scans the 2-level bitmaps in the domain's own ``shared_info`` (read and
written through the guest's memory view only)::

    repeat (at most MAX_UPCALL_PASSES times):
        vcpu_info.evtchn_upcall_pending = 0
        sel = exchange(vcpu_info.evtchn_pending_sel, 0)
        for each set bit w in sel, round-robin from where the last scan stopped:
            bits = pending[w] & ~mask[w]
            for each set bit b in bits:
                clear pending[w] bit b          # before the handler runs
                handler(w * 64 + b)
    while evtchn_upcall_pending was set again

The order is Linux's (``events_2l.c``): the scan resumes one port after the
last port it dispatched, walks the selector words upwards with wrap-around,
and visits the word it started in twice (first the bits at and above the
start bit, finally the bits below it). So a busy low-numbered port cannot
starve a higher one. Worked example: ports 3 and 70 pending, last dispatched
port 5 -> the scan starts at word 0 bit 6, finds nothing there, handles 70
(word 1), wraps, then handles 3 (word 0, bits below 6); the next scan starts
at port 4.

Events raised while handlers run (a handler sending on an IPI or loopback
port of its own domain) set ``evtchn_upcall_pending`` again and are picked up
by the repeat loop. The loop is bounded: after ``MAX_UPCALL_PASSES`` passes
:meth:`do_upcall` returns with the upcall still pending, and :meth:`run`'s
next ``SCHEDOP_block`` returns at once *after a trio checkpoint*, so a port
that re-raises itself forever (an event storm) cannot monopolise the trio
run loop; every event costs O(1) work (XSA-332's concern).

Handlers are synchronous callbacks (they may send on event channels, push
ring requests...). :class:`PortWaiter` turns a port into an awaitable
("wait for the next event on this port") built on such a handler; events
that arrive while nobody waits coalesce into one, like the pending bit.

When the domain is destroyed :meth:`EventDispatcher.run` returns normally
(the vCPU just stops) and every :class:`PortWaiter` made by
:meth:`EventDispatcher.waiter` is closed, so tasks waiting on one get
:class:`~hypervisor.vcpu.DomainDestroyed` instead of hanging.

Usage::

    disp = EventDispatcher(hc)
    disp.bind(port, lambda p: ...)
    async with trio.open_nursery() as n:
        await n.start(disp.run)
"""

from __future__ import annotations

from collections.abc import Callable

import outcome
import trio

from hypervisor.event_channel import MASK_WORD, PENDING_WORD
from hypervisor.hypercall import HypercallInterface
from hypervisor.vcpu import OFF_PENDING_SEL, VCPU_INFO_SIZE, DomainDestroyed

Handler = Callable[[int], None]

MAX_UPCALL_PASSES = 16
"""Repeat-loop bound of one upcall (see the module docstring)."""
_U64 = (1 << 64) - 1


class EventDispatcher:
    """Per-vCPU upcall dispatcher of a guest kernel.

    Args:
        hc: the guest's own hypercall interface.
        vcpu: which vCPU this dispatcher runs as.
    """

    def __init__(self, hc: HypercallInterface, vcpu: int = 0) -> None:
        self.hc = hc
        self.vcpu = vcpu
        self._si = hc.shared_info
        self._words = self._si.cast("Q")
        self._base = VCPU_INFO_SIZE * vcpu
        self._sel = (self._base + OFF_PENDING_SEL) // 8
        self.handlers: dict[int, Handler] = {}
        self.spurious = 0
        self.dispatched = 0
        self.upcalls = 0
        self.next_word = 0
        self.next_bit = 0
        self._waiters: dict[int, PortWaiter] = {}
        self.closed = False

    # -- handler table ------------------------------------------------------------------------

    def bind(self, port: int, handler: Handler) -> None:
        """Call ``handler(port)`` for every event on ``port`` and unmask it.

        Raises:
            ValueError: ``port`` already has a handler (a guest kernel bug).
        """
        if port in self.handlers:
            raise ValueError(f"port {port} already bound")
        self.handlers[port] = handler
        self.unmask(port)

    def unbind(self, port: int) -> None:
        """Forget ``port``'s handler and mask it (does not close the port).

        A :class:`PortWaiter` bound to the port is dropped too; a task still
        waiting on it gets :class:`PortUnbound`.
        """
        self.handlers.pop(port, None)
        self.mask(port)
        w = self._waiters.pop(port, None)
        if w is not None:
            w.close(PortUnbound(f"port {port} was unbound"))

    def waiter(self, port: int) -> PortWaiter:
        """Bind ``port`` to a :class:`PortWaiter` and return it."""
        w = PortWaiter()
        self.bind(port, w.notify)
        self._waiters[port] = w
        return w

    # -- mask bits (guest-owned) ------------------------------------------------------------------

    def mask(self, port: int) -> None:
        """Set ``port``'s mask bit in shared_info."""
        self._words[MASK_WORD + (port >> 6)] |= 1 << (port & 63)

    def unmask(self, port: int) -> None:
        """Clear the mask bit; if the port is pending, ask Xen to re-raise it (Linux)."""
        w = port >> 6
        bit = 1 << (port & 63)
        if self._words[PENDING_WORD + w] & bit:
            self.hc.evtchn_unmask(port)
        else:
            self._words[MASK_WORD + w] &= ~bit

    def is_pending(self, port: int) -> bool:
        """Whether ``port``'s pending bit is set."""
        return bool(self._words[PENDING_WORD + (port >> 6)] >> (port & 63) & 1)

    # -- the upcall ----------------------------------------------------------------

    def do_upcall(self) -> int:
        """Scan and dispatch every pending, unmasked port; return how many ran.

        At most :data:`MAX_UPCALL_PASSES` passes; if events keep arriving the
        upcall stays pending and the next :meth:`run` iteration continues
        after a checkpoint.
        """
        si = self._si
        words = self._words
        base = self._base
        seli = self._sel
        n = 0
        self.upcalls += 1
        for _ in range(MAX_UPCALL_PASSES):
            si[base] = 0
            sel = words[seli]
            if sel:
                words[seli] = 0
                n += self._scan(sel)
            if not si[base]:
                break
        self.dispatched += n
        return n

    def _scan(self, sel: int) -> int:
        """One Linux-order pass over the words named in ``sel``."""
        w0 = self.next_word
        b0 = self.next_bit
        low = (1 << b0) - 1  # the start word's bits visited last
        visits: list[tuple[int, int]]
        if not sel & (sel - 1):  # one word (the common case)
            w = sel.bit_length() - 1
            visits = [(w0, ~low), (w0, low)] if w == w0 and b0 else [(w, -1)]
        else:
            # rotate the selector so bit k names word (w0 + k) % 64
            rot = ((sel >> w0) | (sel << (64 - w0))) & _U64 if w0 else sel
            visits = []
            while rot:
                bit = rot & -rot
                rot ^= bit
                k = bit.bit_length() - 1
                visits.append((w0, ~low) if k == 0 else ((w0 + k) & 63, -1))
            if sel >> w0 & 1 and b0:
                visits.append((w0, low))
        words = self._words
        handlers = self.handlers
        n = 0
        last = -1
        for w, keep in visits:
            pi = PENDING_WORD + w
            bits = words[pi] & ~words[MASK_WORD + w] & keep
            wbase = w << 6
            while bits:
                lb = bits & -bits
                bits ^= lb
                words[pi] &= ~lb
                last = port = wbase + lb.bit_length() - 1
                h = handlers.get(port)
                if h is None:
                    self.spurious += 1
                else:
                    h(port)
                n += 1
        if last >= 0:
            self.next_word = ((last + 1) >> 6) & 63
            self.next_bit = (last + 1) & 63
        return n

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The vCPU's idle loop: block, dispatch, repeat.

        Start it with ``nursery.start(dispatcher.run)``. Runs until cancelled,
        or returns normally once the domain is destroyed (after closing its
        :class:`PortWaiter` objects with :class:`DomainDestroyed`).
        """
        task_status.started()
        block = self.hc.sched_block
        vcpu = self.vcpu
        upcall = self.do_upcall
        try:
            while True:
                await block(vcpu)
                upcall()
        except DomainDestroyed as exc:
            self.closed = True
            for w in self._waiters.values():
                w.close(exc)


class PortUnbound(Exception):
    """The port a :class:`PortWaiter` watched was unbound from the dispatcher."""


class PortWaiter:
    """An awaitable view of one port: ``await waiter.wait()`` for the next event.

    Events arriving while nobody waits coalesce into one pending flag.
    """

    def __init__(self) -> None:
        self._pending = False
        self._task: trio.lowlevel.Task | None = None
        self._closed: BaseException | None = None
        self.events = 0

    def notify(self, _port: int) -> None:
        """The handler bound to the port (called by the dispatcher)."""
        self.events += 1
        t = self._task
        if t is not None:
            self._task = None
            trio.lowlevel.reschedule(t)
        else:
            self._pending = True

    def close(self, exc: BaseException) -> None:
        """Fail the current and every later :meth:`wait` with ``exc``."""
        self._closed = exc
        t = self._task
        if t is not None:
            self._task = None
            trio.lowlevel.reschedule(t, outcome.Error(exc))

    def _abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def wait(self) -> None:
        """Return after the next event on the port (or at once if one is pending).

        Raises:
            DomainDestroyed: the dispatcher's domain was destroyed.
            RuntimeError: a second task tried to wait at the same time.
        """
        if self._closed is not None:
            await trio.lowlevel.checkpoint()
            raise type(self._closed)(*self._closed.args)
        if self._pending:
            self._pending = False
            await trio.lowlevel.checkpoint()
            return
        if self._task is not None:
            raise RuntimeError("only one task may wait on a PortWaiter")
        self._task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)
