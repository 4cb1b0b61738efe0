"""RpcBack: a backend that serves one request/response ring with ``answer(request)``.

Theory of operation
-------------------
The backend half of :mod:`domu.frontends.rpc`. :class:`RpcBack` is a
:class:`~dom0.backends.bus.Backend` that does everything but the answers:

* ``map_ring`` reads the frontend's ``ring-ref``, ``event-channel`` and
  ``slot-size`` (guest-controlled: each checked; a ``slot-size`` other than
  the class's own is a protocol error), maps the page and binds the port
  through the base class, which releases both whatever happens;
* ``connect`` starts the worker: the classic backend loop -- consume a
  bounded batch (each slot copied once and decoded), answer every request,
  push and notify only if the ring says so, ``final_check_for_requests``
  before sleeping;
* every request gets a response. A malformed envelope is answered
  ``RPC_ERROR`` and counted in :attr:`RpcBack.bad_requests`; a request the
  driver refuses (:class:`RequestRefused` from :meth:`RpcBack.answer`) is
  answered ``RPC_ERROR`` with the reason and counted in
  :attr:`RpcBack.refused`; any other exception from ``answer`` is a driver
  bug: logged with its traceback, answered ``RPC_ERROR``, counted in
  :attr:`RpcBack.answer_errors`. The device keeps serving in every case;
  only bogus ring indices stop it (the base class makes it fatal).

A driver subclasses it, sets ``kind`` and writes :meth:`RpcBack.answer`,
which checks the request (guest-controlled plain data: lists arrive as
tuples) before acting on it::

    @register_backend
    class RngBack(RpcBack):
        kind = "rng"

        async def answer(self, request):
            if type(request) is not int or not 0 <= request <= 64:
                raise RequestRefused("ask for 0..64 bytes")
            return os.urandom(request)
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import trio

from dom0.backends.bus import Backend, parse_number
from ring.errors import PeerProtocolError
from ring.msgring import RPC_ERROR, RPC_OK, RPC_REASON_MAX, RpcRequest, RpcResponse, rpc_back_ring

__all__ = ["RequestRefused", "RpcBack"]

_log = logging.getLogger("xensim.dom0.backends")


class RequestRefused(Exception):
    """Raise from :meth:`RpcBack.answer` to answer ``RPC_ERROR`` with this reason.

    The reason is cut to :data:`~ring.msgring.RPC_REASON_MAX` bytes.
    """


def _reason(text: str) -> str:
    return text.encode("utf-8")[:RPC_REASON_MAX].decode("utf-8", "ignore")


class RpcBack(Backend):
    """Base class of request/response backends (see the module docstring).

    Class attributes:
        slot_size: bytes per ring slot; must equal the frontend's.
        batch: requests consumed per pass (bounds the work one event costs).

    Attributes:
        requests: requests answered (either way).
        refused: requests :meth:`answer` refused.
        bad_requests: malformed envelopes (answered ``RPC_ERROR``).
        answer_errors: requests whose :meth:`answer` raised a bug.
    """

    slot_size: ClassVar[int] = 128
    batch: ClassVar[int] = 16
    requests = 0
    refused = 0
    bad_requests = 0
    answer_errors = 0

    async def map_ring(self) -> None:
        ref = parse_number(await self.read_frontend("ring-ref"), "ring-ref")
        port = parse_number(await self.read_frontend("event-channel"), "event-channel")
        slot_size = parse_number(await self.read_frontend("slot-size"), "slot-size")
        if slot_size != self.slot_size:
            raise PeerProtocolError(f"slot-size {slot_size}, expected {self.slot_size}")
        self.ring = rpc_back_ring([self.map_grant(ref)], self.slot_size)
        self.port, self.waiter = self.bind_port_waiter(port)

    async def connect(self) -> None:
        """Start serving; drivers that extend it call ``super().connect()`` last."""
        self.requests = self.refused = self.bad_requests = self.answer_errors = 0
        self.start_worker(self._rpc_serve)

    async def answer(self, request: Any) -> Any:
        """Override: the answer (plain data) to one request (guest-controlled: check it).

        Raises:
            RequestRefused: refuse this request; its message goes back as
                the reason. The device keeps serving.
        """
        raise RequestRefused(f"{self.kind} backend has no answer() method")

    # -- the machinery ------------------------------------------------------------------------

    async def _rpc_serve(self) -> None:
        ring = self.ring
        while True:
            requests = ring.get_requests(limit=self.batch)  # raises on bogus indices
            for req in requests:
                rsp = await self._rpc_answer(req)
                try:
                    ring.put_response(rsp)
                except ValueError as exc:  # the answer is not plain data or too large
                    self.answer_errors += 1
                    _log.error("%s: the answer to %r cannot be sent (driver bug): %s",
                               self.dev.backend_path, req.body, exc)
                    ring.put_response(RpcResponse(req.id, RPC_ERROR, "answer does not fit"))
            if requests and ring.push_responses_and_check_notify():
                self.hc.evtchn_send(self.port)
            if len(requests) == self.batch:
                await trio.lowlevel.checkpoint()  # let others run between batches
            elif not ring.final_check_for_requests():
                await self.waiter.wait()

    async def _rpc_answer(self, req: RpcRequest) -> RpcResponse:
        """The response to one decoded request (never raises but Cancelled)."""
        self.requests += 1
        if req.error is not None:
            self.bad_requests += 1
            return RpcResponse(req.id, RPC_ERROR, _reason(f"malformed request: {req.error}"))
        try:
            return RpcResponse(req.id, RPC_OK, await self.answer(req.body))
        except RequestRefused as exc:
            self.refused += 1
            return RpcResponse(req.id, RPC_ERROR, _reason(str(exc)))
        except Exception as exc:  # a bug in answer(): this request fails, serving goes on
            self.answer_errors += 1
            _log.error("%s: answer(%r) raised (driver bug)", self.dev.backend_path, req.body,
                       exc_info=exc)
            return RpcResponse(req.id, RPC_ERROR, "backend error")


RpcBack._reserved = Backend._reserved | frozenset(
    name for name in vars(RpcBack) if name.startswith("_rpc"))
