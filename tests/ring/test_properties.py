"""Property tests: random interleavings near 2**32 and hostile peers."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ring.blkif import (
    BLKIF_CODEC,
    BLKIF_OP_DISCARD,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_RSP_OKAY,
    BlkifDiscardRequest,
    BlkifIndirectRequest,
    BlkifRequest,
    BlkifSegment,
    error_response,
    make_response,
    make_responses,
)
from ring.byte_ring import ConsoleDaemon, ConsoleGuest, XenstoreDaemon
from ring.errors import CorruptRingIndexError, RingOverflowError
from ring.msgring import MsgpackCodec
from ring.netif import NETIF_RX_CODEC, NETIF_TX_CODEC
from ring.sring import BackRing, FrontRing

M = 0xFFFFFFFF
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def req(i: int) -> BlkifRequest:
    return BlkifRequest(BLKIF_OP_READ, 1, i, i, (BlkifSegment(i & M, 0, 7),))


@SETTINGS
@given(start=st.integers(0xFFFFFF00, M),
       ops=st.lists(st.tuples(st.sampled_from("FBR"), st.integers(0, 40)), max_size=60))
def test_random_interleavings(start: int, ops: list[tuple[str, int]]) -> None:
    page = [memoryview(bytearray(4096))]
    front = FrontRing.init(page, BLKIF_CODEC)
    s = front.sring
    s.req_prod = s.rsp_prod = start
    s.req_event = s.rsp_event = start + 1
    front = FrontRing.attach(page, BLKIF_CODEC, start)
    back = BackRing.attach(page, BLKIF_CODEC, start)
    sent: list[int] = []
    answered: list[int] = []
    back_asleep = True  # both armed by SHARED_RING_INIT-style events
    next_id = 0
    for actor, n in ops:
        if actor == "F":
            k = min(n, front.free_requests())
            front.put_requests([req(next_id + j) for j in range(k)])
            sent += range(next_id, next_id + k)
            next_id += k
            notify = front.push_requests_and_check_notify()
            if k and back_asleep:
                assert notify, "lost wakeup towards the backend"
            if notify:
                back_asleep = False
        elif actor == "B":
            for r in back.get_requests(limit=n or None):
                back.put_response(error_response(r)._replace(status=0))
            notify = back.push_responses_and_check_notify()
            if notify:
                pass
            back_asleep = not back.final_check_for_requests()
        else:
            answered += [r.id for r in front.get_responses()]
            not front.final_check_for_responses()
        assert 0 <= front.free_requests() <= 32
    # drain
    for r in back.get_requests():
        back.put_response(error_response(r)._replace(status=0))
    back.push_responses()
    answered += [r.id for r in front.get_responses()]
    assert answered == sent


RING_END = 64 + 32 * 112  # blkif: guard bytes from here to the end of the page


@SETTINGS
@given(header=st.lists(st.integers(0, M), min_size=4, max_size=4),
       slots=st.binary(min_size=32 * 112, max_size=32 * 112),
       cons=st.integers(0, M))
def test_hostile_frontend_cannot_hurt_backend(header: list[int], slots: bytes, cons: int) -> None:
    raw = bytearray(4096)
    struct.pack_into("<IIII", raw, 0, *header)
    raw[64:RING_END] = slots
    raw[RING_END:] = b"\xa5" * (4096 - RING_END)
    twin = bytearray(raw)
    back = BackRing.attach([memoryview(raw)], BLKIF_CODEC, cons)
    batch_back = BackRing.attach([memoryview(twin)], BLKIF_CODEC, cons)
    try:
        reqs = back.get_requests()
    except RingOverflowError:
        assert back.request_prod_overflow(header[0])
        with pytest.raises(RingOverflowError):
            batch_back.get_requests_batch()
        return
    assert batch_back.get_requests_batch() == reqs
    assert batch_back.req_cons == back.req_cons
    assert len(reqs) <= 32
    for r in reqs:
        back.put_response(error_response(r) if r.error else error_response(r)._replace(status=0))
    back.push_responses_and_check_notify()
    back.final_check_for_requests()
    assert bytes(raw[RING_END:]) == b"\xa5" * (4096 - RING_END)


def shaped_req(i: int, shape: int) -> BlkifRequest | BlkifDiscardRequest | BlkifIndirectRequest:
    """Request number ``i`` of a batch shape: 0..11 = every request a direct one
    with that many segments (the batch codec's column paths), 12 = mixed kinds
    and segment counts (its record-by-record paths)."""
    if shape == 12:
        if i % 5 == 4:
            return BlkifDiscardRequest(BLKIF_OP_DISCARD, 0, 1, i, i, 8)
        if i % 7 == 6:
            return BlkifIndirectRequest(BLKIF_OP_INDIRECT, 1, 513, i, i, 1, (i, i + 1))
        shape = i % 12
    segs = tuple(BlkifSegment((i * 16 + k) & M, k % 8, 7) for k in range(shape))
    return BlkifRequest(i % 4, 1, i, i * 8, segs)


class _Twin:
    """One ring driven through the single-record calls or through the batch calls."""

    def __init__(self, npages: int, start: int, batch: bool) -> None:
        self.pages = [memoryview(bytearray(4096)) for _ in range(npages)]
        self.front = FrontRing.init(self.pages, BLKIF_CODEC, start)
        self.back = BackRing.attach(self.pages, BLKIF_CODEC, start)
        self.batch = batch

    def step(self, actor: str, n: int, shape: int, next_id: int) -> object:
        """One actor's move; returns everything observable (or the error)."""
        f, b = self.front, self.back
        try:
            if actor == "F":
                reqs = [shaped_req(next_id + j, shape) for j in range(min(n, f.free_requests()))]
                if self.batch:
                    f.put_requests_batch(reqs)
                else:
                    for r in reqs:
                        f.put_request(r)
                return len(reqs), f.push_requests_and_check_notify()
            if actor == "B":
                limit = n or None
                if self.batch:
                    got = b.get_requests_batch(limit)
                    b.put_responses_batch(make_responses(got, BLKIF_RSP_OKAY))
                else:
                    got = b.get_requests(limit)
                    for r in got:
                        b.put_response(make_response(r, BLKIF_RSP_OKAY) if r.error is None
                                       else error_response(r))
                return ([(type(r), r) for r in got], b.push_responses_and_check_notify(),
                        b.final_check_for_requests())
            got = f.get_responses_batch(n or None) if self.batch else f.get_responses(n or None)
            return got, f.final_check_for_responses()
        except RingOverflowError as exc:
            return f"overflow: {exc}"

    def state(self) -> tuple[object, ...]:
        f, b = self.front, self.back
        return (tuple(bytes(p) for p in self.pages), f.req_prod_pvt, f.rsp_cons, f.broken,
                b.req_cons, b.rsp_prod_pvt, b.broken)


@SETTINGS
@given(start=st.integers(0xFFFFFF00, M), npages=st.sampled_from([1, 4]),
       ops=st.lists(st.tuples(st.sampled_from("FFBRH"), st.integers(0, 140),
                              st.integers(0, 12), st.integers(0, 2**32 + 4096 * 4)),
                    max_size=40))
def test_batch_calls_match_single_calls(start: int, npages: int,
                                        ops: list[tuple[str, int, int, int]]) -> None:
    """The batch calls return, write and raise exactly what the single-record
    calls do, for random interleavings near 2**32, with hostile writes (H: a
    shared index set to anything, or a byte of a slot overwritten) mixed in."""
    single, batch = _Twin(npages, start, False), _Twin(npages, start, True)
    next_id = 0
    for actor, n, shape, x in ops:
        if actor == "H":
            for twin in (single, batch):
                if x < 2**32:  # one of the four shared indices
                    struct.pack_into("<I", twin.pages[0], 4 * (n % 4), x)
                else:  # one byte anywhere in the pages
                    off = x - 2**32
                    twin.pages[off // 4096 % npages][off % 4096] = n & 0xFF
            continue
        out = single.step(actor, n, shape, next_id)
        assert batch.step(actor, n, shape, next_id) == out, (actor, n, shape)
        assert batch.state() == single.state(), (actor, n, shape)
        if actor == "F" and isinstance(out, tuple):
            next_id += out[0]


@SETTINGS
@given(base=st.lists(st.tuples(st.integers(0, 12), st.integers(1, 12), st.integers(0, 2**16)),
                     min_size=1, max_size=6),
       noise=st.lists(st.tuples(st.integers(0, 32 * 112 - 1), st.integers(0, 255)),
                      max_size=6),
       junk=st.binary(max_size=112 * 3))
def test_batch_decoders_match_single_on_hostile_slots(
        base: list[tuple[int, int, int]], noise: list[tuple[int, int]], junk: bytes) -> None:
    """Runs of well-formed slots of every shape with hostile bytes written
    over some of them (and arbitrary slots after): decode_requests /
    decode_responses give exactly the per-slot records, types and errors."""
    raw = bytearray()
    for shape, count, first in base:
        for i in range(first, first + count):
            data = BLKIF_CODEC.encode_request(shaped_req(i, shape))
            raw += data + bytes(112 - len(data))
    for off, value in noise:
        if off < len(raw):
            raw[off] = value
    raw += junk[: len(junk) // 112 * 112]
    raw = bytes(raw)
    slots = [raw[o : o + 112] for o in range(0, len(raw), 112)]
    single = [BLKIF_CODEC.decode_request(x) for x in slots]
    batch = BLKIF_CODEC.decode_requests(raw)
    assert batch == single
    assert [type(r) for r in batch] == [type(r) for r in single]
    assert [type(s) for r in batch for s in getattr(r, "segments", ())] == [
        type(s) for r in single for s in getattr(r, "segments", ())]
    assert BLKIF_CODEC.decode_responses(raw) == [BLKIF_CODEC.decode_response(x) for x in slots]


@SETTINGS
@given(data=st.binary(min_size=112, max_size=112))
def test_decoders_never_raise(data: bytes) -> None:
    BLKIF_CODEC.decode_request(data)
    BLKIF_CODEC.decode_response(data)
    NETIF_TX_CODEC.decode_request(data[:12]).as_extra_info()
    NETIF_TX_CODEC.decode_response(data[:12])
    NETIF_RX_CODEC.decode_request(data[:8])
    NETIF_RX_CODEC.decode_response(data[:8]).as_extra_info()
    MsgpackCodec(112).decode_request(data)
    MsgpackCodec(16).decode_request(data[:16])


@SETTINGS
@given(start=st.integers(0, M), prods=st.lists(st.integers(0, M), min_size=2, max_size=2),
       chunks=st.lists(st.integers(0, 3000), max_size=10))
def test_byte_ring_hostile_indices(start: int, prods: list[int], chunks: list[int]) -> None:
    raw = bytearray(b"\x5a" * 4096)
    struct.pack_into("<IIII", raw, 3072, start, prods[0], start, prods[1])
    guest, daemon = ConsoleGuest(memoryview(raw)), ConsoleDaemon(memoryview(raw))
    for n in chunks:
        calls = ((guest.output.write, b"z" * n), (daemon.output.read, n),
                 (daemon.input.write, b"y" * n), (guest.input.read, n))
        for fn, arg in calls:
            with contextlib.suppress(CorruptRingIndexError):
                fn(arg)  # type: ignore[operator]
    assert bytes(raw[3088:]) == b"\x5a" * (4096 - 3088)


@SETTINGS
@given(start=st.integers(0, M), sizes=st.lists(st.integers(1, 5000), max_size=12))
def test_xenstore_stream_integrity(start: int, sizes: list[int]) -> None:
    raw = bytearray(4096)
    for off in (2048, 2052, 2056, 2060):
        struct.pack_into("<I", raw, off, start)
    from ring.byte_ring import XenstoreGuest

    g, d = XenstoreGuest(memoryview(raw)), XenstoreDaemon(memoryview(raw))
    sent = received = b""
    for k, n in enumerate(sizes):
        data = bytes((k + j) & 0xFF for j in range(n))
        w = g.requests.write(data)
        assert w == min(n, 1024 - (len(sent) - len(received)))
        sent += data[:w]
        received += d.requests.read(n // 2 + 1)
    received += d.requests.read()
    assert received == sent
