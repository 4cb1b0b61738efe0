"""blkfront end to end with the real blkback and a raw image file in dom0.

Real threads do the file I/O, so these tests run on the real clock (an autojump
clock would fire every timeout while a worker thread is busy).
"""
from __future__ import annotations

import errno
import hashlib
from pathlib import Path
from typing import Any

import pytest
import trio

from dom0.backends.blkback import BlkBack
from dom0.host import DomainHandle, Host
from dom0.testing import GuestFactory
from dom0.toolstack.config import DiskSpec
from domu.blockdev import BlockDeviceError
from domu.frontends.blkfront import BlkFront
from domu.guest import Guest

MIB = 1 << 20


@pytest.fixture
def xen_host_options() -> dict[str, Any]:
    return {"backend_drivers": {"vbd": BlkBack}}


def image(tmp_path: Path, name: str, size: int) -> str:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def pattern(offset: int, length: int) -> bytes:
    """Bytes that differ per 4 KiB block (so misplaced blocks are caught)."""
    out = bytearray()
    block = offset // 4096
    while len(out) < length:
        out += hashlib.sha256(block.to_bytes(8, "little")).digest() * 128
        block += 1
    return bytes(out[:length])


async def run(guest_factory: GuestFactory, program: Any, disks: list[DiskSpec],
              **cfg: Any) -> DomainHandle:
    async def main(guest: Guest) -> None:
        await program(guest)
        await guest.console.print("done")
        await trio.sleep_forever()

    dom = await guest_factory(main, disks=disks, **cfg)
    try:
        await dom.console.wait_for("done", timeout=120)
    except TimeoutError:
        raise AssertionError(dom.console.log().decode()) from None
    return dom


async def test_whole_disk_pattern_write_read_flush(
        guest_factory: GuestFactory, xen_host: Host,
        tmp_path: Path) -> None:
    size = 8 * MIB
    path = image(tmp_path, "a.img", size)
    out: dict[str, Any] = {}

    async def prog(guest: Guest) -> None:
        disk = guest.disk("xvda")
        out["size"] = disk.size
        step = MIB + 4096  # not a multiple of the request size: uneven splits
        async with trio.open_nursery() as n:  # several writers at once
            for off in range(0, size, step):
                n.start_soon(disk.write, off, pattern(off, min(step, size - off)))
        await disk.flush()
        ok = True
        for off in range(0, size, MIB):
            ok &= await disk.read(off, MIB) == pattern(off, MIB)
        out["readback"] = ok
        await disk.write(12345, b"unaligned!")  # read-modify-write through blkback
        out["rmw"] = await disk.read(12340, 20)
        await disk.flush()

    dom = await run(guest_factory, prog, [DiskSpec(vdev="xvda", target=path)], memory=32)
    front = xen_host.guest_kernels[dom.domid].bus.devices["vbd/51712"]  # type: ignore[union-attr]
    assert isinstance(front, BlkFront)
    assert front.persistent and front.segs_per_request == 32 and front.ring is not None
    assert front.ring.size == 512  # blkback offers order 4
    assert out["size"] == size and out["readback"]
    expect = bytearray(pattern(0, size))
    expect[12345:12355] = b"unaligned!"
    assert out["rmw"] == bytes(expect[12340:12360])
    with open(path, "rb") as f:
        assert f.read() == bytes(expect)
    assert front.broken is None and front.stats["errors"] == 0


async def test_two_disks_readonly_and_unplug(
        guest_factory: GuestFactory, xen_host: Host,
        tmp_path: Path) -> None:
    a = image(tmp_path, "a.img", 2 * MIB)
    b = image(tmp_path, "b.img", MIB)
    with open(b, "r+b") as f:
        f.write(b"read me")
    out: dict[str, Any] = {}
    unplugged = trio.Event()
    finished = trio.Event()

    async def prog(guest: Guest) -> None:
        disk, ro = guest.disk("xvda"), guest.disk("xvdb")
        out["ro"] = ro.readonly
        out["ro_read"] = await ro.read(0, 7)
        try:
            await ro.write(0, b"x")
        except BlockDeviceError as exc:
            out["ro_write"] = exc.errno
        await disk.write(0, b"before unplug")
        await guest.console.print("wrote")
        await unplugged.wait()
        try:
            await disk.read(0, 13)
        except BlockDeviceError as exc:
            out["after"] = exc.errno
        out["ro_still"] = await ro.read(0, 7)
        finished.set()

    dom = await guest_factory(prog, memory=8, disks=[DiskSpec(vdev="xvda", target=a),
                                                     DiskSpec(vdev="xvdb", target=b,
                                                              access="ro")])
    await dom.console.wait_for("wrote", timeout=60)
    await dom.detach_disk("xvda")
    unplugged.set()
    with trio.fail_after(30):
        await finished.wait()
    assert out == {"ro": True, "ro_read": b"read me", "ro_write": errno.EROFS,
                   "after": errno.ENODEV, "ro_still": b"read me"}
    with open(a, "rb") as f:
        assert f.read(13) == b"before unplug"
