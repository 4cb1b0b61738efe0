"""Classic libpcap capture files, written without blocking the event loop.

Format (libpcap "savefile", what ``tcpdump -w`` writes and every tool reads):

* one 24-byte global header ``pcap_hdr_t``: magic ``0xa1b2c3d4`` (microsecond
  timestamps), version 2.4, ``thiszone`` 0, ``sigfigs`` 0, ``snaplen``, and the
  link type (1 = Ethernet). All fields are in the writer's byte order; readers
  detect it from the magic. We always write little-endian.
* per frame a 16-byte record header ``pcaprec_hdr_t``: ``ts_sec``,
  ``ts_usec``, ``incl_len`` (bytes stored, at most ``snaplen``) and
  ``orig_len`` (bytes on the wire), then the first ``incl_len`` bytes.

:func:`global_header` and :func:`record` are pure. :class:`PcapWriter` is the
runtime sink: :meth:`PcapWriter.write_frame` is synchronous and never blocks -
it appends the encoded record to an in-memory buffer bounded by
``max_buffer`` bytes (records being written still count) and drops
(counting ``dropped``) past that. A flusher task started by :func:`open_pcap`
writes the buffer to the file **in a worker thread** whenever there is
something to write, so memory stays under ``2 * max_buffer`` (the queue plus
one joined copy being written) and the event loop never waits for the disk.
Closing flushes what is left.

Worked example::

    async with open_pcap("/tmp/xenbr0.pcap") as pcap:
        pcap.write_frame(frame)        # timestamped with the trio clock
    # the file now holds the header and one record
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import AsyncIterator, Callable
from typing import BinaryIO

import trio

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "GLOBAL_HEADER",
    "LINKTYPE_ETHERNET",
    "PCAP_MAGIC",
    "PCAP_VERSION",
    "RECORD_HEADER",
    "SNAPLEN",
    "PcapWriter",
    "global_header",
    "open_pcap",
    "record",
]

PCAP_MAGIC = 0xA1B2C3D4  # microsecond-resolution timestamps
PCAP_VERSION = (2, 4)
LINKTYPE_ETHERNET = 1
SNAPLEN = 65535
DEFAULT_MAX_BUFFER = 1 << 20

# pcap_hdr_t: magic, version_major, version_minor, thiszone, sigfigs, snaplen, network
GLOBAL_HEADER = struct.Struct("<IHHiIII")
assert GLOBAL_HEADER.size == 24
# pcaprec_hdr_t: ts_sec, ts_usec, incl_len, orig_len
RECORD_HEADER = struct.Struct("<IIII")
assert RECORD_HEADER.size == 16


def global_header(snaplen: int = SNAPLEN, linktype: int = LINKTYPE_ETHERNET) -> bytes:
    """The 24-byte file header.

    Args:
        snaplen: the largest number of bytes stored per frame.
        linktype: LINKTYPE_* of every frame (1 = Ethernet).

    Returns:
        The header bytes.
    """
    return GLOBAL_HEADER.pack(PCAP_MAGIC, *PCAP_VERSION, 0, 0, snaplen, linktype)


def record(timestamp: float, frame: bytes, snaplen: int = SNAPLEN) -> bytes:
    """One record: header plus the frame truncated to ``snaplen``.

    Args:
        timestamp: seconds (since the epoch, or since the trio clock's zero);
            stored with microsecond resolution, negative values as 0.
        frame: the link-layer frame.
        snaplen: truncation length.

    Returns:
        The record bytes.
    """
    usec_total = max(0, round(timestamp * 1_000_000))
    sec, usec = divmod(usec_total, 1_000_000)
    stored = frame[:snaplen]
    return RECORD_HEADER.pack(sec & 0xFFFFFFFF, usec, len(stored), len(frame)) + bytes(stored)


class PcapWriter:
    """A bounded, buffered pcap sink; use :func:`open_pcap` to get one.

    Args:
        file: a binary file already holding the global header.
        snaplen: truncation length per frame.
        clock: timestamps in seconds (default: the trio clock; pass
            ``time.time`` for wall-clock captures).
        max_buffer: bytes of encoded records that may wait for the flusher.

    Attributes:
        frames: records accepted.
        dropped: records refused because the buffer was full.
        bytes_written: bytes handed to the file (header excluded).
    """

    def __init__(
        self,
        file: BinaryIO,
        *,
        snaplen: int = SNAPLEN,
        clock: Callable[[], float] | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> None:
        self._file = file
        self.snaplen = snaplen
        self._clock = clock or trio.current_time
        self.max_buffer = max_buffer
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._wake = trio.Event()
        self._lock = trio.Lock()  # one write at a time, in queue order
        self._closed = False
        self.frames = 0
        self.dropped = 0
        self.bytes_written = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes waiting for the flusher."""
        return self._pending_bytes

    def write_frame(self, frame: bytes, timestamp: float | None = None) -> bool:
        """Queue one frame; never blocks, never waits.

        Args:
            frame: the Ethernet frame (may come from a guest: only its length
                is looked at).
            timestamp: seconds; default ``clock()``.

        Returns:
            True if queued, False if dropped (buffer full or writer closed).
        """
        if self._closed:
            return False
        ts = self._clock() if timestamp is None else timestamp
        rec = record(ts, frame, self.snaplen)
        if self._pending_bytes + len(rec) > self.max_buffer:
            self.dropped += 1
            return False
        self._pending.append(rec)
        self._pending_bytes += len(rec)
        self.frames += 1
        self._wake.set()
        return True

    def _write_sync(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()

    async def flush(self) -> None:
        """Write everything queued so far to the file (in a worker thread).

        Raises:
            OSError: the file write failed.
        """
        async with self._lock:
            if not self._pending:
                return
            count = len(self._pending)
            data = b"".join(self._pending)
            # Records leave the queue only once written: a flush cancelled
            # before its thread started loses nothing (the next flush retries).
            await trio.to_thread.run_sync(self._write_sync, data)
            del self._pending[:count]
            self._pending_bytes -= len(data)
            self.bytes_written += len(data)

    async def run_flusher(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Flush whenever frames arrive, until cancelled."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self.flush()

    def _close_nowait(self) -> None:
        self._closed = True


@contextlib.asynccontextmanager
async def open_pcap(
    path: str | os.PathLike[str],
    *,
    snaplen: int = SNAPLEN,
    linktype: int = LINKTYPE_ETHERNET,
    clock: Callable[[], float] | None = None,
    max_buffer: int = DEFAULT_MAX_BUFFER,
) -> AsyncIterator[PcapWriter]:
    """Create (truncate) a pcap file and run its flusher; flush and close on exit.

    Args:
        path: file to write (dom0-controlled).
        snaplen, linktype: written into the global header.
        clock, max_buffer: see :class:`PcapWriter`.

    Yields:
        The :class:`PcapWriter`.

    Raises:
        OSError: the file cannot be created or written.
    """

    def _create() -> BinaryIO:
        f = open(path, "wb")  # noqa: SIM115 - closed below, in a thread
        try:
            f.write(global_header(snaplen, linktype))
            f.flush()
        except BaseException:
            f.close()
            raise
        return f

    f = await trio.to_thread.run_sync(_create)
    writer = PcapWriter(f, snaplen=snaplen, clock=clock, max_buffer=max_buffer)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run_flusher)
            try:
                yield writer
            finally:
                nursery.cancel_scope.cancel()
    finally:
        writer._close_nowait()
        with trio.CancelScope(shield=True):
            try:
                await writer.flush()
            finally:
                await trio.to_thread.run_sync(f.close)
