"""Sync pair tests for the batch calls of ring.sring and the blkif batch codec.

Every batch call must behave exactly like its single-record twin (same
records, same page bytes, same private indices, same errors); these tests pin
the edges by hand, test_properties.py checks random interleavings.
"""

from __future__ import annotations

import struct

import pytest

from ring.blkif import (
    BLKIF_CODEC,
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_RSP_OKAY,
    BlkifAnyRequest,
    BlkifCodec,
    BlkifDiscardRequest,
    BlkifIndirectRequest,
    BlkifRequest,
    BlkifResponse,
    BlkifSegment,
    error_response,
    make_response,
    make_responses,
)
from ring.errors import RingFullError, RingOverflowError, RingUsageError
from ring.msgring import MsgpackCodec
from ring.netif import NETIF_RX_CODEC, NETIF_TX_CODEC, NetifRxRequest, NetifTxRequest
from ring.sring import BackRing, FrontRing, SharedRing

M = 0xFFFFFFFF


def pages(n: int = 1) -> list[memoryview]:
    return [memoryview(bytearray(4096)) for _ in range(n)]


def rw(i: int, nseg: int = 1, op: int = BLKIF_OP_READ) -> BlkifRequest:
    segs = tuple(BlkifSegment(1000 + 16 * i + k, k % 8, 7) for k in range(nseg))
    return BlkifRequest(op, 51712, 0x1000 + i, (1 << 40) + 8 * i, segs)


def mixed(i: int) -> BlkifRequest | BlkifDiscardRequest | BlkifIndirectRequest:
    if i % 5 == 4:
        return BlkifDiscardRequest(BLKIF_OP_DISCARD, 1, 51712, i, 8 * i, 8)
    if i % 7 == 6:
        return BlkifIndirectRequest(BLKIF_OP_INDIRECT, BLKIF_OP_WRITE, 600, i, 8 * i, 51712,
                                    (2000 + i, 3000 + i))
    return rw(i, 1 + i % 11, i % 2)


def twins(start: int = 0, n: int = 1):
    """Two identical fresh rings: (front, back, pages) for the single path and
    for the batch path."""
    out = []
    for _ in range(2):
        p = pages(n)
        front = FrontRing.init(p, BLKIF_CODEC, start)
        back = BackRing.attach(p, BLKIF_CODEC, start)
        out.append((front, back, p))
    return out


def same_pages(a: list[memoryview], b: list[memoryview]) -> bool:
    return [bytes(x) for x in a] == [bytes(x) for x in b]


def answer(reqs: list) -> list[BlkifResponse]:
    return [make_response(r, BLKIF_RSP_OKAY) if r.error is None else error_response(r)
            for r in reqs]


# --- SharedRing: runs of slots ---------------------------------------------------------
@pytest.mark.parametrize("npages", [1, 2, 4, 8])
def test_copy_slots_is_read_slot_concatenated(npages: int) -> None:
    p = pages(npages)
    for i, page in enumerate(p):
        page[:] = bytes((i * 4096 + k) * 7 & 0xFF for k in range(4096))
    s = SharedRing(p, 112)
    n = s.nr_ents
    for first in (0, 1, n - 1, n // 2 + 3, M, M - 5, 0xFFFFFFF0):
        for count in (0, 1, 3, n - 1, n):
            expect = b"".join(s.read_slot(first + k) for k in range(count))
            assert s.copy_slots(first, count) == expect, (first, count)
    with pytest.raises(ValueError):
        s.copy_slots(0, n + 1)


@pytest.mark.parametrize("npages", [1, 4])
def test_write_records_is_write_slot_repeated(npages: int) -> None:
    a, b = pages(npages), pages(npages)
    sa, sb = SharedRing(a, 112), SharedRing(b, 112)
    n = sa.nr_ents
    if npages == 4:
        assert sa.straddling_slots()  # the two-piece path is exercised
    for first, count in ((0, n), (n - 3, 7), (0xFFFFFFFE, n), (70, 5)):
        reqs = [mixed(k) for k in range(count)]
        for k, r in enumerate(reqs):
            sa.write_slot(first + k, BLKIF_CODEC.encode_request(r))
        sb.write_records(first, reqs, BLKIF_CODEC.encode_requests_into,
                         BLKIF_CODEC.encode_request)
        assert same_pages(a, b), (first, count)
    with pytest.raises(ValueError):
        sb.write_records(0, [rw(0)] * (n + 1), BLKIF_CODEC.encode_requests_into,
                         BLKIF_CODEC.encode_request)


# --- the ring calls ------------------------------------------------------------------
@pytest.mark.parametrize("npages", [1, 4])
@pytest.mark.parametrize("make", [rw, mixed])
def test_batch_round_trips_wrap_like_single(npages: int, make) -> None:
    (f1, b1, p1), (f2, b2, p2) = twins(0xFFFFFFF0, npages)
    n = f1.size
    for rnd in range(4):
        reqs = [make(rnd * 1000 + k) for k in range(n - rnd)]
        f1.put_requests(reqs)
        f2.put_requests_batch(reqs)
        assert same_pages(p1, p2)
        assert f1.push_requests_and_check_notify() == f2.push_requests_and_check_notify()
        got1, got2 = b1.get_requests(), b2.get_requests_batch()
        assert got1 == got2 and list(map(type, got1)) == list(map(type, got2))
        assert len(got2) == n - rnd
        b1.put_responses(answer(got1))
        b2.put_responses_batch(make_responses(got2, BLKIF_RSP_OKAY))
        assert same_pages(p1, p2)
        assert b1.push_responses_and_check_notify() == b2.push_responses_and_check_notify()
        assert b1.final_check_for_requests() == b2.final_check_for_requests()
        assert f1.get_responses() == f2.get_responses_batch()
        assert f1.final_check_for_responses() == f2.final_check_for_responses()
        assert same_pages(p1, p2)
    assert (f2.req_prod_pvt, f2.rsp_cons, b2.req_cons, b2.rsp_prod_pvt) == (
        f1.req_prod_pvt, f1.rsp_cons, b1.req_cons, b1.rsp_prod_pvt)
    assert f2.sring.req_prod < 0x1000  # wrapped


def test_put_requests_batch_on_a_full_ring_writes_nothing() -> None:
    (front, _back, p), _ = twins()
    front.put_requests_batch([rw(i) for i in range(30)])
    before = bytes(p[0])
    with pytest.raises(RingFullError, match="3 requests, 2 free slots"):
        front.put_requests_batch([rw(i) for i in range(3)])
    assert bytes(p[0]) == before and front.req_prod_pvt == 30
    front.put_requests_batch([])
    assert front.req_prod_pvt == 30


def test_put_responses_batch_beyond_consumed_writes_what_fits() -> None:
    (f1, b1, p1), (f2, b2, p2) = twins()
    for front, back in ((f1, b1), (f2, b2)):
        front.put_requests([rw(i) for i in range(5)])
        front.push_requests()
        back.get_requests(limit=3)
    rsps = [BlkifResponse(i, 0, 0) for i in range(4)]
    with pytest.raises(RingUsageError):
        b1.put_responses(rsps)
    with pytest.raises(RingUsageError):
        b2.put_responses_batch(iter(rsps))
    assert b1.rsp_prod_pvt == b2.rsp_prod_pvt == 3
    assert same_pages(p1, p2)


def test_encode_misuse_raises_like_single_and_publishes_nothing() -> None:
    for count in (3, 20):  # record by record, and by column
        (front, _back, _p), _ = twins()
        with pytest.raises(ValueError, match="12 segments"):
            front.put_requests_batch([rw(i) for i in range(count - 1)] + [rw(99, 12)])
        bad = [rw(i) for i in range(count)]
        bad[-1] = bad[-1]._replace(handle=1 << 16)
        with pytest.raises(struct.error):
            front.put_requests(bad)
        with pytest.raises(struct.error):
            front.put_requests_batch(bad)
        assert front.req_prod_pvt == 0 and front.sring.req_prod == 0


def test_explicit_nr_segments_and_uneven_counts_take_the_slow_path_correctly() -> None:
    (f1, _b1, p1), (f2, _b2, p2) = twins()
    reqs = [rw(i, 2)._replace(nr_segments=2 if i % 3 else 5) for i in range(16)]
    reqs += [rw(100 + i, 1 + i % 3) for i in range(16)]
    f1.put_requests(reqs)
    f2.put_requests_batch(reqs)
    assert same_pages(p1, p2)


def test_get_batch_overflow_errors_match_and_stick() -> None:
    (_f1, b1, _), (_f2, b2, _) = twins(0xFFFFFFF0)
    for back in (b1, b2):
        back.sring.req_prod = (0xFFFFFFF0 + 33) & M
    with pytest.raises(RingOverflowError) as e1:
        b1.get_requests()
    with pytest.raises(RingOverflowError) as e2:
        b2.get_requests_batch()
    assert str(e1.value) == str(e2.value) and "bogus ring requests" in str(e2.value)
    b2.sring.req_prod = 0xFFFFFFF0
    with pytest.raises(RingOverflowError, match="broken"):
        b2.get_requests_batch()
    (f1, _b1, _), (f2, _b2, _) = twins(0xFFFFFFFE)
    for front in (f1, f2):
        front.sring.rsp_prod = (0xFFFFFFFE + 33) & M
    with pytest.raises(RingOverflowError) as e1:
        f1.get_responses()
    with pytest.raises(RingOverflowError) as e2:
        f2.get_responses_batch()
    assert str(e1.value) == str(e2.value) and f2.broken


def test_batch_limit_bounds_work() -> None:
    (front, back, _), _ = twins()
    front.put_requests_batch([rw(i) for i in range(10)])
    front.push_requests()
    assert [r.id for r in back.get_requests_batch(limit=3)] == [0x1000, 0x1001, 0x1002]
    assert back.get_requests_batch(limit=0) == []
    assert back.get_requests_batch(limit=-5) == []
    assert len(back.get_requests_batch()) == 7
    back.put_responses_batch(BlkifResponse(i, 0, 0) for i in range(10))
    back.push_responses()
    assert len(front.get_responses_batch(limit=4)) == 4
    assert len(front.get_responses_batch()) == 6


def test_batch_copy_once_records_are_immune_to_later_writes() -> None:
    (front, back, p), _ = twins()
    front.put_requests_batch([rw(i) for i in range(8)])
    front.push_requests()
    got = back.get_requests_batch()
    p[0][64 : 64 + 8 * 112] = b"\xee" * (8 * 112)  # the frontend scribbles after the copy
    assert [r.id for r in got] == [0x1000 + i for i in range(8)]
    assert got[3].segments == (BlkifSegment(1000 + 48, 0, 7),)


@pytest.mark.parametrize("codec", [NETIF_TX_CODEC, NETIF_RX_CODEC, MsgpackCodec(64)],
                         ids=["nettx", "netrx", "msgpack"])
def test_codecs_without_batch_hooks_use_the_per_slot_fallback(codec) -> None:
    def request(i: int):
        if codec is NETIF_TX_CODEC:
            return NetifTxRequest(3000 + i, i, 0, i, 60 + i)
        if codec is NETIF_RX_CODEC:
            return NetifRxRequest(i, 4000 + i)
        return [i, "x" * (i % 20)]

    p1, p2 = pages(), pages()
    f1, f2 = FrontRing.init(p1, codec, M - 3), FrontRing.init(p2, codec, M - 3)
    b1, b2 = BackRing.attach(p1, codec, M - 3), BackRing.attach(p2, codec, M - 3)
    reqs = [request(i) for i in range(min(f1.size, 40))]
    f1.put_requests(reqs)
    f2.put_requests_batch(reqs)
    assert same_pages(p1, p2)
    f1.push_requests()
    f2.push_requests()
    got = b1.get_requests()
    assert got == b2.get_requests_batch()
    with pytest.raises(ValueError):  # a record too big for its slot: the codec's bug
        FrontRing.init(pages(), MsgpackCodec(16)).put_requests_batch([["y" * 40]])


# --- blkif batch codec ---------------------------------------------------------------
def test_make_responses_is_make_or_error_response() -> None:
    raw = b"".join(BLKIF_CODEC.encode_request(mixed(i)) + bytes(112 - len(
        BLKIF_CODEC.encode_request(mixed(i)))) for i in range(12))
    bad = bytearray(BLKIF_CODEC.encode_request(rw(50, 12 - 1)))
    bad[1] = 12  # nr_segments 12: an error record
    unknown = bytes([9]) + bytes(111)
    reqs = BLKIF_CODEC.decode_requests(raw + bytes(bad) + unknown)
    assert any(r.error for r in reqs)
    assert make_responses(reqs, BLKIF_RSP_OKAY) == answer(reqs)
    assert make_responses(iter(reqs), -1)[0] == make_response(reqs[0], -1)


def test_decode_requests_column_path_equals_per_slot() -> None:
    def slot(r) -> bytes:
        data = BLKIF_CODEC.encode_request(r)
        return data + bytes(112 - len(data))

    # 6 requests with 1 segment, 6 with 11, 6 with 4; ops READ..FLUSH
    runs = [rw(6 * j + i, n, i % 4) for j, n in enumerate((1, 11, 4)) for i in range(6)]
    raw = bytearray(b"".join(slot(r) for r in runs))
    seg2 = 24 + 8 * 2
    raw[112 * 14 + seg2 + 5] = 8  # request 14: segment 2 last_sect 8
    raw[112 * 15 + seg2 + 4] = 8  # request 15: segment 2 first_sect 8 > last_sect 7
    raw = bytes(raw)
    single = [BLKIF_CODEC.decode_request(raw[o : o + 112]) for o in range(0, len(raw), 112)]
    batch = BLKIF_CODEC.decode_requests(raw)
    assert batch == single
    assert [type(r) for r in batch] == [type(r) for r in single]
    assert all(type(s) is BlkifSegment for r in batch for s in r.segments)
    assert batch[14].error == "segment 2: last_sect 8 > 7"
    assert batch[15].error == "segment 2: last_sect 7 < first_sect 8"
    assert sum(r.error is not None for r in batch) == 2
    assert batch[0].error is None and batch[3].operation == BLKIF_OP_FLUSH_DISKCACHE

    class Counting(BlkifCodec):
        calls = 0

        def decode_request(self, raw: bytes) -> BlkifAnyRequest:
            Counting.calls += 1
            return super().decode_request(raw)

    assert Counting().decode_requests(raw) == single
    assert Counting.calls == 6  # only the run with bad segments went slot by slot
    with pytest.raises(ValueError, match="whole"):
        BLKIF_CODEC.decode_requests(raw[:-1])
    with pytest.raises(ValueError, match="whole"):
        BLKIF_CODEC.decode_responses(raw[:-1])


def test_decode_responses_equals_per_slot() -> None:
    raw = bytearray(112 * 6)
    for k, status in enumerate((0, -1, -2, 7, 0, -32768)):
        struct.pack_into("<QBxh", raw, 112 * k, 10 + k, k % 4, status)
    raw = bytes(raw)
    single = [BLKIF_CODEC.decode_response(raw[o : o + 112]) for o in range(0, len(raw), 112)]
    assert BLKIF_CODEC.decode_responses(raw) == single
    assert single[3].error == "unknown status 7"
