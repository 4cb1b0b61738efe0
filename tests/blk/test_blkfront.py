"""blkfront against a scripted backend built from ring/ (tests/blk/_scripted.py).

Each test fills CONFIGS for its disks, boots a guest whose program does the
I/O and records outcomes, and checks the frontend, the backend's view and the
ramdisk. The xen_host fixture's leak check runs after every test.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from dom0.host import DomainHandle, Host
from dom0.testing import GuestFactory
from dom0.toolstack.builder import DeviceRequest
from domu.blockdev import BlockDeviceError, RangeLock
from domu.frontends.blkfront import BlkFront
from domu.guest import Guest
from hypervisor.memory import P2M, GuestMemory, MachineMemory, PageFault
from hypervisor.types import PAGE_SIZE, DomId, Gfn
from ring.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
    VDISK_READONLY,
    BlkifResponse,
    make_response,
)
from tests.blk._scripted import CONFIGS, INSTANCES, BackConfig, ScriptBack, raw_put

XVDA, XVDB = 51712, 51728


@pytest.fixture
def xen_host_options() -> dict[str, Any]:
    return {"backend_drivers": {"vbd": ScriptBack}, "frontend_drivers": {"vbd": BlkFront}}


@pytest.fixture(autouse=True)
def _fresh_configs() -> Iterator[None]:
    CONFIGS.clear()
    INSTANCES.clear()
    yield
    CONFIGS.clear()
    INSTANCES.clear()


def vbd(devid: int) -> DeviceRequest:
    return DeviceRequest("vbd", devid, backend={"dev": "xvd", "mode": "w"},
                         frontend={"virtual-device": str(devid), "device-type": "disk"})


Program = Callable[[Guest], Awaitable[None]]


async def run_guest(guest_factory: GuestFactory, program: Program,
                    devids: tuple[int, ...] = (XVDA,), **cfg: Any) -> DomainHandle:
    """Run ``program`` to completion (it must print 'done'); the guest then idles."""

    async def main(guest: Guest) -> None:
        await program(guest)
        await guest.console.print("done")
        await trio.sleep_forever()

    dom = await guest_factory(main, devices=[vbd(d) for d in devids], **cfg)
    try:
        await dom.console.wait_for("done", timeout=60)
    except TimeoutError:
        raise AssertionError(dom.console.log().decode()) from None
    return dom


async def wait_front_closed(host: Host, dom: DomainHandle, devid: int = XVDA) -> None:
    """Wait (<= 10 s) until the frontend's state reads Closing or Closed."""
    path = f"/local/domain/{dom.domid}/device/vbd/{devid}/state"
    with trio.fail_after(10):
        async with host.kernel.xs.watch(path) as w:
            async for _ in w:
                if await host.kernel.xs.read(path) in (b"5", b"6"):
                    return


def front_of(host: Host, dom: DomainHandle, devid: int = XVDA) -> BlkFront:
    bus = host.guest_kernels[dom.domid].bus
    assert bus is not None
    inst = bus.devices[f"vbd/{devid}"]
    assert isinstance(inst, BlkFront)
    return inst


async def _io_error(coro: Awaitable[Any]) -> int | None:
    try:
        await coro
    except BlockDeviceError as exc:
        return exc.errno
    return None


# --- handshake -------------------------------------------------------------------------


async def test_single_page_handshake_and_roundtrip(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    CONFIGS[XVDA] = BackConfig(size=1 << 20)
    seen: dict[str, Any] = {}

    async def prog(guest: Guest) -> None:
        disk = guest.disk("xvda")
        assert guest.devices["vbd/51712"].disk is disk  # type: ignore[attr-defined]
        seen["size"], seen["ss"], seen["ro"] = disk.size, disk.sector_size, disk.readonly
        await disk.write(4096, b"A" * 8192)
        seen["data"] = await disk.read(4096, 8192)

    dom = await run_guest(guest_factory, prog)
    back = INSTANCES[XVDA]
    keys = back.front_keys
    assert keys["ring-ref"] is not None and keys["ring-page-order"] is None
    assert keys["protocol"] == b"x86_64-abi" and keys["feature-persistent"] == b"1"
    assert keys["event-channel"] is not None
    fpath = f"/local/domain/{dom.domid}/device/vbd/{XVDA}"
    assert await xen_host.kernel.xs.read(f"{fpath}/state") == b"4"
    assert seen == {"size": 1 << 20, "ss": 512, "ro": False, "data": b"A" * 8192}
    assert back.disk.snapshot()[4096:12288] == b"A" * 8192
    front = front_of(xen_host, dom)
    assert front.ring is not None and front.ring.size == 32 and front.persistent


async def test_multi_page_ring_many_in_flight(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    image = os.urandom(1 << 20)
    CONFIGS[XVDA] = BackConfig(initial=image, probe_keys={"max-ring-page-order": "2"})
    results: dict[int, bytes] = {}

    async def prog(guest: Guest) -> None:
        disk = guest.disk("xvda")

        async def one(i: int) -> None:
            results[i] = await disk.read(i * 4096, 4096)

        async with trio.open_nursery() as n:
            for i in range(64):
                n.start_soon(one, i)

    dom = await run_guest(guest_factory, prog)
    back = INSTANCES[XVDA]
    assert back.front_keys["ring-page-order"] == b"2"
    assert all(back.front_keys[f"ring-ref{i}"] is not None for i in range(4))
    assert back.front_keys["ring-ref"] is None
    front = front_of(xen_host, dom)
    assert front.ring is not None and front.ring.size == 128
    assert back.max_outstanding > 32  # more than a one-page ring could hold
    assert all(results[i] == image[i * 4096:(i + 1) * 4096] for i in range(64))


async def test_ring_order_capped_by_frontend(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    CONFIGS[XVDA] = BackConfig(probe_keys={"max-ring-page-order": "9"})

    async def prog(guest: Guest) -> None:
        await guest.disk("xvda").write(0, b"z" * 512)

    dom = await run_guest(guest_factory, prog)
    assert INSTANCES[XVDA].front_keys["ring-page-order"] == b"4"
    assert front_of(xen_host, dom).ring.size == 512  # type: ignore[union-attr]


async def test_missing_sector_size_is_fatal(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    class NoSectorSize(ScriptBack):
        async def connect(self) -> None:
            await self.write_key("sectors", "2048")
            await self.write_key("info", "0")
            self.start_worker(self._serve)

    xen_host.kernel.backends.drivers["vbd"] = NoSectorSize
    outcome: dict[str, int | None] = {}

    async def prog(guest: Guest) -> None:
        with trio.move_on_after(5):
            outcome["read"] = await _io_error(guest.disk("xvda").read(0, 512))

    dom = await run_guest(guest_factory, prog)
    assert outcome["read"] == errno.ENODEV
    await wait_front_closed(xen_host, dom)


# --- data path --------------------------------------------------------------------------


async def test_indirect_descriptors(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    CONFIGS[XVDA] = BackConfig(size=4 << 20,
                               probe_keys={"feature-max-indirect-segments": "256"})
    data = os.urandom(256 << 10)
    got: dict[str, bytes] = {}

    async def prog(guest: Guest) -> None:
        disk = guest.disk("xvda")
        await disk.write(1 << 20, data)
        got["r"] = await disk.read(1 << 20, len(data))

    dom = await run_guest(guest_factory, prog)
    back = INSTANCES[XVDA]
    front = front_of(xen_host, dom)
    assert front.segs_per_request == 32  # Linux's default cap on the backend's 256
    assert back.indirect == 4  # 256 KiB = 2 writes + 2 reads of 32 segments
    assert (BLKIF_OP_WRITE, 32) in back.ops and (BLKIF_OP_READ, 32) in back.ops
    assert got["r"] == data
    assert back.disk.snapshot()[1 << 20:(1 << 20) + len(data)] == data


async def test_thirty_two_one_mib_requests_in_flight(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """32 MiB of data pages buy 32 ids of 256 segments (their indirect pages
    come on top), so 32 readers never queue for an id."""
    monkeypatch.setattr(BlkFront, "max_indirect_segments", 256)  # 1 MiB requests
    CONFIGS[XVDA] = BackConfig(size=4 << 20, probe_keys={"feature-max-indirect-segments": "256",
                                                        "max-ring-page-order": "4"})
    seen: dict[str, Any] = {}

    async def prog(guest: Guest) -> None:
        front = guest.devices["vbd/51712"]
        seen["segs"] = front.segs_per_request  # type: ignore[attr-defined]
        seen["ids"] = front._ids.size  # type: ignore[attr-defined]

    await run_guest(guest_factory, prog, memory=128)
    assert seen == {"segs": 256, "ids": 32}


async def test_direct_requests_split_at_11_segments(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    CONFIGS[XVDA] = BackConfig()

    async def prog(guest: Guest) -> None:
        await guest.disk("xvda").write(0, b"q" * (24 * 4096))

    await run_guest(guest_factory, prog)
    back = INSTANCES[XVDA]
    assert back.ops == [(BLKIF_OP_WRITE, 11), (BLKIF_OP_WRITE, 11), (BLKIF_OP_WRITE, 2)]
    assert back.indirect == 0


async def test_persistent_grants_mapped_once(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    CONFIGS[XVDA] = BackConfig(persistent=True)

    async def prog(guest: Guest) -> None:
        disk = guest.disk("xvda")
        for i in range(20):
            await disk.write(i * 4096, bytes([i]) * 4096)
            assert await disk.read(i * 4096, 4096) == bytes([i]) * 4096

    dom = await run_guest(guest_factory, prog)
    back = INSTANCES[XVDA]
    front = front_of(xen_host, dom)
    assert front.persistent and back.persistent
    assert set(back.maps.values()) == {1}  # every gref mapped exactly once
    assert len(back.maps) <= 2  # sequential I/O reuses one id's page
    assert front.deferred == [] and front.broken is None


async def test_non_persistent_grants_ended_and_readonly_for_writes(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    CONFIGS[XVDA] = BackConfig(persistent=False)
    free: dict[str, int] = {}

    async def prog(guest: Guest) -> None:
        disk = guest.disk("xvda")
        front = guest.devices["vbd/51712"]
        free["before"] = front.grants.free_count  # type: ignore[attr-defined]
        for i in range(5):
            await disk.write(i * 8192, b"w" * 8192)
            assert await disk.read(i * 8192, 8192) == b"w" * 8192
        free["after"] = front.grants.free_count  # type: ignore[attr-defined]

    dom = await run_guest(guest_factory, prog)
    back = INSTANCES[XVDA]
    front = front_of(xen_host, dom)
    assert not front.persistent
    assert free["after"] == free["before"]  # every per-request grant ended
    assert not back.rw_map_of_write_ok  # writes were granted read-only
    assert sum(back.maps.values()) == 20  # 2 pages x (5 writes + 5 reads)


async def test_unaligned_io_and_concurrent_rmw(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    image = bytearray(os.urandom(1 << 20))
    CONFIGS[XVDA] = BackConfig(initial=bytes(image))
    expect = bytearray(image)
    rng = random.Random(7)
    writes = []
    for _ in range(40):  # unaligned writes, many overlapping the same sectors
        off = rng.randrange(0, 64 * 512)
        data = bytes([rng.randrange(256)]) * rng.randrange(1, 700)
        writes.append((off, data))
    singles = [(3 * 512 + k * 37, bytes([k])) for k in range(12)]  # one sector, 12 writers
    got: dict[str, bytes] = {}

    async def prog(guest: Guest) -> None:
        disk = guest.disk("xvda")
        async with trio.open_nursery() as n:
            for off, data in singles:
                n.start_soon(disk.write, off, data)
        for off, data in writes:
            await disk.write(off, data)
        got["head"] = await disk.read(0, 64 * 512 + 700)
        got["odd"] = await disk.read(513, 3)
        got["tail"] = await disk.read((1 << 20) - 5, 5)
        got["empty"] = await disk.read(100, 0)

    for off, data in singles + writes:
        expect[off:off + len(data)] = data
    await run_guest(guest_factory, prog)
    assert got["head"] == bytes(expect[:64 * 512 + 700])
    assert got["odd"] == bytes(expect[513:516])
    assert got["tail"] == bytes(expect[-5:]) and got["empty"] == b""
    assert INSTANCES[XVDA].disk.snapshot() == bytes(expect)


async def test_range_errors_and_readonly_disk(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    CONFIGS[XVDA] = BackConfig(info=VDISK_READONLY)
    out: dict[str, Any] = {}

    async def prog(guest: Guest) -> None:
        disk = guest.disk("xvda")
        out["ro"] = disk.readonly
        out["w"] = await _io_error(disk.write(0, b"x"))
        out["past"] = await _io_error(disk.read(disk.size - 1, 2))
        out["neg"] = await _io_error(disk.read(-1, 1))
        out["ok"] = await disk.read(disk.size - 1, 1)

    await run_guest(guest_factory, prog)
    assert out == {"ro": True, "w": errno.EROFS, "past": errno.EINVAL, "neg": errno.EINVAL,
                   "ok": b"\0"}
    assert INSTANCES[XVDA].ops == [(BLKIF_OP_READ, 1)]


async def test_file_adapter(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    CONFIGS[XVDA] = BackConfig(size=64 << 10)
    out: dict[str, Any] = {}

    async def prog(guest: Guest) -> None:
        disk = guest.disk(XVDA)
        async with disk.open("r+b") as f:
            f.seek(1000)
            assert await f.write(b"hello world") == 11
            out["tell"] = f.tell()
            f.seek(-11, os.SEEK_CUR)
            out["read"] = await f.read(5)
            f.seek(-3, os.SEEK_END)
            out["end"] = await f.read(10)
            out["eof"] = await f.read(1)
            out["nospace"] = await _io_error(f.write(b"1234"))
            await f.flush()
        async with disk.open("rb") as f:
            out["ro"] = await _io_error(f.write(b"x"))
        with pytest.raises(ValueError):
            disk.open("rt")

    await run_guest(guest_factory, prog)
    assert out == {"tell": 1011, "read": b"hello", "end": b"\0\0\0", "eof": b"",
                   "nospace": errno.ENOSPC, "ro": errno.EBADF}
    assert INSTANCES[XVDA].disk.snapshot()[1000:1011] == b"hello world"


# --- response status --------------------------------------------------------------------


async def test_error_status_fails_that_request_only(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    def bad_sector(back: ScriptBack, req: Any, rsp: BlkifResponse) -> list[BlkifResponse] | None:
        if getattr(req, "sector_number", None) == 16 and req.operation == BLKIF_OP_READ:
            return [rsp._replace(status=BLKIF_RSP_ERROR)]
        return None

    CONFIGS[XVDA] = BackConfig(script=bad_sector)
    out: dict[str, Any] = {}

    async def prog(guest: Guest) -> None:
        disk = guest.disk("xvda")
        out["bad"] = await _io_error(disk.read(16 * 512, 512))
        await disk.write(0, b"k" * 512)
        out["good"] = await disk.read(0, 512)
        out["bad2"] = await _io_error(disk.read(16 * 512 + 3, 1))

    dom = await run_guest(guest_factory, prog)
    assert out == {"bad": errno.EIO, "good": b"k" * 512, "bad2": errno.EIO}
    front = front_of(xen_host, dom)
    assert front.broken is None and front.stats["errors"] == 2


async def test_flush_and_discard_eopnotsupp_turn_the_feature_off(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    def refuse(back: ScriptBack, req: Any, rsp: BlkifResponse) -> list[BlkifResponse] | None:
        if req.operation in (BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_DISCARD):
            return [rsp._replace(status=BLKIF_RSP_EOPNOTSUPP)]
        return None

    feats = {"feature-flush-cache": "1", "feature-discard": "1"}
    CONFIGS[XVDA] = BackConfig(probe_keys=feats, script=refuse)
    CONFIGS[XVDB] = BackConfig(probe_keys=feats)
    out: dict[str, Any] = {}

    async def prog(guest: Guest) -> None:
        disk, other = guest.disk("xvda"), guest.disk("xvdb")
        out["flush1"] = await _io_error(disk.flush())
        out["flush2"] = await _io_error(disk.flush())
        out["discard1"] = await _io_error(disk.discard(0, 8192))
        out["discard2"] = await _io_error(disk.discard(0, 8192))
        await other.write(0, b"d" * 8192)
        out["other_flush"] = await _io_error(other.flush())
        out["other_discard"] = await _io_error(other.discard(100, 8192))  # rounds inwards
        out["after"] = await other.read(0, 1024)

    dom = await run_guest(guest_factory, prog, devids=(XVDA, XVDB))
    assert out == {"flush1": errno.EOPNOTSUPP, "flush2": None, "discard1": errno.EOPNOTSUPP,
                   "discard2": errno.EOPNOTSUPP, "other_flush": None, "other_discard": None,
                   "after": b"d" * 512 + b"\0" * 512}
    a = front_of(xen_host, dom, XVDA)
    assert not a.feature_flush and not a.feature_discard and a.broken is None
    assert INSTANCES[XVDA].ops == [(BLKIF_OP_FLUSH_DISKCACHE, 0), (BLKIF_OP_DISCARD, 16)]
    assert (BLKIF_OP_DISCARD, 15) in INSTANCES[XVDB].ops


# --- hostile backends (XSA-376/391/396) --------------------------------------------------


def _hostile(mode: str) -> Any:
    """Hold the read of sector 0; answer the read of sector 8 with ``mode``'s lie."""

    def script(back: ScriptBack, req: Any, rsp: BlkifResponse) -> list[BlkifResponse] | None:
        if req.operation != BLKIF_OP_READ:
            return None
        if req.sector_number == 0:
            return []  # held: must fail with EIO once the device breaks
        if req.sector_number != 8:
            return None
        if mode == "id_out_of_range":
            return [rsp._replace(id=10**9)]
        if mode == "id_not_in_flight":
            return [rsp._replace(id=req.id + 5)]
        if mode == "duplicate":
            return [rsp, rsp]
        if mode == "wrong_op":
            return [rsp._replace(operation=BLKIF_OP_WRITE)]
        if mode == "rsp_prod_far_ahead":
            back.ring.rsp_prod_pvt = (back.ring.rsp_prod_pvt + 1000) & 0xFFFFFFFF
            return []
        raise AssertionError(mode)

    return script


@pytest.mark.parametrize("mode", ["id_out_of_range", "id_not_in_flight", "duplicate",
                                  "wrong_op", "rsp_prod_far_ahead"])
async def test_hostile_response_breaks_only_that_device(
        mode: str, autojump_clock: MockClock, guest_factory: GuestFactory,
        xen_host: Host) -> None:
    CONFIGS[XVDA] = BackConfig(script=_hostile(mode))
    CONFIGS[XVDB] = BackConfig()
    out: dict[str, Any] = {}

    async def prog(guest: Guest) -> None:
        disk, other = guest.disk("xvda"), guest.disk("xvdb")

        async def read(name: str, off: int) -> None:
            out[name] = await _io_error(disk.read(off, 512))

        async with trio.open_nursery() as n:
            n.start_soon(read, "held", 0)
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(read, "lied", 8 * 512)
        out["later"] = await _io_error(disk.read(4096 * 4, 512))
        out["later_write"] = await _io_error(disk.write(0, b"x"))
        await other.write(512, b"still here")
        out["other"] = await other.read(512, 10)

    dom = await run_guest(guest_factory, prog, devids=(XVDA, XVDB))
    assert out["held"] == errno.EIO
    # a duplicate is only noticed after the first copy completed the read
    assert out["lied"] == (None if mode == "duplicate" else errno.EIO)
    assert out["later"] == errno.EIO and out["later_write"] == errno.EIO
    assert out["other"] == b"still here"
    front = front_of(xen_host, dom, XVDA)
    assert front.broken is not None
    assert dom.state == "running"
    await wait_front_closed(xen_host, dom)
    assert front_of(xen_host, dom, XVDB).broken is None


async def test_backend_keeping_a_page_mapped(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    CONFIGS[XVDA] = BackConfig(persistent=False, keep_mapped=True)
    out: dict[str, Any] = {}

    async def prog(guest: Guest) -> None:
        disk = guest.disk("xvda")
        out["w"] = await _io_error(disk.write(0, b"m" * 4096))
        front = guest.devices["vbd/51712"]
        out["deferred"] = [(ref, page.gfn) for ref, page in front.deferred]  # type: ignore[attr-defined]
        out["again"] = await _io_error(disk.write(0, b"n" * 4096))

    dom = await run_guest(guest_factory, prog)
    # the write itself reached the disk, but the grant was not released: protocol error
    assert out["w"] is None or out["w"] == errno.EIO
    assert out["again"] == errno.EIO
    assert len(out["deferred"]) == 1
    ref, gfn = out["deferred"][0]
    kernel = xen_host.guest_kernels[dom.domid]
    assert kernel.bus is not None
    assert gfn not in kernel.bus.pages._free  # never freed while the backend maps it
    front = front_of(xen_host, dom)
    assert front.broken == "backend has not unmapped a grant"
    await wait_front_closed(xen_host, dom)
    assert front.deferred == []  # handed to the base class at disconnect...
    assert any(r == ref for r, _ in front.pending_grants)  # ...which keeps trying
    assert gfn not in kernel.bus.pages._free


async def test_response_slot_rewritten_after_consumption(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    """Fields the backend changes after the frontend copied a response are never re-read."""
    CONFIGS[XVDA] = BackConfig()
    out: dict[str, Any] = {}

    async def prog(guest: Guest) -> None:
        disk = guest.disk("xvda")
        await disk.write(0, b"r" * 512)
        back = INSTANCES[XVDA]
        for k in range(back.ring.size):  # scribble over every response slot
            back.ring.sring.write_slot(k, b"\xff" * 16)
        out["r"] = await disk.read(0, 512)

    dom = await run_guest(guest_factory, prog)
    assert out["r"] == b"r" * 512 and front_of(xen_host, dom).broken is None


# --- teardown ---------------------------------------------------------------------------


async def test_unplug_fails_in_flight_and_later_io(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    def hold_far(back: ScriptBack, req: Any, rsp: BlkifResponse) -> list[BlkifResponse] | None:
        return [] if getattr(req, "sector_number", 0) == 800 else None

    CONFIGS[XVDA] = BackConfig(script=hold_far)
    out: dict[str, Any] = {}
    ready = trio.Event()
    finished = trio.Event()

    async def prog(guest: Guest) -> None:
        disk = guest.disk("xvda")
        await disk.write(0, b"p" * 512)

        async def held() -> None:
            out["held"] = await _io_error(disk.read(800 * 512, 512))

        async with trio.open_nursery() as n:
            n.start_soon(held)
            await trio.testing.wait_all_tasks_blocked()
            ready.set()
        out["later"] = await _io_error(disk.read(0, 512))
        finished.set()

    dom = await guest_factory(prog, devices=[vbd(XVDA)])
    await ready.wait()
    await dom.detach_device("vbd", XVDA)
    with trio.fail_after(10):
        await finished.wait()
    assert out == {"held": errno.ENODEV, "later": errno.ENODEV}


async def test_unplug_with_an_answered_read_not_yet_copied(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    """A two-request read: the first part is answered (its id held until the
    caller copies), the second never is; unplugging copies the first part out
    before the pages are freed, and the caller gets ENODEV."""
    def hold_second(back: ScriptBack, req: Any, rsp: BlkifResponse,
                    ) -> list[BlkifResponse] | None:
        return [] if getattr(req, "sector_number", 0) == 88 else None

    CONFIGS[XVDA] = BackConfig(script=hold_second)
    out: dict[str, Any] = {}
    ready = trio.Event()
    finished = trio.Event()

    async def prog(guest: Guest) -> None:
        disk = guest.disk("xvda")
        front = guest.devices["vbd/51712"]

        async def reader() -> None:
            out["err"] = await _io_error(disk.read(0, 88 * 1024))  # 2 x 11 pages

        async with trio.open_nursery() as n:
            n.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            out["held"] = len(front._held)  # type: ignore[attr-defined]
            ready.set()
        out["held_after"] = len(front._held)  # type: ignore[attr-defined]
        finished.set()

    dom = await guest_factory(prog, devices=[vbd(XVDA)])
    await ready.wait()
    await dom.detach_device("vbd", XVDA)
    with trio.fail_after(10):
        await finished.wait()
    assert out == {"held": 1, "err": errno.ENODEV, "held_after": 0}


async def test_reader_that_leaves_before_the_answer_frees_its_id(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    held: list[Any] = []

    def hold(back: ScriptBack, req: Any, rsp: BlkifResponse) -> list[BlkifResponse] | None:
        if getattr(req, "sector_number", 0) == 800:
            held.append(req)
            return []
        return None

    CONFIGS[XVDA] = BackConfig(script=hold)
    out: dict[str, Any] = {}
    answered = trio.Event()
    finished = trio.Event()

    async def prog(guest: Guest) -> None:
        disk = guest.disk("xvda")
        front = guest.devices["vbd/51712"]
        ids = front._ids  # type: ignore[attr-defined]
        free = len(ids._free)
        with trio.move_on_after(1):
            await disk.read(800 * 512, 512)  # never answered in time: cancelled
        out["in_flight"] = free - len(ids._free)
        await answered.wait()
        await trio.testing.wait_all_tasks_blocked()
        out["after"] = free - len(ids._free)
        out["held"] = len(front._held)  # type: ignore[attr-defined]
        out["read"] = await disk.read(0, 512)
        finished.set()
        await trio.sleep_forever()

    dom = await guest_factory(prog, devices=[vbd(XVDA)])
    with trio.fail_after(10):
        while not held or "in_flight" not in out:
            await trio.sleep(0.1)
    back = INSTANCES[XVDA]
    raw_put(back.ring, make_response(held[0], BLKIF_RSP_OKAY))  # the late answer
    if back.ring.push_responses_and_check_notify():
        back.hc.evtchn_send(back.port)
    answered.set()
    with trio.fail_after(10):
        await finished.wait()
    assert out == {"in_flight": 1, "after": 0, "held": 0, "read": bytes(512)}
    assert front_of(xen_host, dom).broken is None


async def test_pages_that_are_not_machine_contiguous_are_copied_page_by_page(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
        monkeypatch: pytest.MonkeyPatch) -> None:
    CONFIGS[XVDA] = BackConfig(probe_keys={"feature-max-indirect-segments": "256"})
    monkeypatch.setattr(GuestMemory, "span", lambda self, gfn, count: None)
    data = os.urandom(128 * 1024 + 1536)
    got: dict[str, bytes] = {}

    async def prog(guest: Guest) -> None:
        disk = guest.disk("xvda")
        await disk.write(4096, data)
        got["r"] = await disk.read(4096, len(data))  # 32 + 2 pages, the last one partial

    await run_guest(guest_factory, prog)
    assert got["r"] == data
    assert INSTANCES[XVDA].disk.snapshot()[4096:4096 + len(data)] == data


def test_guest_memory_span_of_contiguous_pages() -> None:
    m = MachineMemory(16 * PAGE_SIZE)
    p2m = P2M()
    mfns = m.alloc(DomId(1), 4)
    (foreign,) = m.alloc(DomId(2), 1)
    for i, mfn in enumerate(mfns):
        p2m.set(Gfn(i), mfn)
    gm = GuestMemory(m, DomId(1), p2m)
    for i in range(4):
        gm.write(Gfn(i), 0, bytes([i + 1]) * PAGE_SIZE)
    span = gm.span(Gfn(1), 3)
    assert span is not None and not span.readonly
    assert bytes(span) == b"".join(bytes([i + 1]) * PAGE_SIZE for i in range(1, 4))
    span[:3] = b"abc"
    assert gm.read(Gfn(1), 0, 3) == b"abc"
    p2m.set(Gfn(5), mfns[0])  # gfns 4..5: a hole, then a frame out of order
    with pytest.raises(PageFault):
        gm.span(Gfn(3), 3)  # gfn 4 is not populated
    p2m.set(Gfn(4), mfns[3])
    assert gm.span(Gfn(3), 3) is None  # populated, but not machine-contiguous
    p2m.set(Gfn(6), foreign)
    with pytest.raises(PageFault, match="not owned"):
        gm.span(Gfn(5), 2)
    with pytest.raises(ValueError):
        gm.span(Gfn(0), 0)
    with pytest.raises(IndexError):
        m.frames(m.nr_frames - 1, 2)


# --- the range lock ---------------------------------------------------------------------


async def test_range_lock_serialises_overlaps_fifo() -> None:
    lock = RangeLock()
    order: list[str] = []

    async def user(name: str, s: int, e: int, hold: float) -> None:
        async with lock.hold(s, e):
            order.append(f"+{name}")
            await trio.sleep(hold)
            order.append(f"-{name}")

    async with trio.open_nursery() as n:
        n.start_soon(user, "a", 0, 10, 0.02)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(user, "b", 5, 15, 0.01)  # overlaps a: waits
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(user, "c", 12, 20, 0.01)  # overlaps only waiter b: FIFO, waits
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(user, "d", 30, 40, 0.001)  # disjoint: runs at once
    assert order.index("+d") < order.index("-a")
    assert order.index("-a") < order.index("+b") < order.index("-b") < order.index("+c")
    assert lock.held == 0
