"""Console and xenstore byte rings: partial writes, wrap, corrupt indices."""

from __future__ import annotations

import struct

import pytest

from ring import byte_ring, console
from ring.byte_ring import ConsoleDaemon, ConsoleGuest, XenstoreDaemon, XenstoreGuest
from ring.errors import CorruptRingIndexError, PeerProtocolError


def page() -> memoryview:
    return memoryview(bytearray(4096))


def set_u32(p: memoryview, off: int, v: int) -> None:
    struct.pack_into("<I", p, off, v & 0xFFFFFFFF)


def test_console_layout_and_partial_write() -> None:
    p = page()
    g, d = ConsoleGuest(p), ConsoleDaemon(p)
    assert g.output.write(b"a" * 3000) == 2048
    assert g.output.write(b"b") == 0
    assert struct.unpack_from("<IIII", p, 3072) == (0, 0, 0, 2048)
    assert bytes(p[1024:1026]) == b"aa"
    assert d.output.read(100) == b"a" * 100
    assert g.output.write(b"c" * 500) == 100
    data = d.output.read()
    assert data == b"a" * 1948 + b"c" * 100
    assert d.input.write(b"hello") == 5
    assert bytes(p[0:5]) == b"hello"
    assert g.input.read() == b"hello"
    assert console.XENCONS_IN_SIZE == 1024 and console.XENCONS_OUT_SIZE == 2048


def test_wrap_near_2_32() -> None:
    p = page()
    for off in (2048, 2052, 2056, 2060):
        set_u32(p, off, 0xFFFFFFF0)
    g, d = XenstoreGuest(p), XenstoreDaemon(p)
    msg = bytes(range(256)) * 3
    total = b""
    for _ in range(10):
        n = g.requests.write(msg)
        assert n == len(msg)
        total += d.requests.read()
    assert total == msg * 10
    assert d.requests.cons == d.requests.prod == (0xFFFFFFF0 + 7680) & 0xFFFFFFFF


@pytest.mark.parametrize(
    ("prod", "cons"), [(1025, 0), (0, 1), (0x80000000, 0), (5, 0xFFFFFFFF - 2000)]
)
def test_corrupt_indices_are_a_peer_error(prod: int, cons: int) -> None:
    p = page()
    set_u32(p, 2052, prod)
    set_u32(p, 2048, cons)
    d, g = XenstoreDaemon(p), XenstoreGuest(p)
    before = bytes(p)
    ops = (d.requests.read, d.requests.available, g.requests.free, lambda: g.requests.write(b"x"))
    for op in ops:
        with pytest.raises(CorruptRingIndexError):
            op()
    assert bytes(p) == before
    assert issubclass(CorruptRingIndexError, PeerProtocolError)


def test_exactly_full_is_not_corrupt() -> None:
    p = page()
    set_u32(p, 3084, 2048)
    assert ConsoleDaemon(p).output.available() == 2048


def test_xenstore_control_words_and_reset() -> None:
    p = page()
    g, d = XenstoreGuest(p), XenstoreDaemon(p)
    d.set_server_features(byte_ring.XENSTORE_SERVER_FEATURE_RECONNECTION
                          | byte_ring.XENSTORE_SERVER_FEATURE_ERROR)
    assert g.server_features == 3 and struct.unpack_from("<I", p, 2064)[0] == 3
    g.requests.write(b"junk")
    g.request_reconnect()
    assert d.connection == byte_ring.XENSTORE_RECONNECT == 1
    d.set_error(byte_ring.XENSTORE_ERROR_RINGIDX)
    assert g.error == 2 and struct.unpack_from("<I", p, 2072)[0] == 2
    d.reset()
    assert struct.unpack_from("<IIIIIII", p, 2048) == (0, 0, 0, 0, 3, 0, 0)


def test_bad_page() -> None:
    with pytest.raises(ValueError):
        ConsoleGuest(memoryview(bytearray(100)))
