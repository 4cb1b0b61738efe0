"""dom0/native/pcap.py and bridge capture: files that libpcap tools can read."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest
import trio
import trio.testing

from dom0.native.bridge import Bridge
from dom0.native.pcap import global_header, open_pcap, record

BCAST = b"\xff" * 6
A = bytes.fromhex("00163e000001")
B = bytes.fromhex("00163e000002")


def eth(dst: bytes, src: bytes, payload: bytes = b"p" * 46) -> bytes:
    return dst + src + b"\x08\x00" + payload


class Header(NamedTuple):
    major: int
    minor: int
    thiszone: int
    sigfigs: int
    snaplen: int
    linktype: int


class Rec(NamedTuple):
    ts: float
    orig_len: int
    data: bytes


def read_pcap(path: Path) -> tuple[Header, list[Rec]]:
    """A tiny independent libpcap reader (either byte order)."""
    raw = path.read_bytes()
    magic = raw[:4]
    if magic == bytes.fromhex("d4c3b2a1"):
        endian = "<"
    elif magic == bytes.fromhex("a1b2c3d4"):
        endian = ">"
    else:
        raise AssertionError(f"bad magic {magic.hex()}")
    header = Header(*struct.unpack_from(endian + "HHiIII", raw, 4))
    recs, pos = [], 24
    while pos < len(raw):
        sec, usec, incl, orig = struct.unpack_from(endian + "IIII", raw, pos)
        pos += 16
        assert usec < 1_000_000 and incl <= orig and incl <= header.snaplen
        data = raw[pos : pos + incl]
        assert len(data) == incl, "truncated record"
        pos += incl
        recs.append(Rec(sec + usec / 1e6, orig, data))
    return header, recs


def test_pure_encoders() -> None:
    hdr = global_header()
    assert hdr == struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    rec = record(12.3456789, b"x" * 100, snaplen=60)
    assert rec[:16] == struct.pack("<IIII", 12, 345679, 60, 100)
    assert rec[16:] == b"x" * 60
    assert record(-1.0, b"")[:8] == bytes(8)


async def test_bridge_capture_parses(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    br = Bridge()
    p1, p2 = br.add_port("vif1.0"), br.add_port("vif2.0")
    path = tmp_path / "xenbr0.pcap"
    p1.transmit(eth(BCAST, A))  # before the capture: not recorded
    async with br.open_capture(path) as cap:
        await trio.sleep(1.5)
        f1 = eth(BCAST, A)
        p1.transmit(f1)
        p1.transmit(b"\x00" * 10)  # invalid: not switched, not in a bridge capture
        await trio.sleep(0.25)
        f2 = eth(A, B, b"r" * 1486)
        p2.transmit(f2)
    p1.transmit(eth(BCAST, A))  # after: not recorded
    assert cap.frames == 2 and cap.dropped == 0
    header, recs = read_pcap(path)
    assert header == Header(2, 4, 0, 0, 65535, 1)
    assert [r.data for r in recs] == [f1, f2]
    assert [r.orig_len for r in recs] == [60, 1500]
    assert [r.ts for r in recs] == [pytest.approx(1.5), pytest.approx(1.75)]


async def test_port_capture_sees_both_directions(tmp_path: Path) -> None:
    br = Bridge()
    p1, p2, p3 = br.add_port("vif1.0"), br.add_port("vif2.0"), br.add_port("vif3.0")
    path = tmp_path / "vif1.0.pcap"
    async with br.open_capture(path, port="vif1.0", snaplen=20):
        out = eth(BCAST, A)
        p1.transmit(out)  # from vif1.0
        inn = eth(A, B)
        p2.transmit(inn)  # to vif1.0
        p3.transmit(eth(B, bytes.fromhex("00163e000003")))  # vif3.0 -> vif2.0: not ours
        bad = b"\x01" * 5
        p1.transmit(bad)  # a port capture sees what the port sent, valid or not
    _, recs = read_pcap(path)
    assert [r.data for r in recs] == [out[:20], inn[:20], bad]
    assert [r.orig_len for r in recs] == [60, 60, 5]


async def test_capture_buffer_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "small.pcap"
    async with open_pcap(path, max_buffer=3 * (16 + 60), clock=lambda: 7.0) as pcap:
        # No checkpoint between writes: the flusher cannot run, so the buffer fills.
        results = [pcap.write_frame(eth(BCAST, A)) for _ in range(10)]
        assert results == [True] * 3 + [False] * 7
        assert pcap.dropped == 7 and pcap.pending_bytes == 3 * 76
        await pcap.flush()
        assert pcap.pending_bytes == 0 and pcap.bytes_written == 3 * 76
        assert pcap.write_frame(eth(BCAST, A))  # room again
    _, recs = read_pcap(path)
    assert len(recs) == 4 and all(r.ts == 7.0 for r in recs)


async def test_flusher_writes_while_capture_is_open(tmp_path: Path) -> None:
    path = tmp_path / "live.pcap"
    async with open_pcap(path) as pcap:
        pcap.write_frame(eth(BCAST, A))
        await trio.testing.wait_all_tasks_blocked()  # the flusher picked it up ...
        await pcap.flush()  # ... and this waits for its write to finish
        assert pcap.bytes_written == 76 and pcap.pending_bytes == 0
        _, recs = read_pcap(path)
        assert len(recs) == 1
    assert not pcap.write_frame(eth(BCAST, A))  # closed


async def test_capture_of_unknown_port_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        async with Bridge().open_capture(tmp_path / "x.pcap", port="vif9.0"):
            pass  # pragma: no cover
    assert not (tmp_path / "x.pcap").exists()


TSHARK = shutil.which("tshark")


@pytest.mark.interop
@pytest.mark.skipif(TSHARK is None, reason="tshark not installed (Debian package: tshark)")
async def test_tshark_reads_the_capture(tmp_path: Path) -> None:
    assert TSHARK is not None
    tshark = TSHARK
    br = Bridge()
    p1, p2 = br.add_port("vif1.0"), br.add_port("vif2.0")
    path = tmp_path / "xenbr0.pcap"
    async with br.open_capture(path):
        for i in range(5):
            p1.transmit(eth(BCAST, A, bytes([i]) * 46))
        p2.transmit(eth(A, B))
    result = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [tshark, "-r", str(path), "-T", "fields", "-e", "frame.len", "-e", "eth.src"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert len(result.stdout.splitlines()) == 6
    assert lines[0] == "60" and lines[1] == "00:16:3e:00:00:01"
