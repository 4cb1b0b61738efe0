"""msgring: a request/response ring whose slots carry msgpack messages.

Theory of operation
-------------------
For custom drivers and tutorials that do not want to design a C struct, a
msgring is an ordinary :mod:`ring.sring` ring (same header, indices,
notification hold-off, overflow checks) whose fixed-size slots hold one
length-prefixed msgpack message each::

    offset 0   u32 little-endian length n  (n <= slot_size - 4)
    offset 4   n bytes of msgpack
    then       zero padding to the end of the slot

Only plain data crosses (ints, floats, str, bytes, lists, maps, bools, None):
never a Python object reference: domains share only bytes. Unpacking is bounded:
``msgpack.unpackb`` gets ``max_*_len`` limits equal to the payload size, lists
come back as tuples, and any failure (oversize length, truncated or invalid
msgpack, trailing bytes) becomes a :class:`Message` with ``error`` set. The
decoder never raises on peer bytes.

Worked example (one page of 128-byte slots: 16 entries, 124-byte messages)::

    codec = MsgpackCodec(128)
    front = FrontRing.init([page], codec)
    back = BackRing.attach([page], codec)
    front.put_request({"op": "add", "args": (2, 3)})
    front.push_requests_and_check_notify()            # -> True
    [msg] = back.get_requests()                        # Message(value={...}, error=None)
    back.put_response({"ok": sum(msg.value["args"])})
    back.push_responses_and_check_notify()             # -> True
    front.get_responses()                              # [Message({'ok': 5}, None)]

Request/response envelopes
--------------------------
:class:`RpcCodec` adds what nearly every driver needs on top: a request id
echoed by its response, and a status. The bodies are the driver's own plain
data; the domu/dom0 layers :mod:`domu.frontends.rpc` and
:mod:`dom0.backends.rpc` run the rings::

    request    [id, body]             id: u32 chosen by the frontend
    response   [id, status, body]     status RPC_OK: body is the answer;
                                      RPC_ERROR: body is a str reason
                                      (at most RPC_REASON_MAX bytes)

Decoding never raises: an envelope of the wrong shape comes back with
``error`` set (and ``id`` 0 when the id itself was unreadable).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from ring.sring import BackRing, FrontRing, ring_size

__all__ = [
    "RPC_ERROR",
    "RPC_OK",
    "RPC_REASON_MAX",
    "Message",
    "MessageTooLarge",
    "MsgpackCodec",
    "RpcCodec",
    "RpcRequest",
    "RpcResponse",
    "msgring_back",
    "msgring_front",
    "rpc_back_ring",
    "rpc_front_ring",
]

_LEN = struct.Struct("<I")


class MessageTooLarge(ValueError):
    """Our own message does not fit a slot (a bug on the sending side)."""


class Message(NamedTuple):
    """One decoded message; ``value`` is None and ``error`` set when undecodable."""

    value: Any
    error: str | None = None


class MsgpackCodec:
    """Slot codec carrying length-prefixed msgpack in ``slot_size``-byte slots.

    Args:
        slot_size: bytes per slot, at least 8 (ours; both ends must agree, e.g.
            through a xenstore key).
    """

    def __init__(self, slot_size: int = 128) -> None:
        if slot_size < 8:
            raise ValueError("slot_size must be at least 8")
        self.slot_size = slot_size
        self.max_payload = slot_size - _LEN.size

    def _encode(self, obj: Any) -> bytes:
        try:
            payload = msgpack.packb(obj, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"cannot encode {type(obj).__name__} as msgpack: {exc}") from exc
        if len(payload) > self.max_payload:
            raise MessageTooLarge(f"{len(payload)}-byte message, slot holds {self.max_payload}")
        return _LEN.pack(len(payload)) + payload + bytes(self.max_payload - len(payload))

    def _decode(self, raw: bytes) -> Message:
        if len(raw) != self.slot_size:
            return Message(None, f"slot of {len(raw)} bytes")
        (n,) = _LEN.unpack_from(raw)
        if n > self.max_payload:
            return Message(None, f"length {n} exceeds slot payload {self.max_payload}")
        limit = self.max_payload
        try:
            value = msgpack.unpackb(
                raw[_LEN.size : _LEN.size + n],
                raw=False,
                use_list=False,
                strict_map_key=False,
                max_str_len=limit,
                max_bin_len=limit,
                max_array_len=limit,
                max_map_len=limit,
                max_ext_len=limit,
            )
        except Exception as exc:  # any malformed input is the peer's problem, not ours
            return Message(None, f"undecodable message: {type(exc).__name__}")
        if isinstance(value, msgpack.ExtType):
            return Message(None, "extension types are not allowed")
        return Message(value)

    def encode_request(self, req: Any) -> bytes:
        """Encode our request (plain data).

        Raises:
            MessageTooLarge: it does not fit a slot.
            ValueError: not msgpack-serialisable.
        """
        return self._encode(req)

    def decode_request(self, raw: bytes) -> Message:
        """Decode a private slot copy (frontend-controlled); never raises."""
        return self._decode(raw)

    def encode_response(self, rsp: Any) -> bytes:
        """Encode our response (plain data); unused slot bytes are zero.

        Raises:
            MessageTooLarge: it does not fit a slot.
            ValueError: not msgpack-serialisable.
        """
        return self._encode(rsp)

    def decode_response(self, raw: bytes) -> Message:
        """Decode a private slot copy (backend-controlled); never raises."""
        return self._decode(raw)


def msgring_front(
    pages: Sequence[memoryview], slot_size: int = 128
) -> FrontRing[Any, Any]:
    """Initialise a new msgring on the frontend's pages and return its front end.

    Args:
        pages: the frontend's own ring pages.
        slot_size: bytes per slot (ours; tell the backend, e.g. via xenstore).

    Returns:
        A :class:`~ring.sring.FrontRing`: ``put_request(obj)`` and
        ``get_responses() -> list[Message]``.

    Raises:
        ValueError: bad pages or slot size.
    """
    if ring_size(len(pages) * 4096, slot_size) == 0:
        raise ValueError(f"{slot_size}-byte slots do not fit")
    return FrontRing.init(pages, MsgpackCodec(slot_size))


def msgring_back(
    pages: Sequence[memoryview], slot_size: int = 128
) -> BackRing[Any, Any]:
    """Attach the backend end of a msgring to mapped pages.

    Args:
        pages: the mapped ring pages.
        slot_size: bytes per slot (as agreed with the frontend).

    Returns:
        A :class:`~ring.sring.BackRing`: ``get_requests() -> list[Message]``
        and ``put_response(obj)``.

    Raises:
        ValueError: bad pages or slot size.
    """
    return BackRing.attach(pages, MsgpackCodec(slot_size))


RPC_OK = 0
"""Response status: ``body`` is the answer."""
RPC_ERROR = 1
"""Response status: the request was refused; ``body`` is a short str reason."""
RPC_REASON_MAX = 64
"""Longest reason of an ``RPC_ERROR`` response, in UTF-8 bytes."""
_U32 = 0xFFFFFFFF


def _is_u32(x: Any) -> bool:
    return type(x) is int and 0 <= x <= _U32


@dataclass(frozen=True)
class RpcRequest:
    """One request envelope.

    Attributes:
        id: echoed in the response (the frontend's choice, u32).
        body: the driver's request (plain data).
        error: why a decoded envelope is invalid (None when valid); ``id``
            is then 0 if it was unreadable.
    """

    id: int
    body: Any
    error: str | None = None


@dataclass(frozen=True)
class RpcResponse:
    """One response envelope.

    Attributes:
        id: the id of the request it answers.
        status: :data:`RPC_OK` or :data:`RPC_ERROR`.
        body: the answer (plain data), or the reason (str) of an error.
        error: why a decoded envelope is invalid (None when valid).
    """

    id: int
    status: int
    body: Any = None
    error: str | None = None


class RpcCodec:
    """Slot codec of request/response envelopes in length-prefixed msgpack slots.

    A :class:`~ring.sring.SlotCodec`: encoders check our own envelopes and
    raise ``ValueError`` (:class:`MessageTooLarge` when a body does not fit a
    slot); decoders check the peer's and never raise.

    Args:
        slot_size: bytes per slot (both ends must agree).
    """

    def __init__(self, slot_size: int = 128) -> None:
        self._msg = MsgpackCodec(slot_size)
        self.slot_size = slot_size

    def encode_request(self, req: RpcRequest) -> bytes:
        """Bytes of our request.

        Raises:
            ValueError: the id is not a u32 or the body is not plain data.
            MessageTooLarge: it does not fit a slot.
        """
        if not _is_u32(req.id):
            raise ValueError(f"request id {req.id!r} is not a u32")
        return self._msg.encode_request([req.id, req.body])

    def decode_request(self, raw: bytes) -> RpcRequest:
        """The request in a private slot copy (frontend-controlled); never raises."""
        msg = self._msg.decode_request(raw)
        if msg.error is not None:
            return RpcRequest(0, None, msg.error)
        v = msg.value
        if type(v) is not tuple or len(v) != 2:
            return RpcRequest(0, None, "not an [id, body] array")
        rid, body = v
        if not _is_u32(rid):
            return RpcRequest(0, None, "id is not a u32")
        return RpcRequest(rid, body)

    def encode_response(self, rsp: RpcResponse) -> bytes:
        """Bytes of our response; unused slot bytes are zero.

        Raises:
            ValueError: bad id or status, or an error reason that is not a
                str of at most :data:`RPC_REASON_MAX` bytes.
            MessageTooLarge: it does not fit a slot.
        """
        problem = _response_problem(rsp.id, rsp.status, rsp.body)
        if problem is not None:
            raise ValueError(f"invalid response: {problem}")
        return self._msg.encode_response([rsp.id, rsp.status, rsp.body])

    def decode_response(self, raw: bytes) -> RpcResponse:
        """The response in a private slot copy (backend-controlled); never raises."""
        msg = self._msg.decode_response(raw)
        if msg.error is not None:
            return RpcResponse(0, RPC_ERROR, None, msg.error)
        v = msg.value
        if type(v) is not tuple or len(v) != 3:
            return RpcResponse(0, RPC_ERROR, None, "not an [id, status, body] array")
        rid, status, body = v
        problem = _response_problem(rid, status, body)
        if problem is not None:
            return RpcResponse(rid if _is_u32(rid) else 0, RPC_ERROR, None, problem)
        return RpcResponse(rid, status, body)


def _response_problem(rid: Any, status: Any, body: Any) -> str | None:
    if not _is_u32(rid):
        return "id is not a u32"
    if type(status) is not int or status not in (RPC_OK, RPC_ERROR):
        return f"unknown status {status!r}"
    if status == RPC_ERROR and (
            type(body) is not str
            or len(body.encode("utf-8", "surrogatepass")) > RPC_REASON_MAX):
        return f"an error's reason must be a str of at most {RPC_REASON_MAX} bytes"
    return None


def rpc_front_ring(pages: Sequence[memoryview], slot_size: int = 128,
                   ) -> FrontRing[RpcRequest, RpcResponse]:
    """Initialise an envelope ring on the frontend's own pages (``SHARED_RING_INIT``).

    Raises:
        ValueError: bad pages or slot size.
    """
    if ring_size(len(pages) * 4096, slot_size) == 0:
        raise ValueError(f"{slot_size}-byte slots do not fit")
    return FrontRing.init(pages, RpcCodec(slot_size))


def rpc_back_ring(pages: Sequence[memoryview], slot_size: int = 128,
                  ) -> BackRing[RpcRequest, RpcResponse]:
    """Attach the backend to mapped envelope-ring pages (never initialises).

    Raises:
        ValueError: bad pages or slot size.
    """
    return BackRing.attach(pages, RpcCodec(slot_size))
