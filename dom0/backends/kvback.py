"""kvback: dom0's backend for the tutorial's key-value device (type ``kv``).

Theory of operation
-------------------
One instance serves one guest's ``kv`` device. The backend bus
(:mod:`dom0.backends.bus`) runs the handshake and calls the hooks:

* :meth:`KvBack.probe` publishes the protocol limits (InitWait);
* :meth:`KvBack.map_ring` reads the frontend's ``ring-ref`` and
  ``event-channel`` (guest-controlled: checked), maps the page and binds the
  port through the base class, which releases both whatever happens;
* :meth:`KvBack.connect` reads ``max-entries`` (toolstack-written, trusted)
  and starts the ring worker, :meth:`KvBack._serve`.

The worker is the classic backend loop: consume a bounded batch (copy each
slot once, decode, validate), answer every request (an invalid one with
``KV_RSP_ERROR``, counted in :attr:`KvBack.bad_requests`), push and notify
only if the ring says so, then ``final_check_for_requests`` before sleeping
on the port. Bogus ring indices raise
:class:`~ring.errors.RingOverflowError` from ``get_requests``; the base
class counts it (:attr:`~dom0.backends.bus.Backend.errors`) and makes this
device, and only this one, go to Closing.

The store lives in the instance: it starts empty at each connect and is
dropped with the device (a real driver would keep it in a native store in
dom0, as blkback keeps data in a disk image).
"""

from __future__ import annotations

import trio

from dom0.backends.bus import Backend, parse_number, register_backend
from ring.kvstore import (
    KV_KEY_MAX,
    KV_OP_DELETE,
    KV_OP_GET,
    KV_OP_PUT,
    KV_RSP_ERROR,
    KV_RSP_FULL,
    KV_RSP_NOT_FOUND,
    KV_RSP_OKAY,
    KV_VALUE_MAX,
    KvRequest,
    KvResponse,
    kv_back_ring,
)

__all__ = ["DEFAULT_MAX_ENTRIES", "KvBack"]

DEFAULT_MAX_ENTRIES = 64
BATCH = 16
"""Requests consumed per pass: bounds the work one event can cause (XSA-332)."""


@register_backend
class KvBack(Backend):
    """The ``kv`` backend: a bounded dict served over one ring.

    Attributes:
        store: the guest's keys and values.
        requests: requests answered (valid or not).
        bad_requests: invalid requests answered with ``KV_RSP_ERROR``.
    """

    kind = "kv"
    requests = 0
    bad_requests = 0

    async def probe(self) -> None:
        await self.write_keys({"max-key-length": str(KV_KEY_MAX),
                               "max-value-length": str(KV_VALUE_MAX)})

    async def map_ring(self) -> None:
        ref = parse_number(await self.read_frontend("ring-ref"), "ring-ref")
        remote_port = parse_number(await self.read_frontend("event-channel"), "event-channel")
        self.ring = kv_back_ring([self.map_grant(ref)])
        self.port, self.waiter = self.bind_port_waiter(remote_port)

    async def connect(self) -> None:
        raw = await self.read_key("max-entries")  # the toolstack wrote it: trusted
        self.max_entries = int(raw) if raw is not None and raw.isdigit() else DEFAULT_MAX_ENTRIES
        self.store: dict[str, bytes] = {}
        self.requests = 0
        self.bad_requests = 0
        self.start_worker(self._serve)

    async def _serve(self) -> None:
        ring = self.ring
        while True:
            requests = ring.get_requests(limit=BATCH)  # raises on bogus indices
            for req in requests:
                ring.put_response(self._answer(req))
            if requests and ring.push_responses_and_check_notify():
                self.hc.evtchn_send(self.port)
            if len(requests) == BATCH:
                await trio.lowlevel.checkpoint()  # let others run between batches
            elif not ring.final_check_for_requests():
                await self.waiter.wait()

    def _answer(self, req: KvRequest) -> KvResponse:
        """The response to one decoded request (never raises)."""
        self.requests += 1
        if req.error is not None:
            self.bad_requests += 1
            return KvResponse(req.id, KV_RSP_ERROR)
        if req.op == KV_OP_GET:
            value = self.store.get(req.key)
            return KvResponse(req.id, KV_RSP_NOT_FOUND if value is None else KV_RSP_OKAY, value)
        if req.op == KV_OP_PUT and req.value is not None:  # the codec checked both
            if req.key not in self.store and len(self.store) >= self.max_entries:
                return KvResponse(req.id, KV_RSP_FULL)
            self.store[req.key] = req.value
            return KvResponse(req.id, KV_RSP_OKAY)
        if req.op == KV_OP_DELETE:
            found = self.store.pop(req.key, None) is not None
            return KvResponse(req.id, KV_RSP_OKAY if found else KV_RSP_NOT_FOUND)
        self.bad_requests += 1  # unreachable while the codec validates; never trust it
        return KvResponse(req.id, KV_RSP_ERROR)
