"""dom0's native block devices: raw image files and ramdisks behind one async API.

blkback (built on top of this) turns each guest ``blkif_request`` into one call
here, with the data pages it mapped from the guest as ``memoryview`` buffers.

Theory of operation
-------------------
Every device is a :class:`BlockDevice`: a run of ``size`` bytes addressed in
bytes but only in whole logical sectors (``sector_size``, 512 by default).
The public methods do the checks every backend needs, in one place, and then
call a small per-backend hook:

* :meth:`BlockDevice.readv` / :meth:`BlockDevice.writev` take a byte offset and
  a list of buffers - the request's segments in order. The buffers are used
  *in place*: an image file does one ``os.preadv`` / ``os.pwritev`` straight
  from them (no bounce buffer), so the grant pages blkback mapped are filled or
  drained by the kernel directly.
* :meth:`BlockDevice.try_readv` serves a read synchronously when that cannot
  block (an image file's page cache via ``preadv2(RWF_NOWAIT)``, a ramdisk),
  else says so; blkback then awaits ``readv``. An :class:`IoVec` is a buffer
  list checked once, for callers that reuse the same buffers (blkback's
  persistent-grant pages).
* Each request is one hop to a worker thread (``trio.to_thread.run_sync``),
  not one per segment - and an image file's writes issued in the same
  scheduler pass share one hop (:class:`ImageFile`) - and every device has its own
  :class:`trio.CapacityLimiter` (``max_threads``), so a guest with a full ring
  queues in trio instead of spawning threads. Inside the thread a short
  transfer is continued until done; a read that meets the end of a file that
  shrank under us returns zeros for the missing part (like Linux's loop
  driver).
* Failures are :class:`BlockIOError` (an :class:`OSError`) carrying the host
  errno: ``EINVAL`` out of range or misaligned, ``EROFS`` write/discard on a
  read-only device, ``EIO``/``ENOSPC``/... from the host. They concern that
  request only; blkback answers ``BLKIF_RSP_ERROR`` and carries on. Using the
  API wrongly (a read-only buffer to read into, a closed device) is our own
  bug and raises ``TypeError`` / ``trio.ClosedResourceError`` instead.

Flush guarantee (the exact one)
-------------------------------
When ``await dev.flush()`` returns, every write (and discard) whose ``writev``
*returned* before ``flush()`` was *called* is on stable storage. Writes still
in flight when ``flush()`` is called, or issued after, may or may not be
covered. For image files this is ``os.fdatasync`` run after those writes
completed (they did, by definition), which is exactly this guarantee.
blkback implements ``BLKIF_OP_FLUSH_DISKCACHE`` by calling ``flush()`` once
the requests the guest must have seen complete have been answered; a
``WRITE_BARRIER`` additionally needs blkback to wait for its own in-flight
writes first (it knows them; this layer does not guess).

Test doubles
------------
* :class:`FaultyDevice` wraps any device and fails chosen operations/ranges
  with a chosen errno, so blkback tests can prove an error is per-request.
* :class:`PowerLossDisk` is a ramdisk with a volatile write cache:
  :meth:`PowerLossDisk.power_loss` keeps every write covered by an
  acknowledged flush and an arbitrary subset (per sector, in random order) of
  the rest - the crash model real disks give filesystems.

Worked example::

    async with open_image("/var/lib/xensim/guest.img") as disk:
        page = memoryview(mm)[0:4096]             # a mapped grant page
        await disk.readv(7 * 512, [page[512:1024], page[1024:4096]])
        await disk.writev(0, [page])
        await disk.flush()                         # the write above is durable
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import errno
import os
import random
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

__all__ = [
    "DEFAULT_MAX_THREADS",
    "SECTOR_SIZE",
    "BlockDevice",
    "BlockIOError",
    "DiskStats",
    "FaultRule",
    "FaultyDevice",
    "ImageFile",
    "IoVec",
    "PowerLossDisk",
    "RamDisk",
    "open_image",
]

SECTOR_SIZE = 512
"""Default logical sector size (blkif's sector unit)."""

DEFAULT_MAX_THREADS = 4
"""Default bound on concurrent worker threads per device."""

FALLOC_FL_KEEP_SIZE = 0x01  # linux/falloc.h
FALLOC_FL_PUNCH_HOLE = 0x02  # linux/falloc.h

_IOV_MAX = 1024  # Linux UIO_MAXIOV; longer vectors are split inside one thread hop
_ZERO_CHUNK = 1 << 20  # bytes of zeros written per pwrite in the zeroing fallback

Op = Literal["read", "write", "flush", "discard"]


class BlockIOError(OSError):
    """One request failed; ``errno`` says why (host errno values).

    Raised for: ``EINVAL`` (offset/length out of range or not sector aligned),
    ``EROFS`` (write or discard on a read-only device), and whatever the host
    reported (``EIO``, ``ENOSPC``, ...). The device stays usable.
    """


@dataclass(slots=True)
class DiskStats:
    """Per-device counters. Operations count on success; failures in ``errors``.

    Attributes:
        reads, writes, flushes, discards: completed requests of each kind.
        bytes_read, bytes_written, bytes_discarded: payload of those requests.
        errors: requests that raised :class:`BlockIOError`.
        errors_by_errno: ``errors`` split by errno.
    """

    reads: int = 0
    writes: int = 0
    flushes: int = 0
    discards: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    bytes_discarded: int = 0
    errors: int = 0
    errors_by_errno: dict[int, int] = field(default_factory=dict)

    def count_error(self, code: int) -> None:
        """Record one failed request with errno ``code``."""
        self.errors += 1
        self.errors_by_errno[code] = self.errors_by_errno.get(code, 0) + 1


def _error(code: int, what: str) -> BlockIOError:
    return BlockIOError(code, f"{os.strerror(code)}: {what}")


def _as_views(buffers: Iterable[Any], *, writable: bool) -> tuple[list[memoryview], int]:
    """Normalise caller buffers to flat byte memoryviews (no copies).

    Raises:
        TypeError: a buffer is not contiguous, or is read-only where the
            device must write into it (our caller's bug, not the guest's).
    """
    views: list[memoryview] = []
    total = 0
    for buf in buffers:
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        if not view.contiguous:
            raise TypeError("block I/O buffers must be contiguous")
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if writable and view.readonly:
            raise TypeError("cannot read into a read-only buffer")
        views.append(view)
        total += view.nbytes
    return views, total


class IoVec:
    """A scatter/gather vector checked once, for buffers used again and again.

    blkback keeps one per cached segment list of a persistent-grant request, so
    the per-buffer checks of :meth:`BlockDevice.readv` (contiguous, byte
    format, writable) run once, not on every request.

    Args:
        buffers: contiguous buffers, in transfer order (empty ones are dropped).
        writable: every buffer must accept writes (the vector may be read into).

    Attributes:
        views: the non-empty buffers as flat byte memoryviews.
        nbytes: total bytes.
        writable: as given.

    Raises:
        TypeError: a buffer is not contiguous, or is read-only while
            ``writable`` (our caller's bug).
    """

    __slots__ = ("nbytes", "views", "writable")

    def __init__(self, buffers: Iterable[Any], *, writable: bool) -> None:
        views, total = _as_views(buffers, writable=writable)
        self.views = [v for v in views if v.nbytes]
        self.nbytes = total
        self.writable = writable


def _vector(buffers: Sequence[Any] | IoVec, *, writable: bool) -> tuple[list[memoryview], int]:
    if isinstance(buffers, IoVec):
        if writable and not buffers.writable:
            raise TypeError("cannot read into an IoVec built with writable=False")
        return buffers.views, buffers.nbytes
    return _as_views(buffers, writable=writable)


def _consume(views: list[memoryview], done: int) -> list[memoryview]:
    """Drop the first ``done`` bytes from a vector (after a short transfer)."""
    i = 0
    while i < len(views) and done >= views[i].nbytes:
        done -= views[i].nbytes
        i += 1
    rest = views[i:]
    if done and rest:
        rest[0] = rest[0][done:]
    return rest


NOWAIT_MAX_BYTES = 1 << 20
"""Largest read tried inline with RWF_NOWAIT before falling back to a thread.

1 MiB is blkback's largest request (256 indirect segments). Copying it from
the page cache takes ~50-80 us, less than one worker-thread round trip
(~100-200 us: two wake-ups and a GIL hand-over), so the event loop stalls no
longer than the hop it saves would have cost."""


def _preadv_full(fd: int, views: list[memoryview], offset: int, length: int) -> None:
    """Fill ``views`` (``length`` bytes) from ``fd`` at ``offset``; zeros past end of
    file. Worker thread. A short read is continued where it stopped (the usual
    complete read costs no per-buffer bookkeeping)."""
    pending = views
    while True:
        got = os.preadv(fd, pending if len(pending) <= _IOV_MAX else pending[:_IOV_MAX],
                        offset)
        if got == length:
            return
        if got == 0:  # end of file: the image is shorter than the device
            for view in pending:
                view[:] = bytes(view.nbytes)
            return
        offset += got
        length -= got
        pending = _consume(pending, got)


def _pwritev_full(fd: int, views: list[memoryview], offset: int, length: int) -> None:
    """Write all of ``views`` (``length`` bytes) to ``fd`` at ``offset``. Worker
    thread. A short write is continued where it stopped."""
    pending = views
    while True:
        put = os.pwritev(fd, pending if len(pending) <= _IOV_MAX else pending[:_IOV_MAX],
                         offset)
        if put == length:
            return
        if put <= 0:
            raise OSError(errno.EIO, "pwritev made no progress")
        offset += put
        length -= put
        pending = _consume(pending, put)


MAX_WRITE_BATCH = 32
"""At most this many writes share one worker-thread hop (see :class:`ImageFile`)."""


class _WriteBatch:
    """Writes issued in one scheduler pass, done by one worker-thread job."""

    __slots__ = ("done", "jobs", "results")

    def __init__(self) -> None:
        self.jobs: list[tuple[list[memoryview], int, int]] = []
        self.results: list[OSError | None] = []
        self.done = trio.Event()


def _write_batch(fd: int, jobs: list[tuple[list[memoryview], int, int]],
                 ) -> list[OSError | None]:
    """Each job's ``_pwritev_full``, in order; its error or None. Worker thread."""
    out: list[OSError | None] = []
    for views, offset, length in jobs:
        try:
            _pwritev_full(fd, views, offset, length)
            out.append(None)
        except OSError as exc:
            out.append(exc)
    return out


def _write_zeros(fd: int, offset: int, length: int) -> None:
    """Zeroing fallback for discard, bounded memory. Worker thread."""
    zeros = memoryview(bytes(min(length, _ZERO_CHUNK)))
    while length:
        n = min(length, zeros.nbytes)
        _pwritev_full(fd, [zeros[:n]], offset, n)
        offset += n
        length -= n


def _load_fallocate() -> Any:
    """libc ``fallocate(int fd, int mode, off_t offset, off_t len)``, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a byte range, keeping the file size. Worker thread.

    Raises:
        OSError: with ``EOPNOTSUPP`` when the platform or filesystem cannot.
    """
    if _fallocate is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate unavailable")
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    if _fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class BlockDevice(abc.ABC):
    """The interface blkback drives; subclasses supply the ``_do_*`` hooks.

    Args:
        size: device size in bytes (rounded down to whole sectors).
        sector_size: logical sector size in bytes; every offset and length
            must be a multiple of it.
        physical_sector_size: reported to frontends
            (``physical-sector-size``); defaults to ``sector_size``.
        readonly: refuse writes and discards with ``EROFS``.
        max_threads: worker threads this device may use at once.

    Attributes:
        stats: :class:`DiskStats` for this device.
        discard_supported: discard does something useful (blkback may
            advertise ``feature-discard``).
        discard_zeroes_data: discarded ranges read back as zeros.
    """

    discard_supported: bool = True
    discard_zeroes_data: bool = True

    def __init__(
        self,
        *,
        size: int,
        sector_size: int = SECTOR_SIZE,
        physical_sector_size: int | None = None,
        readonly: bool = False,
        max_threads: int = DEFAULT_MAX_THREADS,
    ) -> None:
        if sector_size <= 0 or sector_size & (sector_size - 1):
            raise ValueError(f"sector_size must be a power of two, not {sector_size}")
        if size < 0:
            raise ValueError("size must be >= 0")
        self.sector_size = sector_size
        self.physical_sector_size = physical_sector_size or sector_size
        self.size = size - size % sector_size
        self.readonly = readonly
        self.stats = DiskStats()
        self.limiter = trio.CapacityLimiter(max_threads)
        self._closed = False
        self._in_flight = 0

    @property
    def sectors(self) -> int:
        """Size in logical sectors (blkback's ``sectors`` key)."""
        return self.size // self.sector_size

    @property
    def discard_granularity(self) -> int:
        """Bytes: discards are honoured in multiples of this."""
        return self.sector_size

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    # -- checks shared by every backend ---------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("block device is closed")

    def _check_range(self, offset: int, length: int, what: str) -> None:
        mask = self.sector_size - 1
        if offset < 0 or length < 0 or offset & mask or length & mask:
            raise _error(errno.EINVAL, f"{what} [{offset}, +{length}) not sector aligned")
        if offset + length > self.size:
            raise _error(
                errno.EINVAL, f"{what} [{offset}, +{length}) beyond end of device ({self.size})"
            )

    def _check_writable(self, what: str) -> None:
        if self.readonly:
            raise _error(errno.EROFS, f"{what} on a read-only device")

    @contextlib.contextmanager
    def _request(self) -> Any:
        self._check_open()
        self._in_flight += 1
        try:
            yield
        except BlockIOError as exc:
            self.stats.count_error(exc.errno or errno.EIO)
            raise
        finally:
            self._in_flight -= 1

    # -- the public API ---------------------------------------------------------

    async def readv(self, offset: int, buffers: Sequence[memoryview] | IoVec) -> None:
        """Scatter-read: fill each buffer in order from byte ``offset``.

        Args:
            offset: byte offset on the device (from the guest's
                ``sector_number``; guest-controlled, checked here).
            buffers: writable contiguous buffers (views of mapped grant pages),
                or an :class:`IoVec` of them; filled in place, no intermediate
                copy for image files.

        Raises:
            BlockIOError: ``EINVAL`` if misaligned or past the end; host errno
                (``EIO``...) if the read failed. Buffers may be partly filled.
            TypeError: a buffer is read-only or not contiguous (caller bug).
            trio.ClosedResourceError: the device was closed (caller bug).
        """
        with self._request():
            views, length = _vector(buffers, writable=True)
            self._check_range(offset, length, "read")
            if length:
                await self._do_readv(offset, views, length)
            else:
                await trio.lowlevel.checkpoint()
            self.stats.reads += 1
            self.stats.bytes_read += length

    async def writev(self, offset: int, buffers: Sequence[memoryview] | IoVec) -> None:
        """Gather-write: write the buffers back to back from byte ``offset``.

        Args:
            offset: byte offset on the device (guest-controlled, checked here).
            buffers: contiguous buffers (or an :class:`IoVec`), read in place.

        Raises:
            BlockIOError: ``EROFS`` on a read-only device (nothing written),
                ``EINVAL`` if misaligned or past the end (nothing written),
                host errno (``EIO``, ``ENOSPC``...) if the write failed - the
                range may then hold old data, new data or a mix.
            TypeError: a buffer is not contiguous (caller bug).
            trio.ClosedResourceError: the device was closed (caller bug).
        """
        with self._request():
            views, length = _vector(buffers, writable=False)
            self._check_writable("write")
            self._check_range(offset, length, "write")
            if length:
                await self._do_writev(offset, views, length)
            else:
                await trio.lowlevel.checkpoint()
            self.stats.writes += 1
            self.stats.bytes_written += length

    def try_readv(self, offset: int, buffers: Sequence[memoryview] | IoVec) -> bool:
        """Scatter-read now, without waiting, if the device can (page cache, RAM).

        The synchronous fast path blkback takes before it starts a task for a
        read: an image file tries ``preadv2(RWF_NOWAIT)`` (see
        :meth:`ImageFile._do_try_readv`), a ramdisk copies. Nothing is
        awaited, so it never blocks the event loop on the disk.

        Args:
            offset, buffers: as for :meth:`readv`.

        Returns:
            True when every buffer was filled (counted like a :meth:`readv`);
            False when the read must go through :meth:`readv` (buffers may
            then hold part of the data; ``readv`` fills them all again).

        Raises:
            BlockIOError, TypeError, trio.ClosedResourceError: as :meth:`readv`.
        """
        self._check_open()
        views, length = _vector(buffers, writable=True)
        try:
            self._check_range(offset, length, "read")
            if self._do_try_readv(offset, views, length) != length:
                return False
        except BlockIOError as exc:
            self.stats.count_error(exc.errno or errno.EIO)
            raise
        self.stats.reads += 1
        self.stats.bytes_read += length
        return True

    async def flush(self) -> None:
        """Make every write that completed before this call durable.

        See the module docstring for the exact guarantee.

        Raises:
            BlockIOError: host errno if the sync failed (``EIO``).
            trio.ClosedResourceError: the device was closed (caller bug).
        """
        with self._request():
            await self._do_flush()
            self.stats.flushes += 1

    async def discard(self, offset: int, length: int) -> None:
        """Discard (trim) a byte range; it reads back as zeros afterwards.

        Args:
            offset, length: the range, sector aligned (guest-controlled,
                from ``sector_number`` / ``nr_sectors``; checked here).

        Raises:
            BlockIOError: ``EROFS`` on a read-only device, ``EINVAL`` if
                misaligned or past the end (nothing changed), host errno.
            trio.ClosedResourceError: the device was closed (caller bug).
        """
        with self._request():
            self._check_writable("discard")
            self._check_range(offset, length, "discard")
            if length:
                await self._do_discard(offset, length)
            else:
                await trio.lowlevel.checkpoint()
            self.stats.discards += 1
            self.stats.bytes_discarded += length

    async def read(self, offset: int, length: int) -> bytes:
        """Convenience: read ``length`` bytes into a new buffer (tools, tests).

        Raises:
            BlockIOError: as :meth:`readv`.
        """
        buf = bytearray(length)
        await self.readv(offset, [memoryview(buf)])
        return bytes(buf)

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Convenience: write one buffer (tools, tests).

        Raises:
            BlockIOError: as :meth:`writev`.
        """
        await self.writev(offset, [memoryview(data)])

    def close(self) -> None:
        """Release the device. Idempotent.

        Raises:
            RuntimeError: requests are still in flight (close after the tasks
                issuing them have finished - a caller bug otherwise).
        """
        if self._closed:
            return
        if self._in_flight:
            raise RuntimeError(f"{self._in_flight} request(s) still in flight")
        self._closed = True
        self._do_close()

    async def aclose(self) -> None:
        """Async spelling of :meth:`close` (trio resource convention)."""
        self.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> BlockDevice:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- backend hooks (arguments already validated) --------------------------

    @abc.abstractmethod
    async def _do_readv(self, offset: int, views: list[memoryview], length: int) -> None: ...

    def _do_try_readv(self, offset: int, views: list[memoryview], length: int) -> int:
        """Fill ``views`` (``length`` bytes, checked) as far as possible without
        blocking; return how many bytes were read (0: none)."""
        return 0

    @abc.abstractmethod
    async def _do_writev(self, offset: int, views: list[memoryview], length: int,
                         ) -> None: ...

    @abc.abstractmethod
    async def _do_flush(self) -> None: ...

    @abc.abstractmethod
    async def _do_discard(self, offset: int, length: int) -> None: ...

    def _do_close(self) -> None:  # noqa: B027 - optional hook
        pass


# ---------------------------------------------------------------------------
# Raw image files
# ---------------------------------------------------------------------------


class ImageFile(BlockDevice):
    """A raw disk image file (or a host block device node).

    Use :func:`open_image`; the constructor takes an already-open descriptor
    and owns it from then on.

    Args:
        fd: descriptor opened ``O_RDWR`` (or ``O_RDONLY`` when ``readonly``).
        path: for messages.
        readonly, sector_size, physical_sector_size, max_threads: see
            :class:`BlockDevice`.
        nowait_reads: try cached reads inline with ``RWF_NOWAIT`` first (see
            :meth:`_do_try_readv`); ``False`` sends every read to a thread.

    Writes issued in the same scheduler pass (blkback starts the requests of
    one ring pass together) share one worker-thread hop: the first waits one
    checkpoint for the others, then one thread job writes them all in order
    (at most :data:`MAX_WRITE_BATCH`), each with its own result. A hop costs
    two cross-thread wake-ups - more than a cached 1 MiB ``pwritev`` on a VM -
    and buffered writes to one file serialise on its inode lock anyway.

    Attributes:
        discard_mode: ``"punch"`` (``fallocate`` hole punching) until the
            filesystem refuses it, then ``"zero"`` (zeros are written).
        stats_write_hops: worker-thread jobs that wrote (<= writes).
    """

    def __init__(
        self,
        fd: int,
        path: str = "<fd>",
        *,
        readonly: bool = False,
        sector_size: int = SECTOR_SIZE,
        physical_sector_size: int | None = None,
        max_threads: int = DEFAULT_MAX_THREADS,
        nowait_reads: bool = True,
    ) -> None:
        size = os.lseek(fd, 0, os.SEEK_END)  # works for regular files and block nodes
        super().__init__(
            size=size,
            sector_size=sector_size,
            physical_sector_size=physical_sector_size,
            readonly=readonly,
            max_threads=max_threads,
        )
        self.fd = fd
        self.path = path
        self.discard_mode: Literal["punch", "zero"] = "punch" if _fallocate else "zero"
        self._nowait_reads = nowait_reads and hasattr(os, "RWF_NOWAIT")
        self.stats_nowait_reads = 0
        """Reads completed entirely or partly by the page-cache fast path."""
        self.stats_write_hops = 0
        self._batch: _WriteBatch | None = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        """One worker-thread hop under this device's limiter; OSError -> BlockIOError."""
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        except BlockIOError:
            raise
        except OSError as exc:
            code = exc.errno or errno.EIO
            raise _error(code, f"{self.path}: {exc.strerror or exc}") from exc

    async def _do_readv(self, offset: int, views: list[memoryview], length: int) -> None:
        if self._nowait_reads:
            got = self._do_try_readv(offset, views, length)
            if got == length:
                await trio.lowlevel.checkpoint()
                return
            if got:
                views = _consume(views, got)
                offset += got
                length -= got
        await self._run(_preadv_full, self.fd, views, offset, length)

    def _do_try_readv(self, offset: int, views: list[memoryview], length: int) -> int:
        """The page-cache fast path: ``preadv2(RWF_NOWAIT)`` in the event loop.

        RWF_NOWAIT makes the kernel copy only what is already cached and fail
        with EAGAIN instead of waiting for the disk, so this never blocks on
        I/O; a worker-thread hop costs far more than a cached 4 KiB read.
        Requests over :data:`NOWAIT_MAX_BYTES` skip it, to bound the time spent
        copying in the event loop.

        Args:
            views: the buffers; ``length`` is their total.

        Returns:
            How many bytes were read (0: nothing; the slow path decides).
        """
        if not self._nowait_reads or length > NOWAIT_MAX_BYTES or len(views) > _IOV_MAX:
            return 0
        try:
            got = os.preadv(self.fd, views, offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return 0  # not (all) cached: the worker thread waits for it
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self._nowait_reads = False  # this file system or kernel can't
                return 0
            raise _error(exc.errno or errno.EIO, f"{self.path}: {exc.strerror or exc}") from exc
        if got <= 0:
            return 0  # end of file or nothing cached: let the slow path decide
        self.stats_nowait_reads += 1
        return got

    async def _do_writev(self, offset: int, views: list[memoryview], length: int,
                         ) -> None:
        batch = self._batch
        if batch is not None and len(batch.jobs) < MAX_WRITE_BATCH:
            i = len(batch.jobs)
            batch.jobs.append((views, offset, length))
            with trio.CancelScope(shield=True):  # the thread may be writing our buffers
                await batch.done.wait()
        else:
            batch = self._batch = _WriteBatch()
            i = 0
            batch.jobs.append((views, offset, length))
            try:
                with trio.CancelScope(shield=True):
                    await trio.lowlevel.checkpoint()  # the rest of this pass joins
                    if self._batch is batch:
                        self._batch = None
                    self.stats_write_hops += 1
                    batch.results = await self._run(_write_batch, self.fd, batch.jobs)
            finally:
                if self._batch is batch:
                    self._batch = None
                if len(batch.results) != len(batch.jobs):  # the hop itself failed
                    batch.results = [OSError(errno.EIO, "write not done")] * len(batch.jobs)
                batch.done.set()
        exc = batch.results[i]
        if exc is not None:
            raise _error(exc.errno or errno.EIO, f"{self.path}: {exc.strerror or exc}") from exc

    def _sync(self) -> None:
        os.fdatasync(self.fd)  # looked up at call time (tests observe it)

    async def _do_flush(self) -> None:
        await self._run(self._sync)

    def _discard_sync(self, offset: int, length: int) -> None:
        if self.discard_mode == "punch":
            try:
                _punch_hole(self.fd, offset, length)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTTY):
                    raise
                self.discard_mode = "zero"
        _write_zeros(self.fd, offset, length)

    async def _do_discard(self, offset: int, length: int) -> None:
        await self._run(self._discard_sync, offset, length)

    def _do_close(self) -> None:
        os.close(self.fd)


@contextlib.asynccontextmanager
async def open_image(
    path: str | os.PathLike[str],
    readonly: bool = False,
    *,
    sector_size: int = SECTOR_SIZE,
    physical_sector_size: int | None = None,
    max_threads: int = DEFAULT_MAX_THREADS,
    nowait_reads: bool = True,
) -> AsyncIterator[ImageFile]:
    """Open a raw image file as a block device; closed on exit.

    Args:
        path: an existing image (toolstack-controlled, from the disk spec's
            ``target``). Its size, rounded down to whole sectors, is the
            device size.
        readonly: open ``O_RDONLY``; writes and discards fail with ``EROFS``.
        sector_size, physical_sector_size, max_threads: see
            :class:`BlockDevice`.
        nowait_reads: see :class:`ImageFile`.

    Yields:
        The open :class:`ImageFile`.

    Raises:
        OSError: the file cannot be opened (``FileNotFoundError``...).
    """
    flags = (os.O_RDONLY if readonly else os.O_RDWR) | getattr(os, "O_CLOEXEC", 0)
    fd = await trio.to_thread.run_sync(os.open, os.fspath(path), flags)
    try:
        dev = ImageFile(
            fd,
            os.fspath(path),
            readonly=readonly,
            sector_size=sector_size,
            physical_sector_size=physical_sector_size,
            max_threads=max_threads,
            nowait_reads=nowait_reads,
        )
    except BaseException:
        os.close(fd)
        raise
    try:
        yield dev
    finally:
        dev.close()


# ---------------------------------------------------------------------------
# Ramdisk
# ---------------------------------------------------------------------------


class RamDisk(BlockDevice):
    """A block device in host memory (copies happen in the event loop: a
    memcpy, never a blocking syscall).

    Args:
        size: bytes (rounded down to whole sectors); starts zeroed.
        initial: optional initial contents (at most ``size`` bytes).
        readonly, sector_size, physical_sector_size: see :class:`BlockDevice`.
    """

    def __init__(
        self,
        size: int,
        *,
        initial: bytes | None = None,
        readonly: bool = False,
        sector_size: int = SECTOR_SIZE,
        physical_sector_size: int | None = None,
    ) -> None:
        super().__init__(
            size=size,
            sector_size=sector_size,
            physical_sector_size=physical_sector_size,
            readonly=readonly,
        )
        self._data = bytearray(self.size)
        if initial is not None:
            if len(initial) > self.size:
                raise ValueError("initial contents larger than the device")
            self._data[: len(initial)] = initial
        self._view = memoryview(self._data)

    def snapshot(self) -> bytes:
        """A copy of the whole device (tests)."""
        return bytes(self._data)

    async def _do_readv(self, offset: int, views: list[memoryview], length: int) -> None:
        await trio.lowlevel.checkpoint()
        self._do_try_readv(offset, views, length)

    def _do_try_readv(self, offset: int, views: list[memoryview], length: int) -> int:
        for view in views:
            n = view.nbytes
            view[:] = self._view[offset : offset + n]
            offset += n
        return length

    async def _do_writev(self, offset: int, views: list[memoryview], length: int,
                         ) -> None:
        await trio.lowlevel.checkpoint()
        for view in views:
            n = view.nbytes
            self._view[offset : offset + n] = view
            offset += n

    async def _do_flush(self) -> None:
        await trio.lowlevel.checkpoint()

    async def _do_discard(self, offset: int, length: int) -> None:
        await trio.lowlevel.checkpoint()
        zeros = bytes(min(length, _ZERO_CHUNK))  # bounded, whatever the guest asked
        end = offset + length
        while offset < end:
            n = min(end - offset, len(zeros))
            self._view[offset : offset + n] = zeros[:n]
            offset += n

    def _do_close(self) -> None:
        self._view.release()


# ---------------------------------------------------------------------------
# Fault injection
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class FaultRule:
    """Fail matching requests with ``error``.

    Attributes:
        op: which operation the rule applies to.
        start, end: byte range ``[start, end)`` a request must overlap
            (``end=None``: to the end of the device). Ignored for flush.
        error: the errno to raise (``EIO``, ``ENOSPC``, ...).
        times: how many more requests to fail (``None``: forever).
    """

    op: Op
    start: int = 0
    end: int | None = None
    error: int = errno.EIO
    times: int | None = None

    def matches(self, op: Op, offset: int, length: int) -> bool:
        """True if this rule fires for the request (does not consume it)."""
        if op != self.op or self.times == 0:
            return False
        if op == "flush":
            return True
        end = self.end if self.end is not None else 1 << 63
        return offset < end and offset + max(length, 1) > self.start


class FaultyDevice(BlockDevice):
    """Wrap ``dev`` and fail chosen requests, to test per-request error paths.

    Checks (range, read-only) happen first, exactly as on the real device; a
    matching :class:`FaultRule` then raises its errno *instead of* doing the
    I/O, so a failed write leaves the inner device unchanged.

    Args:
        dev: the device to wrap (it is closed with the wrapper).
        fail_on: initial rules; more with :meth:`add_fault`.

    Attributes:
        rules: the active rules (mutable).
        injected: how many requests a rule failed.
    """

    def __init__(self, dev: BlockDevice, fail_on: Iterable[FaultRule] = ()) -> None:
        super().__init__(
            size=dev.size,
            sector_size=dev.sector_size,
            physical_sector_size=dev.physical_sector_size,
            readonly=dev.readonly,
        )
        self.inner = dev
        self.rules: list[FaultRule] = list(fail_on)
        self.injected = 0
        self.discard_supported = dev.discard_supported
        self.discard_zeroes_data = dev.discard_zeroes_data

    def add_fault(self, rule: FaultRule) -> None:
        """Activate another rule."""
        self.rules.append(rule)

    def clear_faults(self) -> None:
        """Remove every rule."""
        self.rules.clear()

    def _inject(self, op: Op, offset: int = 0, length: int = 0) -> None:
        for rule in self.rules:
            if rule.matches(op, offset, length):
                if rule.times is not None:
                    rule.times -= 1
                self.injected += 1
                raise _error(rule.error, f"injected {op} fault at [{offset}, +{length})")

    async def _do_readv(self, offset: int, views: list[memoryview], length: int) -> None:
        self._inject("read", offset, length)
        await self.inner.readv(offset, views)

    async def _do_writev(self, offset: int, views: list[memoryview], length: int,
                         ) -> None:
        self._inject("write", offset, length)
        await self.inner.writev(offset, views)

    async def _do_flush(self) -> None:
        self._inject("flush")
        await self.inner.flush()

    async def _do_discard(self, offset: int, length: int) -> None:
        self._inject("discard", offset, length)
        await self.inner.discard(offset, length)

    def _do_close(self) -> None:
        self.inner.close()


# ---------------------------------------------------------------------------
# Crash-consistency model
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class _CachedWrite:
    offset: int
    data: bytes
    seq: int = 0  # completion order; 0 while in flight


class PowerLossDisk(BlockDevice):
    """A ramdisk with a volatile write cache, for crash-consistency tests.

    Model: a write is applied to what reads see when it completes, but it is
    *volatile* until a flush that was called after it completed is
    acknowledged; then it is *durable*. :meth:`power_loss` keeps every durable
    write and, from the volatile and in-flight ones, an arbitrary subset of
    sectors applied in random order (so an older volatile write may land over
    a newer one) - the disk after power loss. A discard is a volatile write of
    zeros.

    Args:
        size: bytes (rounded down to whole sectors); starts zeroed.
        sector_size: also the granularity at which a write may be torn.
    """

    def __init__(self, size: int, *, sector_size: int = SECTOR_SIZE) -> None:
        super().__init__(size=size, sector_size=sector_size)
        self._current = bytearray(self.size)
        self._durable = bytearray(self.size)
        self._volatile: list[_CachedWrite] = []
        self._writes_by_id: dict[int, _CachedWrite] = {}
        self._completed = 0
        self._running = trio.Event()
        self._running.set()
        self.generation = 0  # bumped by every power loss

    def pause(self) -> None:
        """Hold new and current writes/flushes in flight until :meth:`resume`
        (so a test can cut the power with requests deterministically in flight)."""
        if self._running.is_set():
            self._running = trio.Event()

    def resume(self) -> None:
        """Let held requests complete."""
        self._running.set()

    async def _hold(self) -> None:
        if self._running.is_set():
            await trio.lowlevel.checkpoint()
        else:
            await self._running.wait()

    @property
    def volatile_writes(self) -> int:
        """Completed writes not yet covered by an acknowledged flush."""
        return len(self._volatile)

    def snapshot(self) -> bytes:
        """What reads see now."""
        return bytes(self._current)

    def durable_image(self) -> bytes:
        """What is guaranteed to survive a power loss now."""
        return bytes(self._durable)

    async def _cache_write(self, offset: int, data: bytes) -> None:
        rec = _CachedWrite(offset, data)
        key = id(rec)
        generation = self.generation
        self._writes_by_id[key] = rec
        try:
            await self._hold()
        finally:
            self._writes_by_id.pop(key, None)
        if generation != self.generation:
            raise _error(errno.EIO, "power lost during write")
        self._current[offset : offset + len(data)] = data
        self._completed += 1
        rec.seq = self._completed
        self._volatile.append(rec)

    async def _do_readv(self, offset: int, views: list[memoryview], length: int) -> None:
        await trio.lowlevel.checkpoint()
        for view in views:
            n = view.nbytes
            view[:] = self._current[offset : offset + n]
            offset += n

    async def _do_writev(self, offset: int, views: list[memoryview], length: int,
                         ) -> None:
        await self._cache_write(offset, b"".join(views))

    async def _do_discard(self, offset: int, length: int) -> None:
        await self._cache_write(offset, bytes(length))

    async def _do_flush(self) -> None:
        cutoff = self._completed
        generation = self.generation
        await self._hold()
        if generation != self.generation:
            raise _error(errno.EIO, "power lost during flush")
        covered = 0
        for rec in self._volatile:  # completion order, so a prefix is covered
            if rec.seq > cutoff:
                break
            self._durable[rec.offset : rec.offset + len(rec.data)] = rec.data
            covered += 1
        del self._volatile[:covered]

    def power_loss(self, rng: random.Random, persist_probability: float = 0.5) -> None:
        """Cut the power: keep durable data, a random part of the rest.

        Every volatile or in-flight write is visited in a random order; each of
        its sectors reaches the medium with ``persist_probability``. Reads then
        see the medium; writes/flushes in flight fail with ``EIO``.

        Args:
            rng: the source of randomness (seeded by the test).
            persist_probability: 0 drops every volatile write, 1 keeps them all
                (still in random order).
        """
        candidates = self._volatile + list(self._writes_by_id.values())
        rng.shuffle(candidates)
        ss = self.sector_size
        for rec in candidates:
            for pos in range(0, len(rec.data), ss):
                if rng.random() < persist_probability:
                    at = rec.offset + pos
                    self._durable[at : at + ss] = rec.data[pos : pos + ss]
        self._volatile.clear()
        self._writes_by_id.clear()
        self._current[:] = self._durable
        self.generation += 1
