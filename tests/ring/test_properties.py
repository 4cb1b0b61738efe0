"""Property tests: random interleavings near 2**32 and hostile peers."""

from __future__ import annotations

import contextlib
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ring.blkif import BLKIF_CODEC, BLKIF_OP_READ, BlkifRequest, BlkifSegment, error_response
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
    back = BackRing.attach([memoryview(raw)], BLKIF_CODEC, cons)
    try:
        reqs = back.get_requests()
    except RingOverflowError:
        assert back.request_prod_overflow(header[0])
        return
    assert len(reqs) <= 32
    for r in reqs:
        back.put_response(error_response(r) if r.error else error_response(r)._replace(status=0))
    back.push_responses_and_check_notify()
    back.final_check_for_requests()
    assert bytes(raw[RING_END:]) == b"\xa5" * (4096 - RING_END)


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
