"""Byte compatibility of ring/ with Xen's real public headers.

A small C program (``c/ring_interop.c``) built against ``/usr/include/xen``
performs one ring step per run with the real ``RING_*`` macros, blkif/netif
structs and ``MASK_XENCONS_IDX`` / ``MASK_XENSTORE_IDX``; :func:`py_step` does
the same step with xensim's ``ring/``. Both keep the page (and each end's
private indices) in files, so any step can be done by either implementation.
Every scenario is run with each end in C, in Python with the single-record
calls (``put_request``, ``get_requests``, ...) or, for request/response rings,
in Python with the batch calls (``put_requests_batch``, ``get_requests_batch``,
...): nine ways (four for the byte rings). The printed results (decoded
records, notify and final-check decisions) and the page bytes after every
step must agree exactly, so pages the batch calls produce are consumed by the
real ``RING_*`` macros and the other way round. Indices start just below 2**32
so every scenario wraps.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pytest

from ring.blkif import (
    BLKIF_CODEC,
    BLKIF_OP_DISCARD,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BlkifDiscardRequest,
    BlkifIndirectRequest,
    BlkifRequest,
    BlkifResponse,
    BlkifSegment,
)
from ring.byte_ring import ConsoleDaemon, ConsoleGuest, XenstoreDaemon, XenstoreGuest
from ring.errors import CorruptRingIndexError, RingOverflowError
from ring.netif import (
    NETIF_RX_CODEC,
    NETIF_TX_CODEC,
    XEN_NETIF_GSO_TYPE_TCPV4,
    NetifExtraInfo,
    NetifRxRequest,
    NetifRxResponse,
    NetifTxRequest,
    NetifTxResponse,
    NETRXF_extra_info,
    NETTXF_csum_blank,
    NETTXF_extra_info,
)
from ring.sring import BackRing, FrontRing

pytestmark = pytest.mark.interop

HERE = Path(__file__).parent
C_SOURCE = HERE / "c" / "ring_interop.c"
XEN_INCLUDE = Path("/usr/include/xen/io/ring.h")
M = 0xFFFFFFFF


@pytest.fixture(scope="module")
def c_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: cannot build the C interop program")
    if not XEN_INCLUDE.exists():
        pytest.skip("Xen public headers not installed (/usr/include/xen; Debian: libxen-dev)")
    out = tmp_path_factory.mktemp("c") / "ring_interop"
    subprocess.run(
        [gcc, "-Wall", "-Werror", "-O1", "-D__XEN_INTERFACE_VERSION__=0x00040e00",
         "-o", str(out), str(C_SOURCE)],
        check=True, capture_output=True, text=True,
    )
    return out


# --- the Python side of one step ---------------------------------------------------
def blk_request(i: int) -> BlkifRequest | BlkifDiscardRequest | BlkifIndirectRequest:
    """Request number i, exactly as blk_fill() in the C program builds it."""
    sector = (1 << 40) + i * 8
    if i % 5 == 4:
        return BlkifDiscardRequest(BLKIF_OP_DISCARD, 1, 51712, 0x1000 + i, sector, 8 * i + 1)
    if i % 7 == 6:
        nr = 12 + i
        grefs = tuple(2000 + 8 * i + j for j in range(-(-nr // 512)))
        return BlkifIndirectRequest(BLKIF_OP_INDIRECT, BLKIF_OP_WRITE, nr, 0x1000 + i, sector,
                                    51712, grefs)
    nr = 1 + i % 11
    segs = tuple(BlkifSegment(1000 + 16 * i + k, k % 8, 7) for k in range(nr))
    op = BLKIF_OP_WRITE if i % 2 else BLKIF_OP_READ
    return BlkifRequest(op, 51712, 0x1000 + i, sector, segs)


def blkrw_request(i: int) -> BlkifRequest:
    """Request number i, exactly as blkrw_fill() in the C program builds it."""
    nr = 1 + (i // 16) % 11
    segs = tuple(BlkifSegment(5000 + 16 * i + k, (i + k) % 8, 7) for k in range(nr))
    op = BLKIF_OP_WRITE if (i // 3) % 2 else BLKIF_OP_READ
    return BlkifRequest(op, 51712, 0x2000 + i, (1 << 41) + i * 8, segs)


def blk_describe(req: object) -> tuple[str, BlkifResponse]:
    if isinstance(req, BlkifDiscardRequest):
        text = (f" discard:{req.flag}:{req.handle}:{req.id}:{req.sector_number}:"
                f"{req.nr_sectors}")
        rid, op = req.id, req.operation
    elif isinstance(req, BlkifIndirectRequest):
        text = (f" ind:{req.indirect_op}:{req.nr_segments}:{req.id}:{req.sector_number}:"
                f"{req.handle}:" + ",".join(map(str, req.indirect_grefs)))
        rid, op = req.id, req.indirect_op
    else:
        assert isinstance(req, BlkifRequest)
        assert req.error is None, req.error
        text = (f" rw:{req.operation}:{req.nr_segments}:{req.handle}:{req.id}:"
                f"{req.sector_number}:"
                + ",".join(f"{s.gref}/{s.first_sect}/{s.last_sect}" for s in req.segments))
        rid, op = req.id, req.operation
    return text, BlkifResponse(rid, op, 0 if rid % 3 else -1)


def nettx_request(i: int) -> NetifTxRequest | NetifExtraInfo:
    if i % 3 == 1:
        return NetifExtraInfo.gso(1448, XEN_NETIF_GSO_TYPE_TCPV4)
    flags = (NETTXF_extra_info | NETTXF_csum_blank) if i % 3 == 0 else 0
    return NetifTxRequest(3000 + i, (i * 7) % 4000, flags, i & 0xFFFF, 60 + i)


def netrx_response(req: NetifRxRequest) -> NetifRxResponse | NetifExtraInfo:
    if req.id % 3 == 1:
        return NetifExtraInfo.gso(1448, XEN_NETIF_GSO_TYPE_TCPV4)
    flags = NETRXF_extra_info if req.id % 3 == 0 else 0
    return NetifRxResponse(req.id, 0, flags, 100 + req.id % 1000)


CODECS = {"blk": BLKIF_CODEC, "blkrw": BLKIF_CODEC, "nettx": NETIF_TX_CODEC,
          "netrx": NETIF_RX_CODEC}
REQUESTS = {"blk": blk_request, "blkrw": blkrw_request, "nettx": nettx_request,
            "netrx": lambda i: NetifRxRequest(i & 0xFFFF, 4000 + i)}


def _pattern(idx: int, direction: int) -> int:
    return (idx * 7 + 3 + direction * 0x40) & 0xFF


def py_step(proto: str, role: str, page_path: Path, state_path: Path, token: str,
            batch: bool = False) -> str:
    """One step with xensim's ring/, same files and output format as the C program.

    ``batch`` selects the batch calls (``*_batch``) instead of the
    single-record ones for request/response rings.
    """
    if token.startswith("init:"):
        start = int(token[5:], 0)
        if proto in ("cons", "xs"):
            page = bytearray(4096)
            for off in ((3072, 3076, 3080, 3084) if proto == "cons" else (2048, 2052, 2056, 2060)):
                page[off : off + 4] = start.to_bytes(4, "little")
            page_path.write_bytes(page)
        else:
            if role == "front":
                page = bytearray(4096)
                front = FrontRing.init([memoryview(page)], CODECS[proto])
                s = front.sring
                s.req_prod = s.rsp_prod = start
                s.req_event = s.rsp_event = start + 1
                page_path.write_bytes(page)
            state_path.write_text(f"{start} {start} {start}\n")
        return "init"

    page = bytearray(page_path.read_bytes())
    view = memoryview(page)
    if proto in ("cons", "xs"):
        out = _py_byte_step(proto, view, token)
    else:
        start, pvt, cons = map(int, state_path.read_text().split())
        out, pvt, cons = _py_ring_step(proto, role, view, token, start, pvt, cons, batch)
        state_path.write_text(f"{start} {pvt} {cons}\n")
    page_path.write_bytes(page)
    return out


def _py_ring_step(proto: str, role: str, view: memoryview, token: str, start: int,
                  pvt: int, cons: int, batch: bool) -> tuple[str, int, int]:
    codec = CODECS[proto]
    if role == "front":
        front = FrontRing.attach([view], codec)
        front.req_prod_pvt, front.rsp_cons = pvt, cons
        if token[0] == "F":
            n = min(int(token[1:]), front.free_requests())
            first = (front.req_prod_pvt - start) & M
            reqs = [REQUESTS[proto]((first + k) & M) for k in range(n)]
            if batch:
                front.put_requests_batch(reqs)
            else:
                for req in reqs:
                    front.put_request(req)
            out = f"F n={n} notify={int(front.push_requests_and_check_notify())}"
        else:
            try:
                rsps = front.get_responses_batch() if batch else front.get_responses()
            except RingOverflowError:
                return "R overflow", front.req_prod_pvt, front.rsp_cons
            parts = []
            for r in rsps:
                if isinstance(r, BlkifResponse):
                    parts.append(f" {r.id}:{r.operation}:{r.status}")
                elif isinstance(r, NetifTxResponse):
                    parts.append(f" {r.id}:{r.status}")
                else:
                    parts.append(f" {r.id}:{r.offset}:{r.flags}:{r.status}")
            work = front.final_check_for_responses()
            out = "R" + "".join(parts) + f" work={int(work)}"
        return out, front.req_prod_pvt, front.rsp_cons

    back = BackRing.attach([view], codec)
    back.rsp_prod_pvt, back.req_cons = pvt, cons
    limit = int(token[1:]) if len(token) > 1 else None
    try:
        reqs = back.get_requests_batch(limit) if batch else back.get_requests(limit)
    except RingOverflowError:
        return "B overflow", back.rsp_prod_pvt, back.req_cons
    parts = []
    answers = []
    for req in reqs:
        if proto in ("blk", "blkrw"):
            text, rsp = blk_describe(req)
        elif proto == "nettx":
            text = f" {req.gref}:{req.offset}:{req.flags}:{req.id}:{req.size}"
            rsp = NetifTxResponse(req.id, req.size % 3 - 1)
        else:
            text = f" {req.id}:{req.gref}"
            rsp = netrx_response(req)
        parts.append(text)
        if batch:
            answers.append(rsp)
        else:
            back.put_response(rsp)
    if batch:
        back.put_responses_batch(answers)
    notify = back.push_responses_and_check_notify()
    work = back.final_check_for_requests() if limit is None else False
    out = "B" + "".join(parts) + f" notify={int(notify)} work={int(work)}"
    return out, back.rsp_prod_pvt, back.req_cons


def _py_byte_step(proto: str, view: memoryview, token: str) -> str:
    kind, n = token[0], int(token[1:])
    if proto == "cons":
        guest, daemon = ConsoleGuest(view), ConsoleDaemon(view)
        rings = {"W": guest.output, "R": daemon.output, "I": daemon.input, "G": guest.input}
    else:
        xg, xd = XenstoreGuest(view), XenstoreDaemon(view)
        rings = {"W": xg.requests, "R": xd.requests, "I": xd.responses, "G": xg.responses}
    end = rings[kind]
    try:
        if kind in "WI":
            prod = end.prod
            direction = 0 if kind == "W" else 1
            data = bytes(_pattern(prod + k, direction) for k in range(n))
            return f"{kind} n={end.write(data)}"
        got = end.read(n)
        return f"{kind} data={got.hex()} n={len(got)}"
    except CorruptRingIndexError:
        return f"{kind} corrupt"


# --- scenarios -------------------------------------------------------------------
RING_SCENARIOS = {
    "blk": ("0xfffffff0", ["F3", "F2", "B", "R", "F32", "F1", "B2", "B", "R", "F40", "B",
                           "F5", "R", "F5", "B", "R", "R"]),
    # whole-ring batches of direct requests: the batch codec's column paths
    "blkrw": ("0xffffffe4", ["F32", "B", "R", "F16", "F16", "B", "R", "F13", "B5", "B", "F3",
                             "R", "F32", "B", "R", "F12", "F20", "B", "R"]),
    "nettx": ("0xffffff00", ["F100", "F100", "B", "R", "F300", "B60", "B", "R", "F7", "B",
                             "R"]),
    "netrx": ("0xfffffff8", ["F256", "B100", "B", "R", "F20", "F1", "B", "R"]),
}
BYTE_SCENARIOS = {
    "cons": ("0xfffffc00", ["W3000", "R100", "W500", "R5000", "I2000", "G10", "G2000",
                            "W10", "R10", "G1"]),
    "xs": ("0xfffffe00", ["W1500", "R1000", "W200", "R2000", "I1500", "G1500", "I16", "G8",
                          "G8"]),
}
FRONT_TOKENS = ("F", "R")
GUEST_TOKENS = ("W", "G")


def run_scenario(c_binary: Path, tmp: Path, proto: str, impls: tuple[str, str],
                 start: str, steps: list[str]) -> list[tuple[str, bytes]]:
    """Run steps; impls = (front/guest impl, back/daemon impl), each "c", "py"
    (single-record calls) or "pyb" (batch calls)."""
    page, fstate, bstate = tmp / "page", tmp / "front.state", tmp / "back.state"
    byte_ring = proto in ("cons", "xs")

    def step(side: int, token: str) -> str:
        if byte_ring:
            role = ("guest", "daemon")[side]
        else:
            role = ("front", "back")[side]
        state = fstate if side == 0 else bstate
        if impls[side] == "c":
            res = subprocess.run([str(c_binary), proto, role, str(page), str(state), token],
                                 check=True, capture_output=True, text=True)
            return res.stdout.strip()
        return py_step(proto, role, page, state, token, batch=impls[side] == "pyb")

    trace = []
    init = f"init:{start}"
    step(0, init)
    if not byte_ring:
        step(1, init)
    for token in steps:
        side = 0 if token[0] in (GUEST_TOKENS if byte_ring else FRONT_TOKENS) else 1
        trace.append((step(side, token), page.read_bytes()))
    return trace


COMBOS = list(itertools.product(("c", "py"), repeat=2))
RING_COMBOS = list(itertools.product(("c", "py", "pyb"), repeat=2))


@pytest.mark.parametrize("proto", sorted(RING_SCENARIOS))
def test_request_response_rings_match_c(c_binary: Path, tmp_path: Path, proto: str) -> None:
    start, steps = RING_SCENARIOS[proto]
    traces = {}
    for combo in RING_COMBOS:
        d = tmp_path / "-".join(combo)
        d.mkdir()
        traces[combo] = run_scenario(c_binary, d, proto, combo, start, steps)
    reference = traces[("c", "c")]
    for combo, trace in traces.items():
        for k, ((line, page), (ref_line, ref_page)) in enumerate(zip(trace, reference)):
            assert line == ref_line, f"{combo} step {k} ({steps[k]})"
            assert page == ref_page, f"{combo} step {k} ({steps[k]}): page bytes differ"
    # sanity: the scenario really exercised both notify outcomes and wrapped
    lines = [line for line, _ in reference]
    assert any("notify=1" in x for x in lines) and any("notify=0" in x for x in lines)
    assert int.from_bytes(reference[-1][1][:4], "little") < int(start, 0)


@pytest.mark.parametrize("proto", sorted(BYTE_SCENARIOS))
def test_byte_rings_match_c(c_binary: Path, tmp_path: Path, proto: str) -> None:
    start, steps = BYTE_SCENARIOS[proto]
    traces = {}
    for combo in COMBOS:
        d = tmp_path / "-".join(combo)
        d.mkdir()
        traces[combo] = run_scenario(c_binary, d, proto, combo, start, steps)
    reference = traces[("c", "c")]
    for combo, trace in traces.items():
        assert trace == reference, combo
    lines = [line for line, _ in reference]
    assert lines[0] == ("W n=2048" if proto == "cons" else "W n=1024")


def test_c_detects_python_corrupt_index_the_same_way(c_binary: Path, tmp_path: Path) -> None:
    """A console page whose out_prod is 4096 ahead: both sides call it corrupt."""
    page = bytearray(4096)
    page[3084:3088] = (4096).to_bytes(4, "little")
    p = tmp_path / "page"
    p.write_bytes(page)
    res = subprocess.run([str(c_binary), "cons", "daemon", str(p), str(tmp_path / "s"), "R10"],
                         check=True, capture_output=True, text=True)
    assert res.stdout.strip() == "R corrupt"
    assert py_step("cons", "daemon", p, tmp_path / "s", "R10") == "R corrupt"


def test_bogus_req_prod_detected_by_both(c_binary: Path, tmp_path: Path) -> None:
    """req_prod 33 ahead on a 32-slot blkif ring: C and Python both refuse it."""
    for impl in ("c", "py"):
        d = tmp_path / impl
        d.mkdir()
        page, state = d / "page", d / "state"
        py_step("blk", "front", page, d / "fs", "init:0xfffffff0")
        py_step("blk", "back", page, state, "init:0xfffffff0")
        raw = bytearray(page.read_bytes())
        raw[0:4] = ((0xFFFFFFF0 + 33) & M).to_bytes(4, "little")
        page.write_bytes(raw)
        if impl == "c":
            out = subprocess.run([str(c_binary), "blk", "back", str(page), str(state), "B"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        else:
            out = py_step("blk", "back", page, state, "B")
        assert out == "B overflow"
