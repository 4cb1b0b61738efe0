"""The tutorial's ``kv`` protocol, sans-IO: a front/back pair on one page, and hostile slots."""

from __future__ import annotations

import pytest

from ring.errors import RingOverflowError
from ring.kvstore import (
    KV_CODEC,
    KV_OP_DELETE,
    KV_OP_GET,
    KV_OP_PUT,
    KV_RSP_ERROR,
    KV_RSP_OKAY,
    KV_SLOT_SIZE,
    KvRequest,
    KvResponse,
    kv_back_ring,
    kv_front_ring,
)
from ring.msgring import MsgpackCodec

SLOTS = MsgpackCodec(KV_SLOT_SIZE)


def test_round_trip_on_one_page() -> None:
    page = memoryview(bytearray(4096))
    front, back = kv_front_ring([page]), kv_back_ring([page])
    assert front.size == 16
    front.put_request(KvRequest(7, KV_OP_PUT, "colour", b"blue"))
    front.put_request(KvRequest(8, KV_OP_GET, "colour"))
    assert front.push_requests_and_check_notify()
    reqs = back.get_requests()
    assert reqs == [KvRequest(7, KV_OP_PUT, "colour", b"blue"), KvRequest(8, KV_OP_GET, "colour")]
    back.put_response(KvResponse(7, KV_RSP_OKAY))
    back.put_response(KvResponse(8, KV_RSP_OKAY, b"blue"))
    assert back.push_responses_and_check_notify()
    assert front.get_responses() == [KvResponse(7, KV_RSP_OKAY),
                                     KvResponse(8, KV_RSP_OKAY, b"blue")]


def test_largest_request_fits_a_slot() -> None:
    raw = KV_CODEC.encode_request(KvRequest(0xFFFFFFFF, KV_OP_PUT, "k" * 32, b"v" * 64))
    assert len(raw) == KV_SLOT_SIZE
    assert KV_CODEC.decode_request(raw).error is None


@pytest.mark.parametrize(("slot", "rid", "error"), [
    (b"\x04\x00\x00\x00" + b"\xc1" * (KV_SLOT_SIZE - 4), 0, "undecodable"),
    (b"\xc1" * KV_SLOT_SIZE, 0, "exceeds slot"),
    (b"\xff\xff\xff\xff" + bytes(KV_SLOT_SIZE - 4), 0, "exceeds slot"),
    (SLOTS.encode_request({"id": 1}), 0, "4-element"),
    (SLOTS.encode_request([1, 2, 3]), 0, "4-element"),
    (SLOTS.encode_request([-1, KV_OP_GET, "k", None]), 0, "u32"),
    (SLOTS.encode_request([2**32, KV_OP_GET, "k", None]), 0, "u32"),
    (SLOTS.encode_request([5, 9, "k", None]), 5, "unknown op"),
    (SLOTS.encode_request([5, True, "k", None]), 5, "unknown op"),
    (SLOTS.encode_request([5, {}, "k", None]), 5, "unknown op"),
    (SLOTS.encode_request([5, KV_OP_GET, "", None]), 5, "key of 0"),
    (SLOTS.encode_request([5, KV_OP_GET, "k" * 33, None]), 5, "key of 33"),
    (SLOTS.encode_request([5, KV_OP_GET, b"k", None]), 5, "not str"),
    (SLOTS.encode_request([5, KV_OP_PUT, "k", None]), 5, "without a bytes"),
    (SLOTS.encode_request([5, KV_OP_PUT, "k", b"v" * 65]), 5, "value of 65"),
    (SLOTS.encode_request([5, KV_OP_DELETE, "k", b"v"]), 5, "with a value"),
])
def test_hostile_request_slots_decode_to_errors(slot: bytes, rid: int, error: str) -> None:
    req = KV_CODEC.decode_request(slot.ljust(KV_SLOT_SIZE, b"\0"))
    assert req.error is not None and error in req.error
    assert req.id == rid


@pytest.mark.parametrize("value", [[1, 99, None], [1, KV_RSP_OKAY, "str"], [1, 0, b"x" * 65],
                                   [1, 0], "junk"])
def test_hostile_response_slots_decode_to_errors(value: object) -> None:
    rsp = KV_CODEC.decode_response(SLOTS.encode_response(value))
    assert rsp.error is not None and rsp.status == KV_RSP_ERROR


@pytest.mark.parametrize("req", [KvRequest(1, KV_OP_GET, ""), KvRequest(1, 7, "k"),
                                 KvRequest(1, KV_OP_PUT, "k"), KvRequest(-1, KV_OP_GET, "k")])
def test_our_own_bad_requests_raise(req: KvRequest) -> None:
    with pytest.raises(ValueError):
        KV_CODEC.encode_request(req)


def test_bogus_req_prod_breaks_the_back_ring() -> None:
    page = memoryview(bytearray(4096))
    front, back = kv_front_ring([page]), kv_back_ring([page])
    front.sring.req_prod = 0x10000
    with pytest.raises(RingOverflowError):
        back.get_requests()
    assert back.broken
