"""The XenStore wire codec: numbers from xs_wire.h, framing, hostile streams."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ring.xs_wire import (
    HEADER,
    XENSTORE_PAYLOAD_MAX,
    XSD_ERRORS,
    MessageParser,
    WireViolation,
    XsMessage,
    XsType,
    encode_error,
    encode_message,
    encode_strings,
    error_name,
    split_strings,
)

XS_WIRE_H = Path("/usr/include/xen/io/xs_wire.h")


def test_header_layout_and_worked_example() -> None:
    assert HEADER.size == 16
    raw = encode_message(XsType.READ, 7, 0, b"/vm\0")
    assert raw.hex(" ") == "02 00 00 00 07 00 00 00 00 00 00 00 04 00 00 00 2f 76 6d 00"
    assert XsMessage(XsType.READ, 7, 0, b"/vm\0").encode() == raw


def test_numbers_match_table() -> None:
    expected = {
        "CONTROL": 0, "DIRECTORY": 1, "READ": 2, "GET_PERMS": 3, "WATCH": 4, "UNWATCH": 5,
        "TRANSACTION_START": 6, "TRANSACTION_END": 7, "INTRODUCE": 8, "RELEASE": 9,
        "GET_DOMAIN_PATH": 10, "WRITE": 11, "MKDIR": 12, "RM": 13, "SET_PERMS": 14,
        "WATCH_EVENT": 15, "ERROR": 16, "IS_DOMAIN_INTRODUCED": 17, "RESUME": 18,
        "SET_TARGET": 19, "RESET_WATCHES": 21, "DIRECTORY_PART": 22, "TYPE_COUNT": 23,
        "INVALID": 0xFFFF,
    }
    assert {t.name: t.value for t in XsType} == expected


@pytest.mark.interop
def test_against_installed_header() -> None:
    if not XS_WIRE_H.exists():
        pytest.skip("Xen headers not installed (/usr/include/xen/io/xs_wire.h)")
    text = XS_WIRE_H.read_text()
    enum_body = re.search(r"enum xsd_sockmsg_type\s*\{(.*?)\};", text, re.S)
    assert enum_body
    names = re.findall(r"^\s*XS_([A-Z_]+)", enum_body.group(1), re.M)
    value = -1
    numbers = {}
    for line in enum_body.group(1).splitlines():
        m = re.match(r"\s*XS_([A-Z_]+)\s*(?:=\s*(.+?))?,", line)
        if not m:
            continue
        if m.group(2):
            expr = m.group(2).replace("XS_", "")
            value = eval(expr, {}, numbers)  # header arithmetic, e.g. SET_TARGET + 2
        else:
            value += 1
        numbers[m.group(1)] = value
    assert names
    for name, number in numbers.items():
        assert XsType[name] == number, name
    errors = re.findall(r"XSD_ERROR\((E[A-Z0-9]+)\)", text)
    assert tuple(errors) == XSD_ERRORS
    assert int(re.search(r"XENSTORE_PAYLOAD_MAX (\d+)", text).group(1)) == XENSTORE_PAYLOAD_MAX


def test_errors_and_strings() -> None:
    assert encode_error("ENOENT") == b"ENOENT\0"
    assert encode_error("ETIMEDOUT") == b"EINVAL\0"  # not in the table
    assert error_name("EPERM") == "EPERM"
    assert encode_strings("a", b"b") == b"a\0b\0"
    assert split_strings(b"a\0b\0") == [b"a", b"b"]
    assert split_strings(b"") == []
    assert split_strings(b"a\0b") is None  # missing final NUL
    with pytest.raises(ValueError):
        encode_message(XsType.WRITE, 1, 0, b"x" * 4097)


def test_parser_reassembles_and_limits() -> None:
    p = MessageParser()
    a = encode_message(XsType.WRITE, 1, 0, b"/a\0" + b"v" * 4093)
    b = encode_message(XsType.READ, 2, 3, b"/a\0")
    stream = a + b
    out = []
    for i in range(0, len(stream), 7):
        out += p.feed(stream[i:i + 7])
    assert out == [XsMessage(11, 1, 0, b"/a\0" + b"v" * 4093), XsMessage(2, 2, 3, b"/a\0")]
    assert p.buffered == 0
    bad = HEADER.pack(2, 1, 0, 4097)
    got = p.feed(b + bad + b"junk")
    assert got[0] == XsMessage(2, 2, 3, b"/a\0")
    assert isinstance(got[1], WireViolation) and got[1].ring_error == 3
    assert p.feed(b) == []  # dead after a violation
    assert p.violation is not None


@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1),
                          st.binary(max_size=300)), max_size=10),
       st.lists(st.integers(1, 50), min_size=1))
def test_parser_any_chunking(msgs: list[tuple[int, int, bytes]], cuts: list[int]) -> None:
    stream = b"".join(encode_message(t, r, 0, p) for t, r, p in msgs)
    p = MessageParser()
    got = []
    pos = 0
    i = 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        got += p.feed(stream[pos:pos + n])
        pos += n
        i += 1
    assert got == [XsMessage(t, r, 0, pl) for t, r, pl in msgs]


@given(st.binary(max_size=5000))
def test_parser_never_raises(data: bytes) -> None:
    p = MessageParser()
    for item in p.feed(data):
        assert isinstance(item, XsMessage | WireViolation)
