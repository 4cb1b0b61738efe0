"""blkback: dom0's PV block backend (Linux ``drivers/block/xen-blkback``).

Theory of operation
-------------------
One :class:`BlkBack` instance serves one ``vbd`` device ``(D, V)``; the
backend bus (:mod:`dom0.backends.bus`) runs its hooks from the xenbus table::

    probe()      open the image (``params``, ``mode``: the "hotplug script"
                 step: ``physical-device``, ``hotplug-status=connected``),
                 publish feature-* keys                             -> InitWait
    map_ring()   read protocol / feature-persistent / ring-page-order /
                 ring-ref[N] / event-channel, map the ring pages in one batch
                 (unwinding a partial failure), bind the port
    connect()    publish sectors, info, sector-size, physical-sector-size;
                 start the ring worker                               -> Connected
    disconnect() stop taking requests, wait (bounded) for in-flight I/O, stop
                 the worker, unmap everything incl. persistent grants

An image that cannot be opened makes probe fail: ``hotplug-status=error`` and
``hotplug-error`` are written and the device goes to Closing (the toolstack's
``attach_device`` reports it); nothing else is affected.

The ring worker (:meth:`BlkBack._serve`) loops: push finished responses,
consume at most :attr:`BlkBack.batch` requests (each slot copied once by
:class:`~ring.sring.BackRing` and decoded into an immutable record), validate
each *copy* and either answer it at once (bad request: ``BLKIF_RSP_ERROR``,
or ``BLKIF_RSP_EOPNOTSUPP`` for an unknown or unadvertised operation; a READ
the device completes without waiting - page cache, RAM - through
:meth:`~dom0.native.disk.BlockDevice.try_readv`) or start one task for it;
then ``final_check_for_requests`` and sleep on a coalescing
:class:`~dom0.backends.bus.Kick` set by the event channel and by finished
tasks. Several requests are in flight at once (at most the ring size, since a
slot is only reused after its response); responses are pushed in batches and
the frontend is notified only when ``push_responses_and_check_notify`` says so.

A request maps its segments in one batched ``grant_map`` (read-only for
WRITE, which reads guest memory; writable for READ), and if any one fails it
unmaps every mapping it made (XSA-361/362) and answers ERROR. The data moves
zero-copy: ``readv``/``writev`` get slices ``page[first*512:(last+1)*512]`` of
the mapped pages. Non-persistent grants are unmapped before the response is
written. With ``feature-persistent`` on both ends, pages are mapped writable
and kept in a per-device table keyed by gref (bounded: ring size x 11; least
recently used idle entries are purged; when all are busy the page is mapped
for this request only). Indirect pages go through the same table, as in Linux.

Segment lists are cached (:class:`_SegList`, at most :attr:`BlkBack.seglist_cache`):
an indirect request's list by the bytes of our private copy of its indirect
pages, a direct request's by its decoded segments. Decoding and validation
are pure functions of those bytes, so a list seen again (blkfront reuses one
per request id) is neither decoded nor checked again; with persistent grants
the cached list also keeps its grants pinned and its slices in an
:class:`~dom0.native.disk.IoVec`, so serving it again costs O(1) instead of
O(segments). A cached list pins its grants: the purge first drops idle
cached lists (least recently used first) when no grant is idle; a list in use
is never dropped.

Ordering: every WRITE / DISCARD registers an event when it is *dispatched*. A
FLUSH_DISKCACHE or WRITE_BARRIER waits for the events of the writes
dispatched before it and only then calls ``device.flush()`` - so every write
the guest saw complete before it issued the flush (and every one it queued
earlier) is durable when the flush is answered. A barrier additionally holds
the writes dispatched after it until it completes.

A frontend whose ``req_prod`` claims more requests than the ring can hold
(:class:`~ring.errors.RingOverflowError`, "bogus ring requests", XSA-38)
gets its ring halted: the worker stops with a peer error, the device goes to
Closing; every other device keeps being served.

Worked example (what a guest sees)::

    WRITE id=7 sector 8, seg (gref 77, 0..7)  -> map 77 read-only, writev(4096, [4 KiB])
                                                -> unmap -> rsp {id 7, op 1, status 0}
    READ  id=8 sector 1<<40, seg (78, 0..7)   -> rsp {id 8, op 0, status -1}, invalid += 1
    op 9  id=9                                -> rsp {id 9, op 9, status -2}
"""

from __future__ import annotations

import contextlib
import errno as host_errno
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import trio

from dom0.backends.bus import Backend, BackendDevice, Kick, register_backend
from dom0.native.disk import BlockDevice, BlockIOError, IoVec, open_image
from domu.evtchn import EventDispatcher
from domu.xenstore import XenStoreClient
from hypervisor.errno import Errno, XenError
from hypervisor.grant_table import (
    GNTMAP_host_map,
    GNTMAP_readonly,
    GNTST_okay,
    MapGrantRef,
    UnmapGrantRef,
)
from hypervisor.hypercall import HypercallInterface
from hypervisor.types import Port
from ring.blkif import (
    BLKIF_CODEC,
    BLKIF_DISCARD_SECURE,
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
    VDISK_CDROM,
    VDISK_READONLY,
    VDISK_REMOVABLE,
    XEN_IO_PROTO_ABI_X86_64,
    BlkifAnyRequest,
    BlkifDiscardRequest,
    BlkifIndirectRequest,
    BlkifRequest,
    BlkifResponse,
    BlkifSegment,
    BlkifUnknownRequest,
    decode_indirect_segments,
    make_response,
)
from ring.errors import PeerProtocolError, RingOverflowError
from ring.sring import BackRing

__all__ = ["BlkBack", "BlkbackStats"]

_log = logging.getLogger("xensim.dom0.blkback")

_OP_NAMES = {
    BLKIF_OP_READ: "read",
    BLKIF_OP_WRITE: "write",
    BLKIF_OP_WRITE_BARRIER: "barrier",
    BLKIF_OP_FLUSH_DISKCACHE: "flush",
    BLKIF_OP_DISCARD: "discard",
    BLKIF_OP_INDIRECT: "indirect",
}
_M = 0xFFFFFFFF


@dataclass
class BlkbackStats:
    """Per-device counters (dom0-side; ``xl top``-style tools read them).

    Attributes:
        requests: requests consumed, by operation name (``read``, ``write``,
            ``flush``, ``barrier``, ``discard``, ``indirect``, ``unknown``).
        bytes_read / bytes_written / bytes_discarded: payload that succeeded.
        io_errors: requests the native device failed (EIO, ENOSPC...).
        invalid: requests refused after validation (bad fields or grants).
        eopnotsupp: requests answered "not supported" (unknown operations).
        ring_full: passes that found every ring slot outstanding.
        ring_overflows: "bogus ring requests" (the ring was halted).
        notifications: event-channel sends to the frontend.
        in_flight / max_in_flight: requests being served now / at most.
        persistent_grants: persistent grants mapped now.
        persistent_purged: persistent grants unmapped by the LRU purge.
    """

    requests: dict[str, int] = field(default_factory=dict)
    bytes_read: int = 0
    bytes_written: int = 0
    bytes_discarded: int = 0
    io_errors: int = 0
    invalid: int = 0
    eopnotsupp: int = 0
    ring_full: int = 0
    ring_overflows: int = 0
    notifications: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    persistent_grants: int = 0
    persistent_purged: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A plain dict copy (for printing / JSON)."""
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self).items()}


@dataclass(eq=False)
class _PGrant:
    """One persistent grant: kept mapped (writable) across requests.

    ``users`` counts what holds it: requests mapping it right now and cached
    segment lists (:class:`_SegList`); only a grant with none may be purged.
    """

    gref: int
    handle: int
    view: memoryview
    users: int = 0


@dataclass(eq=False)
class _SegList:
    """One request's segments, decoded from our private copy and validated.

    Cached (:attr:`BlkBack.seglist_cache`) by what they were decoded from: the
    copied bytes of an indirect page, or a direct request's (already copied)
    segment tuple. Decoding and checking are pure functions of those bytes, so
    a frontend that sends the same list again - blkfront reuses one list per
    request id - skips both. With persistent grants an entry also keeps its
    mapping: the grants it pins and the :class:`~dom0.native.disk.IoVec` over
    them, so a repeat costs O(1), not O(segments).
    """

    segments: tuple[BlkifSegment, ...]
    error: str | None
    nsect: int
    cached: bool = False
    busy: int = 0  # requests using it now (never evicted while busy)
    pgrants: list[_PGrant] = field(default_factory=list)  # pinned while cached
    iovec: IoVec | None = None


@dataclass(eq=False)
class _Mapped:
    """The buffers one request uses and what to release afterwards."""

    vec: IoVec | list[memoryview]
    handles: list[int]  # request-only mappings: unmap when done
    pgrants: list[_PGrant]  # persistent grants this request pinned: users -= 1 when done


class _BadRequest(Exception):
    """A request failed validation or mapping (answered ERROR, counted invalid)."""


def _number(raw: bytes | None, what: str, limit: int = _M) -> int:
    """A decimal xenstore value the peer wrote; PeerProtocolError if it is not one."""
    if raw is None or not raw.isdigit() or len(raw) > 10 or int(raw) > limit:
        raise PeerProtocolError(f"{what}: expected a number <= {limit}, got {raw!r}")
    return int(raw)


def _xen_errno(exc: OSError) -> Errno:
    name = host_errno.errorcode.get(exc.errno or 0, "EIO")
    return getattr(Errno, name, Errno.EIO)


@contextlib.asynccontextmanager
async def _open_image_device(params: str, readonly: bool) -> AsyncIterator[BlockDevice]:
    async with open_image(params, readonly=readonly) as dev:
        yield dev


@register_backend
class BlkBack(Backend):
    """The vbd backend driver; one instance per virtual disk.

    Class attributes (override in a subclass to tune or to test):
        max_ring_page_order: ``max-ring-page-order`` (rings of up to 16 pages).
        max_indirect_segments: ``feature-max-indirect-segments``.
        batch: requests consumed per pass (bounds work per event).
        drain_timeout: seconds disconnect waits for in-flight I/O before
            cancelling it.
        seglist_cache: decoded segment lists kept (see :class:`_SegList`).

    Attributes:
        stats: :class:`BlkbackStats`.
        device: the open native device (None before probe / after removal).
        readonly: the toolstack's ``mode`` is ``r``.
        persistent: persistent grants negotiated for the current ring.
    """

    kind = "vbd"
    max_ring_page_order = 4
    max_indirect_segments = 256
    batch = 32
    drain_timeout = 5.0
    seglist_cache = 128

    def __init__(self, dev: BackendDevice, xs: XenStoreClient, hc: HypercallInterface,
                 events: EventDispatcher) -> None:
        super().__init__(dev, xs, hc, events)
        self.stats = BlkbackStats()
        self.device: BlockDevice | None = None
        self.readonly = False
        self.cdrom = False
        self.removable = False
        self.discard_enabled = False
        self.persistent = False
        self._ring: BackRing[BlkifAnyRequest, BlkifResponse] | None = None
        self._port: Port | None = None
        self._kick = Kick()
        self._connected = False
        self._draining = False
        self._completed: list[BlkifResponse] = []
        self._pgrants: dict[int, _PGrant] = {}
        self._idle_pgrants: OrderedDict[int, _PGrant] = OrderedDict()  # users == 0, LRU first
        self._seglists: OrderedDict[bytes | tuple[BlkifSegment, ...], _SegList] = OrderedDict()
        self._max_pgrants = 0
        self._req_handles: set[int] = set()
        self._writes: set[trio.Event] = set()
        self._barrier: trio.Event | None = None
        self._busy = 0
        self._idle = trio.Event()
        self._idle.set()

    # -- the hotplug step ------------------------------------------------------------------

    def open_device(self, params: str, readonly: bool,
                    ) -> AbstractAsyncContextManager[BlockDevice]:
        """Open the backing device named by ``params`` (toolstack-controlled).

        Override in a subclass to serve something other than raw image files
        (tests use ramdisks). Returns an async context manager.
        """
        return _open_image_device(params, readonly)

    async def _hold_device(self, params: str, readonly: bool, *,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                           ) -> None:
        """Keep the device open for the instance's lifetime (closed with its nursery)."""
        async with self.open_device(params, readonly) as dev:
            self.device = dev
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await self._idle.wait()  # never close under in-flight I/O
                self.device = None

    # -- hooks ------------------------------------------------------------------------------

    async def probe(self) -> None:
        """Open the image (the hotplug step), then publish the feature keys.

        Raises:
            XenError: the image cannot be opened (the device goes to Closing).
        """
        params = await self.read_key("params")
        mode = await self.read_key("mode")
        devtype = await self.read_key("device-type")
        removable = await self.read_key("removable")
        discard = await self.read_key("discard-enable")
        try:
            if not params:
                raise OSError(host_errno.ENOMEDIUM, "no target (params is empty)")
            if mode is None or mode[:1] not in (b"r", b"w"):
                raise OSError(host_errno.EINVAL, f"mode {mode!r}: expected r or w")
            self.readonly = mode[:1] == b"r"
            assert self._nursery is not None
            await self._nursery.start(self._hold_device, params.decode("utf-8", "replace"),
                                      self.readonly)
        except OSError as exc:
            why = f"{params!r}: {exc.strerror or exc}"
            await self.write_key("hotplug-error", why)
            await self.write_key("hotplug-status", "error")
            raise XenError(_xen_errno(exc), f"vbd {self.dev.backend_path}: {why}") from None
        dev = self.device
        assert dev is not None
        self.cdrom = devtype == b"cdrom"
        self.removable = removable == b"1"
        self.discard_enabled = discard != b"0" and dev.discard_supported

        keys = {
            "feature-flush-cache": "1",
            "feature-barrier": "1",
            "feature-persistent": "1",
            "feature-max-indirect-segments": str(self.max_indirect_segments),
            "max-ring-page-order": str(self.max_ring_page_order),
            "multi-queue-max-queues": "1",
            "feature-discard": "1" if self.discard_enabled else "0",
            "physical-device": f"7:{self.dev.devid & 0xFFFFF:x}",
            "physical-device-path": params.decode("utf-8", "replace"),
            "hotplug-status": "connected",
        }
        if self.discard_enabled:
            keys["discard-granularity"] = str(dev.discard_granularity)
            keys["discard-alignment"] = "0"
            keys["discard-secure"] = "0"
        await self.write_keys(keys)

    async def hotplug_done(self) -> bool:
        """The hotplug step (opening the image) finished: True once probe opened it."""
        return self.device is not None

    async def map_ring(self) -> None:
        """Read the frontend's ring keys (Linux ``connect_ring`` order), map, bind.

        Raises:
            PeerProtocolError: a key is missing or invalid, an unsupported
                protocol, or a ring page does not map (nothing stays mapped).
        """
        protocol = await self.read_frontend("protocol")
        if protocol is not None and protocol != XEN_IO_PROTO_ABI_X86_64.encode():
            raise PeerProtocolError(f"unsupported protocol {protocol!r}")
        persistent = await self.read_frontend("feature-persistent")
        queues = await self.read_frontend("multi-queue-num-queues")
        if queues is not None and _number(queues, "multi-queue-num-queues") != 1:
            raise PeerProtocolError(f"multi-queue-num-queues {queues!r}: only 1 is supported")
        order_raw = await self.read_frontend("ring-page-order")
        if order_raw is None:
            refs = [_number(await self.read_frontend("ring-ref"), "ring-ref")]
        else:
            order = _number(order_raw, "ring-page-order", self.max_ring_page_order)
            refs = [_number(await self.read_frontend(f"ring-ref{i}"), f"ring-ref{i}")
                    for i in range(1 << order)]
        remote = _number(await self.read_frontend("event-channel"), "event-channel")
        pages = self._map_ring_pages(refs)
        try:
            ring: BackRing[BlkifAnyRequest, BlkifResponse] = BackRing.attach(pages, BLKIF_CODEC)
        except ValueError as exc:
            raise PeerProtocolError(f"ring pages: {exc}") from None
        self._port = self.bind_port(remote, self._on_event)
        self._ring = ring
        self.persistent = persistent is not None and persistent.strip() == b"1"
        self._max_pgrants = ring.size * BLKIF_MAX_SEGMENTS_PER_REQUEST

    def _map_ring_pages(self, refs: Sequence[int]) -> list[memoryview]:
        ops = [MapGrantRef(self.dev.frontend_id, ref, GNTMAP_host_map) for ref in refs]
        try:
            results = self.hc.grant_map(ops)
        except XenError as exc:
            raise PeerProtocolError(f"ring refs {list(refs)}: {exc}") from None
        good = [r for r in results if r.status == GNTST_okay and r.view is not None]
        if len(good) != len(refs):
            if good:
                self.hc.grant_unmap([UnmapGrantRef(r.handle) for r in good])
            bad = [(ref, r.status) for ref, r in zip(refs, results) if r.status != GNTST_okay]
            raise PeerProtocolError(f"ring refs of d{self.dev.frontend_id} do not map: {bad}")
        self._grants.extend(r.handle for r in good)
        return [r.view for r in good]  # type: ignore[misc]

    async def connect(self) -> None:
        """Publish the disk's geometry and start serving the ring (idempotent)."""
        if self._connected:
            return
        dev = self.device
        if dev is None or self._ring is None:
            raise PeerProtocolError("connect before the device is open and the ring mapped")
        info = (VDISK_READONLY if self.readonly else 0) | (VDISK_CDROM if self.cdrom else 0) \
            | (VDISK_REMOVABLE if self.removable else 0)

        await self.write_keys({"sectors": str(dev.size // SECTOR_SIZE), "info": str(info),
                            "sector-size": str(SECTOR_SIZE),
                            "physical-sector-size": str(dev.physical_sector_size)})
        self._connected = True
        self._draining = False
        self.start_worker(self._serve)

    async def disconnect(self) -> None:
        """Stop taking requests, wait (bounded) for in-flight I/O, release everything."""
        self._draining = True
        self._kick.set()
        if self._busy:
            with trio.move_on_after(self.drain_timeout):
                await self._idle.wait()
        await super().disconnect()
        self._ring = None
        self._port = None
        self._connected = False
        self._completed.clear()

    def release_resources(self) -> None:
        """Unmap persistent grants and any request mapping left, then the ring and port."""
        for sl in self._seglists.values():
            sl.cached, sl.pgrants, sl.iovec = False, [], None
        self._seglists.clear()
        self._idle_pgrants.clear()
        while self._pgrants:
            _gref, pg = self._pgrants.popitem()
            self.hc.grant_unmap_one(pg.handle)
        self.stats.persistent_grants = 0
        for handle in list(self._req_handles):
            self.hc.grant_unmap_one(handle)
        self._req_handles.clear()
        super().release_resources()

    def _on_event(self, _port: int) -> None:
        self._kick.set()

    # -- the ring worker --------------------------------------------------------------------

    async def _serve(self) -> None:
        overflow: RingOverflowError | None = None
        async with trio.open_nursery() as io:
            overflow = await self._ring_loop(io)
            io.cancel_scope.cancel()
        if overflow is not None:
            raise overflow  # the worker stops; the bus makes this device fatal

    async def _ring_loop(self, io: trio.Nursery) -> RingOverflowError | None:
        ring = self._ring
        assert ring is not None
        while True:
            self._push_completed()
            if not self._draining:
                try:
                    reqs = ring.get_requests(self.batch)
                except RingOverflowError as exc:
                    self.stats.ring_overflows += 1
                    _log.warning("%s: bogus ring requests: %s", self.dev.backend_path, exc)
                    return exc
                if reqs:
                    if (ring.req_cons - ring.rsp_prod_pvt) & _M == ring.size:
                        self.stats.ring_full += 1
                    for req in reqs:
                        self._dispatch(io, req)
                    await trio.lowlevel.checkpoint()  # bounded work per pass
                    continue
                if self._completed:
                    continue
                if ring.final_check_for_requests():
                    continue
            await self._kick.wait()

    def _push_completed(self) -> None:
        ring = self._ring
        if not self._completed or ring is None:
            return
        ring.put_responses(self._completed)
        self._completed.clear()
        if ring.push_responses_and_check_notify() and self._port is not None:
            self.stats.notifications += 1
            with contextlib.suppress(XenError):
                self.hc.evtchn_send(self._port)

    def _respond(self, req: BlkifAnyRequest, status: int) -> None:
        self._completed.append(make_response(req, status))
        self._kick.set()

    def _refuse(self, req: BlkifAnyRequest, why: str) -> None:
        self.stats.invalid += 1
        _log.debug("%s: bad request: %s", self.dev.backend_path, why)
        self._respond(req, BLKIF_RSP_ERROR)

    # -- validation (on our private copy) ---------------------------------------------------

    def _dispatch(self, io: trio.Nursery, req: BlkifAnyRequest) -> None:
        """Validate one decoded request and answer it or start its task (never awaits)."""
        dev = self.device
        assert dev is not None
        st = self.stats
        kind = type(req)  # the codec builds exactly these four record types
        name = "unknown" if kind is BlkifUnknownRequest \
            else _OP_NAMES.get(req.operation, "unknown")
        st.requests[name] = st.requests.get(name, 0) + 1
        if kind is BlkifUnknownRequest:
            st.eopnotsupp += 1
            self._respond(req, BLKIF_RSP_EOPNOTSUPP)
            return
        if req.error is not None:
            self._refuse(req, req.error)
            return
        sectors = dev.size // SECTOR_SIZE
        if kind is BlkifDiscardRequest:
            if not self.discard_enabled or req.flag & BLKIF_DISCARD_SECURE:
                st.eopnotsupp += 1  # not advertised (discard-secure is 0)
                self._respond(req, BLKIF_RSP_EOPNOTSUPP)
            elif self.readonly:
                self._refuse(req, "discard on a read-only device")
            elif req.sector_number + req.nr_sectors > sectors:
                self._refuse(req, f"discard [{req.sector_number}, +{req.nr_sectors}) "
                                  f"beyond {sectors} sectors")
            else:
                io.start_soon(self._do_discard, req, self._track_write(), self._barrier)
            return
        if kind is BlkifIndirectRequest:
            op = req.indirect_op
            try:
                sl = self._indirect_seglist(req)
            except _BadRequest as exc:
                self._refuse(req, str(exc))
                return
            if sl.error is not None:
                self._refuse(req, sl.error)
                return
        else:
            op = req.operation
            sl = self._direct_seglist(req.segments)
        if req.sector_number + sl.nsect > sectors:
            self._refuse(req, f"I/O [{req.sector_number}, +{sl.nsect}) "
                              f"beyond {sectors} sectors")
            return
        if op != BLKIF_OP_READ and sl.segments and self.readonly:
            self._refuse(req, "write to a read-only device")
            return
        sl.busy += 1  # released by whoever serves it: never evicted meanwhile
        if op == BLKIF_OP_READ:
            self._read_now_or_start(io, req, sl)
            return
        if op == BLKIF_OP_WRITE:
            io.start_soon(self._do_rw, req, op, sl, self._track_write(), self._barrier)
            return
        # FLUSH_DISKCACHE / WRITE_BARRIER (both advertised: never EOPNOTSUPP)
        earlier = list(self._writes)
        if op == BLKIF_OP_WRITE_BARRIER:
            done = trio.Event()
            self._barrier = done
        else:
            done = None
        write = self._track_write() if sl.segments else None
        io.start_soon(self._do_flush, req, sl, earlier, write, done)

    # -- segment lists ----------------------------------------------------------------------

    def _indirect_seglist(self, req: BlkifIndirectRequest) -> _SegList:
        """Map the indirect pages, copy the used part once, unmap; decode the copy.

        Raises:
            _BadRequest: too many segments or a page that does not map.
        """
        nr = req.nr_segments
        if nr > self.max_indirect_segments:
            raise _BadRequest(f"indirect nr_segments {nr} > {self.max_indirect_segments}")
        needed = -(-nr // BLKIF_SEGS_PER_INDIRECT_FRAME)
        grefs = req.indirect_grefs[:needed]
        mapped = self._map_persistent(grefs) if self.persistent \
            else self._map(grefs, readonly=True)
        try:
            raw: list[bytes] = []  # our private copy: the only read of these pages
            left = nr
            for view in mapped.vec:  # type: ignore[union-attr]
                count = min(left, BLKIF_SEGS_PER_INDIRECT_FRAME)
                raw.append(bytes(view[: count * 8]))
                left -= count
        finally:
            self._release(mapped)
        key = raw[0] if len(raw) == 1 else b"".join(raw)
        sl = self._seglists.get(key)
        if sl is not None:
            self._seglists.move_to_end(key)
            return sl
        segs, err = decode_indirect_segments(raw, nr, self.max_indirect_segments)
        return self._remember(key, segs, err)

    def _direct_seglist(self, segments: tuple[BlkifSegment, ...]) -> _SegList:
        """The :class:`_SegList` of a direct request (validated by the codec)."""
        if not self.persistent:  # nothing worth keeping: the grants change every time
            return _SegList(segments, None, sum(s[2] - s[1] + 1 for s in segments))
        sl = self._seglists.get(segments)
        if sl is not None:
            self._seglists.move_to_end(segments)
            return sl
        return self._remember(segments, segments, None)

    def _remember(self, key: bytes | tuple[BlkifSegment, ...],
                  segments: tuple[BlkifSegment, ...], error: str | None) -> _SegList:
        nsect = 0 if error is not None else sum(s[2] - s[1] + 1 for s in segments)
        sl = _SegList(segments, error, nsect, cached=True)
        cache = self._seglists
        if len(cache) >= self.seglist_cache:
            self._evict_seglist()
        cache[key] = sl
        return sl

    def _evict_seglist(self) -> bool:
        """Drop the least recently used idle cached list (unpinning its grants)."""
        for key, sl in self._seglists.items():
            if not sl.busy:
                del self._seglists[key]
                sl.cached = False
                pgrants, sl.pgrants, sl.iovec = sl.pgrants, [], None
                for pg in pgrants:
                    self._unpin(pg)
                return True
        return False

    def _track_write(self) -> trio.Event:
        ev = trio.Event()
        self._writes.add(ev)
        return ev

    def _write_done(self, ev: trio.Event | None) -> None:
        if ev is not None:
            ev.set()
            self._writes.discard(ev)

    # -- grant mapping ----------------------------------------------------------------------

    def _map(self, grefs: Sequence[int], readonly: bool) -> _Mapped:
        """Map one request's pages in one batch; all or nothing.

        Returns:
            The page views (``vec``, in ``grefs`` order) and their handles.

        Raises:
            _BadRequest: a grant did not map; every mapping made was undone.
        """
        dom = self.dev.frontend_id
        flags = GNTMAP_host_map | (GNTMAP_readonly if readonly else 0)
        try:
            results = self.hc.grant_map([MapGrantRef(dom, g, flags) for g in grefs])
        except XenError as exc:
            raise _BadRequest(f"grant map: {exc}") from None
        handles = [r.handle for r in results if r.status == GNTST_okay]
        if len(handles) != len(grefs) or any(r.view is None for r in results):
            if handles:
                self.hc.grant_unmap([UnmapGrantRef(h) for h in handles])
            bad = [(g, r.status) for g, r in zip(grefs, results) if r.status != GNTST_okay]
            raise _BadRequest(f"grants do not map: {bad}")
        self._req_handles.update(handles)
        return _Mapped([r.view for r in results], handles, [])  # type: ignore[misc]

    def _pin(self, pg: _PGrant) -> None:
        if not pg.users:
            del self._idle_pgrants[pg.gref]
        pg.users += 1

    def _unpin(self, pg: _PGrant) -> None:
        pg.users -= 1
        if not pg.users:
            self._idle_pgrants[pg.gref] = pg  # most recently used last

    def _map_persistent(self, grefs: Sequence[int]) -> _Mapped:
        """Persistent-grant variant of :meth:`_map` (writable, kept mapped).

        Entries this request uses are pinned before anything is purged, so the
        LRU purge never takes a page from under a request.

        Raises:
            _BadRequest: a new grant did not map; nothing changed.
        """
        table = self._pgrants
        used: list[_PGrant] = []
        views: dict[int, memoryview] = {}
        new: list[int] = []
        for g in dict.fromkeys(grefs):
            pg = table.get(g)
            if pg is None:
                new.append(g)
                continue
            self._pin(pg)
            used.append(pg)
            views[g] = pg.view
        temp: list[int] = []
        if new:
            try:
                m = self._map(new, readonly=False)
            except _BadRequest:
                for pg in used:
                    self._unpin(pg)
                raise
            for g, handle, view in zip(new, m.handles, m.vec):
                views[g] = view  # type: ignore[assignment]
                if len(table) < self._max_pgrants or self._purge_one():
                    pg = table[g] = _PGrant(g, handle, view, users=1)  # type: ignore[arg-type]
                    used.append(pg)
                    self._req_handles.discard(handle)
                else:  # every entry busy: map for this request only
                    temp.append(handle)
            self.stats.persistent_grants = len(table)
        return _Mapped([views[g] for g in grefs], temp, used)

    def _purge_one(self) -> bool:
        """Unmap the least recently used idle persistent grant (dropping idle cached
        segment lists to free one if needed); False if every grant is busy."""
        while not self._idle_pgrants:
            if not self._evict_seglist():
                return False
        gref, pg = self._idle_pgrants.popitem(last=False)
        del self._pgrants[gref]
        self.hc.grant_unmap_one(pg.handle)
        self.stats.persistent_purged += 1
        self.stats.persistent_grants = len(self._pgrants)
        return True

    def _release(self, mapped: _Mapped) -> None:
        """Unmap a request's own mappings; drop its persistent pins."""
        if mapped.handles:
            self.hc.grant_unmap([UnmapGrantRef(h) for h in mapped.handles])
            self._req_handles.difference_update(mapped.handles)
            mapped.handles.clear()
        for pg in mapped.pgrants:
            self._unpin(pg)
        mapped.pgrants.clear()
        mapped.vec = []

    def _map_request(self, sl: _SegList, into_guest: bool) -> _Mapped:
        """Map a request's pages and slice its buffers (O(1) for a cached list).

        Raises:
            _BadRequest: a grant did not map (nothing left mapped).
        """
        if sl.iovec is not None:
            return _Mapped(sl.iovec, [], [])
        segs = sl.segments
        grefs = [s[0] for s in segs]
        if self.persistent:
            mapped = self._map_persistent(grefs)
        else:
            mapped = self._map(grefs, readonly=not into_guest)
        bufs = [v[s[1] * SECTOR_SIZE:(s[2] + 1) * SECTOR_SIZE]
                for v, s in zip(mapped.vec, segs)]
        if sl.cached and self.persistent and not mapped.handles:
            # every page is in the table: the cached list keeps them pinned
            sl.pgrants, mapped.pgrants = mapped.pgrants, []
            sl.iovec = mapped.vec = IoVec(bufs, writable=True)
        else:
            mapped.vec = bufs
        return mapped

    # -- request tasks ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _io(self) -> Any:
        self._busy += 1
        self.stats.in_flight = self._busy
        self.stats.max_in_flight = max(self.stats.max_in_flight, self._busy)
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            yield
        finally:
            self._busy -= 1
            self.stats.in_flight = self._busy
            if not self._busy:
                self._idle.set()

    def _read_now_or_start(self, io: trio.Nursery, req: BlkifRequest | BlkifIndirectRequest,
                           sl: _SegList) -> None:
        """Serve a READ at once when the device can without waiting (page cache,
        RAM), else start its task with the pages already mapped."""
        dev = self.device
        assert dev is not None
        vec = sl.iovec  # a cached list: its pages are mapped already, nothing to release
        if vec is not None:
            mapped = None
        else:
            try:
                mapped = self._map_request(sl, into_guest=True)
            except _BadRequest as exc:
                sl.busy -= 1
                self._refuse(req, str(exc))
                return
            vec = mapped.vec
        try:
            done = dev.try_readv(req.sector_number * SECTOR_SIZE, vec)
        except BaseException as exc:
            if mapped is not None:
                self._release(mapped)
            sl.busy -= 1
            if not isinstance(exc, BlockIOError):
                raise
            self._io_error(req, exc)
            return
        if not done:
            io.start_soon(self._do_rw, req, BLKIF_OP_READ, sl, None, None,
                          mapped if mapped is not None else _Mapped(vec, [], []))
            return
        if mapped is not None:
            self._release(mapped)  # before the response: XSA-361/362, blkif 3.5
        sl.busy -= 1
        st = self.stats
        st.max_in_flight = max(st.max_in_flight, self._busy + 1)
        st.bytes_read += sl.nsect * SECTOR_SIZE
        self._respond(req, BLKIF_RSP_OKAY)

    async def _transfer(self, op: int, sector: int, sl: _SegList,
                        mapped: _Mapped | None = None) -> int:
        """Map (unless ``mapped``), move the data zero-copy, unmap. Returns the bytes moved.

        Raises:
            _BadRequest: a grant did not map (nothing left mapped).
            BlockIOError: the native device failed.
        """
        dev = self.device
        assert dev is not None
        if mapped is None:
            mapped = self._map_request(sl, into_guest=op == BLKIF_OP_READ)
        try:
            if op == BLKIF_OP_READ:
                await dev.readv(sector * SECTOR_SIZE, mapped.vec)
            else:
                await dev.writev(sector * SECTOR_SIZE, mapped.vec)
            return sl.nsect * SECTOR_SIZE
        finally:
            self._release(mapped)  # before the response: XSA-361/362, blkif 3.5

    async def _do_rw(self, req: BlkifRequest | BlkifIndirectRequest, op: int,
                     sl: _SegList, write: trio.Event | None,
                     barrier: trio.Event | None, mapped: _Mapped | None = None) -> None:
        try:
            with self._io():
                if write is not None and barrier is not None:
                    await barrier.wait()  # writes after a barrier wait for it
                try:
                    nbytes = await self._transfer(op, req.sector_number, sl, mapped)
                    mapped = None
                except _BadRequest as exc:
                    self._refuse(req, str(exc))
                    return
                except BlockIOError as exc:
                    self._io_error(req, exc)
                    return
        finally:
            if mapped is not None:  # cancelled before the transfer took it over
                self._release(mapped)
            sl.busy -= 1
            self._write_done(write)
        if op == BLKIF_OP_READ:
            self.stats.bytes_read += nbytes
        else:
            self.stats.bytes_written += nbytes
        self._respond(req, BLKIF_RSP_OKAY)

    async def _do_flush(self, req: BlkifRequest | BlkifIndirectRequest, sl: _SegList,
                        earlier: list[trio.Event], write: trio.Event | None,
                        barrier: trio.Event | None) -> None:
        dev = self.device
        assert dev is not None
        try:
            with self._io():
                for ev in earlier:  # every write dispatched before this request
                    await ev.wait()
                try:
                    await dev.flush()
                    if sl.segments:  # data with the flush: write it, then make it durable
                        nbytes = await self._transfer(BLKIF_OP_WRITE, req.sector_number, sl)
                        self.stats.bytes_written += nbytes
                        await dev.flush()
                except _BadRequest as exc:
                    self._refuse(req, str(exc))
                    return
                except BlockIOError as exc:
                    self._io_error(req, exc)
                    return
        finally:
            sl.busy -= 1
            self._write_done(write)
            if barrier is not None:
                barrier.set()
        self._respond(req, BLKIF_RSP_OKAY)

    async def _do_discard(self, req: BlkifDiscardRequest, write: trio.Event,
                          barrier: trio.Event | None) -> None:
        dev = self.device
        assert dev is not None
        try:
            with self._io():
                if barrier is not None:
                    await barrier.wait()
                try:
                    await dev.discard(req.sector_number * SECTOR_SIZE,
                                      req.nr_sectors * SECTOR_SIZE)
                except BlockIOError as exc:
                    self._io_error(req, exc)
                    return
        finally:
            self._write_done(write)
        self.stats.bytes_discarded += req.nr_sectors * SECTOR_SIZE
        self._respond(req, BLKIF_RSP_OKAY)

    def _io_error(self, req: BlkifAnyRequest, exc: BlockIOError) -> None:
        self.stats.io_errors += 1
        _log.info("%s: I/O error: %s", self.dev.backend_path, exc)
        self._respond(req, BLKIF_RSP_ERROR)
