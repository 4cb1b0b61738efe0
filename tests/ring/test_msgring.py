"""msgring: msgpack messages in ring slots; bounded, never-raising decode."""

from __future__ import annotations

import struct

import msgpack
import pytest

from ring.msgring import (
    RPC_ERROR,
    RPC_OK,
    RPC_REASON_MAX,
    Message,
    MessageTooLarge,
    MsgpackCodec,
    RpcCodec,
    RpcRequest,
    RpcResponse,
    msgring_back,
    msgring_front,
    rpc_back_ring,
    rpc_front_ring,
)


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


# -- request/response envelopes (RpcCodec) -----------------------------------------------------

RPC = RpcCodec(128)


def test_rpc_round_trip_on_one_page() -> None:
    page = memoryview(bytearray(4096))
    front, back = rpc_front_ring([page]), rpc_back_ring([page])
    front.put_request(RpcRequest(7, [1, "two"]))
    assert front.push_requests_and_check_notify()
    assert back.get_requests() == [RpcRequest(7, (1, "two"))]  # lists arrive as tuples
    back.put_response(RpcResponse(7, RPC_OK, b"\x01"))
    assert back.push_responses_and_check_notify()
    assert front.get_responses() == [RpcResponse(7, RPC_OK, b"\x01")]


@pytest.mark.parametrize(("value", "rid", "error"), [
    ({"id": 1}, 0, "[id, body]"),
    ((1,), 0, "[id, body]"),
    ((-1, None), 0, "u32"),
    ((2**32, None), 0, "u32"),
    ((True, None), 0, "u32"),
])
def test_rpc_hostile_requests_decode_to_errors(value: object, rid: int, error: str) -> None:
    req = RPC.decode_request(MsgpackCodec(128).encode_request(value))
    assert req.id == rid and req.error is not None and error in req.error


@pytest.mark.parametrize(("value", "rid", "error"), [
    ((1, 0), 0, "[id, status, body]"),
    ((-5, 0, None), 0, "u32"),
    ((5, 2, None), 5, "unknown status"),
    ((5, RPC_ERROR, b"reason"), 5, "reason"),
    ((5, RPC_ERROR, "x" * (RPC_REASON_MAX + 1)), 5, "reason"),
])
def test_rpc_hostile_responses_decode_to_errors(value: object, rid: int, error: str) -> None:
    rsp = RPC.decode_response(MsgpackCodec(128).encode_response(value))
    assert rsp.id == rid and rsp.status == RPC_ERROR and rsp.error is not None
    assert error in rsp.error


@pytest.mark.parametrize("raw", [b"\xc1" * 128, bytes(128), b"\xff" * 128, b"\x01" * 64])
def test_rpc_garbage_never_raises(raw: bytes) -> None:
    assert RPC.decode_request(raw).error is not None
    assert RPC.decode_response(raw).error is not None


@pytest.mark.parametrize("rsp", [RpcResponse(-1, RPC_OK), RpcResponse(1, 9),
                                 RpcResponse(1, RPC_ERROR, "x" * 65),
                                 RpcResponse(1, RPC_OK, b"x" * 200)])
def test_rpc_our_own_bad_responses_raise(rsp: RpcResponse) -> None:
    with pytest.raises(ValueError):
        RPC.encode_response(rsp)


def test_rpc_our_own_bad_requests_raise() -> None:
    with pytest.raises(ValueError, match="u32"):
        RPC.encode_request(RpcRequest(2**32, None))
    with pytest.raises(MessageTooLarge):
        RPC.encode_request(RpcRequest(1, b"x" * 200))
