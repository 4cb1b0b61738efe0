"""The disk API guest programs use: byte offsets, sector-sized I/O underneath.

Theory of operation
-------------------
A block driver (blkfront) knows how to move whole *sectors*: it subclasses
:class:`BlockDevice` and implements four primitives over sector-aligned byte
ranges (``_read_aligned``, ``_write_aligned``, ``_flush_cache``,
``_discard_aligned``) plus ``_check_usable``. This module turns them into what
a program wants:

* **byte offsets.** ``await disk.read(offset, length)`` and
  ``await disk.write(offset, data)`` accept any offset and length inside the
  device. An unaligned write is a *read-modify-write* of the partial sectors
  at either end: read the covering sectors, patch the new bytes in, write the
  whole aligned range back.
* **serialised writers.** Every write (aligned or not) holds a FIFO
  :class:`RangeLock` on the sectors it covers for the whole read-modify-write,
  so two tasks patching different bytes of the same sector never lose each
  other's bytes, and an aligned write cannot land between another writer's
  read and write-back. Reads take no lock (a block device gives no atomicity
  between concurrent reads and writes of the same sector; Linux does not either).
* **errors.** Everything that can go wrong for the program is a
  :class:`BlockDeviceError` (an :class:`OSError`): ``EINVAL`` out of range,
  ``EROFS`` writing a read-only disk, ``EIO`` a failed request or a broken
  device, ``ENODEV`` the device was unplugged, ``EOPNOTSUPP`` discard/flush the
  backend refused.
* **files.** :meth:`BlockDevice.open` returns a :class:`DiskFile` with async
  ``read``/``write``/``flush`` and sync ``seek``/``tell``, so ordinary code can
  treat the disk like a fixed-size binary file.

Worked example (512-byte sectors)::

    disk = guest.disk("xvda")                 # or guest.devices["vbd/51712"]
    await disk.write(1000, b"hello")          # locks sectors 1..2 (bytes 512..1536),
                                              # reads them, patches 488..493 of
                                              # that buffer, writes 1024 bytes back
    assert await disk.read(1000, 5) == b"hello"   # reads sectors 1..2, slices
    await disk.flush()                        # FLUSH_DISKCACHE (if offered)
    async with disk.open("r+b") as f:
        f.seek(4096)
        await f.write(b"x" * 10)
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["BlockDevice", "BlockDeviceError", "DiskFile", "RangeLock"]


class BlockDeviceError(OSError):
    """An I/O error for the guest program; ``errno`` says which (host errno values).

    ``EIO`` (request failed / device broken), ``ENODEV`` (unplugged),
    ``EROFS``, ``EINVAL``, ``EOPNOTSUPP``, ``ENOMEM``.
    """


def io_error(code: int, what: str) -> BlockDeviceError:
    """A :class:`BlockDeviceError` with ``code`` and a readable message."""
    return BlockDeviceError(code, f"{os.strerror(code)}: {what}")


class RangeLock:
    """A FIFO lock over half-open ``[start, end)`` ranges.

    A request waits while its range overlaps a held range or the range of an
    *earlier* waiter (so a stream of small writers cannot starve a big one).
    Non-overlapping holders run concurrently.
    """

    def __init__(self) -> None:
        self._held: list[list[int]] = []
        self._queue: list[list[int]] = []
        self._changed = trio.Event()

    @property
    def held(self) -> int:
        """Ranges currently held (tests)."""
        return len(self._held)

    def _blocked(self, me: list[int]) -> bool:
        s, e = me
        for hs, he in self._held:
            if hs < e and s < he:
                return True
        for w in self._queue:
            if w is me:
                break
            if w[0] < e and s < w[1]:
                return True
        return False

    def _signal(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @asynccontextmanager
    async def hold(self, start: int, end: int) -> AsyncIterator[None]:
        """Hold ``[start, end)`` for the body (waits, FIFO, while it overlaps)."""
        me = [start, end]
        self._queue.append(me)
        try:
            while self._blocked(me):
                await self._changed.wait()
        except BaseException:
            self._queue.remove(me)
            self._signal()
            raise
        self._queue.remove(me)
        self._held.append(me)
        try:
            yield
        finally:
            self._held.remove(me)
            self._signal()


class BlockDevice:
    """Byte-addressed disk operations over a sector-granular driver (a mixin).

    Subclasses set :attr:`size`, :attr:`sector_size` and :attr:`readonly`
    and implement the ``_*`` primitives.

    Attributes:
        size: bytes (backend-reported ``sectors`` x 512).
        sector_size: logical sector size in bytes (backend ``sector-size``).
        readonly: the backend reported ``VDISK_READONLY``.
    """

    size: int = 0
    sector_size: int = 512
    readonly: bool = False

    def __init__(self) -> None:
        self._write_lock = RangeLock()

    # -- primitives (driver) ----------------------------------------------------------------

    async def _check_usable(self) -> None:
        """Return when I/O may be issued; raise BlockDeviceError when it never will."""
        raise NotImplementedError

    def _usable(self) -> bool:
        """True when I/O may be issued right now (lets the hot path skip awaiting
        :meth:`_check_usable`); False means "ask :meth:`_check_usable`"."""
        return False

    async def _read_aligned(self, offset: int, length: int) -> bytes | bytearray:
        """Read ``length`` bytes at ``offset`` (both sector multiples)."""
        raise NotImplementedError

    async def _write_aligned(self, offset: int, data: memoryview) -> None:
        """Write ``data`` at ``offset`` (both sector multiples)."""
        raise NotImplementedError

    async def _flush_cache(self) -> None:
        """Make every completed write durable."""
        raise NotImplementedError

    async def _discard_aligned(self, offset: int, length: int, secure: bool) -> None:
        """Discard ``length`` bytes at ``offset`` (sector multiples, length > 0)."""
        raise NotImplementedError

    # -- the program-facing API -------------------------------------------------------------

    def _range(self, offset: int, length: int, what: str) -> tuple[int, int]:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise io_error(errno.EINVAL, f"{what} of {length} bytes at {offset} outside "
                                         f"a {self.size}-byte disk")
        ss = self.sector_size
        start = offset - offset % ss
        end = -(-(offset + length) // ss) * ss
        return start, end

    async def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at byte ``offset``.

        Args:
            offset, length: the program's; must lie inside the disk.

        Returns:
            Exactly ``length`` bytes.

        Raises:
            BlockDeviceError: EINVAL (range), EIO, ENODEV.
        """
        if not self._usable():
            await self._check_usable()
        start, end = self._range(offset, length, "read")
        if length == 0:
            return b""
        buf = await self._read_aligned(start, end - start)
        if start == offset and end - start == length:
            return buf if type(buf) is bytes else bytes(buf)  # no second copy
        return bytes(memoryview(buf)[offset - start : offset - start + length])

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at byte ``offset`` (read-modify-write at unaligned edges).

        Args:
            offset: the program's; ``offset + len(data)`` must lie inside the disk.
            data: any bytes-like object (copied into granted pages).

        Raises:
            BlockDeviceError: EINVAL, EROFS, EIO, ENODEV.
        """
        mv = memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        length = mv.nbytes
        if not self._usable():
            await self._check_usable()
        start, end = self._range(offset, length, "write")
        if self.readonly:
            raise io_error(errno.EROFS, "write to a read-only disk")
        if length == 0:
            return
        async with self._write_lock.hold(start, end):
            if start == offset and end - start == length:
                await self._write_aligned(start, mv)
                return
            ss = self.sector_size
            buf = bytearray(end - start)
            if offset != start:
                buf[:ss] = await self._read_aligned(start, ss)
            if offset + length != end and (end - ss > start or offset == start):
                buf[-ss:] = await self._read_aligned(end - ss, ss)
            buf[offset - start : offset - start + length] = mv
            await self._write_aligned(start, memoryview(buf))

    async def flush(self) -> None:
        """Make every write that returned before this call durable.

        A disk whose backend offers neither flush nor barrier is write-through
        as far as the guest can know; flush then returns at once (Linux issues
        no flush to such a disk).

        Raises:
            BlockDeviceError: EIO, ENODEV, EOPNOTSUPP (the backend refused; the
                feature is then turned off).
        """
        await self._check_usable()
        await self._flush_cache()

    async def discard(self, offset: int, length: int, *, secure: bool = False) -> None:
        """Tell the disk the bytes are unused (rounded inwards to whole sectors).

        Raises:
            BlockDeviceError: EINVAL, EROFS, EOPNOTSUPP (not offered), EIO, ENODEV.
        """
        await self._check_usable()
        self._range(offset, length, "discard")
        if self.readonly:
            raise io_error(errno.EROFS, "discard on a read-only disk")
        ss = self.sector_size
        start = -(-offset // ss) * ss
        end = (offset + length) // ss * ss
        if end <= start:
            return
        async with self._write_lock.hold(start, end):
            await self._discard_aligned(start, end - start, secure)

    def open(self, mode: str = "rb") -> DiskFile:
        """A file-like view of the whole disk (``r``/``rb`` read-only, ``r+b``/``wb``
        read-write; the size never changes, nothing is truncated)."""
        return DiskFile(self, mode)


class DiskFile:
    """A fixed-size binary file over a :class:`BlockDevice`.

    ``read``, ``write``, ``flush`` and ``aclose`` are async; ``seek`` and
    ``tell`` are not (they only move the position). Use ``async with``.

    Args:
        disk: the device.
        mode: ``r``/``rb`` (read), ``r+``/``r+b``/``w``/``wb``/``w+b`` (read-write);
            text modes and append are refused.

    Raises:
        ValueError: an unsupported mode.
    """

    def __init__(self, disk: BlockDevice, mode: str = "rb") -> None:
        if "t" in mode or "a" in mode or "x" in mode or mode.replace("b", "").replace(
                "+", "") not in ("r", "w"):
            raise ValueError(f"unsupported mode {mode!r} for a disk")
        self.disk = disk
        self.mode = mode
        self.readable = "r" in mode or "+" in mode
        self.writable = "w" in mode or "+" in mode
        self.closed = False
        self._pos = 0

    def _check(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on a closed disk file")

    def tell(self) -> int:
        """The current position."""
        self._check()
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move the position (``SEEK_SET``/``SEEK_CUR``/``SEEK_END``); return it.

        Raises:
            ValueError: a negative resulting position or bad ``whence``.
        """
        self._check()
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.disk.size}.get(whence)
        if base is None:
            raise ValueError(f"bad whence {whence}")
        pos = base + offset
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    async def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes from the position (all the rest if negative); b"" at the end."""
        self._check()
        if not self.readable:
            raise io_error(errno.EBADF, "file not open for reading")
        left = max(self.disk.size - self._pos, 0)
        n = left if size is None or size < 0 else min(size, left)
        data = await self.disk.read(self._pos, n) if n else b""
        self._pos += len(data)
        return data

    async def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write at the position; returns ``len(data)``.

        Raises:
            BlockDeviceError: ENOSPC past the end of the disk, EBADF if read-only.
        """
        self._check()
        if not self.writable:
            raise io_error(errno.EBADF, "file not open for writing")
        n = memoryview(data).nbytes
        if self._pos + n > self.disk.size:
            raise io_error(errno.ENOSPC, f"write of {n} bytes at {self._pos} past the end")
        await self.disk.write(self._pos, data)
        self._pos += n
        return n

    async def flush(self) -> None:
        """Flush the disk's cache (writes are never buffered here)."""
        self._check()
        if self.writable:
            await self.disk.flush()

    async def aclose(self) -> None:
        """Close (idempotent)."""
        self.closed = True

    async def __aenter__(self) -> DiskFile:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
