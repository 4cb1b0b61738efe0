"""blkback against a raw frontend: handshake, data path, flush, persistent grants, teardown."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from dom0.backends import blkback
from dom0.backends.blkback import BlkBack
from dom0.host import DomainHandle, Host
from dom0.native.disk import BlockIOError, FaultRule, FaultyDevice, PowerLossDisk, RamDisk
from dom0.testing import GuestFactory
from dom0.toolstack.config import ConfigError, DiskSpec
from ring.blkif import (
    BLKIF_CODEC,
    BLKIF_DISCARD_SECURE,
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
    VDISK_READONLY,
    BlkifDiscardRequest,
    BlkifIndirectRequest,
    BlkifRequest,
    encode_indirect_segments,
)
from tests.blk.rawfront import (
    DISKS,
    XVDA,
    XVDB,
    RamBlkBack,
    RawBlkFront,
    disk_guest,
    idle_guest,
    seg,
    wait_disk,
)

MIB = 1 << 20


@pytest.fixture
def xen_host_options() -> dict[str, Any]:
    return {"backend_drivers": {"vbd": RamBlkBack}, "frontend_drivers": {"vbd": RawBlkFront}}


@pytest.fixture(autouse=True)
def _disks() -> Iterator[None]:
    DISKS.clear()
    yield
    DISKS.clear()


def front_of(host: Host, dom: DomainHandle, devid: int = XVDA) -> RawBlkFront:
    gk = host.guest_kernels[dom.domid]
    assert gk.bus is not None
    dev = gk.bus.devices[f"vbd/{devid}"]
    assert isinstance(dev, RawBlkFront)
    return dev


def back_of(host: Host, dom: DomainHandle, devid: int = XVDA) -> BlkBack:
    inst = host.kernel.backends.instance("vbd", dom.domid, devid)
    assert isinstance(inst, BlkBack)
    return inst


async def disk_dom(guest_factory: GuestFactory, host: Host, target: str, *, name: str,
                   access: str = "rw", **extra: Any) -> tuple[DomainHandle, RawBlkFront]:
    dom = await guest_factory(disk_guest, name=name,
                              disks=[DiskSpec(vdev="xvda", target=target, access=access)],
                              **extra)
    await dom.console.wait_for("disk ready")
    return dom, front_of(host, dom)


def pins(host: Host) -> tuple[int, int]:
    c = host.hv.resource_counts()
    return c["grant_pins"], c["maptrack"]


async def roundtrip(front: RawBlkFront, sector: int = 0, fill: int = 0x5A) -> None:
    """Write one page at ``sector`` and read it back (a bystander's health check)."""
    wref, wview = front.data_page(readonly=True)
    wview[:] = bytes([fill]) * 4096
    front.submit(BlkifRequest(BLKIF_OP_WRITE, XVDA, 1, sector, (seg(wref),)))
    (rsp,) = await front.responses(1)
    assert rsp.status == BLKIF_RSP_OKAY
    rref, rview = front.data_page()
    front.submit(BlkifRequest(BLKIF_OP_READ, XVDA, 2, sector, (seg(rref),)))
    (rsp,) = await front.responses(1)
    assert rsp.status == BLKIF_RSP_OKAY and bytes(rview) == bytes([fill]) * 4096


async def test_handshake_publishes_every_key(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    DISKS["ram:a"] = RamDisk(8 * MIB)
    dom, front = await disk_dom(guest_factory, xen_host, "ram:a", name="a")
    bpath = f"/local/domain/0/backend/vbd/{dom.domid}/{XVDA}"
    keys = {}
    for key in ("state", "feature-flush-cache", "feature-barrier", "feature-discard",
                "discard-granularity", "discard-alignment", "discard-secure",
                "feature-max-indirect-segments", "feature-persistent", "max-ring-page-order",
                "sectors", "info", "sector-size", "physical-sector-size", "hotplug-status",
                "physical-device"):
        keys[key] = (await xen_host.kernel.xs.read(f"{bpath}/{key}")).decode()
    assert keys["state"] == "4"
    assert keys["feature-flush-cache"] == keys["feature-barrier"] == "1"
    assert keys["feature-discard"] == "1" and keys["discard-secure"] == "0"
    assert keys["discard-granularity"] == "512" and keys["discard-alignment"] == "0"
    assert keys["feature-max-indirect-segments"] == "256"
    assert keys["feature-persistent"] == "1" and keys["max-ring-page-order"] == "4"
    assert keys["sectors"] == str(8 * MIB // 512) and keys["info"] == "0"
    assert keys["sector-size"] == "512" and keys["physical-sector-size"] == "512"
    assert keys["hotplug-status"] == "connected"
    assert front.sectors == 8 * MIB // 512
    back = back_of(xen_host, dom)
    assert back.workers_started == 1
    await roundtrip(front)
    assert back.stats.requests == {"write": 1, "read": 1}
    assert back.stats.bytes_written == back.stats.bytes_read == 4096
    await dom.destroy()


async def test_partial_segments_land_at_the_right_bytes(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    disk = DISKS["ram:a"] = RamDisk(1 * MIB)
    dom, front = await disk_dom(guest_factory, xen_host, "ram:a", name="a")
    base = pins(xen_host)
    r1, v1 = front.data_page(readonly=True)
    r2, v2 = front.data_page(readonly=True)
    v1[:] = bytes(range(256)) * 16
    v2[:] = b"\xEE" * 4096
    # sectors 2..3 of page 1, then sectors 5..7 of page 2 -> disk sectors 10..14
    front.submit(BlkifRequest(BLKIF_OP_WRITE, XVDA, 7, 10, (seg(r1, 2, 3), seg(r2, 5, 7))))
    (rsp,) = await front.responses(1)
    assert (rsp.id, rsp.operation, rsp.status) == (7, BLKIF_OP_WRITE, BLKIF_RSP_OKAY)
    img = disk.snapshot()
    assert img[10 * 512:12 * 512] == bytes(v1[1024:2048])
    assert img[12 * 512:15 * 512] == b"\xEE" * 1536
    assert img[:10 * 512] == bytes(10 * 512) and img[15 * 512:16 * 512] == bytes(512)
    rr, rv = front.data_page()
    rv[:] = b"\x11" * 4096
    front.submit(BlkifRequest(BLKIF_OP_READ, XVDA, 8, 10, (seg(rr, 1, 5),)))
    (rsp,) = await front.responses(1)
    assert rsp.status == BLKIF_RSP_OKAY
    assert bytes(rv[512:3072]) == img[10 * 512:15 * 512]
    assert bytes(rv[:512]) == b"\x11" * 512 and bytes(rv[3072:]) == b"\x11" * 1024
    assert pins(xen_host) == base  # every data mapping undone before the response
    await dom.destroy()


async def test_multipage_ring_and_indirect_requests(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RawBlkFront, "ring_page_order", 2)
    disk = DISKS["ram:a"] = RamDisk(4 * MIB)
    dom, front = await disk_dom(guest_factory, xen_host, "ram:a", name="a")
    assert front.ring.size == 128
    base = pins(xen_host)
    pages = [front.data_page(readonly=True) for _ in range(20)]
    for i, (_ref, view) in enumerate(pages):
        view[:] = bytes([i + 1]) * 4096
    ind_ref, ind_view = front.data_page(readonly=True)
    (page,) = encode_indirect_segments([seg(ref) for ref, _ in pages])
    ind_view[:] = page
    front.submit(BlkifIndirectRequest(BLKIF_OP_INDIRECT, BLKIF_OP_WRITE, 20, 99, 16, XVDA,
                                      (ind_ref,)))
    (rsp,) = await front.responses(1)
    assert (rsp.id, rsp.operation, rsp.status) == (99, BLKIF_OP_WRITE, BLKIF_RSP_OKAY)
    img = disk.snapshot()
    for i in range(20):
        off = (16 + 8 * i) * 512
        assert img[off:off + 4096] == bytes([i + 1]) * 4096
    back = back_of(xen_host, dom)
    assert back.stats.requests == {"indirect": 1} and back.stats.bytes_written == 20 * 4096
    assert pins(xen_host) == base
    await dom.destroy()


async def test_many_requests_in_flight_and_exactly_full_ring(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    DISKS["ram:a"] = RamDisk(1 * MIB)
    dom, front = await disk_dom(guest_factory, xen_host, "ram:a", name="a")
    reqs = []
    for i in range(front.ring.size):  # 32: every slot
        ref, view = front.data_page(readonly=True)
        view[:] = bytes([i]) * 4096
        reqs.append(BlkifRequest(BLKIF_OP_WRITE, XVDA, 1000 + i, 8 * i, (seg(ref),)))
    front.submit(*reqs)
    rsps = await front.responses(32)
    assert sorted(r.id for r in rsps) == list(range(1000, 1032))
    assert {r.status for r in rsps} == {BLKIF_RSP_OKAY}
    back = back_of(xen_host, dom)
    assert back.stats.ring_full == 1 and back.stats.max_in_flight > 1
    img = DISKS["ram:a"].snapshot()  # type: ignore[attr-defined]
    assert all(img[4096 * i:4096 * (i + 1)] == bytes([i]) * 4096 for i in range(32))
    await dom.destroy()


# -- hostile frontend: one field broken at a time -------------------------------------------

def _unknown_op(op: int) -> Any:
    def build(front: RawBlkFront, other: int) -> bytes:
        raw = bytearray(112)
        raw[0] = op
        raw[8:16] = (5).to_bytes(8, "little")
        return bytes(raw)
    return build


def _rw(op: int, *, nr: int = -1, sector: int = 0, first: int = 0, last: int = 7,
        ref: str = "ok", nsegs: int = 1) -> Any:
    def build(front: RawBlkFront, other: int) -> BlkifRequest:
        segs = []
        for i in range(nsegs):
            if ref == "ok" or i < nsegs - 1:
                r, v = front.data_page(readonly=op == BLKIF_OP_WRITE)
                v[:] = b"\xAB" * 4096
            elif ref == "ungranted":
                r = 300  # a free entry of the guest's table: GTF_invalid
            elif ref == "out-of-table":
                r = 1 << 20
            elif ref == "other-domain":
                r, _ = front.data_page(grant_to=other)
            elif ref == "readonly":
                r, _ = front.data_page(readonly=True)
            else:
                raise AssertionError(ref)
            segs.append(seg(r, first, last))
        return BlkifRequest(op, XVDA, 5, sector, tuple(segs), nr)
    return build


def _indirect(*, inner: int = BLKIF_OP_WRITE, nr: int = 20, granted: bool = True,
              last: int = 7) -> Any:
    def build(front: RawBlkFront, other: int) -> BlkifIndirectRequest:
        refs = [front.data_page(readonly=True)[0] for _ in range(max(1, min(nr, 20)))]
        segs = [seg(r, 0, last) for r in refs] * (nr // len(refs) + 1)
        ind_ref, view = front.data_page(readonly=True)
        (page,) = encode_indirect_segments(segs[:max(1, min(nr, 512))])
        view[:] = page
        return BlkifIndirectRequest(BLKIF_OP_INDIRECT, inner, nr, 5, 0, XVDA,
                                    (ind_ref if granted else 301,))
    return build


def _discard(*, sector: int = 0, n: int = 8, flag: int = 0) -> Any:
    def build(front: RawBlkFront, other: int) -> BlkifDiscardRequest:
        return BlkifDiscardRequest(BLKIF_OP_DISCARD, flag, XVDA, 5, sector, n)
    return build


DISK_SECTORS = 2048  # 1 MiB
HOSTILE = [
    ("unknown operation 9", _unknown_op(9), 9, BLKIF_RSP_EOPNOTSUPP),
    ("reserved operation 4", _unknown_op(4), 4, BLKIF_RSP_EOPNOTSUPP),
    ("operation 255", _unknown_op(255), 255, BLKIF_RSP_EOPNOTSUPP),
    ("read nr_segments 0", _rw(BLKIF_OP_READ, nr=0, nsegs=0), 0, BLKIF_RSP_ERROR),
    ("write nr_segments 12", _rw(BLKIF_OP_WRITE, nr=12, nsegs=11), 1, BLKIF_RSP_ERROR),
    ("write nr_segments 255", _rw(BLKIF_OP_WRITE, nr=255, nsegs=11), 1, BLKIF_RSP_ERROR),
    ("sector beyond the disk", _rw(BLKIF_OP_WRITE, sector=DISK_SECTORS - 7), 1,
     BLKIF_RSP_ERROR),
    ("sector near 2**64", _rw(BLKIF_OP_READ, sector=2**64 - 1), 0, BLKIF_RSP_ERROR),
    ("first_sect > last_sect", _rw(BLKIF_OP_WRITE, first=5, last=4), 1, BLKIF_RSP_ERROR),
    ("last_sect 8", _rw(BLKIF_OP_WRITE, last=8), 1, BLKIF_RSP_ERROR),
    ("gref not granted", _rw(BLKIF_OP_WRITE, ref="ungranted"), 1, BLKIF_RSP_ERROR),
    ("gref beyond the grant table", _rw(BLKIF_OP_READ, ref="out-of-table"), 0,
     BLKIF_RSP_ERROR),
    ("gref granted to another domain", _rw(BLKIF_OP_WRITE, ref="other-domain"), 1,
     BLKIF_RSP_ERROR),
    ("read-only grant for a read", _rw(BLKIF_OP_READ, ref="readonly"), 0, BLKIF_RSP_ERROR),
    ("11th of 11 segments ungranted", _rw(BLKIF_OP_WRITE, nsegs=11, ref="ungranted"), 1,
     BLKIF_RSP_ERROR),
    ("11th of 11 segments read-only for a read",
     _rw(BLKIF_OP_READ, nsegs=11, ref="readonly"), 0, BLKIF_RSP_ERROR),
    ("flush with a bad segment", _rw(BLKIF_OP_FLUSH_DISKCACHE, last=9), 3, BLKIF_RSP_ERROR),
    ("indirect_op FLUSH", _indirect(inner=BLKIF_OP_FLUSH_DISKCACHE), 3, BLKIF_RSP_ERROR),
    ("indirect nr_segments 300 > 256", _indirect(nr=300), 1, BLKIF_RSP_ERROR),
    ("indirect nr_segments 0", _indirect(nr=0), 1, BLKIF_RSP_ERROR),
    ("indirect page not granted", _indirect(granted=False), 1, BLKIF_RSP_ERROR),
    ("indirect segment last_sect 8", _indirect(last=8), 1, BLKIF_RSP_ERROR),
    ("discard beyond the disk", _discard(sector=DISK_SECTORS - 1, n=2), BLKIF_OP_DISCARD,
     BLKIF_RSP_ERROR),
    ("secure discard (discard-secure=0)", _discard(flag=BLKIF_DISCARD_SECURE),
     BLKIF_OP_DISCARD, BLKIF_RSP_EOPNOTSUPP),
]


@pytest.mark.parametrize(("build", "rsp_op", "status"), [c[1:] for c in HOSTILE],
                         ids=[c[0] for c in HOSTILE])
async def test_hostile_request_gets_exact_error(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
        build: Any, rsp_op: int, status: int) -> None:
    DISKS["ram:other"] = RamDisk(1 * MIB)
    disk = DISKS["ram:evil"] = RamDisk(1 * MIB, initial=b"\x42" * MIB)
    other, other_front = await disk_dom(guest_factory, xen_host, "ram:other", name="other")
    dom, front = await disk_dom(guest_factory, xen_host, "ram:evil", name="evil")
    back = back_of(xen_host, dom)
    base = pins(xen_host)
    req = build(front, other.domid)
    if isinstance(req, bytes):
        front.submit_raw(req)
    else:
        front.submit(req)
    (rsp,) = await front.responses(1)
    assert (rsp.id, rsp.operation, rsp.status) == (5, rsp_op, status)
    assert disk.snapshot() == b"\x42" * MIB  # nothing outside the request touched
    await trio.testing.wait_all_tasks_blocked()
    assert pins(xen_host) == base  # every mapping made for it was undone
    st = back.stats
    assert (st.invalid, st.eopnotsupp) == ((1, 0) if status == BLKIF_RSP_ERROR else (0, 1))
    assert st.io_errors == 0 and back.workers_stopped == 0
    await roundtrip(front, sector=64)  # the hostile guest's own ring still works
    await roundtrip(other_front)  # and so does everyone else's disk
    await dom.destroy()
    await other.destroy()


# -- ring indices, double fetch ----------------------------------------------------------------

@pytest.mark.parametrize("req_prod", [1000, 0x7FFFFFFF, 0xFFFFFFFF])
async def test_bogus_req_prod_halts_only_that_ring(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
        req_prod: int) -> None:
    DISKS["ram:other"] = RamDisk(1 * MIB)
    DISKS["ram:evil"] = RamDisk(1 * MIB)
    other, other_front = await disk_dom(guest_factory, xen_host, "ram:other", name="other")
    dom, front = await disk_dom(guest_factory, xen_host, "ram:evil", name="evil")
    back = back_of(xen_host, dom)
    front.ring.sring.req_prod = req_prod  # claims far more requests than the ring holds
    front.kick()
    await trio.testing.wait_all_tasks_blocked()
    assert back.stats.ring_overflows == 1
    assert back.workers_started == back.workers_stopped == 1
    state = await xen_host.kernel.xs.read(f"/local/domain/0/backend/vbd/{dom.domid}/{XVDA}/state")
    assert state in (b"5", b"6")  # that device only: Closing
    await roundtrip(other_front)
    assert back_of(xen_host, other).stats.ring_overflows == 0
    await dom.destroy()
    await other.destroy()


async def test_request_rewritten_after_the_backend_copied_it(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    disk = DISKS["ram:a"] = PowerLossDisk(1 * MIB)
    dom, front = await disk_dom(guest_factory, xen_host, "ram:a", name="a")
    ref, view = front.data_page(readonly=True)
    view[:] = b"\x77" * 4096
    disk.pause()  # hold the write in flight
    front.submit(BlkifRequest(BLKIF_OP_WRITE, XVDA, 5, 16, (seg(ref),)))
    await trio.testing.wait_all_tasks_blocked()
    # XSA-155: the guest rewrites every field of the slot it already published
    evil_ref, _ = front.data_page()
    slot = front.ring.sring.read_slot(0)
    evil = BlkifRequest(BLKIF_OP_WRITE, XVDA, 666, 0, (seg(evil_ref, 0, 0),))
    front.ring.sring.write_slot(0, BLKIF_CODEC.encode_request(evil))
    assert front.ring.sring.read_slot(0) != slot
    disk.resume()
    (rsp,) = await front.responses(1)
    assert (rsp.id, rsp.status) == (5, BLKIF_RSP_OKAY)  # the backend's copy, not the slot
    img = disk.snapshot()
    assert img[16 * 512:24 * 512] == b"\x77" * 4096 and img[:16 * 512] == bytes(16 * 512)
    await dom.destroy()


# -- read-only disks, errors, discard ------------------------------------------------------------

async def test_readonly_disk_refuses_writes_and_discards(
        guest_factory: GuestFactory, xen_host: Host, tmp_path: Any) -> None:
    # a real image file: worker threads, so the real clock (autojump would fire timeouts)
    image = tmp_path / "ro.img"
    image.write_bytes(b"\x33" * MIB)
    dom, front = await disk_dom(guest_factory, xen_host, str(image), name="ro", access="ro")
    assert front.info & VDISK_READONLY
    wref, wview = front.data_page(readonly=True)
    wview[:] = b"\x99" * 4096
    front.submit(BlkifRequest(BLKIF_OP_WRITE, XVDA, 1, 0, (seg(wref),)),
                 BlkifDiscardRequest(BLKIF_OP_DISCARD, 0, XVDA, 2, 0, 8),
                 BlkifRequest(BLKIF_OP_FLUSH_DISKCACHE, XVDA, 3, 0, (seg(wref),)),
                 BlkifRequest(BLKIF_OP_FLUSH_DISKCACHE, XVDA, 4, 0, ()))
    rsps = {r.id: r.status for r in await front.responses(4)}
    assert rsps == {1: BLKIF_RSP_ERROR, 2: BLKIF_RSP_ERROR, 3: BLKIF_RSP_ERROR,
                    4: BLKIF_RSP_OKAY}
    rref, rview = front.data_page()
    front.submit(BlkifRequest(BLKIF_OP_READ, XVDA, 5, 0, (seg(rref),)))
    (rsp,) = await front.responses(1)
    assert rsp.status == BLKIF_RSP_OKAY and bytes(rview) == b"\x33" * 4096
    assert image.read_bytes() == b"\x33" * MIB
    assert back_of(xen_host, dom).stats.invalid == 3
    await dom.destroy()


async def test_native_io_error_fails_only_that_request(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    DISKS["ram:a"] = FaultyDevice(RamDisk(1 * MIB), [FaultRule("write", 0, 4096, errno.EIO)])
    dom, front = await disk_dom(guest_factory, xen_host, "ram:a", name="a")
    ref, _ = front.data_page(readonly=True)
    front.submit(BlkifRequest(BLKIF_OP_WRITE, XVDA, 1, 0, (seg(ref),)),
                 BlkifRequest(BLKIF_OP_WRITE, XVDA, 2, 8, (seg(ref),)))
    rsps = {r.id: r.status for r in await front.responses(2)}
    assert rsps == {1: BLKIF_RSP_ERROR, 2: BLKIF_RSP_OKAY}
    st = back_of(xen_host, dom).stats
    assert st.io_errors == 1 and st.invalid == 0
    await dom.destroy()


class _NoCacheRamDisk(RamDisk):
    """A ramdisk whose synchronous read path fails, as a page-cache read may."""

    def _do_try_readv(self, offset: int, views: list[memoryview], length: int) -> int:
        raise BlockIOError(errno.EIO, "injected error on the inline read")


async def test_inline_read_error_fails_only_that_request(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    DISKS["ram:a"] = _NoCacheRamDisk(1 * MIB)
    DISKS["ram:other"] = RamDisk(1 * MIB)
    other, other_front = await disk_dom(guest_factory, xen_host, "ram:other", name="other")
    dom, front = await disk_dom(guest_factory, xen_host, "ram:a", name="a")
    base = pins(xen_host)
    ref, _ = front.data_page()
    front.submit(BlkifRequest(BLKIF_OP_READ, XVDA, 1, 0, (seg(ref),)))
    (rsp,) = await front.responses(1)
    assert (rsp.id, rsp.status) == (1, BLKIF_RSP_ERROR)
    st = back_of(xen_host, dom).stats
    assert st.io_errors == 1 and st.invalid == 0 and st.bytes_read == 0
    assert pins(xen_host) == base  # unmapped before the answer
    await roundtrip(other_front)
    await dom.destroy()
    await other.destroy()


async def test_discard_zeroes(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    disk = DISKS["ram:a"] = RamDisk(1 * MIB, initial=b"\xFF" * MIB)
    dom, front = await disk_dom(guest_factory, xen_host, "ram:a", name="a")
    front.submit(BlkifDiscardRequest(BLKIF_OP_DISCARD, 0, XVDA, 1, 8, 16))
    (rsp,) = await front.responses(1)
    assert (rsp.operation, rsp.status) == (BLKIF_OP_DISCARD, BLKIF_RSP_OKAY)
    img = disk.snapshot()
    assert img[8 * 512:24 * 512] == bytes(16 * 512)
    assert img[:8 * 512] == b"\xFF" * 4096 and img[24 * 512:] == b"\xFF" * (MIB - 24 * 512)
    await dom.destroy()


# -- flush ordering --------------------------------------------------------------------------

async def test_flush_waits_for_earlier_writes_and_makes_them_durable(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    disk = DISKS["ram:a"] = PowerLossDisk(1 * MIB)
    dom, front = await disk_dom(guest_factory, xen_host, "ram:a", name="a")
    ra, va = front.data_page(readonly=True)
    va[:] = b"A" * 4096
    front.submit(BlkifRequest(BLKIF_OP_WRITE, XVDA, 1, 0, (seg(ra),)))
    (rsp,) = await front.responses(1)  # A completed before the flush is issued
    assert rsp.status == BLKIF_RSP_OKAY
    rb, vb = front.data_page(readonly=True)
    vb[:] = b"B" * 4096
    disk.pause()
    front.submit(BlkifRequest(BLKIF_OP_WRITE, XVDA, 2, 8, (seg(rb),)))  # B in flight
    await trio.testing.wait_all_tasks_blocked()
    front.submit(BlkifRequest(BLKIF_OP_FLUSH_DISKCACHE, XVDA, 3, 0, ()))
    await trio.testing.wait_all_tasks_blocked()
    assert front.ring.get_responses() == []  # the flush waits for B
    disk.resume()
    rsps = await front.responses(2)
    assert [(r.id, r.status) for r in rsps] == [(2, BLKIF_RSP_OKAY), (3, BLKIF_RSP_OKAY)]
    disk.power_loss(random.Random(1), persist_probability=0.0)
    durable = disk.snapshot()
    assert durable[:4096] == b"A" * 4096 and durable[4096:8192] == b"B" * 4096
    await dom.destroy()


async def test_barrier_orders_writes_on_both_sides(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    disk = DISKS["ram:a"] = PowerLossDisk(1 * MIB)
    dom, front = await disk_dom(guest_factory, xen_host, "ram:a", name="a")
    pages = []
    for fill in b"XYZ":
        ref, view = front.data_page(readonly=True)
        view[:] = bytes([fill]) * 4096
        pages.append(ref)
    disk.pause()
    front.submit(BlkifRequest(BLKIF_OP_WRITE, XVDA, 1, 0, (seg(pages[0]),)),
                 BlkifRequest(BLKIF_OP_WRITE_BARRIER, XVDA, 2, 8, (seg(pages[1]),)),
                 BlkifRequest(BLKIF_OP_WRITE, XVDA, 3, 16, (seg(pages[2]),)))
    await trio.testing.wait_all_tasks_blocked()
    disk.resume()
    rsps = await front.responses(3)
    assert [r.id for r in rsps] == [1, 2, 3]  # the later write waited for the barrier
    assert {r.status for r in rsps} == {BLKIF_RSP_OKAY}
    assert rsps[1].operation == BLKIF_OP_WRITE_BARRIER
    disk.power_loss(random.Random(2), persist_probability=0.0)
    img = disk.snapshot()
    assert img[:4096] == b"X" * 4096 and img[4096:8192] == b"Y" * 4096
    await dom.destroy()


async def test_flush_calls_fdatasync_after_the_write_returned(
        guest_factory: GuestFactory, xen_host: Host, tmp_path: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(MIB))
    dom, front = await disk_dom(guest_factory, xen_host, str(image), name="img")
    events: list[str] = []
    real_sync, real_pwritev = os.fdatasync, os.pwritev

    def spy_sync(fd: int) -> None:
        events.append("fdatasync")
        real_sync(fd)

    def spy_pwritev(fd: int, bufs: Any, offset: int) -> int:
        n = real_pwritev(fd, bufs, offset)
        events.append(f"pwritev@{offset}")
        return n

    monkeypatch.setattr(os, "fdatasync", spy_sync)
    monkeypatch.setattr(os, "pwritev", spy_pwritev)
    ref, view = front.data_page(readonly=True)
    view[:] = b"D" * 4096
    front.submit(BlkifRequest(BLKIF_OP_WRITE, XVDA, 1, 8, (seg(ref),)),
                 BlkifRequest(BLKIF_OP_FLUSH_DISKCACHE, XVDA, 2, 0, ()))
    rsps = await front.responses(2)
    assert {r.status for r in rsps} == {BLKIF_RSP_OKAY}
    assert events == ["pwritev@4096", "fdatasync"]
    assert image.read_bytes()[4096:8192] == b"D" * 4096
    await dom.destroy()


# -- persistent grants ----------------------------------------------------------------------

async def test_persistent_grants_kept_then_purged(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RawBlkFront, "persistent", True)
    disk = DISKS["ram:a"] = RamDisk(1 * MIB)
    dom, front = await disk_dom(guest_factory, xen_host, "ram:a", name="a")
    back = back_of(xen_host, dom)
    assert back.persistent
    base = pins(xen_host)
    refs = []
    for i in range(3):
        ref, view = front.data_page()  # persistent grants are read-write
        view[:] = bytes([i + 1]) * 4096
        refs.append(ref)
    front.submit(BlkifRequest(BLKIF_OP_WRITE, XVDA, 1, 0, tuple(seg(r) for r in refs)))
    assert (await front.responses(1))[0].status == BLKIF_RSP_OKAY
    assert back.stats.persistent_grants == 3
    assert pins(xen_host) == (base[0] + 3, base[1] + 3)  # still mapped after the response
    front.submit(BlkifRequest(BLKIF_OP_READ, XVDA, 2, 8, (seg(refs[0]), seg(refs[0]))))
    assert (await front.responses(1))[0].status == BLKIF_RSP_OKAY
    assert pins(xen_host) == (base[0] + 3, base[1] + 3)  # reused, not mapped again
    assert disk.snapshot()[4096:8192] == bytes([2]) * 4096
    # LRU purge once the table is full of idle grants
    back._max_pgrants = 3
    extra, _ = front.data_page()
    front.submit(BlkifRequest(BLKIF_OP_READ, XVDA, 3, 0, (seg(extra),)))
    assert (await front.responses(1))[0].status == BLKIF_RSP_OKAY
    assert back.stats.persistent_grants == 3 and back.stats.persistent_purged == 1
    assert refs[1] not in back._pgrants and refs[0] in back._pgrants  # refs[1]: LRU
    # disconnect (detach) unmaps every persistent grant
    await dom.detach_disk("xvda")
    assert pins(xen_host)[1] < base[1]  # the ring is gone too
    assert back.stats.persistent_grants == 0 and back._pgrants == {}
    await dom.destroy()


def _indirect_write(front: RawBlkFront, n: int,
                    ) -> tuple[list[memoryview], int, memoryview, list[int]]:
    """n data pages and one indirect page describing them (all persistent, RW)."""
    pages = [front.data_page() for _ in range(n)]
    ind_ref, ind_view = front.data_page()
    (page,) = encode_indirect_segments([seg(ref) for ref, _ in pages])
    ind_view[:] = page
    return [v for _, v in pages], ind_ref, ind_view, [ref for ref, _ in pages]


async def test_segment_lists_decoded_once_and_their_mapping_kept(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RawBlkFront, "persistent", True)
    decoded: list[int] = []
    real_decode = blkback.decode_indirect_segments

    def counting(pages: Any, nr: int, limit: int) -> Any:
        decoded.append(nr)
        return real_decode(pages, nr, limit)

    monkeypatch.setattr(blkback, "decode_indirect_segments", counting)
    disk = DISKS["ram:a"] = RamDisk(1 * MIB)
    dom, front = await disk_dom(guest_factory, xen_host, "ram:a", name="a")
    back = back_of(xen_host, dom)
    views, ind_ref, ind_view, refs = _indirect_write(front, 20)
    after_first = None
    for i in range(3):
        for k, v in enumerate(views):
            v[:] = bytes([i * 20 + k]) * 4096
        req = BlkifIndirectRequest(BLKIF_OP_INDIRECT, BLKIF_OP_WRITE, 20, i, 160 * i, XVDA,
                                   (ind_ref,))
        front.submit(req)
        (rsp,) = await front.responses(1)
        assert (rsp.id, rsp.operation, rsp.status) == (i, BLKIF_OP_WRITE, BLKIF_RSP_OKAY)
        img = disk.snapshot()
        at = 160 * i * 512
        assert all(img[at + 4096 * k:at + 4096 * (k + 1)] == bytes([i * 20 + k]) * 4096
                   for k in range(20))
        if after_first is None:
            after_first = pins(xen_host)
        assert pins(xen_host) == after_first  # nothing mapped again
    assert decoded == [20]  # the same bytes were decoded and checked once
    assert back.stats.persistent_grants == 21  # 20 data pages + the indirect page
    # the frontend rewrites the indirect page: a new list, decoded and checked anew
    bad = [seg(r) for r in refs]
    bad[19] = seg(refs[19], 0, 8)
    (page,) = encode_indirect_segments(bad)
    ind_view[:] = page
    front.submit(BlkifIndirectRequest(BLKIF_OP_INDIRECT, BLKIF_OP_READ, 20, 9, 0, XVDA,
                                      (ind_ref,)))
    (rsp,) = await front.responses(1)
    assert (rsp.id, rsp.status) == (9, BLKIF_RSP_ERROR) and back.stats.invalid == 1
    assert decoded == [20, 20]
    # ... and back again: the cached list serves a read of what the first request wrote
    (page,) = encode_indirect_segments([seg(r) for r in refs])
    ind_view[:] = page
    front.submit(BlkifIndirectRequest(BLKIF_OP_INDIRECT, BLKIF_OP_READ, 20, 10, 0, XVDA,
                                      (ind_ref,)))
    (rsp,) = await front.responses(1)
    assert (rsp.id, rsp.operation, rsp.status) == (10, BLKIF_OP_READ, BLKIF_RSP_OKAY)
    assert decoded == [20, 20]
    assert all(bytes(v) == bytes([k]) * 4096 for k, v in enumerate(views))
    await dom.detach_disk("xvda")
    assert back.stats.persistent_grants == 0 and back._seglists == {}
    await dom.destroy()


async def test_cached_segment_lists_are_bounded_and_give_way_to_the_purge(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RawBlkFront, "persistent", True)
    monkeypatch.setattr(BlkBack, "seglist_cache", 3)
    DISKS["ram:a"] = RamDisk(1 * MIB)
    dom, front = await disk_dom(guest_factory, xen_host, "ram:a", name="a")
    back = back_of(xen_host, dom)
    refs = [front.data_page()[0] for _ in range(3)]
    for i, ref in enumerate(refs):
        front.submit(BlkifRequest(BLKIF_OP_WRITE, XVDA, i, 8 * i, (seg(ref),)))
        assert (await front.responses(1))[0].status == BLKIF_RSP_OKAY
    assert len(back._seglists) == 3 and not back._idle_pgrants  # each list pins its grant
    # a full grant table with no idle grant: the least recently used idle list goes
    back._max_pgrants = 3
    extra, _ = front.data_page()
    front.submit(BlkifRequest(BLKIF_OP_READ, XVDA, 7, 0, (seg(extra),)))
    assert (await front.responses(1))[0].status == BLKIF_RSP_OKAY
    assert back.stats.persistent_purged == 1 and refs[0] not in back._pgrants
    assert back.stats.persistent_grants == 3 and len(back._seglists) == 3
    # more distinct lists than the cache holds: the oldest ones go, unpinned
    front.submit(BlkifRequest(BLKIF_OP_READ, XVDA, 8, 0, (seg(refs[1]), seg(refs[2]))))
    assert (await front.responses(1))[0].status == BLKIF_RSP_OKAY
    assert len(back._seglists) == 3 and back._pgrants[refs[1]].users == 1
    await dom.detach_disk("xvda")
    assert back.stats.persistent_grants == 0 and back._seglists == {}
    await dom.destroy()


# -- teardown -------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["destroy", "detach"])
async def test_teardown_with_io_in_flight_leaves_nothing_mapped(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
        how: str) -> None:
    disk = DISKS["ram:a"] = PowerLossDisk(1 * MIB)
    DISKS["ram:other"] = RamDisk(1 * MIB)
    other, other_front = await disk_dom(guest_factory, xen_host, "ram:other", name="other")
    dom, front = await disk_dom(guest_factory, xen_host, "ram:a", name="a")
    reqs = []
    for i in range(11):
        ref, _ = front.data_page(readonly=True)
        reqs.append(BlkifRequest(BLKIF_OP_WRITE, XVDA, i, 8 * i, (seg(ref),)))
    disk.pause()  # never completes on its own
    front.submit(*reqs)
    await trio.testing.wait_all_tasks_blocked()
    back = back_of(xen_host, dom)
    assert back.stats.in_flight == 11
    if how == "destroy":
        await dom.destroy()
    else:
        await dom.detach_disk("xvda")  # the drain times out, then the I/O is cancelled
        await dom.destroy()
    assert back.stats.in_flight == 0 and back._req_handles == set()
    assert xen_host.kernel.backends.instance("vbd", dom.domid, XVDA) is None
    await roundtrip(other_front)
    await other.destroy()
    # the fixture's leak check: no grant pins, maptrack entries, ports or tasks left


async def test_image_that_cannot_be_opened_fails_that_device_only(
        guest_factory: GuestFactory, xen_host: Host, tmp_path: Any) -> None:
    DISKS["ram:other"] = RamDisk(1 * MIB)
    other, other_front = await disk_dom(guest_factory, xen_host, "ram:other", name="other")
    missing = str(tmp_path / "missing.img")
    # The backend reports the failed hotplug step (Closing, hotplug-error);
    # the toolstack then fails the whole create and unwinds it, as libxl does.
    with pytest.raises(ConfigError, match=r"missing\.img"):
        await guest_factory(idle_guest, name="broken",
                            disks=[DiskSpec(vdev="xvda", target=missing)])
    assert [row.name for row in xen_host.list()] == ["Domain-0", "other"]
    with pytest.raises(ConfigError, match=r"missing\.img"):
        await other.attach_disk(DiskSpec(vdev="xvdb", target=missing))
    await roundtrip(other_front)
    await other.destroy()


@pytest.mark.parametrize(("key", "value"), [("protocol", "x86_32-abi"),
                                            ("protocol", "arm-abi"),
                                            ("ring-page-order", "5"),
                                            ("ring-ref", "99999"),
                                            ("event-channel", "junk"),
                                            ("multi-queue-num-queues", "2")])
async def test_bad_frontend_keys_fail_that_device(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
        monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> None:
    DISKS["ram:a"] = RamDisk(1 * MIB)
    monkeypatch.setattr(RawBlkFront, "keys", {key: value})
    dom = await guest_factory(idle_guest, name="bad",
                              disks=[DiskSpec(vdev="xvda", target="ram:a")])
    await dom.console.wait_for("up")
    await trio.testing.wait_all_tasks_blocked()
    bpath = f"/local/domain/0/backend/vbd/{dom.domid}/{XVDA}"
    assert await xen_host.kernel.xs.read(f"{bpath}/state") in (b"5", b"6")
    back = xen_host.kernel.backends.instance("vbd", dom.domid, XVDA)
    assert back is None or back.workers_started == 0
    monkeypatch.setattr(RawBlkFront, "keys", {})
    DISKS["ram:b"] = RamDisk(1 * MIB)
    _good, good_front = await disk_dom(guest_factory, xen_host, "ram:b", name="good")
    await roundtrip(good_front)
    await dom.destroy()


async def test_hotplug_disk_attach_and_detach(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    DISKS["ram:a"] = RamDisk(1 * MIB)
    DISKS["ram:b"] = RamDisk(1 * MIB)

    async def waits_for_xvdb(guest: Any) -> None:
        await guest.console.print("up")
        await wait_disk(guest, XVDB)
        await guest.console.print("xvdb ready")
        await trio.sleep_forever()

    dom = await guest_factory(waits_for_xvdb, name="hp",
                              disks=[DiskSpec(vdev="xvda", target="ram:a")])
    await dom.console.wait_for("up")
    assert await dom.attach_disk(DiskSpec(vdev="xvdb", target="ram:b")) == XVDB
    await dom.console.wait_for("xvdb ready")
    front = front_of(xen_host, dom, XVDB)
    ref, view = front.data_page(readonly=True)
    view[:] = b"H" * 4096
    front.submit(BlkifRequest(BLKIF_OP_WRITE, XVDB, 1, 0, (seg(ref),)))
    assert (await front.responses(1))[0].status == BLKIF_RSP_OKAY
    assert DISKS["ram:b"].snapshot()[:4096] == b"H" * 4096  # type: ignore[attr-defined]
    await dom.detach_disk("xvdb")
    assert xen_host.kernel.backends.instance("vbd", dom.domid, XVDB) is None
    assert xen_host.kernel.backends.instance("vbd", dom.domid, XVDA) is not None
    await dom.destroy()
