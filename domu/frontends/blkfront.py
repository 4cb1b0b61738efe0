"""Guest kernel: the PV block frontend (Linux ``drivers/block/xen-blkfront.c``).

Theory of operation
-------------------
**Handshake** (xen-abi 5.3, the vbd rows of :mod:`ring.xenbus`). On backend
InitWait, :meth:`BlkFront.talk_to_backend` reads ``max-ring-page-order``,
allocates ``2**order`` ring pages (capped by :attr:`BlkFront.max_ring_page_order`),
initialises and grants them, allocates an unbound event channel and writes,
in one transaction: ``ring-ref`` (or ``ring-page-order`` + ``ring-ref0..N``),
``event-channel``, ``protocol = x86_64-abi`` and ``feature-persistent = 1``;
the bus then writes state 3. On backend Connected, :meth:`BlkFront.connect`
reads ``sectors``, ``info``, ``sector-size`` (required), the optional
``physical-sector-size`` and the features (``feature-flush-cache``,
``feature-barrier``, ``feature-discard``, ``feature-persistent``,
``feature-max-indirect-segments``), sizes the request pool and starts the
response worker; state 4. A later Connected re-reads ``sectors`` (resize).

**Shadow table.** Every request in flight has an entry ``shadow[id]``; the
``id`` written into the request is the shadow index (never a grant ref, never
a pointer), handed out by a FIFO pool and returned only once its response was
consumed. Holding an id therefore also guarantees a free ring slot. Each id
owns a lazily allocated set of data pages (and indirect-descriptor pages),
so the guest memory a disk may use is bounded: ``usable ids x pages per
request`` (see :data:`MAX_BUFFER_PAGES`). Callers beyond the pool wait in
FIFO order.

**Copies.** A request copies the caller's bytes into its pages (writes) or
out of them (reads); the backend sees only the pages. Each is one copy: an
id's data pages are allocated together, so they are usually machine-contiguous
and :meth:`~hypervisor.memory.GuestMemory.span` gives one view over them (a
single ``memcpy``; page by page otherwise). A read is copied by the *caller*
once it wakes up, straight into the ``bytes`` it returns; until then the
answered id stays reserved (its pages cannot be reused) and is given back right
after the copy. A caller that leaves before the answer (cancelled) frees its id
when the answer comes; a device that disconnects copies held reads first, since
its pages are freed. (Copying in the completion path instead would allocate
every in-flight read's result at once, and glibc then trims and re-faults
those megabytes on every round.)

**Grants.**

* persistent (both ends wrote ``feature-persistent = 1``): each page is granted
  read-write once, the first time it is used, and stays granted until the
  device disconnects; the backend keeps it mapped (xen-abi 3.5);
* otherwise each request grants its pages (read-only for a disk write,
  writable for a disk read; indirect pages read-only) and ends access when
  the response arrives. If ``end_foreign_access`` is refused - the backend
  still maps the page - that is a protocol error (Linux: "backed has not
  unmapped grant") and the device is broken; the page goes to a deferred list,
  is never reused or freed while mapped, and is retried on every later pass.
  The list is bounded: a broken device issues nothing new, so it holds at most
  the pages of the requests that were in flight.

**Hardening (XSA-376/391/396).** Responses are consumed with
:meth:`ring.sring.FrontRing.get_responses` (``rsp_prod`` read once, checked
against the ring size, each slot copied once) and each response is checked
against its shadow: ``id`` in range, that id in flight, ``operation`` equal
to the shadow's (the inner op for an indirect request). Any violation marks
the device **broken**: every pending and later request fails with ``EIO``
(:class:`~domu.blockdev.BlockDeviceError`), the ring worker stops and the
device goes to Closing; nothing else in the guest is touched.

**Status.** ``OKAY`` completes the request; ``ERROR`` fails that request only
(``EIO``); ``EOPNOTSUPP`` (or ``ERROR`` on an empty flush, as Linux) for a
flush/barrier/discard turns that feature off and fails the request with
``EOPNOTSUPP`` - later flushes are no-ops, later discards ``EOPNOTSUPP``.

**Teardown.** On backend Closing/Closed the bus calls :meth:`disconnect`:
responses already on the ring are completed, every request still in flight
fails with ``ENODEV``, grants are ended (still-mapped ones deferred by the
base class, their pages kept), and later I/O raises ``ENODEV``.

Worked example (persistent grants, one 12 KiB write at byte 4096)::

    await disk.write(4096, data)         # id 0 from the pool; pages 0..2 of id 0
                                         # (granted RW on first use) get the bytes
    # ring: {op=WRITE, id=0, sector=8, seg=[(g0,0,7),(g1,0,7),(g2,0,7)]}; notify
    # backend: {id=0, op=WRITE, OKAY} -> shadow[0] cleared, id 0 back in the pool
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from domu.blockdev import BlockDevice, BlockDeviceError, io_error
from domu.evtchn import PortWaiter
from domu.frontends.bus import Frontend, register_frontend
from hypervisor.types import Gfn, GrantRef, Port
from ring.blkif import (
    BLKIF_CODEC,
    BLKIF_DISCARD_SECURE,
    BLKIF_MAX_INDIRECT_SEGMENTS,
    BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
    BLKIF_SEGS_PER_INDIRECT_FRAME,
    SECTOR_SIZE,
    VDISK_READONLY,
    XEN_IO_PROTO_ABI_NATIVE,
    BlkifDiscardRequest,
    BlkifIndirectRequest,
    BlkifRequest,
    BlkifResponse,
    BlkifSegment,
    encode_indirect_segments,
)
from ring.errors import PeerProtocolError
from ring.sring import PAGE_SIZE, FrontRing

__all__ = ["MAX_BUFFER_PAGES", "BlkFront", "BlkfrontBroken", "BlkfrontDisk"]

_log = logging.getLogger("xensim.domu.blkfront")

MAX_BUFFER_PAGES = 8192
"""At most this many data pages (32 MiB) per disk - plus each id's indirect
pages - and at most half the guest's free pages at connect time; the usable ids
shrink to fit (32 ids of 1 MiB requests)."""
MAX_SECTORS_DIGITS = 20


class BlkfrontBroken(PeerProtocolError):
    """The backend broke the blkif protocol; the device is disabled."""


def _number(raw: bytes | None, default: int | None = None, *, what: str = "") -> int:
    """Parse a decimal xenstore value (backend-controlled); never trusts it."""
    if raw is None:
        if default is None:
            raise PeerProtocolError(f"missing backend key {what}")
        return default
    s = raw.strip()
    if not s.isdigit() or len(s) > MAX_SECTORS_DIGITS:
        if default is None:
            raise PeerProtocolError(f"backend key {what}: not a number: {raw[:32]!r}")
        return default
    return int(s)


@dataclass(slots=True)
class _Page:
    gfn: Gfn
    view: memoryview
    ref: GrantRef | None = None  # the persistent grant, once granted


class _Done:
    """A one-shot completion awaited by at most one task (the request's caller).

    What ``trio.Event`` does for this case, minus the task set and a frame:
    the caller parks itself with :func:`trio.lowlevel.wait_task_rescheduled`
    (see :meth:`BlkFront._wait_all`) and :meth:`set` reschedules it.
    """

    __slots__ = ("flag", "task")

    def __init__(self) -> None:
        self.flag = False
        self.task: trio.lowlevel.Task | None = None

    def is_set(self) -> bool:
        return self.flag

    def set(self) -> None:
        if self.flag:
            return
        self.flag = True
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def abort(self, _: object) -> trio.lowlevel.Abort:
        self.task = None  # cancelled while parked: nothing to wake any more
        return trio.lowlevel.Abort.SUCCEEDED


@dataclass(slots=True, eq=False)
class _Shadow:
    """One request in flight (``struct blk_shadow``)."""

    id: int
    op: int  # the operation the response must carry (inner op for INDIRECT)
    nr_segments: int
    refs: list[tuple[GrantRef, _Page]]  # per-request grants (non-persistent)
    pages: list[_Page]  # data pages, in segment order
    nread: int = 0  # a read: bytes the caller copies out of the pages
    span: memoryview | None = None  # the request's bytes as one view, if contiguous
    done: _Done = field(default_factory=_Done)
    error: BlockDeviceError | None = None
    held: bool = False  # answered OKAY; the caller still has to copy, then free the id
    abandoned: bool = False  # the caller left: free the id as soon as it is answered
    data: bytes | None = None  # copied early (the device went away while held)


def _fill(span: memoryview | None, pages: Sequence[_Page], chunk: memoryview) -> None:
    """Copy a write's bytes into its pages (one memcpy when they are contiguous)."""
    if span is not None:
        span[:] = chunk
        return
    lo, nbytes = 0, chunk.nbytes
    for page in pages:
        hi = min(lo + PAGE_SIZE, nbytes)
        page.view[: hi - lo] = chunk[lo:hi]
        lo = hi


def _read_parts(sh: _Shadow) -> list[memoryview | bytes]:
    """Where a completed read's bytes are, in order (to be copied once)."""
    if sh.data is not None:
        return [sh.data]
    if sh.span is not None:
        return [sh.span]
    views: list[memoryview | bytes] = [page.view for page in sh.pages]
    tail = sh.nread - (len(views) - 1) * PAGE_SIZE
    if tail < PAGE_SIZE:
        views[-1] = sh.pages[-1].view[:tail]
    return views


class _IdPool:
    """FIFO hand-out of shadow ids; ``close`` fails every waiter and later call."""

    def __init__(self, n: int) -> None:
        self._free = list(range(n - 1, -1, -1))
        self._waiters: deque[list[object]] = deque()
        self.error: BlockDeviceError | None = None
        self.size = n

    def close(self, error: BlockDeviceError) -> None:
        self.error = error
        while self._waiters:
            w = self._waiters.popleft()
            w[1] = error
            w[0].set()  # type: ignore[attr-defined]

    async def get(self) -> int:
        if self.error is not None:
            raise BlockDeviceError(self.error.errno, self.error.strerror)
        if self._free and not self._waiters:
            return self._free.pop()
        w: list[object] = [trio.Event(), None]
        self._waiters.append(w)
        try:
            await w[0].wait()  # type: ignore[attr-defined]
        except BaseException:
            if w[1] is None:
                self._waiters.remove(w)
            elif isinstance(w[1], int):
                self.put(w[1])
            raise
        if isinstance(w[1], BlockDeviceError):
            raise BlockDeviceError(w[1].errno, w[1].strerror)
        return w[1]  # type: ignore[return-value]

    def put(self, i: int) -> None:
        if self.error is None and self._waiters:
            w = self._waiters.popleft()
            w[1] = i
            w[0].set()  # type: ignore[attr-defined]
        else:
            self._free.append(i)


class BlkfrontDisk(BlockDevice):
    """What a guest program holds: the :class:`~domu.blockdev.BlockDevice` API
    (``read``, ``write``, ``flush``, ``discard``, ``open``) of one :class:`BlkFront`.

    Args:
        front: the driver instance.
    """

    def __init__(self, front: BlkFront) -> None:
        super().__init__()
        self.front = front

    @property  # type: ignore[override]
    def size(self) -> int:
        """Bytes (``sectors`` x 512; follows a resize)."""
        return self.front.size

    @property  # type: ignore[override]
    def sector_size(self) -> int:
        """Logical sector size in bytes."""
        return self.front.sector_size

    @property  # type: ignore[override]
    def readonly(self) -> bool:
        """The backend reported ``VDISK_READONLY``."""
        return self.front.readonly

    @property
    def broken(self) -> str | None:
        """Why the backend was declared broken, if it was."""
        return self.front.broken

    async def _check_usable(self) -> None:
        await self.front.check_usable()

    def _usable(self) -> bool:
        front = self.front
        return front.broken is None and not front.gone and front._ids is not None \
            and front._connected.is_set()

    # These two hand back blkfront's coroutine instead of awaiting it: every
    # frame in an await chain is resumed on each wake-up (the hot path).
    def _read_aligned(self, offset: int, length: int,  # type: ignore[override]
                      ) -> Coroutine[Any, Any, bytes]:
        return self.front._rw(BLKIF_OP_READ, offset, None, length)

    def _write_aligned(self, offset: int, data: memoryview,  # type: ignore[override]
                       ) -> Coroutine[Any, Any, bytes]:
        return self.front._rw(BLKIF_OP_WRITE, offset, data, data.nbytes)

    async def _flush_cache(self) -> None:
        await self.front.flush_cache()

    async def _discard_aligned(self, offset: int, length: int, secure: bool) -> None:
        await self.front.discard_aligned(offset, length, secure)


@register_frontend
class BlkFront(Frontend):
    """One virtual block device (``device/vbd/<devid>``).

    Guest programs use :attr:`disk` (a :class:`BlkfrontDisk`; ``guest.disk("xvda")``).

    Class attributes (Linux module parameters):
        max_ring_page_order: cap on the ring order we accept (backend offers
            ``max-ring-page-order``).
        max_indirect_segments: cap on segments per indirect request (Linux
            default 32; the backend's ``feature-max-indirect-segments`` caps it too).
        use_persistent: write ``feature-persistent = 1``.

    Attributes:
        disk: the program-facing disk.
        size / sector_size / physical_sector_size / readonly / info: from the backend.
        broken: why the backend was declared broken (None while healthy).
        gone: the device disconnected; I/O raises ENODEV.
        persistent: persistent grants negotiated.
        segs_per_request: 11, or the negotiated indirect maximum.
        feature_flush / feature_barrier / feature_discard / discard_secure:
            what the backend offered (turned off on EOPNOTSUPP).
        deferred: (ref, page) grants the backend did not release.
        stats: counters (requests, responses, notifications, errors).
    """

    kind = "vbd"
    max_ring_page_order = 4
    max_indirect_segments = 32
    use_persistent = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.size = 0
        self.sector_size = SECTOR_SIZE
        self.readonly = False
        self.disk = BlkfrontDisk(self)
        self.broken: str | None = None
        self.gone = False
        self.persistent = False
        self.segs_per_request = BLKIF_MAX_SEGMENTS_PER_REQUEST
        self.feature_flush = False
        self.feature_barrier = False
        self.feature_discard = False
        self.discard_secure = False
        self.physical_sector_size = SECTOR_SIZE
        self.info = 0
        self.ring_order = 0
        self.deferred: list[tuple[GrantRef, _Page]] = []
        self.stats = {"requests": 0, "responses": 0, "notifications": 0, "errors": 0}
        self.ring: FrontRing[object, BlkifResponse] | None = None
        self.port: Port | None = None
        self._waiter: PortWaiter | None = None
        self._connected = trio.Event()
        self._ids: _IdPool | None = None
        self._shadow: list[_Shadow | None] = []
        self._data_pages: list[list[_Page]] = []
        # per id: one view over all its data pages while they are machine-contiguous
        self._spans: list[memoryview | None] = []
        # persistent mode: per id, the last (nbytes, pages, span, request template)
        # built; same-sized requests reuse segments and indirect pages as they are
        self._shapes: list[tuple[int, list[_Page], memoryview | None,
                                 tuple[object, ...]] | None] = []
        self._ind_pages: list[list[_Page]] = []
        self._page_budget = 0
        # answered reads whose caller has not copied the bytes out yet (their ids,
        # and so their pages, stay reserved until it has)
        self._held: set[_Shadow] = set()
        self._handle = self.dev.devid & 0xFFFF

    # -- handshake ---------------------------------------------------------------------

    async def talk_to_backend(self) -> None:
        """Allocate + grant the ring, alloc the port, publish the keys in one transaction."""
        self.broken = None
        self.gone = False
        self._connected = trio.Event()
        offered = _number(await self.read_backend("max-ring-page-order"), 0)
        order = min(offered, self.max_ring_page_order)
        self.ring_order = order
        pages = [self.alloc_page() for _ in range(1 << order)]
        self.ring = FrontRing.init([v for _, v in pages], BLKIF_CODEC)
        refs = [self.grant_page(gfn) for gfn, _ in pages]
        self.port, self._waiter = self.alloc_port_waiter()
        keys: list[tuple[str, str]] = []
        if order > 0:
            keys.append(("ring-page-order", str(order)))
            keys += [(f"ring-ref{i}", str(r)) for i, r in enumerate(refs)]
        else:
            keys.append(("ring-ref", str(refs[0])))
        keys += [("event-channel", str(self.port)), ("protocol", XEN_IO_PROTO_ABI_NATIVE),
                 ("feature-persistent", "1" if self.use_persistent else "0")]
        base = self.dev.path

        async def publish(tx: object) -> None:
            for key, value in keys:
                await tx.write(f"{base}/{key}", value)  # type: ignore[attr-defined]

        await self.xs.transaction(publish)

    async def connect(self) -> None:
        """Read the disk's size and features, size the request pool, start I/O.

        Raises:
            PeerProtocolError: a required key is missing or malformed (-> fatal).
        """
        assert self.ring is not None
        sectors = _number(await self.read_backend("sectors"), what="sectors")
        self.info = _number(await self.read_backend("info"), what="info")
        ss = _number(await self.read_backend("sector-size"), what="sector-size")
        if ss < SECTOR_SIZE or ss > PAGE_SIZE or ss & (ss - 1):
            raise PeerProtocolError(f"unsupported sector-size {ss}")
        self.sector_size = ss
        self.physical_sector_size = _number(await self.read_backend("physical-sector-size"), ss)
        self.size = sectors * SECTOR_SIZE
        self.readonly = bool(self.info & VDISK_READONLY)
        await self._gather_features()
        segs = self.segs_per_request
        per = segs + self._indirect_pages_for(segs)
        usable = max(1, min(self.ring.size, MAX_BUFFER_PAGES // segs,
                            self.pages.free_count // 2 // per))
        self._page_budget = usable * per
        self._ids = _IdPool(usable)
        self._shadow = [None] * self.ring.size
        self._data_pages = [[] for _ in range(usable)]
        self._spans = [None] * usable
        self._ind_pages = [[] for _ in range(usable)]
        self._shapes = [None] * usable
        self.start_worker(self._ring_worker)
        self._connected.set()

    async def _gather_features(self) -> None:
        """``blkfront_gather_backend_features``."""
        rb = self.read_backend
        self.feature_barrier = _number(await rb("feature-barrier"), 0) == 1
        self.feature_flush = _number(await rb("feature-flush-cache"), 0) == 1
        self.feature_discard = _number(await rb("feature-discard"), 0) == 1
        self.discard_secure = self.feature_discard and _number(await rb("discard-secure"), 0) == 1
        self.persistent = self.use_persistent and _number(await rb("feature-persistent"), 0) == 1
        indirect = _number(await rb("feature-max-indirect-segments"), 0)
        if indirect > BLKIF_MAX_SEGMENTS_PER_REQUEST:
            self.segs_per_request = min(indirect, self.max_indirect_segments,
                                        BLKIF_MAX_INDIRECT_SEGMENTS)
        else:
            self.segs_per_request = BLKIF_MAX_SEGMENTS_PER_REQUEST

    async def backend_changed_again(self) -> None:
        """Connected again: re-read ``sectors`` (a resize)."""
        raw = await self.read_backend("sectors")
        if raw is not None and raw.strip().isdigit() and len(raw) <= MAX_SECTORS_DIGITS:
            self.size = int(raw) * SECTOR_SIZE

    async def disconnect(self) -> None:
        """Stop I/O: finish what the backend already answered, fail the rest (ENODEV)."""
        await self.stop_worker()
        if self.ring is not None and self.broken is None and self._ids is not None:
            with contextlib.suppress(PeerProtocolError):
                self._drain()
        self.gone = True
        for sh in self._held:  # answered before the end: copy now, the pages go below
            sh.data = b"".join(_read_parts(sh))
            sh.held = False
        self._held.clear()
        self._fail_all(errno.ENODEV, "device disconnected")
        self._connected.set()  # wake anyone waiting for a connection: it is gone
        # per-request grants still live and deferred ones: the base class ends
        # them, keeps the refs still mapped and then keeps every page.
        for sh in self._shadow:
            if sh is not None:
                self._refs.extend((ref, None) for ref, _ in sh.refs)
        self._refs.extend((ref, None) for ref, _ in self.deferred)
        self.deferred = []
        self._shadow = []
        self._data_pages, self._ind_pages, self._shapes, self._spans = [], [], [], []
        self.ring = None
        self.port = self._waiter = None
        await super().disconnect()

    # -- the disk's primitives (sector-aligned byte ranges) -----------------------------

    async def check_usable(self) -> None:
        """Wait for Connected; raise EIO (broken) or ENODEV (gone)."""
        if not self._connected.is_set():
            await self._connected.wait()
        if self.broken is not None:
            raise io_error(errno.EIO, f"{self.dev.path}: disabled ({self.broken})")
        if self.gone or self._ids is None:
            raise io_error(errno.ENODEV, f"{self.dev.path}: no such device")

    @property
    def max_request_bytes(self) -> int:
        """Bytes one ring request carries (segments x 4 KiB)."""
        return self.segs_per_request * PAGE_SIZE

    async def read_aligned(self, offset: int, length: int) -> bytes:
        """Read whole sectors (copied once out of the granted pages)."""
        return await self._rw(BLKIF_OP_READ, offset, None, length)

    async def write_aligned(self, offset: int, data: memoryview) -> None:
        """Write whole sectors."""
        await self._rw(BLKIF_OP_WRITE, offset, data, data.nbytes)

    def _rw(self, op: int, offset: int, buf: memoryview | None, length: int,
            ) -> Coroutine[Any, Any, bytes]:
        """Split into requests of <= :attr:`max_request_bytes`, pipeline, wait for all.

        Returns:
            The coroutine to await: it returns a read's bytes (``b""`` for a write).
        """
        if length <= self.max_request_bytes:
            return self._rw_one(op, offset, buf, length)
        return self._rw_many(op, offset, buf, length)

    async def _rw_many(self, op: int, offset: int, buf: memoryview | None, length: int,
                       ) -> bytes:
        step = self.max_request_bytes
        pending: list[_Shadow] = []
        try:
            try:
                pos = 0
                while pos < length:
                    n = min(step, length - pos)
                    rid = await self._get_id()
                    pending.append(self._queue_rw(rid, op, (offset + pos) // SECTOR_SIZE, n,
                                                  None if buf is None else buf[pos : pos + n]))
                    pos += n
            finally:
                self._push()
            await self._wait_all(pending)
            if op != BLKIF_OP_READ:
                return b""
            if len(pending) == 1:
                return b"".join(_read_parts(pending[0]))
            return b"".join([part for sh in pending for part in _read_parts(sh)])
        finally:
            if op == BLKIF_OP_READ:
                self._release_reads(pending)

    async def _rw_one(self, op: int, offset: int, buf: memoryview | None, length: int,
                      ) -> bytes:
        """:meth:`_rw` for one request (the common case, kept short)."""
        ids = self._ids
        if ids is not None and ids._free and not ids._waiters and ids.error is None:
            rid = ids._free.pop()
        else:
            rid = await self._get_id()
        try:
            sh = self._queue_rw(rid, op, offset // SECTOR_SIZE, length, buf)
        finally:
            self._push()
        done = sh.done  # _wait_all((sh,)), inlined: one frame less per wake-up
        try:
            if not done.flag:
                done.task = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(done.abort)
            if sh.error is not None:
                raise BlockDeviceError(sh.error.errno, sh.error.strerror)
            if op != BLKIF_OP_READ:
                return b""
            parts = _read_parts(sh)
            return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
        finally:
            if op == BLKIF_OP_READ:
                self._release_reads((sh,))

    def _release_reads(self, pending: Sequence[_Shadow]) -> None:
        """The caller is done with its reads: free the ids of the answered ones;
        the ones still in flight free theirs when answered."""
        for sh in pending:
            if sh.held:
                sh.held = False
                self._held.discard(sh)
                assert self._ids is not None
                self._ids.put(sh.id)
            elif not sh.done.is_set():
                sh.abandoned = True

    async def flush_cache(self) -> None:
        """FLUSH_DISKCACHE, else WRITE_BARRIER, else nothing (write-through)."""
        if self.feature_flush:
            op = BLKIF_OP_FLUSH_DISKCACHE
        elif self.feature_barrier:
            op = BLKIF_OP_WRITE_BARRIER
        else:
            return
        rid = await self._get_id()
        sh = self._queue(rid, BlkifRequest(op, self._handle, rid, 0, ()), op, 0, [], [])
        self._push()
        await self._wait_all([sh])

    async def discard_aligned(self, offset: int, length: int, secure: bool) -> None:
        """One DISCARD request."""
        if not self.feature_discard:
            raise io_error(errno.EOPNOTSUPP, "the backend offers no discard")
        if secure and not self.discard_secure:
            raise io_error(errno.EOPNOTSUPP, "the backend offers no secure discard")
        rid = await self._get_id()
        req = BlkifDiscardRequest(BLKIF_OP_DISCARD, BLKIF_DISCARD_SECURE if secure else 0,
                                  self._handle, rid, offset // SECTOR_SIZE,
                                  length // SECTOR_SIZE)
        sh = self._queue(rid, req, BLKIF_OP_DISCARD, 0, [], [])
        self._push()
        await self._wait_all([sh])

    # -- submitting ---------------------------------------------------------------------

    async def _get_id(self) -> int:
        ids = self._ids
        if ids is None:
            raise io_error(errno.ENODEV, f"{self.dev.path}: no such device")
        if ids._free and not ids._waiters and ids.error is None:
            return ids._free.pop()
        self._push()  # let the backend work on what we queued while we wait
        return await ids.get()

    @staticmethod
    def _indirect_pages_for(nsegs: int) -> int:
        if nsegs <= BLKIF_MAX_SEGMENTS_PER_REQUEST:
            return 0
        return -(-nsegs // BLKIF_SEGS_PER_INDIRECT_FRAME)

    def _page(self, pool: list[_Page], i: int) -> _Page:
        """Page ``i`` of an id's pool, allocated on first use."""
        while len(pool) <= i:
            try:
                gfn, view = self.alloc_page()
            except MemoryError:
                raise io_error(errno.ENOMEM, "guest out of pages for disk buffers") from None
            pool.append(_Page(gfn, view))
        return pool[i]

    def _data_span(self, rid: int, npages: int, nbytes: int) -> memoryview | None:
        """The first ``nbytes`` of id ``rid``'s data pages as one view, or None
        when those pages are not machine-contiguous."""
        pool = self._data_pages[rid]
        if npages == 1:
            return pool[0].view[:nbytes]
        span = self._spans[rid]
        if span is None or span.nbytes < nbytes:
            first = pool[0].gfn
            if any(page.gfn != first + i for i, page in enumerate(pool)):
                return None
            span = self._spans[rid] = self.hc.memory.span(first, len(pool))
            if span is None:
                return None
        return span[:nbytes]

    def _grant(self, page: _Page, readonly: bool) -> tuple[int, GrantRef | None]:
        """The ref to put in a segment, and the per-request ref to end later (or None)."""
        if self.persistent:
            if page.ref is None:
                page.ref = self.grant_page(page.gfn)  # RW, kept while the device lives
            return page.ref, None
        ref = self.grants.grant_access(self.dev.backend_id, page.gfn, readonly)
        return ref, ref

    def _queue_rw(self, rid: int, op: int, sector: int, nbytes: int,
                  chunk: memoryview | None) -> _Shadow:
        """Queue one READ (``chunk`` None) or WRITE of ``nbytes`` on id ``rid``."""
        shape = self._shapes[rid] if self.persistent else None
        if shape is not None and shape[0] == nbytes:
            # fast path: same size as this id's last request; the pages, their
            # persistent grants, the segments and the indirect pages are unchanged
            pages, span, t = shape[1], shape[2], shape[3]
            if chunk is not None:
                _fill(span, pages, chunk)
            if t[0] == BLKIF_OP_INDIRECT:  # persistent grants are RW: any op fits
                req: object = BlkifIndirectRequest(t[0], op, t[2], rid, sector, t[3], t[4])
            else:
                req = BlkifRequest(op, t[1], rid, sector, t[2])
            return self._queue(rid, req, op, len(pages), [], pages,
                               0 if chunk is not None else nbytes, span)
        sh, template = self._queue_rw_slow(rid, op, sector, nbytes, chunk)
        if self.persistent:
            self._shapes[rid] = (nbytes, sh.pages, sh.span, template)
        return sh

    def _queue_rw_slow(self, rid: int, op: int, sector: int, nbytes: int,
                       chunk: memoryview | None) -> tuple[_Shadow, tuple[object, ...]]:
        """Build a request from scratch: pages, grants, segments, indirect pages."""
        npages = -(-nbytes // PAGE_SIZE)
        data_pool = self._data_pages[rid]
        writing = op == BLKIF_OP_WRITE
        refs: list[tuple[GrantRef, _Page]] = []
        pages: list[_Page] = []
        segs: list[BlkifSegment] = []
        try:
            for i in range(npages):
                pages.append(self._page(data_pool, i))
            span = self._data_span(rid, npages, nbytes)
            if chunk is not None:
                _fill(span, pages, chunk)
            for i, page in enumerate(pages):
                n = min(PAGE_SIZE, nbytes - i * PAGE_SIZE)
                gref, own = self._grant(page, readonly=writing)
                if own is not None:
                    refs.append((own, page))
                segs.append(BlkifSegment(gref, 0, n // SECTOR_SIZE - 1))
            if npages <= BLKIF_MAX_SEGMENTS_PER_REQUEST:
                req: object = BlkifRequest(op, self._handle, rid, sector, tuple(segs))
                template: tuple[object, ...] = (op, self._handle, tuple(segs))
            else:
                grefs = []
                for j, image in enumerate(encode_indirect_segments(segs)):
                    page = self._page(self._ind_pages[rid], j)
                    page.view[:] = image
                    gref, own = self._grant(page, readonly=True)
                    if own is not None:
                        refs.append((own, page))
                    grefs.append(gref)
                req = BlkifIndirectRequest(BLKIF_OP_INDIRECT, op, npages, rid, sector,
                                           self._handle, tuple(grefs))
                template = (BLKIF_OP_INDIRECT, op, npages, self._handle, tuple(grefs))
        except BaseException:
            for ref, _ in refs:
                self.grants.end_foreign_access(ref)  # never published: cannot be mapped
            assert self._ids is not None
            self._ids.put(rid)
            raise
        return self._queue(rid, req, op, npages, refs, pages,
                           0 if writing else nbytes, span), template

    def _queue(self, rid: int, req: object, op: int, nsegs: int,
               refs: list[tuple[GrantRef, _Page]], pages: list[_Page],
               nread: int = 0, span: memoryview | None = None) -> _Shadow:
        assert self.ring is not None and self._shadow[rid] is None
        sh = _Shadow(rid, op, nsegs, refs, pages, nread, span)
        self._shadow[rid] = sh
        self.ring.put_request(req)
        self.stats["requests"] += 1
        return sh

    def _push(self) -> None:
        ring = self.ring
        if ring is None or self.broken is not None:
            return
        if ring.req_prod_pvt != ring.sring.req_prod and ring.push_requests_and_check_notify():
            self.stats["notifications"] += 1
            assert self.port is not None
            self.hc.evtchn_send(self.port)

    async def _wait_all(self, pending: Sequence[_Shadow]) -> None:
        first: BlockDeviceError | None = None
        for sh in pending:
            done = sh.done
            if not done.flag:
                if done.task is not None:
                    raise RuntimeError("a request has one waiter")  # our own bug
                done.task = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(done.abort)
            if sh.error is not None and first is None:
                first = sh.error
        if first is not None:
            raise BlockDeviceError(first.errno, first.strerror)

    # -- completing ---------------------------------------------------------------------

    async def _ring_worker(self) -> None:
        """The ring's response loop (``blkif_interrupt``), until disconnect."""
        ring, waiter = self.ring, self._waiter
        assert ring is not None and waiter is not None
        while True:
            self._drain()
            if ring.final_check_for_responses():
                continue
            await waiter.wait()

    def _drain(self) -> None:
        """Consume and check every published response.

        Raises:
            BlkfrontBroken: the backend broke the protocol (device now broken).
        """
        ring = self.ring
        assert ring is not None
        if self.deferred:
            self._retry_deferred()
        try:
            rsps = ring.get_responses()
        except PeerProtocolError as exc:
            self._break(str(exc))
            raise BlkfrontBroken(str(exc)) from None
        shadow = self._shadow
        for rsp in rsps:
            self.stats["responses"] += 1
            rid = rsp.id
            sh = shadow[rid] if rid < len(shadow) else None
            if rid >= len(shadow):
                self._break(f"response has incorrect id ({rid})")
            elif sh is None:
                self._break(f"response id {rid} references no pending request")
            elif rsp.operation != sh.op:
                self._break(f"response has wrong operation ({rsp.operation} instead of {sh.op})")
            elif sh.refs and not self._end_grants(sh):
                self._break("backend has not unmapped a grant")
            if self.broken is not None:
                raise BlkfrontBroken(self.broken)
            assert sh is not None
            shadow[rid] = None
            self._complete(sh, rsp)
            if sh.nread and sh.error is None and not sh.abandoned:
                sh.held = True  # the caller copies the bytes out, then frees the id
                self._held.add(sh)
            else:
                assert self._ids is not None
                self._ids.put(rid)

    def _end_grants(self, sh: _Shadow) -> bool:
        """End a request's own grants; a still-mapped one is deferred. True if all ended."""
        ok = True
        for ref, page in sh.refs:
            if not self.grants.end_foreign_access(ref):
                ok = False  # the device breaks: no page of it is ever reused
                self.deferred.append((ref, page))
        sh.refs = []
        return ok

    def _retry_deferred(self) -> None:
        """Try again to end grants the backend kept; the pages stay with the base
        class (freed only at disconnect, once no grant of this device is mapped)."""
        self.deferred = [(ref, page) for ref, page in self.deferred
                         if not self.grants.end_foreign_access(ref)]

    def _complete(self, sh: _Shadow, rsp: BlkifResponse) -> None:
        status = rsp.status
        if status == BLKIF_RSP_OKAY and rsp.error is None:
            sh.done.set()
            return
        self.stats["errors"] += 1
        code = errno.EIO
        if sh.op in (BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER):
            if status == BLKIF_RSP_EOPNOTSUPP or (status == BLKIF_RSP_ERROR
                                                   and sh.nr_segments == 0):
                _log.info("%s: flush op failed (%d): flush disabled", self.dev.path, status)
                self.feature_flush = self.feature_barrier = False
                if status == BLKIF_RSP_EOPNOTSUPP:
                    code = errno.EOPNOTSUPP
        elif sh.op == BLKIF_OP_DISCARD and status == BLKIF_RSP_EOPNOTSUPP:
            _log.info("%s: discard op failed: discard disabled", self.dev.path)
            self.feature_discard = self.discard_secure = False
            code = errno.EOPNOTSUPP
        sh.error = io_error(code, f"{self.dev.path}: request {sh.id} op {sh.op} "
                                  f"failed with status {status}")
        sh.done.set()

    def _break(self, reason: str) -> None:
        """Disable the device: fail everything now and later with EIO (Linux: BLKIF_STATE_ERROR)."""
        if self.broken is not None:
            return
        _log.warning("%s: %s; disabled for further use", self.dev.path, reason)
        self.broken = reason
        self.errors += 1
        self._fail_all(errno.EIO, f"device disabled: {reason}")

    def _fail_all(self, code: int, why: str) -> None:
        """Fail every request in flight and every id waiter; pages of those requests
        are never reused (the backend may still write them)."""
        for sh in self._shadow:
            if sh is None or sh.done.is_set():
                continue
            if sh.refs:
                self._end_grants(sh)
            sh.error = io_error(code, f"{self.dev.path}: {why}")
            sh.done.set()
        if self._ids is not None and self._ids.error is None:
            self._ids.close(io_error(code, f"{self.dev.path}: {why}"))
