"""The control protocol codec and xl's output formats, against literal xl text."""

from __future__ import annotations

import msgpack
import pytest

from dom0.toolstack.control import (
    FRAME_HEADER,
    FrameDecoder,
    FrameTooLarge,
    ProtocolError,
    Request,
    decode_body,
    encode_frame,
    error_response,
    parse_request,
)
from dom0.toolstack.formats import (
    format_bitmap,
    format_info,
    format_list,
    format_sched_credit,
    format_vcpu_list,
)
from dom0.toolstack.top import format_frame, format_header, state_letters
from dom0.toolstack.verbs import parse_memory_kib

# -- codec -------------------------------------------------------------------------------------


def test_frame_round_trip_byte_by_byte() -> None:
    msgs = [{"op": "list", "args": {"domains": ["web"]}, "id": 1},
            {"id": 2, "ok": True, "event": {"data": b"\x00\xffhi"}}]
    stream = b"".join(encode_frame(m) for m in msgs)
    d = FrameDecoder()
    bodies = []
    for i in range(len(stream)):
        bodies += d.feed(stream[i:i + 1])
    assert [decode_body(b) for b in bodies] == msgs
    assert d.pending == 0


def test_oversized_frame_is_refused_before_buffering() -> None:
    d = FrameDecoder(max_frame=16)
    with pytest.raises(FrameTooLarge) as e:
        d.feed(FRAME_HEADER.pack(17))
    assert e.value.code == "E2BIG"
    assert FrameDecoder(16).feed(FRAME_HEADER.pack(16) + b"\xc0" * 16) == [b"\xc0" * 16]


@pytest.mark.parametrize("body", [b"", b"\xc1", b"\x92\x01", b"\xa2\xff\xfe", b"\x01\x02",
                                  b"\x91" * 5000])
def test_malformed_bodies_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError) as e:
        decode_body(body)
    assert e.value.code == "EPROTO"


@pytest.mark.parametrize(("obj", "why"), [
    ([1, 2], "map"), ({"args": {}}, "op"), ({"op": ""}, "op"), ({"op": "x" * 65}, "op"),
    ({"op": 3}, "op"), ({"op": "list", "id": "7"}, "id"), ({"op": "list", "id": True}, "id"),
    ({"op": "list", "args": [1]}, "args"),
])
def test_bad_requests(obj: object, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        parse_request(obj)


def test_good_request_and_error_shape() -> None:
    assert parse_request({"op": "ping", "id": 4, "args": None}) == Request("ping", {}, 4)
    assert parse_request({"op": "ping"}) == Request("ping", {}, None)
    assert error_response(4, "ENODOMAIN", "domain 'x' does not exist") == {
        "id": 4, "ok": False, "error": {"code": "ENODOMAIN",
                                        "message": "domain 'x' does not exist"}}
    assert msgpack.unpackb(encode_frame({"a": 1})[4:]) == {"a": 1}


# -- xl formats (strings as xl prints them) -----------------------------------------------------

XL_LIST = (
    "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
    "Domain-0                                     0  4096     4     r-----     123.4\n"
    "web                                          7    64     2     -b----       0.0\n"
    "crashed                                     12    32     1     ---sc-       9.9"
)


def test_xl_list() -> None:
    assert format_list([
        {"name": "Domain-0", "domid": 0, "mem": 4096, "vcpus": 4, "state": "r-----",
         "time": 123.4},
        {"name": "web", "domid": 7, "mem": 64, "vcpus": 2, "state": "-b----", "time": 0.0},
        {"name": "crashed", "domid": 12, "mem": 32, "vcpus": 1, "state": "---sc-",
         "time": 9.94},
    ]) == XL_LIST


XL_VCPU_LIST = (
    "Name                                ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)\n"
    "Domain-0                             0     0    0   r--     147.4  all / all\n"
    "web                                  3     0    1   -b-       0.3  1 / all\n"
    "web                                  3     1    -   --p       0.0  0-1,3 / all"
)


def test_xl_vcpu_list() -> None:
    assert format_vcpu_list([
        {"name": "Domain-0", "domid": 0, "vcpu": 0, "cpu": 0, "online": True, "running": True,
         "blocked": False, "time": 147.4, "hard": None, "soft": None},
        {"name": "web", "domid": 3, "vcpu": 0, "cpu": 1, "online": True, "running": False,
         "blocked": True, "time": 0.31, "hard": [1], "soft": None},
        {"name": "web", "domid": 3, "vcpu": 1, "cpu": 0, "online": False, "running": False,
         "blocked": False, "time": 0.0, "hard": [0, 1, 3], "soft": [0, 1, 2, 3]},
    ], 4) == XL_VCPU_LIST


@pytest.mark.parametrize(("cpus", "n", "text"), [
    ([0, 1, 2, 3], 4, "all"), ([], 4, "none"), ([1, 2, 3], 4, "1-3"), ([0, 2], 4, "0,2"),
    ([0, 1, 3, 5, 6, 7], 8, "0-1,3,5-7"), ([3], 4, "3"),
])
def test_bitmap_like_xl(cpus: list[int], n: int, text: str) -> None:
    assert format_bitmap(cpus, n) == text


def test_xl_sched_credit() -> None:
    pool = {"name": "Pool-0", "tslice_ms": 30, "ratelimit_us": 1000, "migration_delay_us": 0}
    rows = [{"name": "Domain-0", "domid": 0, "weight": 256, "cap": 0},
            {"name": "web", "domid": 3, "weight": 512, "cap": 50}]
    assert format_sched_credit([pool], rows) == (
        "Cpupool Pool-0: tslice=30ms ratelimit=1000us migration-delay=0us\n"
        "Name                                ID Weight  Cap\n"
        "Domain-0                             0    256    0\n"
        "web                                  3    512   50")
    assert format_sched_credit(None, rows[1:]) == (
        "Name                                ID Weight  Cap\n"
        "web                                  3    512   50")
    assert format_sched_credit([], rows) == ""  # no credit pool: xl prints nothing


def test_xl_info() -> None:
    assert format_info([("host", "vm"), ("nr_cpus", 2), ("xen_scheduler", "credit"),
                        ("xend_config_format", 4)]) == (
        "host                   : vm\n"
        "nr_cpus                : 2\n"
        "xen_scheduler          : credit\n"
        "xend_config_format     : 4")


def test_mem_set_units() -> None:
    assert parse_memory_kib("65536") == 65536
    assert parse_memory_kib("64m") == 65536 and parse_memory_kib("1G") == 1 << 20
    assert parse_memory_kib("2048b") == 2 and parse_memory_kib("1t") == 1 << 30
    with pytest.raises(ValueError):
        parse_memory_kib("64 MiB")


# -- xentop -------------------------------------------------------------------------------------


def _snap(now: float, cpu_ns: int) -> dict:
    dom = {"name": "web", "domid": 1, "flags": {"blocked": True}, "cpu_ns": cpu_ns,
           "mem_kib": 8192, "maxmem_kib": 8192, "vcpus": 1, "nets": 1, "net_tx_bytes": 4096,
           "net_rx_bytes": 2048, "vbds": 1, "vbd_oo": 0, "vbd_rd": 3, "vbd_wr": 4,
           "vbd_rsect": 24, "vbd_wsect": 32}
    return {"now": now, "xen_version": "4.17-xensim", "nr_cpus": 2, "cpu_mhz": 2000,
            "total_kib": 4194304, "free_kib": 4186112, "domains": [dom]}


def test_xentop_frame() -> None:
    assert format_header() == (
        "      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) VCPUS NETS "
        "NETTX(k) NETRX(k) VBDS   VBD_OO   VBD_RD   VBD_WR  VBD_RSECT  VBD_WSECT SSID")
    lines = format_frame(_snap(11.0, 1_500_000_000), _snap(10.0, 1_000_000_000),
                         clock=0).split("\n")
    assert lines[0].startswith("xentop - ") and lines[0].endswith("   Xen 4.17-xensim")
    assert lines[1] == ("1 domains: 0 running, 1 blocked, 0 paused, 0 crashed, 0 dying, "
                        "0 shutdown")
    assert lines[2] == "Mem: 4194304k total, 8192k used, 4186112k free    CPUs: 2 @ 2000MHz"
    assert lines[4] == (
        "       web --b---          1   50.0       8192    0.2       8192       0.2     1    1 "
        "       4        2    1        0        3        4         24         32    0")
    first = format_frame(_snap(10.0, 1_000_000_000)).split("\n")[4]
    assert first.split()[3] == "0.0"  # no previous sample: no CPU %


def test_xentop_state_order() -> None:
    assert state_letters({"dying": True, "running": True}) == "d----r"
    assert state_letters({"shutdown": True, "crashed": True, "paused": True}) == "-s-cp-"
