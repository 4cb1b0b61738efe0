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
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgpack

from ring.sring import BackRing, FrontRing, ring_size

__all__ = ["Message", "MessageTooLarge", "MsgpackCodec", "msgring_back", "msgring_front"]

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
