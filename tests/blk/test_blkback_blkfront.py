"""End to end: blkback serving the real blkfront (domu/frontends/blkfront.py)."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from dom0.host import Host
from dom0.native.disk import RamDisk
from dom0.testing import GuestFactory
from dom0.toolstack.config import DiskSpec
from domu.frontends.blkfront import BlkFront
from domu.guest import Guest
from tests.blk.rawfront import DISKS, XVDA, RamBlkBack

MIB = 1 << 20


@pytest.fixture
def xen_host_options() -> dict[str, Any]:
    return {"backend_drivers": {"vbd": RamBlkBack}, "frontend_drivers": {"vbd": BlkFront}}


@pytest.fixture(autouse=True)
def _disks() -> Iterator[None]:
    DISKS.clear()
    yield
    DISKS.clear()


async def test_guest_program_reads_writes_flushes_discards(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    disk = DISKS["ram:a"] = RamDisk(4 * MIB)
    big = bytes(range(256)) * 256  # 64 KiB: 16 pages, an indirect request

    async def program(guest: Guest) -> None:
        d = guest.disk("xvda")
        await d.write(1000, b"hello blkback")
        await d.write(8192, big)
        await d.flush()
        assert await d.read(1000, 13) == b"hello blkback"
        assert await d.read(8192, len(big)) == big
        await d.discard(MIB, 4096)
        await guest.console.print("disk ok")
        await trio.sleep_forever()

    dom = await guest_factory(program, name="e2e",
                              disks=[DiskSpec(vdev="xvda", target="ram:a")])
    await dom.console.wait_for("disk ok")
    img = disk.snapshot()
    assert img[1000:1013] == b"hello blkback" and img[8192:8192 + len(big)] == big
    back = xen_host.kernel.backends.instance("vbd", dom.domid, XVDA)
    assert back is not None
    st = back.stats  # type: ignore[attr-defined]
    assert st.invalid == st.io_errors == st.eopnotsupp == 0
    assert st.requests.get("flush", 0) + st.requests.get("barrier", 0) >= 1
    assert st.bytes_written >= len(big)
    await dom.destroy()


async def test_readonly_disk_gives_the_guest_erofs(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    disk = DISKS["ram:ro"] = RamDisk(1 * MIB, initial=b"\x10" * MIB)
    seen: list[int] = []

    async def program(guest: Guest) -> None:
        d = guest.disk("xvda")
        assert await d.read(0, 16) == b"\x10" * 16
        try:
            await d.write(0, b"nope")
        except OSError as exc:
            seen.append(exc.errno or 0)
        await guest.console.print("done")
        await trio.sleep_forever()

    dom = await guest_factory(program, name="ro",
                              disks=[DiskSpec(vdev="xvda", target="ram:ro", access="ro")])
    await dom.console.wait_for("done")
    assert seen == [errno.EROFS]
    assert disk.snapshot() == b"\x10" * MIB
    await dom.destroy()
