"""kvstore: the wire protocol of the tutorial's key-value device (type ``kv``).

Theory of operation
-------------------
A ``kv`` device gives a guest a small key-value store kept by dom0. It is the
device the driver-writing tutorial builds (docs/tutorials/06-own-driver.md),
so it is deliberately small, but it is a real split-driver protocol: one
shared request/response ring (:mod:`ring.sring`) on one granted page, one
event channel, and slots carrying length-prefixed msgpack
(:mod:`ring.msgring`), each message a fixed-shape array::

    request   [id, op, key, value]     id: u32 chosen by the frontend
                                       op: KV_OP_GET / KV_OP_PUT / KV_OP_DELETE
                                       key: str, 1..KV_KEY_MAX UTF-8 bytes
                                       value: bytes <= KV_VALUE_MAX (PUT), else nil
    response  [id, status, value]      status: KV_RSP_*; value: bytes (GET found) or nil

With 128-byte slots one page holds 16 entries; the largest request (a
32-byte key and a 64-byte value) packs into 107 bytes, so everything fits
and no length ever depends on guest input.

Decoding never raises (a bad peer hurts only its own device):
:meth:`KvCodec.decode_request` and :meth:`KvCodec.decode_response` take a
private copy of one slot and return a frozen record whose ``error`` says
what was wrong. A backend answers an
errored request with ``KV_RSP_ERROR`` (echoing the id when it could be read,
else 0) and carries on; a frontend treats an errored response as a broken
device.

XenStore keys (each documented as Values / Default / Notes):

* frontend ``ring-ref`` -- Values: grant reference (decimal). Notes: the one
  ring page, initialised by the frontend before granting.
* frontend ``event-channel`` -- Values: port (decimal), unbound for the backend.
* backend ``max-entries`` -- Values: decimal. Default: 64. Notes: written by
  the toolstack; a PUT of a new key beyond it is answered ``KV_RSP_FULL``.
* backend ``max-key-length`` / ``max-value-length`` -- Values: decimal.
  Notes: published by the backend at probe (``KV_KEY_MAX`` / ``KV_VALUE_MAX``).

Worked example (both ends in one process, as the unit tests do)::

    front = kv_front_ring([page])                      # SHARED_RING_INIT
    back = kv_back_ring([page])
    front.put_request(KvRequest(7, KV_OP_PUT, "colour", b"blue"))
    front.push_requests_and_check_notify()              # -> True
    [req] = back.get_requests()                         # KvRequest(7, 1, 'colour', b'blue')
    back.put_response(KvResponse(req.id, KV_RSP_OKAY))
    back.push_responses_and_check_notify()              # -> True
    front.get_responses()                               # [KvResponse(7, 0, None)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ring.msgring import MsgpackCodec
from ring.sring import BackRing, FrontRing

__all__ = [
    "KV_CODEC",
    "KV_KEY_MAX",
    "KV_OPS",
    "KV_OP_DELETE",
    "KV_OP_GET",
    "KV_OP_PUT",
    "KV_RSP_ERROR",
    "KV_RSP_FULL",
    "KV_RSP_NOT_FOUND",
    "KV_RSP_OKAY",
    "KV_SLOT_SIZE",
    "KV_VALUE_MAX",
    "KvCodec",
    "KvRequest",
    "KvResponse",
    "kv_back_ring",
    "kv_front_ring",
]

KV_SLOT_SIZE = 128
"""Bytes per ring slot: 16 slots in one page."""
KV_KEY_MAX = 32
"""Longest key, in UTF-8 bytes."""
KV_VALUE_MAX = 64
"""Longest value, in bytes."""

KV_OP_GET = 0
KV_OP_PUT = 1
KV_OP_DELETE = 2
KV_OPS = {KV_OP_GET: "get", KV_OP_PUT: "put", KV_OP_DELETE: "delete"}

KV_RSP_OKAY = 0
KV_RSP_NOT_FOUND = 1
KV_RSP_FULL = 2
KV_RSP_ERROR = -1
"""Like ``BLKIF_RSP_ERROR``: the request was malformed or could not be served."""
KV_STATUSES = frozenset({KV_RSP_OKAY, KV_RSP_NOT_FOUND, KV_RSP_FULL, KV_RSP_ERROR})

_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class KvRequest:
    """One request, as the frontend made it or as the backend decoded it.

    Attributes:
        id: echoed in the response (frontend's choice, u32).
        op: ``KV_OP_*``.
        key: the key.
        value: the value of a PUT, else None.
        error: why a decoded request is invalid (None when valid); the other
            fields are then best effort (``id`` is 0 if unreadable).
    """

    id: int
    op: int
    key: str
    value: bytes | None = None
    error: str | None = None


@dataclass(frozen=True)
class KvResponse:
    """One response.

    Attributes:
        id: the id of the request it answers.
        status: ``KV_RSP_*``.
        value: the value a GET found, else None.
        error: why a decoded response is invalid (None when valid).
    """

    id: int
    status: int
    value: bytes | None = None
    error: str | None = None


def _is_u32(x: Any) -> bool:
    return type(x) is int and 0 <= x <= _U32


def _key_error(key: Any) -> str | None:
    if type(key) is not str:
        return f"key is {type(key).__name__}, not str"
    n = len(key.encode("utf-8", "surrogatepass"))
    if not 1 <= n <= KV_KEY_MAX:
        return f"key of {n} bytes (1..{KV_KEY_MAX})"
    return None


class KvCodec:
    """The ``kv`` slot codec: :class:`KvRequest` / :class:`KvResponse` <-> msgpack slots.

    Encoders check our own records and raise ``ValueError`` (a bug on our side);
    decoders check the peer's and never raise.
    """

    slot_size = KV_SLOT_SIZE

    def __init__(self) -> None:
        self._slots = MsgpackCodec(KV_SLOT_SIZE)

    def encode_request(self, req: KvRequest) -> bytes:
        """Bytes of our request.

        Raises:
            ValueError: an invalid id, op, key or value (caller's bug).
        """
        problem = self._request_error(req.id, req.op, req.key, req.value)
        if problem is not None:
            raise ValueError(f"invalid kv request: {problem}")
        return self._slots.encode_request([req.id, req.op, req.key, req.value])

    def decode_request(self, raw: bytes) -> KvRequest:
        """The request in a private slot copy (frontend-controlled); never raises."""
        msg = self._slots.decode_request(raw)
        if msg.error is not None:
            return KvRequest(0, -1, "", None, msg.error)
        v = msg.value
        if type(v) is not tuple or len(v) != 4:
            return KvRequest(0, -1, "", None, "not a 4-element array")
        rid, op, key, value = v
        problem = self._request_error(rid, op, key, value)
        if problem is not None:
            return KvRequest(rid if _is_u32(rid) else 0, -1, "", None, problem)
        return KvRequest(rid, op, key, value)

    def encode_response(self, rsp: KvResponse) -> bytes:
        """Bytes of our response; unused slot bytes are zero (XSA-216).

        Raises:
            ValueError: an invalid id, status or value (caller's bug).
        """
        problem = self._response_error(rsp.id, rsp.status, rsp.value)
        if problem is not None:
            raise ValueError(f"invalid kv response: {problem}")
        return self._slots.encode_response([rsp.id, rsp.status, rsp.value])

    def decode_response(self, raw: bytes) -> KvResponse:
        """The response in a private slot copy (backend-controlled); never raises."""
        msg = self._slots.decode_response(raw)
        if msg.error is not None:
            return KvResponse(0, KV_RSP_ERROR, None, msg.error)
        v = msg.value
        if type(v) is not tuple or len(v) != 3:
            return KvResponse(0, KV_RSP_ERROR, None, "not a 3-element array")
        rid, status, value = v
        problem = self._response_error(rid, status, value)
        if problem is not None:
            return KvResponse(rid if _is_u32(rid) else 0, KV_RSP_ERROR, None, problem)
        return KvResponse(rid, status, value)

    @staticmethod
    def _request_error(rid: Any, op: Any, key: Any, value: Any) -> str | None:
        if not _is_u32(rid):
            return "id is not a u32"
        if type(op) is not int or op not in KV_OPS:
            return f"unknown op {op!r}"
        problem = _key_error(key)
        if problem is not None:
            return problem
        if op == KV_OP_PUT:
            if type(value) is not bytes:
                return "put without a bytes value"
            if len(value) > KV_VALUE_MAX:
                return f"value of {len(value)} bytes (max {KV_VALUE_MAX})"
        elif value is not None:
            return f"{KV_OPS[op]} with a value"
        return None

    @staticmethod
    def _response_error(rid: Any, status: Any, value: Any) -> str | None:
        if not _is_u32(rid):
            return "id is not a u32"
        if type(status) is not int or status not in KV_STATUSES:
            return f"unknown status {status!r}"
        if value is not None and (type(value) is not bytes or len(value) > KV_VALUE_MAX):
            return "value is not bytes of at most KV_VALUE_MAX"
        return None


KV_CODEC = KvCodec()
"""The codec both ends use."""


def kv_front_ring(pages: Sequence[memoryview]) -> FrontRing[KvRequest, KvResponse]:
    """Initialise a ``kv`` ring on the frontend's own page(s) (``SHARED_RING_INIT``).

    Raises:
        ValueError: not 2**order writable 4096-byte pages.
    """
    return FrontRing.init(pages, KV_CODEC)


def kv_back_ring(pages: Sequence[memoryview]) -> BackRing[KvRequest, KvResponse]:
    """Attach the backend to mapped ``kv`` ring page(s) (never initialises).

    Raises:
        ValueError: not 2**order writable 4096-byte pages.
    """
    return BackRing.attach(pages, KV_CODEC)
