"""msgring: msgpack messages in ring slots; bounded, never-raising decode."""

from __future__ import annotations

import struct

import msgpack
import pytest

from ring.msgring import Message, MessageTooLarge, MsgpackCodec, msgring_back, msgring_front


def pages() -> list[memoryview]:
    return [memoryview(bytearray(4096))]


def test_round_trip() -> None:
    p = pages()
    front, back = msgring_front(p), msgring_back(p)
    assert front.size == 16
    front.put_request({"op": "add", "args": (2, 3)})
    assert front.push_requests_and_check_notify()
    [msg] = back.get_requests()
    assert msg == Message({"op": "add", "args": (2, 3)})
    back.put_response({"ok": sum(msg.value["args"])})
    assert back.push_responses_and_check_notify()
    assert front.get_responses() == [Message({"ok": 5})]


def test_oversize_is_our_error() -> None:
    front = msgring_front(pages())
    with pytest.raises(MessageTooLarge):
        front.put_request(b"x" * 200)
    with pytest.raises(ValueError):
        front.put_request(object())


def test_response_slot_zero_padded() -> None:
    codec = MsgpackCodec(64)
    raw = codec.encode_response(1)
    assert len(raw) == 64 and raw[5:] == bytes(59)


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack("<I", 1000) + bytes(124),  # length beyond the slot
        struct.pack("<I", 3) + b"\xc1\xc1\xc1" + bytes(121),  # invalid msgpack
        struct.pack("<I", 5) + b"\xda\xff\xff" + bytes(121),  # truncated str16
        struct.pack("<I", 2) + b"\x01\x02" + bytes(122),  # trailing data
        struct.pack("<I", 120) + b"\x91" * 120 + bytes(4),  # deep nesting
        struct.pack("<I", 3) + msgpack.packb(msgpack.ExtType(1, b"a")) + bytes(121),
        b"short",
    ],
)
def test_hostile_slots_are_error_values(raw: bytes) -> None:
    codec = MsgpackCodec(128)
    msg = codec.decode_request(raw)
    assert msg.value is None and msg.error
    assert codec.decode_response(raw).error
