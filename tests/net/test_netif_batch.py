"""ring.netif's batch slot helpers against the one-slot ring API they shortcut.

Both ends are sans-IO: a front and a back ring over one page, driven by hand.
Every helper must leave the page bytes and the private indices exactly where
``FrontRing`` / ``BackRing`` would, including across the u32 wrap and the
ring's slot wrap, and must refuse what they refuse.
"""

from __future__ import annotations

import random

import pytest

from ring.errors import RingFullError, RingOverflowError, RingUsageError
from ring.netif import (
    NETIF_RX_CODEC,
    NETIF_TX_CODEC,
    RX_REQ_SLOT,
    RX_RSP_SLOT,
    TX_REQ_SLOT,
    TX_RSP,
    TX_RSP_SLOT,
    FrontRequestWriter,
    NetifRxRequest,
    NetifRxResponse,
    NetifTxRequest,
    NetifTxResponse,
    back_get_requests,
    back_put_responses,
    front_copy_responses,
    front_put_requests,
    rx_response,
    tx_request,
    tx_response,
)
from ring.sring import BackRing, FrontRing

START = 0xFFFFFF00  # wraps u32 after 256 slots: both wraps in one test


def pair(codec: object, start: int = START) -> tuple[FrontRing, BackRing, memoryview]:  # type: ignore[type-arg]
    page = memoryview(bytearray(4096))
    front = FrontRing.init([page], codec, start)  # type: ignore[arg-type]
    back = BackRing.attach([page], codec, start)  # type: ignore[arg-type]
    return front, back, page


def test_tx_round_trip_matches_the_record_api() -> None:
    rng = random.Random(3)
    f1, b1, p1 = pair(NETIF_TX_CODEC)
    f2, b2, p2 = pair(NETIF_TX_CODEC)
    for _ in range(40):  # 40 rounds of up to 100 slots: many wraps
        reqs = [(rng.randrange(2**32), rng.randrange(5000), rng.randrange(16),
                 rng.randrange(2**16), rng.randrange(2**16))
                for _ in range(rng.randrange(0, min(100, f1.free_requests()) + 1))]
        f1.put_requests([NetifTxRequest(*r) for r in reqs])
        front_put_requests(f2, TX_REQ_SLOT, reqs)
        assert bytes(p1) == bytes(p2) and f1.req_prod_pvt == f2.req_prod_pvt
        f1.push_requests()
        f2.push_requests()
        limit = rng.randrange(0, 120)
        got1 = b1.get_requests(limit=limit)
        got2 = back_get_requests(b2, TX_REQ_SLOT, limit)
        assert got1 == [tx_request(t) for t in got2]
        assert b1.req_cons == b2.req_cons
        rsps = [(r.id, rng.choice([0, -1, -2, 1])) for r in got1]
        b1.put_responses([NetifTxResponse(*r) for r in rsps])
        back_put_responses(b2, TX_RSP, rsps)
        assert bytes(p1) == bytes(p2) and b1.rsp_prod_pvt == b2.rsp_prod_pvt
        b1.push_responses()
        b2.push_responses()
        cons = f2.rsp_cons
        n = f2.unconsumed_responses()
        assert f1.get_responses() == [tx_response(t) for t in
                                      front_copy_responses(f2, TX_RSP_SLOT, cons, n)]
        f2.rsp_cons = (cons + n) & 0xFFFFFFFF


def test_rx_round_trip_matches_the_record_api() -> None:
    rng = random.Random(5)
    f1, b1, p1 = pair(NETIF_RX_CODEC)
    f2, b2, p2 = pair(NETIF_RX_CODEC)
    for _ in range(40):
        reqs = [(rng.randrange(2**16), rng.randrange(2**32))
                for _ in range(rng.randrange(0, f1.free_requests() + 1))]
        f1.put_requests([NetifRxRequest(*r) for r in reqs])
        front_put_requests(f2, RX_REQ_SLOT, reqs)
        f1.push_requests()
        f2.push_requests()
        limit = rng.randrange(0, 300)
        got1 = b1.get_requests(limit=limit)
        got2 = back_get_requests(b2, RX_REQ_SLOT, limit)
        assert [(r.id, r.gref) for r in got1] == got2
        rsps = [(r.id, rng.randrange(5000), rng.randrange(32), rng.randrange(-3, 5000))
                for r in got1]
        b1.put_responses([NetifRxResponse(*r) for r in rsps])
        back_put_responses(b2, RX_RSP_SLOT, rsps)
        assert bytes(p1) == bytes(p2)
        b1.push_responses()
        b2.push_responses()
        cons, n = f2.rsp_cons, f2.unconsumed_responses()
        assert f1.get_responses() == [rx_response(t) for t in
                                      front_copy_responses(f2, RX_RSP_SLOT, cons, n)]
        f2.rsp_cons = (cons + n) & 0xFFFFFFFF


def test_bogus_req_prod_breaks_the_ring_and_full_ring_is_fine() -> None:
    front, back, _ = pair(NETIF_TX_CODEC, 0)
    front_put_requests(front, TX_REQ_SLOT, [(8, 0, 0, k, 60) for k in range(256)])
    front.push_requests()
    assert len(back_get_requests(back, TX_REQ_SLOT, 1000)) == 256  # exactly full: fine
    assert back_get_requests(back, TX_REQ_SLOT, 1000) == []  # no room for more
    front.sring.req_prod = 100_000
    with pytest.raises(RingOverflowError, match="bogus ring requests"):
        back_get_requests(back, TX_REQ_SLOT, 10)
    assert back.broken
    with pytest.raises(RingOverflowError):
        back_get_requests(back, TX_REQ_SLOT, 10)


def test_misuse_raises_and_writes_nothing() -> None:
    front, back, page = pair(NETIF_TX_CODEC, 0)
    with pytest.raises(RingFullError):
        front_put_requests(front, TX_REQ_SLOT, [(1, 0, 0, 0, 60)] * 257)
    assert front.req_prod_pvt == 0 and bytes(page[64:]) == bytes(4032)
    with pytest.raises(RingUsageError):
        back_put_responses(back, TX_RSP, [(0, 0)])
    with pytest.raises(ValueError, match="8-byte layout"):
        back_get_requests(back, RX_REQ_SLOT, 1)  # an rx layout on a tx ring
    two = FrontRing.init([memoryview(bytearray(4096)), memoryview(bytearray(4096))],
                         NETIF_TX_CODEC)
    with pytest.raises(ValueError, match="one-page"):
        front_put_requests(two, TX_REQ_SLOT, [])


def test_request_writer_matches_put_request_and_refuses_a_full_ring() -> None:
    f1, _, p1 = pair(NETIF_TX_CODEC)
    f2, _, p2 = pair(NETIF_TX_CODEC)
    w = FrontRequestWriter(f2, TX_REQ_SLOT)
    for k in range(256):  # START is near 2**32: the index wraps on the way
        f1.put_request(NetifTxRequest(8 + k, k, 0, k, 60 + k))
        w.put((8 + k, k, 0, k, 60 + k))
    assert bytes(p1) == bytes(p2) and f1.req_prod_pvt == f2.req_prod_pvt
    with pytest.raises(RingFullError):
        w.put((1, 0, 0, 0, 60))
    assert f2.req_prod_pvt == f1.req_prod_pvt
    with pytest.raises(ValueError, match="8-byte layout"):
        FrontRequestWriter(f2, RX_REQ_SLOT)
