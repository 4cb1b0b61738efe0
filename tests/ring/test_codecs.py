"""blkif, netif and console codec tests: layouts, round trips, hostile bytes."""

from __future__ import annotations

import struct

import pytest

from ring import blkif, netif
from ring.blkif import (
    BLKIF_CODEC,
    BlkifDiscardRequest,
    BlkifIndirectRequest,
    BlkifRequest,
    BlkifResponse,
    BlkifSegment,
    BlkifUnknownRequest,
)
from ring.netif import (
    NETIF_RX_CODEC,
    NETIF_TX_CODEC,
    NetifExtraInfo,
    NetifRxRequest,
    NetifRxResponse,
    NetifTxRequest,
    NetifTxResponse,
)


def slot(data: bytes, size: int = 112) -> bytes:
    return data + bytes(size - len(data))


# --- blkif ---------------------------------------------------------------------
def test_blkif_constants() -> None:
    assert (blkif.BLKIF_OP_READ, blkif.BLKIF_OP_WRITE, blkif.BLKIF_OP_WRITE_BARRIER,
            blkif.BLKIF_OP_FLUSH_DISKCACHE, blkif.BLKIF_OP_RESERVED_1, blkif.BLKIF_OP_DISCARD,
            blkif.BLKIF_OP_INDIRECT) == (0, 1, 2, 3, 4, 5, 6)
    assert (blkif.BLKIF_RSP_OKAY, blkif.BLKIF_RSP_ERROR, blkif.BLKIF_RSP_EOPNOTSUPP) == (0, -1, -2)
    assert (blkif.VDISK_CDROM, blkif.VDISK_REMOVABLE, blkif.VDISK_READONLY) == (1, 2, 4)
    assert blkif.BLKIF_SEGS_PER_INDIRECT_FRAME == 512


def test_blkif_request_layout() -> None:
    r = BlkifRequest(blkif.BLKIF_OP_WRITE, 51712, 5, 8, (BlkifSegment(77, 1, 6),))
    raw = BLKIF_CODEC.encode_request(r)
    assert len(raw) == 112
    assert raw[:24] == bytes.fromhex("010100ca00000000") + struct.pack("<QQ", 5, 8)
    assert raw[24:32] == struct.pack("<IBB", 77, 1, 6) + b"\0\0"
    assert raw[32:] == bytes(80)
    back = BLKIF_CODEC.decode_request(raw)
    assert back == r._replace(nr_segments=1)
    assert back.error is None


def test_blkif_response_zero_padding_xsa216() -> None:
    raw = BLKIF_CODEC.encode_response(BlkifResponse(0x1122334455667788, 1, -1))
    assert raw == struct.pack("<Q", 0x1122334455667788) + b"\x01\x00\xff\xff" + bytes(4)
    assert BLKIF_CODEC.decode_response(slot(raw)) == BlkifResponse(0x1122334455667788, 1, -1)
    assert BLKIF_CODEC.decode_response(slot(struct.pack("<QBxh", 1, 0, 7))).error


@pytest.mark.parametrize(
    ("nr", "segs", "error"),
    [
        (1, [(1, 0, 7)], None),
        (11, [(5, 0, 7)] * 11, None),
        (0, [], "no segments"),
        (12, [(1, 0, 7)] * 11, "nr_segments 12 > 11"),
        (255, [(1, 0, 7)] * 11, "nr_segments 255 > 11"),
        (1, [(1, 0, 8)], "last_sect 8 > 7"),
        (1, [(1, 5, 4)], "last_sect 4 < first_sect 5"),
        (2, [(1, 0, 7), (2, 9, 255)], "segment 1"),
    ],
)
def test_blkif_segment_validation(nr: int, segs: list, error: str | None) -> None:
    flat = [x for s in segs for x in s] + [0, 0, 0] * (11 - len(segs))
    raw = struct.pack("<BBH4xQQ" + "IBB2x" * 11, blkif.BLKIF_OP_READ, nr, 1, 9, 0, *flat)
    r = BLKIF_CODEC.decode_request(raw)
    assert isinstance(r, BlkifRequest)
    if error is None:
        assert r.error is None
    else:
        assert r.error is not None and error in r.error
    assert blkif.error_response(r) == BlkifResponse(9, blkif.BLKIF_OP_READ, -1)


def test_flush_without_segments_is_fine() -> None:
    raw = slot(struct.pack("<BBH4xQQ", blkif.BLKIF_OP_FLUSH_DISKCACHE, 0, 1, 3, 0))
    r = BLKIF_CODEC.decode_request(raw)
    assert r.error is None and r.segments == ()


@pytest.mark.parametrize("op", [4, 7, 8, 99, 255])
def test_unknown_operation_is_a_value(op: int) -> None:
    raw = slot(struct.pack("<BBH4xQ", op, 0, 0, 42))
    r = BLKIF_CODEC.decode_request(raw)
    assert isinstance(r, BlkifUnknownRequest) and r.id == 42 and r.error
    assert blkif.error_response(r) == BlkifResponse(42, op, blkif.BLKIF_RSP_EOPNOTSUPP)


def test_discard_and_indirect_round_trip() -> None:
    d = BlkifDiscardRequest(blkif.BLKIF_OP_DISCARD, 1, 2, 3, 4, 5)
    raw = BLKIF_CODEC.encode_request(d)
    assert len(raw) == 32
    assert BLKIF_CODEC.decode_request(slot(raw)) == d
    ind = BlkifIndirectRequest(blkif.BLKIF_OP_INDIRECT, blkif.BLKIF_OP_WRITE, 600, 9, 10, 11,
                               (100, 101))
    raw = BLKIF_CODEC.encode_request(ind)
    assert len(raw) == 64
    assert raw[24:36] == struct.pack("<H2xII", 11, 100, 101)
    assert BLKIF_CODEC.decode_request(slot(raw)) == ind
    assert blkif.make_response(ind, 0) == BlkifResponse(9, blkif.BLKIF_OP_WRITE, 0)


def test_indirect_bad_fields() -> None:
    bad_op = BLKIF_CODEC.decode_request(
        slot(struct.pack("<BBH4xQQH2x8I", 6, 3, 10, 1, 0, 0, *range(8))))
    assert bad_op.error and "indirect_op" in bad_op.error
    assert blkif.error_response(bad_op).operation == 3  # inner op echoed
    too_many = BLKIF_CODEC.decode_request(
        slot(struct.pack("<BBH4xQQH2x8I", 6, 0, 5000, 1, 0, 0, *range(8))))
    assert too_many.error


def test_indirect_segment_pages() -> None:
    segs = [BlkifSegment(g, 0, 7) for g in range(600)]
    pages = blkif.encode_indirect_segments(segs)
    assert len(pages) == 2 and all(len(p) == 4096 for p in pages)
    got, err = blkif.decode_indirect_segments(pages, 600, 1024)
    assert err is None and list(got) == segs
    _, err = blkif.decode_indirect_segments(pages, 600, 256)
    assert err
    _, err = blkif.decode_indirect_segments(pages[:1], 600, 1024)
    assert err
    evil = bytearray(pages[0])
    evil[5] = 9
    _, err = blkif.decode_indirect_segments([bytes(evil)], 3, 256)
    assert err and "last_sect" in err


@pytest.mark.parametrize(
    ("name", "number"),
    [("xvda", 51712), ("xvda1", 51713), ("xvdb", 51728), ("xvdp", 51952),
     ("xvdq", 268439552), ("xvdaa", (1 << 28) | (26 << 8)), ("xvda16", (1 << 28) | 16),
     ("sda", 2048), ("sdb", 2064), ("hda", 768), ("hdb", 832), ("hdc", 5632), ("hdd", 5696)],
)
def test_vdev_numbers(name: str, number: int) -> None:
    assert blkif.vdev_encode(name) == number
    assert blkif.vdev_name(number) == name


def test_vdev_bad() -> None:
    for bad in ("vda", "xvd", "xvdA", "sdq", "hde", "xvda0", "xvda256"):
        with pytest.raises(ValueError):
            blkif.vdev_encode(bad)
    assert blkif.vdev_encode("51712") == 51712
    assert blkif.vdev_name(0) is None and blkif.vdev_name(-1) is None
    assert blkif.vdev_name(1 << 30) is None


def test_blkif_decoders_never_raise_on_short_or_odd_input() -> None:
    assert BLKIF_CODEC.decode_request(b"").error
    assert BLKIF_CODEC.decode_response(b"\x01").error


# --- netif ---------------------------------------------------------------------
def test_netif_tx_layouts() -> None:
    t = NetifTxRequest(0x01020304, 10, netif.NETTXF_more_data, 7, 1514)
    raw = NETIF_TX_CODEC.encode_request(t)
    assert raw == struct.pack("<IHHHH", 0x01020304, 10, 4, 7, 1514)
    assert NETIF_TX_CODEC.decode_request(raw) == t
    assert NETIF_TX_CODEC.decode_request(struct.pack("<IHHHH", 1, 4096, 0, 1, 1)).error
    assert NETIF_TX_CODEC.encode_response(NetifTxResponse(7, -1)) == b"\x07\x00\xff\xff"
    assert NETIF_TX_CODEC.decode_response(b"\x07\x00\x01\x00" + bytes(8)) == NetifTxResponse(7, 1)
    assert NETIF_TX_CODEC.decode_response(b"\x07\x00\x05\x00" + bytes(8)).error


def test_netif_extra_info() -> None:
    x = NetifExtraInfo.gso(1448, netif.XEN_NETIF_GSO_TYPE_TCPV6, more=True)
    raw = NETIF_TX_CODEC.encode_request(x)
    assert raw == struct.pack("<BBHBBH", 1, 1, 1448, 2, 0, 0)
    as_req = NETIF_TX_CODEC.decode_request(raw + b"\xaa" * 4)
    back = as_req.as_extra_info()
    assert (back.type, back.gso_size, back.gso_type, back.more, back.error) == (
        1, 1448, 2, True, None)
    assert NetifExtraInfo.mcast(True, b"\x01" * 6).mcast_addr == b"\x01" * 6
    assert netif.decode_extra_info(bytes(8)).error  # type NONE
    assert netif.decode_extra_info(b"\x09" + bytes(7)).error


def test_netif_rx_layouts() -> None:
    assert NETIF_RX_CODEC.encode_request(NetifRxRequest(3, 99)) == struct.pack("<HHI", 3, 0, 99)
    assert NETIF_RX_CODEC.decode_request(struct.pack("<HHI", 3, 0xFFFF, 99)) == NetifRxRequest(
        3, 99)
    r = NetifRxResponse(3, 0, netif.NETRXF_more_data, 4096)
    assert NETIF_RX_CODEC.decode_response(NETIF_RX_CODEC.encode_response(r)) == r
    assert NETIF_RX_CODEC.decode_response(struct.pack("<HHHh", 3, 1, 0, 4096)).error
    assert NETIF_RX_CODEC.decode_response(struct.pack("<HHHh", 3, 0, 0, -5)).error
    x = NetifExtraInfo.gso(1000, 1)
    rsp = NETIF_RX_CODEC.decode_response(NETIF_RX_CODEC.encode_response(x))
    assert rsp.as_extra_info().gso_size == 1000


def test_netif_constants_and_fragment_check() -> None:
    assert netif.XEN_NETIF_NR_SLOTS_MIN == 18 and netif.XEN_NETIF_MAX_TX_SIZE == 65535
    assert (netif.NETRXF_data_validated, netif.NETRXF_csum_blank) == (1, 2)
    assert (netif.NETTXF_csum_blank, netif.NETTXF_data_validated) == (1, 2)
    t = NetifTxRequest(1, 4000, 0, 1, 200)
    assert netif.tx_fragment_error(t, 96) is None
    assert netif.tx_fragment_error(t, 97)
    assert netif.tx_fragment_error(t, 0)
