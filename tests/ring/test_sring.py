"""Sync front/back pair tests for ring.sring (io/ring.h semantics)."""

from __future__ import annotations

import struct

import pytest

from ring.blkif import BLKIF_CODEC, BLKIF_OP_READ, BlkifRequest, BlkifResponse, BlkifSegment
from ring.errors import RingFullError, RingOverflowError, RingUsageError
from ring.msgring import MsgpackCodec
from ring.netif import NETIF_RX_CODEC, NETIF_TX_CODEC
from ring.sring import BackRing, FrontRing, SharedRing, ring_size

M = 0xFFFFFFFF


def pages(n: int = 1) -> list[memoryview]:
    return [memoryview(bytearray(4096)) for _ in range(n)]


def req(i: int) -> BlkifRequest:
    return BlkifRequest(BLKIF_OP_READ, 51712, i, i * 8, (BlkifSegment(i, 0, 7),))


def pair(start: int = 0, n: int = 1):
    p = pages(n)
    front = FrontRing.init(p, BLKIF_CODEC)
    if start:
        s = front.sring
        s.req_prod = s.rsp_prod = start
        s.req_event = s.rsp_event = start + 1
        front = FrontRing.attach(p, BLKIF_CODEC, start)
    back = BackRing.attach(p, BLKIF_CODEC, start)
    return front, back, p


@pytest.mark.parametrize(
    ("ring_bytes", "slot", "expected"),
    [(4096, 112, 32), (8192, 112, 64), (16384, 112, 128), (32768, 112, 256),
     (65536, 112, 512), (4096, 12, 256), (4096, 8, 256), (4096, 16, 128), (4096, 24, 128),
     (4096, 32, 64), (4096, 48, 64), (4096, 64, 32), (4096, 128, 16), (4096, 8192, 0)],
)
def test_ring_size_matches_checks_out(ring_bytes: int, slot: int, expected: int) -> None:
    assert ring_size(ring_bytes, slot) == expected


def test_codec_ring_sizes() -> None:
    assert SharedRing(pages(), BLKIF_CODEC.slot_size).nr_ents == 32
    assert SharedRing(pages(), NETIF_TX_CODEC.slot_size).nr_ents == 256
    assert SharedRing(pages(), NETIF_RX_CODEC.slot_size).nr_ents == 256


def test_shared_ring_init_header() -> None:
    p = pages()
    p[0][:64] = b"\xff" * 64
    FrontRing.init(p, BLKIF_CODEC)
    assert struct.unpack_from("<IIII", p[0]) == (0, 1, 0, 1)
    assert bytes(p[0][16:64]) == bytes(48)


def test_bad_pages_rejected() -> None:
    with pytest.raises(ValueError):
        SharedRing([memoryview(bytearray(100))], 112)
    with pytest.raises(ValueError):
        SharedRing(pages(3), 112)
    with pytest.raises(ValueError):
        SharedRing([memoryview(bytes(4096))], 112)
    with pytest.raises(ValueError):
        FrontRing(SharedRing(pages(), 112), NETIF_TX_CODEC)


def test_round_trip_and_hold_off() -> None:
    front, back, _ = pair()
    front.put_requests([req(1), req(2)])
    assert back.get_requests() == []  # not pushed yet
    assert front.push_requests_and_check_notify() is True  # req_event 1 in (0, 2]
    front.put_request(req(3))
    assert front.push_requests_and_check_notify() is False  # backend has not re-armed
    got = back.get_requests()
    assert [r.id for r in got] == [1, 2, 3]
    assert all(r.error is None for r in got)
    back.put_responses(BlkifResponse(r.id, r.operation, 0) for r in got)
    assert back.push_responses_and_check_notify() is True
    assert back.final_check_for_requests() is False
    assert back.sring.req_event == 4
    front.put_request(req(4))
    assert front.push_requests_and_check_notify() is True  # event 4 in (3, 4]
    assert [r.id for r in front.get_responses()] == [1, 2, 3]
    assert front.final_check_for_responses() is False
    assert front.sring.rsp_event == 4


def test_final_check_sees_work_published_during_rearm() -> None:
    front, back, _ = pair()
    front.put_request(req(1))
    front.push_requests()
    assert back.final_check_for_requests() is True  # work pending: no re-arm
    assert back.sring.req_event == 1
    assert len(back.get_requests()) == 1


def test_wraps_past_2_32() -> None:
    front, back, _ = pair(start=0xFFFFFFF0)
    for rnd in range(5):
        reqs = [req(rnd * 100 + k) for k in range(32)]
        front.put_requests(reqs)
        assert front.full()
        with pytest.raises(RingFullError):
            front.put_request(req(0))
        front.push_requests_and_check_notify()
        got = back.get_requests()  # an exactly full ring is processed
        assert [r.id for r in got] == [r.id for r in reqs]
        for r in got:
            back.put_response(BlkifResponse(r.id, r.operation, 0))
        back.push_responses_and_check_notify()
        assert [r.id for r in front.get_responses()] == [r.id for r in reqs]
    assert front.req_prod_pvt == (0xFFFFFFF0 + 160) & M
    assert front.sring.req_prod < 0x100


def test_request_prod_overflow_marks_ring_broken() -> None:
    _front, back, _ = pair(start=0xFFFFFFF0)
    back.sring.req_prod = (0xFFFFFFF0 + 33) & M
    assert back.request_prod_overflow(back.sring.req_prod)
    with pytest.raises(RingOverflowError, match="bogus"):
        back.get_requests()
    back.sring.req_prod = 0xFFFFFFF0
    with pytest.raises(RingOverflowError):  # sticky
        back.get_requests()
    assert back.broken


def test_req_prod_behind_is_overflow_too() -> None:
    _front, back, _ = pair(start=100)
    back.sring.req_prod = 99  # "behind": 2**32-1 requests ahead modulo
    with pytest.raises(RingOverflowError):
        back.get_requests()


def test_unconsumed_requests_capped_by_ring() -> None:
    _front, back, _ = pair()
    back.sring.req_prod = 0x80000000
    assert back.unconsumed_requests() == 32
    assert back.has_unconsumed_requests()


def test_response_prod_overflow() -> None:
    front, _back, _ = pair(start=0xFFFFFFFE)
    front.sring.rsp_prod = (0xFFFFFFFE + 33) & M
    assert front.response_prod_overflow(front.sring.rsp_prod)
    with pytest.raises(RingOverflowError, match="illegal number of responses"):
        front.get_responses()
    assert front.broken


@pytest.mark.parametrize("batch", [False, True])
def test_more_responses_than_requests_breaks_the_front_ring(batch: bool) -> None:
    # within the ring size, but answering requests the frontend never made:
    # taking them would move rsp_cons past req_prod_pvt (free_requests() > size)
    front, _back, _ = pair(start=0xFFFFFFFE)
    front.put_requests([req(1), req(2)])
    front.push_requests()
    front.sring.rsp_prod = (0xFFFFFFFE + 3) & M
    assert not front.response_prod_overflow(front.sring.rsp_prod)  # the C macro's check
    get = front.get_responses_batch if batch else front.get_responses
    with pytest.raises(RingOverflowError, match="more responses than requests"):
        get()
    assert front.broken and front.rsp_cons == 0xFFFFFFFE
    assert front.free_requests() == 30  # the private indices are untouched
    front.sring.rsp_prod = (0xFFFFFFFE + 2) & M  # even a sane value: broken stays broken
    with pytest.raises(RingOverflowError, match="broken"):
        get()


def test_put_response_without_request_is_our_bug() -> None:
    _front, back, _ = pair()
    with pytest.raises(RingUsageError):
        back.put_response(BlkifResponse(1, 0, 0))


def test_copy_once_record_is_immune_to_later_writes() -> None:
    front, back, p = pair()
    front.put_request(req(7))
    front.push_requests()
    [got] = back.get_requests()
    p[0][64:112 + 64] = b"\xee" * 112  # the frontend scribbles after the copy
    assert got.id == 7 and got.segments == (BlkifSegment(7, 0, 7),)


def test_limit_bounds_work() -> None:
    front, back, _ = pair()
    front.put_requests([req(i) for i in range(10)])
    front.push_requests()
    assert len(back.get_requests(limit=3)) == 3
    assert back.unconsumed_requests() == 7
    assert len(back.get_requests(limit=0)) == 0
    assert len(back.get_requests()) == 7


@pytest.mark.parametrize("npages", [1, 2, 4, 8, 16])
def test_multi_page_rings_including_straddling_slots(npages: int) -> None:
    front, back, p = pair(n=npages)
    n = front.size
    assert n == 32 * npages
    if npages >= 4:
        assert 72 in front.sring.straddling_slots()
    for rnd in range(2):
        reqs = [req(rnd * 1000 + k) for k in range(n)]
        front.put_requests(reqs)
        front.push_requests()
        got = back.get_requests()
        assert got == [BLKIF_CODEC.decode_request(BLKIF_CODEC.encode_request(r)) for r in reqs]
        for r in got:
            back.put_response(BlkifResponse(r.id, r.operation, 0))
        back.push_responses()
        assert [r.id for r in front.get_responses()] == [r.id for r in reqs]
    # the concatenation of the pages is exactly the C layout: slot k holds the
    # response (16 bytes) over the tail of request k (indices started at 0)
    flat = b"".join(bytes(x) for x in p)
    for k in {0, 35 % n, 36 % n, 72 % n, 109 % n, n - 1}:
        slot = flat[64 + k * 112 : 64 + (k + 1) * 112]
        r = req(1000 + k)
        assert slot[16:] == BLKIF_CODEC.encode_request(r)[16:]
        assert slot[:16] == BLKIF_CODEC.encode_response(BlkifResponse(r.id, r.operation, 0))


def test_generic_codec_slot_sizes() -> None:
    for slot in (16, 24, 32, 48, 64, 128):
        ring = SharedRing(pages(), slot)
        assert ring.nr_ents == ring_size(4096, slot)
    front = FrontRing.init(pages(), MsgpackCodec(64))
    assert front.size == 32


def test_init_can_start_near_2_32_and_wrap() -> None:
    """FrontRing.init(start=...) sets the shared header and both ends' indices,
    so a ring wraps from its first requests without hand-poking the header."""
    page = memoryview(bytearray(4096))
    start = 0xFFFFFFF0
    front = FrontRing.init([page], BLKIF_CODEC, start=start)
    back = BackRing.attach([page], BLKIF_CODEC, start=start)
    seg = (BlkifSegment(8, 0, 7),)
    reqs = [BlkifRequest(BLKIF_OP_READ, 0, i, 0, seg) for i in range(32)]
    front.put_requests(reqs)
    assert front.push_requests_and_check_notify()  # req_event was start + 1
    got = back.get_requests()
    assert [r.id for r in got] == list(range(32))
    assert front.sring.req_prod == (start + 32) & 0xFFFFFFFF == 0x10
