"""RpcFront: a frontend whose device is one request/response ring; ``await call(request)``.

Theory of operation
-------------------
Most new devices are "send a request, wait for its answer". :class:`RpcFront`
is a :class:`~domu.frontends.bus.Frontend` that does everything but the
device-specific part:

* ``talk_to_backend`` allocates one page, initialises an envelope ring on it
  (:func:`ring.msgring.rpc_front_ring`), grants it, allocates a port and
  publishes ``ring-ref``, ``event-channel`` and ``slot-size`` in one
  transaction;
* ``connect`` starts the completion worker;
* :meth:`RpcFront.call` waits for a free ring slot (a full ring makes callers
  wait, not fail), puts the request with a fresh id, pushes, notifies only if
  the ring says so, and waits for its answer;
* the worker checks every response before trusting it (as Linux's frontends
  learnt to, XSA-376/391/396): a malformed envelope, an id that is not in
  flight (unknown, or answered twice), or an answer the driver's
  :meth:`RpcFront.check_answer` rejects is a
  :class:`~ring.errors.PeerProtocolError`: the device goes to Closing;
* ``disconnect`` fails every waiting call with :class:`RpcClosed`.

A driver subclasses it, sets ``kind``, and writes its API on top of
:meth:`RpcFront.call` (plus :meth:`RpcFront.check_answer` to say what a
correct answer looks like)::

    @register_frontend
    class RngFront(RpcFront):
        kind = "rng"

        async def getrandom(self, n: int) -> bytes:
            return await self.call(n)

        def check_answer(self, request, answer):
            if type(answer) is not bytes or len(answer) != request:
                raise ValueError(f"asked for {request} bytes")
            return answer

Its backend is a :class:`dom0.backends.rpc.RpcBack` with the same
``slot_size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import trio

from domu.frontends.bus import Frontend
from ring.errors import PeerProtocolError, RingFullError
from ring.msgring import RPC_ERROR, RpcRequest, RpcResponse, rpc_front_ring

__all__ = ["RpcClosed", "RpcError", "RpcFront"]

_U32 = 0xFFFFFFFF


class RpcError(Exception):
    """The backend refused this request; the message is its reason. The device is fine."""


class RpcClosed(RpcError):
    """The device is closed or broken: the call was not (or not surely) done."""


@dataclass
class _Pending:
    """One request in flight (Linux's ``shadow`` entry)."""

    request: Any
    done: trio.Event = field(default_factory=trio.Event)
    answer: Any = None
    error: RpcError | None = None


class RpcFront(Frontend):
    """Base class of request/response frontends (see the module docstring).

    Class attributes:
        slot_size: bytes per ring slot; the backend must use the same (it
            checks the ``slot-size`` key). 128 gives 16 slots and 124-byte
            messages.

    Attributes:
        calls: calls answered (either way).
    """

    slot_size: ClassVar[int] = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self._rpc_failure: RpcClosed | None = RpcClosed(f"{self.dev.kind}/{self.dev.devid}: "
                                                        "device not connected yet")
        self._rpc_inflight: dict[int, _Pending] = {}
        self._rpc_next_id = 0
        self._rpc_slots = trio.Semaphore(0)

    async def talk_to_backend(self) -> None:
        gfn, page = self.alloc_page()
        self.ring = rpc_front_ring([page], self.slot_size)
        ref = self.grant_page(gfn)
        self.port, self.waiter = self.alloc_port_waiter()
        await self.write_keys({"ring-ref": str(ref), "event-channel": str(self.port),
                               "slot-size": str(self.slot_size)})

    async def connect(self) -> None:
        """Start serving calls; drivers that extend it call ``super().connect()`` last."""
        self._rpc_slots = trio.Semaphore(self.ring.size)
        self._rpc_failure = None
        self.start_worker(self._rpc_complete)

    async def disconnect(self) -> None:
        """Fail every waiting call; drivers that extend it call ``super().disconnect()``."""
        self._rpc_fail_all(RpcClosed(f"{self.dev.kind}/{self.dev.devid}: device closed"))
        await super().disconnect()

    # -- the API drivers build on ----------------------------------------------------------

    async def call(self, request: Any) -> Any:
        """Send ``request`` (plain data) and return the backend's answer.

        Returns:
            The answer, as :meth:`check_answer` returned it.

        Raises:
            ValueError: ``request`` is not plain data or does not fit a slot
                (the caller's bug; nothing was sent).
            RpcError: the backend refused the request (the device is fine).
            RpcClosed: the device closed or broke before the answer came.
        """
        if self._rpc_failure is not None:
            raise self._rpc_failure
        await self._rpc_slots.acquire()  # a free ring slot: waits while the ring is full
        try:
            if self._rpc_failure is not None:
                raise self._rpc_failure
            rid = self._rpc_new_id()
            self.ring.put_request(RpcRequest(rid, request))  # ValueError: our bug
        except RingFullError:  # only a backend answering more than we asked gets here
            self._rpc_slots.release()
            raise RpcClosed(f"{self.dev.kind}/{self.dev.devid}: device broken") from None
        except BaseException:
            self._rpc_slots.release()
            raise
        pending = self._rpc_inflight[rid] = _Pending(request)  # the worker frees the slot
        if self.ring.push_requests_and_check_notify():
            self.hc.evtchn_send(self.port)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.answer

    def check_answer(self, request: Any, answer: Any) -> Any:
        """Override: check the backend's answer to ``request``; return what ``call`` returns.

        The answer is backend-controlled plain data (lists arrive as tuples).
        Raise ``ValueError`` or ``TypeError`` for an answer a correct backend
        cannot give: the device is then broken (Closing) and every call fails
        with :class:`RpcClosed`. Default: accept anything.
        """
        return answer

    # -- the machinery ------------------------------------------------------------------------

    def _rpc_new_id(self) -> int:
        rid = self._rpc_next_id
        while rid in self._rpc_inflight:  # at most ring.size ids are ever in flight
            rid = (rid + 1) & _U32
        self._rpc_next_id = (rid + 1) & _U32
        return rid

    def _rpc_check(self, rsp: RpcResponse) -> _Pending:
        """The call ``rsp`` completes, once it passed every check (else PeerProtocolError)."""
        if rsp.error is not None:
            raise PeerProtocolError(f"bad response: {rsp.error}")
        pending = self._rpc_inflight.pop(rsp.id, None)
        if pending is None:  # never sent, or answered already
            raise PeerProtocolError(f"response id {rsp.id} is not in flight")
        if rsp.status == RPC_ERROR:
            pending.error = RpcError(rsp.body)
        else:
            try:
                pending.answer = self.check_answer(pending.request, rsp.body)
            except (ValueError, TypeError) as exc:
                pending.error = RpcClosed(f"{self.dev.kind}/{self.dev.devid}: bad answer")
                pending.done.set()
                self._rpc_slots.release()
                raise PeerProtocolError(f"answer to {pending.request!r}: {exc}") from None
        return pending

    async def _rpc_complete(self) -> None:
        """The worker: consume responses, check each, wake its caller."""
        ring = self.ring
        try:
            while True:
                for rsp in ring.get_responses():  # raises on an impossible rsp_prod
                    pending = self._rpc_check(rsp)
                    self._rpc_slots.release()
                    self.calls += 1
                    pending.done.set()
                if not ring.final_check_for_responses():
                    await self.waiter.wait()
        except PeerProtocolError:  # no new call may start; disconnect fails the rest
            self._rpc_failure = RpcClosed(f"{self.dev.kind}/{self.dev.devid}: device broken")
            raise

    def _rpc_fail_all(self, exc: RpcClosed) -> None:
        self._rpc_failure = exc
        for pending in self._rpc_inflight.values():
            pending.error = exc
            pending.done.set()
            self._rpc_slots.release()  # wakes callers waiting for a slot: they see the failure
        self._rpc_inflight.clear()


RpcFront._reserved = Frontend._reserved | frozenset(
    name for name in vars(RpcFront) if name.startswith("_rpc") or name == "call")
