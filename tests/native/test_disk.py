"""dom0/native/disk.py: image files, ramdisks, errors, flush, discard, threads."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from dom0.native import disk
from dom0.native.disk import (
    BlockIOError,
    FaultRule,
    FaultyDevice,
    IoVec,
    RamDisk,
    open_image,
)

PAGE = 4096
SECTOR = 512


def _segments(mm: mmap.mmap, spec: list[tuple[int, int, int]]) -> list[memoryview]:
    """blkif-style segments: (page, first_sect, last_sect) -> views into ``mm``."""
    view = memoryview(mm)
    return [
        view[page * PAGE + first * SECTOR : page * PAGE + (last + 1) * SECTOR]
        for page, first, last in spec
    ]


def _fill(views: list[memoryview], rng: random.Random) -> bytes:
    data = b""
    for v in views:
        chunk = rng.randbytes(v.nbytes)
        v[:] = chunk
        data += chunk
    return data


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- round trips ------------------------------------------------------------------


async def test_round_trip_odd_sectors_from_mmap_segments(image: Path, image_bytes: bytes) -> None:
    rng = random.Random(1)
    spec = [(0, 3, 7), (1, 0, 0), (2, 1, 6), (3, 0, 7), (5, 7, 7), (6, 2, 2)]
    with mmap.mmap(-1, 8 * PAGE) as src, mmap.mmap(-1, 8 * PAGE) as dst:
        out = _segments(src, spec)
        data = _fill(out, rng)
        inn = _segments(dst, spec)
        offset = 7 * SECTOR  # an odd sector
        async with open_image(image) as dev:
            await dev.writev(offset, out)
            await dev.readv(offset, inn)
            assert b"".join(bytes(v) for v in inn) == data
            assert dev.stats.writes == 1 and dev.stats.reads == 1
            assert dev.stats.bytes_written == dev.stats.bytes_read == len(data)
            del out, inn  # release the mmap views before the mmaps close
    on_disk = image.read_bytes()
    assert on_disk[offset : offset + len(data)] == data
    assert on_disk[:offset] == image_bytes[:offset]
    assert on_disk[offset + len(data) :] == image_bytes[offset + len(data) :]


async def test_many_segments_beyond_iov_max(image: Path) -> None:
    n = 1024 + 476  # more iovecs than one preadv/pwritev accepts
    rng = random.Random(2)
    with mmap.mmap(-1, n * SECTOR) as mm:
        view = memoryview(mm)
        segs = [view[i * SECTOR : (i + 1) * SECTOR] for i in range(n)]
        data = _fill(segs, rng)
        async with open_image(image) as dev:
            await dev.writev(SECTOR, segs)
            back = bytearray(n * SECTOR)
            await dev.readv(SECTOR, [memoryview(back)])
            assert bytes(back) == data
            mm[:] = bytes(n * SECTOR)
            await dev.readv(SECTOR, segs)
            assert bytes(mm) == data
        del segs, view


async def test_large_8mib_io(tmp_path: Path) -> None:
    path = tmp_path / "big.img"
    with open(path, "wb") as f:
        f.truncate(16 << 20)
    data = random.Random(3).randbytes(8 << 20)
    async with open_image(path) as dev:
        assert dev.size == 16 << 20 and dev.sectors == (16 << 20) // SECTOR
        await dev.writev(4 << 20, [memoryview(data)[: 3 << 20], memoryview(data)[3 << 20 :]])
        assert await dev.read(4 << 20, 8 << 20) == data
        assert await dev.read(0, 4096) == bytes(4096)


async def test_short_transfers_are_continued(
    image: Path, image_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_preadv, real_pwritev = os.preadv, os.pwritev
    calls = {"r": 0, "w": 0}

    def short(bufs: list[memoryview], limit: int) -> list[memoryview]:
        out, left = [], limit
        for b in bufs:
            if not left:
                break
            out.append(b[:left])
            left -= min(left, len(b))
        return out

    def preadv(fd: int, bufs: list[memoryview], off: int) -> int:
        calls["r"] += 1
        return real_preadv(fd, short(bufs, 1000), off)

    def pwritev(fd: int, bufs: list[memoryview], off: int) -> int:
        calls["w"] += 1
        return real_pwritev(fd, short(bufs, 777), off)

    monkeypatch.setattr(os, "preadv", preadv)
    monkeypatch.setattr(os, "pwritev", pwritev)
    data = random.Random(4).randbytes(8 * SECTOR)
    async with open_image(image, nowait_reads=False) as dev:
        await dev.writev(SECTOR, [memoryview(data)[:1536], memoryview(data)[1536:]])
        buf = bytearray(len(data))
        await dev.readv(SECTOR, [memoryview(buf)[:512], memoryview(buf)[512:]])
    assert bytes(buf) == data
    assert calls["w"] == -(-len(data) // 777) and calls["r"] == -(-len(data) // 1000)
    assert image.read_bytes()[SECTOR : SECTOR + len(data)] == data


async def test_read_past_eof_of_shrunk_file_returns_zeros(image: Path, image_bytes: bytes) -> None:
    async with open_image(image) as dev:
        os.truncate(image, 3 * SECTOR)  # shrinks under the open device
        got = await dev.read(2 * SECTOR, 4 * SECTOR)
    assert got == image_bytes[2 * SECTOR : 3 * SECTOR] + bytes(3 * SECTOR)


async def test_ramdisk_round_trip_and_discard() -> None:
    dev = RamDisk(64 * SECTOR, initial=b"\xaa" * (64 * SECTOR))
    with mmap.mmap(-1, 2 * PAGE) as mm:
        segs = _segments(mm, [(0, 1, 3), (1, 0, 7)])
        data = _fill(segs, random.Random(5))
        await dev.writev(5 * SECTOR, segs)
        del segs
    assert await dev.read(5 * SECTOR, len(data)) == data
    await dev.discard(5 * SECTOR, 2 * SECTOR)
    assert dev.snapshot()[5 * SECTOR : 7 * SECTOR] == bytes(2 * SECTOR)
    assert dev.snapshot()[7 * SECTOR : 5 * SECTOR + len(data)] == data[2 * SECTOR :]
    assert dev.discard_zeroes_data
    await dev.flush()
    assert (dev.stats.writes, dev.stats.discards, dev.stats.flushes) == (1, 1, 1)


# -- read-only ----------------------------------------------------------------------


async def test_readonly_rejects_writes_and_discards_image_unchanged(image: Path) -> None:
    before = _sha(image)
    async with open_image(image, readonly=True) as dev:
        assert fcntl.fcntl(dev.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        with pytest.raises(BlockIOError) as exc:
            await dev.writev(0, [memoryview(b"\xff" * SECTOR)])
        assert exc.value.errno == errno.EROFS
        with pytest.raises(BlockIOError) as exc:
            await dev.discard(0, 8 * SECTOR)
        assert exc.value.errno == errno.EROFS
        # reads still work and the device is still usable
        assert len(await dev.read(0, SECTOR)) == SECTOR
        assert dev.stats.errors == 2 and dev.stats.errors_by_errno == {errno.EROFS: 2}
    assert _sha(image) == before


async def test_readonly_ramdisk() -> None:
    dev = RamDisk(8 * SECTOR, readonly=True)
    with pytest.raises(BlockIOError) as exc:
        await dev.write(0, b"x" * SECTOR)
    assert exc.value.errno == errno.EROFS
    assert dev.snapshot() == bytes(8 * SECTOR)


# -- flush ----------------------------------------------------------------------------


async def test_flush_runs_fdatasync_after_completed_writes(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, int]] = []
    real_pwritev = os.pwritev

    def pwritev(fd: int, bufs: list[memoryview], off: int) -> int:
        n = real_pwritev(fd, bufs, off)
        events.append(("pwritev", off))
        return n

    def fdatasync(fd: int) -> None:
        events.append(("fdatasync", fd))

    monkeypatch.setattr(os, "pwritev", pwritev)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    async with open_image(image) as dev:
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(dev.write, i * SECTOR, b"w" * SECTOR)
        await dev.flush()
        assert events[-1] == ("fdatasync", dev.fd)
        assert sorted(events[:-1]) == [("pwritev", i * SECTOR) for i in range(4)]
        assert dev.stats.flushes == 1


async def test_flush_error_is_reported(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, "boom")

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    async with open_image(image) as dev:
        with pytest.raises(BlockIOError) as exc:
            await dev.flush()
        assert exc.value.errno == errno.EIO
        assert dev.stats.errors == 1 and dev.stats.flushes == 0


# -- discard --------------------------------------------------------------------------


async def test_discard_punches_a_hole(tmp_path: Path) -> None:
    path = tmp_path / "sparse.img"
    path.write_bytes(random.Random(6).randbytes(4 << 20))
    os.sync()
    async with open_image(path) as dev:
        before = os.fstat(dev.fd).st_blocks
        await dev.discard(1 << 20, 2 << 20)
        after = os.fstat(dev.fd).st_blocks
        assert await dev.read(1 << 20, 2 << 20) == bytes(2 << 20)
        assert await dev.read(0, SECTOR) != bytes(SECTOR)
        mode = dev.discard_mode
        assert dev.stats.discards == 1 and dev.stats.bytes_discarded == 2 << 20
    assert path.stat().st_size == 4 << 20  # FALLOC_FL_KEEP_SIZE
    if mode == "punch":
        assert after <= before - (2 << 20) // 512
    else:  # pragma: no cover - filesystem without hole punching
        pytest.skip("filesystem cannot punch holes; zeroing fallback verified")


async def test_discard_falls_back_to_zeroing(
    image: Path, image_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "no")

    monkeypatch.setattr(disk, "_punch_hole", unsupported)
    async with open_image(image) as dev:
        await dev.discard(3 * SECTOR, 5 * SECTOR)
        assert dev.discard_mode == "zero"
        assert dev.discard_supported and dev.discard_zeroes_data
    data = image.read_bytes()
    assert data[3 * SECTOR : 8 * SECTOR] == bytes(5 * SECTOR)
    assert data[: 3 * SECTOR] == image_bytes[: 3 * SECTOR]
    assert data[8 * SECTOR :] == image_bytes[8 * SECTOR :]


# -- invalid requests --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "offset", "length"),
    [
        ("read", (1 << 20) - SECTOR, 2 * SECTOR),  # crosses the end
        ("read", 1 << 20, SECTOR),  # starts at the end
        ("read", -SECTOR, SECTOR),
        ("read", 1, SECTOR),  # misaligned offset
        ("read", 0, 100),  # misaligned length
        ("write", (1 << 20) - SECTOR, 2 * SECTOR),
        ("write", 3, SECTOR),
        ("discard", 0, (1 << 20) + SECTOR),
        ("discard", SECTOR, 1),
    ],
)
async def test_out_of_range_or_misaligned_is_einval(
    image: Path, op: str, offset: int, length: int
) -> None:
    before = _sha(image)
    async with open_image(image) as dev:
        with pytest.raises(BlockIOError) as exc:
            if op == "read":
                await dev.readv(offset, [memoryview(bytearray(length))])
            elif op == "write":
                await dev.writev(offset, [memoryview(b"\x01" * length)])
            else:
                await dev.discard(offset, length)
        assert exc.value.errno == errno.EINVAL
        assert dev.stats.errors_by_errno == {errno.EINVAL: 1}
        await dev.read(0, SECTOR)  # still serving
    assert _sha(image) == before


async def test_caller_bugs_raise_loudly(image: Path) -> None:
    async with open_image(image) as dev:
        with pytest.raises(TypeError):
            await dev.readv(0, [memoryview(bytes(SECTOR))])  # read-only buffer
        with pytest.raises(TypeError):
            await dev.writev(0, [memoryview(bytearray(2 * SECTOR))[::2]])  # not contiguous
    with pytest.raises(trio.ClosedResourceError):
        await dev.read(0, SECTOR)
    dev.close()  # idempotent


async def test_zero_length_requests_are_no_ops() -> None:
    dev = RamDisk(8 * SECTOR)
    await dev.readv(8 * SECTOR, [])
    await dev.writev(0, [])
    await dev.discard(0, 0)
    assert dev.stats.reads == dev.stats.writes == dev.stats.discards == 1


# -- fault injection ------------------------------------------------------------------------


async def test_injected_eio_fails_only_matching_requests(image: Path, image_bytes: bytes) -> None:
    async with open_image(image) as inner:
        dev = FaultyDevice(inner, [FaultRule("write", 64 * SECTOR, 128 * SECTOR, errno.EIO)])
        results: dict[int, int | None] = {}

        async def one(sector: int) -> None:
            try:
                await dev.write(sector * SECTOR, b"\x5a" * (4 * SECTOR))
                results[sector] = None
            except BlockIOError as exc:
                results[sector] = exc.errno

        async with trio.open_nursery() as nursery:
            for sector in (0, 62, 64, 100, 127, 128, 200):
                nursery.start_soon(one, sector)
        assert results == {
            0: None,
            62: errno.EIO,  # overlaps the faulty range
            64: errno.EIO,
            100: errno.EIO,
            127: errno.EIO,
            128: None,
            200: None,
        }
        assert dev.injected == 4 and dev.stats.errors == 4 and dev.stats.writes == 3
        assert inner.stats.writes == 3 and inner.stats.errors == 0
        assert await dev.read(64 * SECTOR, SECTOR) == image_bytes[64 * SECTOR : 65 * SECTOR]
        await dev.readv(64 * SECTOR, [memoryview(bytearray(SECTOR))])  # reads unaffected


async def test_injected_enospc_once_then_recovers() -> None:
    dev = FaultyDevice(RamDisk(64 * SECTOR), [FaultRule("write", error=errno.ENOSPC, times=1)])
    with pytest.raises(BlockIOError) as exc:
        await dev.write(0, b"a" * SECTOR)
    assert exc.value.errno == errno.ENOSPC
    await dev.write(0, b"b" * SECTOR)
    assert await dev.read(0, SECTOR) == b"b" * SECTOR
    dev.add_fault(FaultRule("flush"))
    dev.add_fault(FaultRule("discard", 0, SECTOR, errno.EIO))
    with pytest.raises(BlockIOError):
        await dev.flush()
    with pytest.raises(BlockIOError):
        await dev.discard(0, SECTOR)
    await dev.discard(SECTOR, SECTOR)
    dev.clear_faults()
    await dev.flush()
    assert dev.stats.errors_by_errno == {errno.ENOSPC: 1, errno.EIO: 2}


# -- threads and the event loop --------------------------------------------------------------


async def test_thread_limiter_bounds_concurrency(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_preadv = os.preadv
    lock = threading.Lock()
    active = {"now": 0, "max": 0}
    entered = threading.Semaphore(0)
    release = threading.Event()

    def preadv(fd: int, bufs: Any, off: int) -> int:
        with lock:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        entered.release()
        assert release.wait(10)
        with lock:
            active["now"] -= 1
        return real_preadv(fd, bufs, off)

    monkeypatch.setattr(os, "preadv", preadv)
    async with open_image(image, max_threads=3, nowait_reads=False) as dev:
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(dev.read, i * SECTOR, SECTOR)
            for _ in range(3):  # wait (in another thread pool) for three entries
                await trio.to_thread.run_sync(entered.acquire)
            await trio.testing.wait_all_tasks_blocked()
            assert dev.limiter.borrowed_tokens == 3
            assert dev.limiter.statistics().tasks_waiting == 7
            assert active["now"] == 3
            release.set()
        assert active["max"] == 3 and dev.stats.reads == 10


async def test_event_loop_stays_responsive_during_large_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.img"
    path.write_bytes(random.Random(7).randbytes(8 << 20))
    real_preadv = os.preadv
    other_task_ran = threading.Event()

    def preadv(fd: int, bufs: Any, off: int) -> int:
        # The read cannot finish unless the event loop runs another task meanwhile.
        assert other_task_ran.wait(10), "event loop was blocked by the read"
        return real_preadv(fd, bufs, off)

    monkeypatch.setattr(os, "preadv", preadv)
    ticks = 0

    async def other() -> None:
        nonlocal ticks
        for _ in range(100):
            ticks += 1
            await trio.lowlevel.checkpoint()
        other_task_ran.set()

    async with open_image(path, nowait_reads=False) as dev:
        buf = bytearray(8 << 20)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dev.readv, 0, [memoryview(buf)])
            nursery.start_soon(other)
    assert ticks == 100
    assert bytes(buf) == path.read_bytes()


async def test_close_with_requests_in_flight_is_refused(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    entered = threading.Semaphore(0)
    real_preadv = os.preadv

    def preadv(fd: int, bufs: Any, off: int) -> int:
        entered.release()
        gate.wait(10)
        return real_preadv(fd, bufs, off)

    monkeypatch.setattr(os, "preadv", preadv)
    async with open_image(image, nowait_reads=False) as dev, trio.open_nursery() as nursery:
        nursery.start_soon(dev.read, 0, SECTOR)
        await trio.to_thread.run_sync(entered.acquire)
        with pytest.raises(RuntimeError, match="in flight"):
            dev.close()
        gate.set()
    assert dev.closed


async def test_open_missing_image_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        async with open_image(tmp_path / "nope.img"):
            pass  # pragma: no cover


async def test_size_rounds_down_to_sectors(tmp_path: Path) -> None:
    path = tmp_path / "odd.img"
    path.write_bytes(b"z" * (3 * SECTOR + 100))
    async with open_image(path, sector_size=SECTOR, physical_sector_size=4096) as dev:
        assert dev.size == 3 * SECTOR and dev.sectors == 3
        assert dev.physical_sector_size == 4096 and dev.discard_granularity == SECTOR


# -- the page-cache fast path (preadv2 with RWF_NOWAIT) ----------------------------------


def _spy_preadv(monkeypatch: pytest.MonkeyPatch, behaviour: Any) -> list[tuple[int, int]]:
    """Replace os.preadv; ``behaviour(real, fd, bufs, off, flags)`` decides each
    call. Returns the (flags, thread-ident) log of calls."""
    real = os.preadv
    log: list[tuple[int, int]] = []

    def preadv(fd: int, bufs: Any, off: int, flags: int = 0) -> int:
        log.append((flags, threading.get_ident()))
        return behaviour(real, fd, bufs, off, flags)

    monkeypatch.setattr(os, "preadv", preadv)
    return log


async def test_cached_read_completes_inline_without_a_thread_hop(
    image: Path, image_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _spy_preadv(monkeypatch, lambda real, fd, b, off, fl: real(fd, b, off, fl))
    async with open_image(image) as dev:
        assert await dev.read(3 * SECTOR, 8 * SECTOR) == image_bytes[3 * SECTOR:11 * SECTOR]
        assert dev.stats_nowait_reads == 1
    assert log == [(os.RWF_NOWAIT, threading.get_ident())]  # one call, in the event loop


async def test_uncached_read_falls_back_to_a_worker_thread(
    image: Path, image_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def behaviour(real: Any, fd: int, bufs: Any, off: int, flags: int) -> int:
        if flags & os.RWF_NOWAIT:
            raise BlockingIOError(errno.EAGAIN, "would block")
        return real(fd, bufs, off)

    log = _spy_preadv(monkeypatch, behaviour)
    async with open_image(image) as dev:
        assert await dev.read(0, 4 * SECTOR) == image_bytes[: 4 * SECTOR]
        assert dev.stats_nowait_reads == 0
    assert [f for f, _ in log] == [os.RWF_NOWAIT, 0]
    assert log[1][1] != threading.get_ident()  # the blocking read ran in a thread


async def test_partly_cached_read_finishes_the_rest_in_a_thread(
    image: Path, image_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def behaviour(real: Any, fd: int, bufs: Any, off: int, flags: int) -> int:
        if flags & os.RWF_NOWAIT:  # only the first 700 bytes are "cached"
            return real(fd, [bufs[0][:700]], off, flags)
        return real(fd, bufs, off)

    _spy_preadv(monkeypatch, behaviour)
    async with open_image(image) as dev:
        bufs = [bytearray(SECTOR), bytearray(3 * SECTOR)]
        await dev.readv(SECTOR, [memoryview(b) for b in bufs])
        assert bytes(bufs[0] + bufs[1]) == image_bytes[SECTOR : 5 * SECTOR]


async def test_file_systems_without_nowait_reads_stop_trying(
    image: Path, image_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def behaviour(real: Any, fd: int, bufs: Any, off: int, flags: int) -> int:
        if flags & os.RWF_NOWAIT:
            raise OSError(errno.EOPNOTSUPP, "not supported")
        return real(fd, bufs, off)

    log = _spy_preadv(monkeypatch, behaviour)
    async with open_image(image) as dev:
        for _ in range(3):
            assert await dev.read(0, SECTOR) == image_bytes[:SECTOR]
    assert [f for f, _ in log] == [os.RWF_NOWAIT, 0, 0, 0]


async def test_large_reads_skip_the_inline_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dom0.native.disk import NOWAIT_MAX_BYTES

    path = tmp_path / "big.img"
    path.write_bytes(bytes(2 * NOWAIT_MAX_BYTES))
    log = _spy_preadv(monkeypatch, lambda real, fd, b, off, fl: real(fd, b, off, fl))
    async with open_image(path) as dev:
        await dev.read(0, NOWAIT_MAX_BYTES + SECTOR)
    assert all(f == 0 for f, _ in log)


# -- try_readv: the synchronous fast path blkback takes first ---------------------------------


async def test_try_readv_serves_cached_reads_without_awaiting(
    image: Path, image_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _spy_preadv(monkeypatch, lambda real, fd, b, off, fl: real(fd, b, off, fl))
    async with open_image(image) as dev:
        bufs = [bytearray(SECTOR), bytearray(3 * SECTOR)]
        assert dev.try_readv(2 * SECTOR, [memoryview(b) for b in bufs]) is True
        assert bytes(bufs[0] + bufs[1]) == image_bytes[2 * SECTOR : 6 * SECTOR]
        assert (dev.stats.reads, dev.stats.bytes_read, dev.stats_nowait_reads) == (1, 4 * SECTOR, 1)
    assert log == [(os.RWF_NOWAIT, threading.get_ident())]


@pytest.mark.parametrize("cached", ["none", "part", "unsupported"])
async def test_try_readv_says_no_unless_all_is_cached(
    image: Path, image_bytes: bytes, monkeypatch: pytest.MonkeyPatch, cached: str
) -> None:
    def behaviour(real: Any, fd: int, bufs: Any, off: int, flags: int) -> int:
        if not flags & os.RWF_NOWAIT:
            return real(fd, bufs, off)
        if cached == "none":
            raise BlockingIOError(errno.EAGAIN, "would block")
        if cached == "part":
            return real(fd, [bufs[0][:700]], off, flags)
        raise OSError(errno.EOPNOTSUPP, "not supported")

    _spy_preadv(monkeypatch, behaviour)
    async with open_image(image) as dev:
        buf = bytearray(4 * SECTOR)
        assert dev.try_readv(0, [memoryview(buf)]) is False
        assert dev.stats.reads == 0  # nothing counted: readv does the real read
        await dev.readv(0, [memoryview(buf)])
        assert bytes(buf) == image_bytes[: 4 * SECTOR] and dev.stats.reads == 1


async def test_try_readv_checks_like_readv(image: Path) -> None:
    async with open_image(image) as dev:
        with pytest.raises(BlockIOError) as exc:
            dev.try_readv(len(image.read_bytes()), [memoryview(bytearray(SECTOR))])
        assert exc.value.errno == errno.EINVAL and dev.stats.errors_by_errno == {errno.EINVAL: 1}
        with pytest.raises(TypeError):
            dev.try_readv(0, [memoryview(bytes(SECTOR))])  # read-only buffer
    with pytest.raises(trio.ClosedResourceError):
        dev.try_readv(0, [memoryview(bytearray(SECTOR))])


async def test_ramdisk_try_readv_and_faulty_device_always_await() -> None:
    ram = RamDisk(8 * SECTOR, initial=b"r" * (8 * SECTOR))
    buf = bytearray(2 * SECTOR)
    assert ram.try_readv(SECTOR, [memoryview(buf)]) and bytes(buf) == b"r" * (2 * SECTOR)
    faulty = FaultyDevice(RamDisk(8 * SECTOR), [FaultRule("read", error=errno.EIO)])
    assert faulty.try_readv(0, [memoryview(buf)]) is False  # faults apply on readv
    with pytest.raises(BlockIOError):
        await faulty.readv(0, [memoryview(buf)])


async def test_iovec_is_checked_once_and_reused(image: Path, image_bytes: bytes) -> None:
    mm = mmap.mmap(-1, 2 * PAGE)
    views = _segments(mm, [(0, 1, 3), (1, 0, 7)])
    vec = IoVec([*views, memoryview(bytearray(0))], writable=True)
    assert len(vec.views) == 2 and vec.nbytes == 11 * SECTOR  # the empty buffer dropped
    async with open_image(image) as dev:
        for _ in range(2):
            await dev.readv(SECTOR, vec)
            assert b"".join(views) == image_bytes[SECTOR : 12 * SECTOR]
        assert dev.try_readv(0, vec) and b"".join(views) == image_bytes[: 11 * SECTOR]
        await dev.writev(0, IoVec([bytes(SECTOR)], writable=False))
        assert await dev.read(0, SECTOR) == bytes(SECTOR)
        with pytest.raises(TypeError):
            await dev.readv(0, IoVec([bytearray(SECTOR)], writable=False))
    with pytest.raises(TypeError):
        IoVec([bytes(SECTOR)], writable=True)


# -- writes issued together share one worker-thread hop ----------------------------------------


async def test_writes_issued_together_share_one_thread_hop(image: Path) -> None:
    n = disk.MAX_WRITE_BATCH + 3
    async with open_image(image) as dev:
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(dev.write, i * SECTOR, bytes([i]) * SECTOR)
        assert dev.stats_write_hops == 2 and dev.stats.writes == n  # 32 + 3
        await dev.write(0, b"z" * SECTOR)  # alone: its own hop
        assert dev.stats_write_hops == 3
    data = image.read_bytes()
    assert data[:SECTOR] == b"z" * SECTOR
    assert all(data[i * SECTOR:(i + 1) * SECTOR] == bytes([i]) * SECTOR for i in range(1, n))


async def test_a_failed_write_in_a_batch_fails_only_itself(
    image: Path, image_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwritev

    def pwritev(fd: int, bufs: Any, off: int) -> int:
        if off == 2 * SECTOR:
            raise OSError(errno.ENOSPC, "no space")
        return real(fd, bufs, off)

    monkeypatch.setattr(os, "pwritev", pwritev)
    results: dict[int, int | None] = {}

    async def write(i: int) -> None:
        try:
            await dev.write(i * SECTOR, b"w" * SECTOR)
            results[i] = None
        except BlockIOError as exc:
            results[i] = exc.errno

    async with open_image(image) as dev:
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(write, i)
        assert dev.stats_write_hops == 1
        assert dev.stats.errors_by_errno == {errno.ENOSPC: 1} and dev.stats.writes == 3
    assert results == {0: None, 1: None, 2: errno.ENOSPC, 3: None}
    data = image.read_bytes()
    assert data[2 * SECTOR:3 * SECTOR] == image_bytes[2 * SECTOR:3 * SECTOR]
    assert data[3 * SECTOR:4 * SECTOR] == b"w" * SECTOR


async def test_a_cancelled_writer_still_waits_for_its_batch(image: Path) -> None:
    started = threading.Event()
    release = threading.Event()
    real = os.pwritev

    def slow(fd: int, bufs: Any, off: int) -> int:
        started.set()
        release.wait(5)
        return real(fd, bufs, off)

    async with open_image(image) as dev:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "pwritev", slow)
            async with trio.open_nursery() as nursery:
                writers = trio.CancelScope()

                async def writes() -> None:
                    with writers:
                        async with trio.open_nursery() as inner:
                            inner.start_soon(dev.write, 0, b"a" * SECTOR)
                            inner.start_soon(dev.write, SECTOR, b"b" * SECTOR)

                nursery.start_soon(writes)
                await trio.to_thread.run_sync(started.wait)
                writers.cancel()  # both writers are shielded: the thread still
                await trio.sleep(0.05)  # uses their buffers
                assert dev._in_flight == 2
                release.set()
        assert dev._in_flight == 0
    assert image.read_bytes()[: 2 * SECTOR] == b"a" * SECTOR + b"b" * SECTOR
