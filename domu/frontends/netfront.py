"""netfront: the guest's PV network driver (Linux ``drivers/net/xen-netfront.c``).

Theory of operation
-------------------
**Handshake (xen-abi 5.4).** netfront goes 1 -> 4 directly. When the backend
reaches InitWait, :meth:`NetFront.talk_to_backend` reads the backend's
features (``feature-rx-copy`` must be 1: copying receive is the only mode;
``feature-sg`` allows multi-slot frames), reads ``mac`` and ``mtu`` from its
own directory, allocates one page each for the tx and rx rings, grants them,
allocates one event channel (``feature-split-event-channels`` is read but a
single channel serves both rings, which Linux also does when the backend
does not offer split channels), pre-fills the rx ring and writes, in one
transaction::

    tx-ring-ref  rx-ring-ref  event-channel  request-rx-copy=1
    feature-rx-notify=1  feature-sg=1

The bus then writes ``state = 4``. The carrier comes on when the backend
says Connected (the ANNOUNCE hook); a repeated Connected is harmless.

**Transmit (xen-abi 7.3).** A frame is cut into page-sized fragments, each
copied into a buffer page granted read-only to the backend for this one
fragment. The first slot's ``size`` is the *whole* frame, later slots carry
their own length, all but the last have ``NETTXF_more_data``. Every slot
takes a tx **id** from a free list of ``0..255`` (ids are never grant
refs). The backend answers every slot with ``{id, status}``; netfront then
ends the grant and returns id and page to their pools. A grant the backend
still holds (it should copy, not map) cannot be ended: the ref and page go
to ``pending_grants`` and are never reused; the id gets a fresh page. When
the ring (or the id pool) is full, the sender waits: the ring is the queue.

**Receive (xen-abi 7.4).** The rx ring is kept stocked with up to
``rx_target`` requests ``{id, gref}``; ``id`` is the ring slot index
(``idx & 255``) and the buffer for a slot is looked up by that index, so an
extra-info slot (which overwrites ``id``) still finds its buffer. A response
is copied out of the ring once, validated, its grant ended and its bytes
copied; ``NETRXF_more_data`` chains are joined into one frame; then the ring
is refilled and the backend notified if its ``req_event`` asks for it.

**Hardening (XSA-391, THREATS "Frontends").** The backend is not trusted.
Any of these marks the device **broken**: more responses published than
requests outstanding (tx or rx), a tx response whose id is out of range, not
in flight, or repeated, a tx ``NETIF_RSP_NULL`` (no extra-info was sent), an
rx response whose id is not the slot's, whose ``offset + status`` leaves the
page or whose status is not a size or an RSP code, an unknown extra-info,
or a chain longer than ``XEN_NETIF_NR_SLOTS_MIN`` data slots. A broken
device stops touching the rings, wakes every waiting sender and receiver
with :class:`~domu.netdev.NetDeviceBroken` and asks the bus to close the
device (``fatal``); the guest, and its other NICs, carry on. Recoverable
per-frame problems (an RSP_ERROR/DROPPED status, a frame shorter than 14 or
longer than the MTU allows) drop that frame and are counted.

Worked example (MTU 9000, one 9014-byte frame)::

    slots   id gref offset flags       size
    n       0  g0   0      more_data   9014   (bytes 0..4095)
    n+1     1  g1   0      more_data   4096   (bytes 4096..8191)
    n+2     2  g2   0      0           822    (bytes 8192..9013)
    backend: {0, OKAY} {1, OKAY} {2, OKAY} -> grants g0..g2 ended, ids 0..2 free
"""

from __future__ import annotations

import logging
import operator
from typing import Any

import trio

from domu.evtchn import EventDispatcher, PortWaiter
from domu.frontends.bus import Frontend, FrontendDevice, PageAllocator, register_frontend
from domu.gnttab import GrantTableClient
from domu.netdev import ETH_HLEN, NetDevice, NetDeviceClosed, max_frame_len
from domu.xenstore import XenStoreClient
from hypervisor.hypercall import HypercallInterface
from hypervisor.types import Gfn, GrantRef, Port
from ring.errors import PeerProtocolError
from ring.netif import (
    NET_RX_RING_SIZE,
    NET_TX_RING_SIZE,
    NETIF_RSP_DROPPED,
    NETIF_RSP_ERROR,
    NETIF_RSP_OKAY,
    NETIF_RX_CODEC,
    NETIF_TX_CODEC,
    RX_REQ_SLOT,
    RX_RSP_SLOT,
    TX_REQ_SLOT,
    TX_RSP_SLOT,
    XEN_NETIF_EXTRA_TYPE_MAX,
    XEN_NETIF_NR_SLOTS_MIN,
    XEN_PAGE_SIZE,
    FrontRequestWriter,
    NetifRxRequest,
    NetifRxResponse,
    NetifTxResponse,
    NETRXF_extra_info,
    NETRXF_more_data,
    NETTXF_more_data,
    RxReqTuple,
    TxReqTuple,
    front_copy_responses,
    front_put_requests,
    rx_response,
    tx_response,
)
from ring.sring import FrontRing

__all__ = ["DEFAULT_MTU", "MAX_PENDING_GRANTS", "NetFront", "parse_mac"]

_log = logging.getLogger("xensim.domu.netfront")
_M = 0xFFFFFFFF

DEFAULT_MTU = 1500
MAX_RX_EXTRAS = XEN_NETIF_EXTRA_TYPE_MAX - 1
"""Extra-info slots one received frame may carry (one per known type)."""
MAX_PENDING_GRANTS = 2 * (NET_TX_RING_SIZE + NET_RX_RING_SIZE)
"""Grants the backend may keep mapped before netfront gives up on it."""
_TX_OK_STATUS = frozenset((NETIF_RSP_OKAY, NETIF_RSP_ERROR, NETIF_RSP_DROPPED))
"""tx response statuses netfront accepts (never NULL: it sends no extra-info)."""


_Buf = tuple[GrantRef, Gfn, memoryview]
"""A buffer page in flight: ``(grant ref, gfn, view)``."""
_BUF_REF = operator.itemgetter(0)  # _Buf -> its grant ref
_BUF_PAGE = operator.itemgetter(1, 2)  # _Buf -> (gfn, view), a pool entry
_PAGE_GFN = operator.itemgetter(0)  # pool entry -> gfn


def parse_mac(raw: bytes | None) -> bytes:
    """``XX:XX:XX:XX:XX:XX`` -> 6 bytes.

    Args:
        raw: the ``mac`` key (toolstack-written, in the guest-owned dir).

    Raises:
        PeerProtocolError: absent or malformed.
    """
    text = (raw or b"").decode("ascii", "replace")
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise PeerProtocolError(f"mac {text!r}: expected XX:XX:XX:XX:XX:XX")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise PeerProtocolError(f"mac {text!r}: not hexadecimal") from None


def _flag(raw: bytes | None) -> bool:
    return raw is not None and raw.strip() == b"1"


@register_frontend
class NetFront(Frontend):
    """The vif frontend. The guest program uses :attr:`netdev`.

    Attributes:
        netdev: the program-facing :class:`~domu.netdev.NetDevice`.
        backend_features: the backend's ``feature-*`` keys as read.
        rx_target: rx buffers kept posted (class default: the ring size).
        notifications_sent / events_seen: event-channel traffic (for tests
            and the benchmark).
    """

    kind = "vif"
    rx_target = NET_RX_RING_SIZE

    def __init__(self, dev: FrontendDevice, xs: XenStoreClient, hc: HypercallInterface,
                 events: EventDispatcher, grants: GrantTableClient,
                 pages: PageAllocator) -> None:
        super().__init__(dev, xs, hc, events, grants, pages)
        self.netdev = NetDevice(f"eth{dev.devid}", self._xmit, try_xmit=self._try_xmit)
        self.backend_features: dict[str, bool] = {}
        self.notifications_sent = 0
        self.events_seen = 0
        self.connected = False
        self._tx: FrontRing[Any, NetifTxResponse] | None = None
        self._tx_writer: FrontRequestWriter | None = None  # set with _tx
        self._rx: FrontRing[NetifRxRequest, NetifRxResponse] | None = None
        self._port: Port | None = None
        self._waiter: PortWaiter | None = None
        self._sg = False
        self._tx_free_ids: list[int] = []
        self._tx_inflight: list[_Buf | None] = [None] * NET_TX_RING_SIZE
        self._tx_pages: list[tuple[Gfn, memoryview]] = []
        self._tx_lot = trio.lowlevel.ParkingLot()
        self._rx_posted: list[_Buf | None] = [None] * NET_RX_RING_SIZE
        self._rx_pages: list[tuple[Gfn, memoryview]] = []
        self._rx_parts: list[bytes] = []
        self._rx_slots = 0  # data slots in the chain being assembled
        self._rx_extras = 0  # extra-info slots still expected
        self._rx_extra_count = 0
        self._rx_chain_error = False
        self._rx_data_done = False

    # -- handshake -----------------------------------------------------------------------

    async def talk_to_backend(self) -> None:
        """Read features, set up both rings and the port, publish them (xen-abi 5.4 step 3).

        Raises:
            PeerProtocolError: bad ``mac``/``mtu`` or a backend that cannot rx-copy.
        """
        names = ("feature-sg", "feature-rx-copy", "feature-split-event-channels",
                 "feature-gso-tcpv4", "feature-gso-tcpv6", "feature-multicast-control")
        self.backend_features = {n: _flag(await self.read_backend(n)) for n in names}
        if not self.backend_features["feature-rx-copy"]:
            raise PeerProtocolError("backend does not offer feature-rx-copy")
        self._sg = self.backend_features["feature-sg"]
        mac = parse_mac(await self.read_key("mac"))
        if mac[0] & 1:
            raise PeerProtocolError("mac is a multicast address")
        raw_mtu = await self.read_key("mtu")
        mtu = DEFAULT_MTU
        if raw_mtu is not None:
            if not raw_mtu.isdigit() or not 68 <= int(raw_mtu) <= 65535:
                raise PeerProtocolError(f"mtu {raw_mtu!r}: expected 68..65535")
            mtu = int(raw_mtu)
        if not self._sg and max_frame_len(mtu) > XEN_PAGE_SIZE:
            mtu = XEN_PAGE_SIZE - ETH_HLEN - 4  # Linux: no sg, no frames beyond a page
        self.netdev.mac, self.netdev.mtu = mac, mtu

        tx_gfn, tx_view = self.alloc_page()
        rx_gfn, rx_view = self.alloc_page()
        self._tx = FrontRing.init([tx_view], NETIF_TX_CODEC)
        self._tx_writer = FrontRequestWriter(self._tx, TX_REQ_SLOT)
        self._rx = FrontRing.init([rx_view], NETIF_RX_CODEC)
        tx_ref = self.grant_page(tx_gfn)
        rx_ref = self.grant_page(rx_gfn)
        self._port, self._waiter = self.alloc_port_waiter()
        self._tx_free_ids = list(range(NET_TX_RING_SIZE - 1, -1, -1))
        self._tx_inflight = [None] * NET_TX_RING_SIZE
        self._rx_posted = [None] * NET_RX_RING_SIZE
        self._reset_chain()
        self._alloc_rx_buffers()

        path = self.dev.path
        keys = {"tx-ring-ref": str(tx_ref), "rx-ring-ref": str(rx_ref),
                "event-channel": str(self._port), "request-rx-copy": "1",
                "feature-rx-notify": "1", "feature-sg": "1"}

        async def publish(tx: Any) -> None:
            for key, value in keys.items():
                await tx.write(f"{path}/{key}", value)

        await self.xs.transaction(publish)
        self.connected = True
        self.netdev.closed = False
        self.start_worker(self._worker_loop)

    async def backend_changed_again(self) -> None:
        """ANNOUNCE: the backend is Connected: carrier on."""
        if self.connected and self.netdev.broken is None:
            self.netdev.set_carrier(True)

    async def disconnect(self) -> None:
        """Stop I/O, wake everyone with an error, end every buffer grant, free pages."""
        self.connected = False
        if self.netdev.broken is None:
            self.netdev.set_closed()
        self._tx_lot.unpark_all()
        await self.stop_worker()
        for i, buf in enumerate(self._tx_inflight):
            if buf is not None:
                self._end(buf, self._tx_pages)
                self._tx_inflight[i] = None
        for i, buf in enumerate(self._rx_posted):
            if buf is not None:
                self._end(buf, self._rx_pages)
                self._rx_posted[i] = None
        self._tx_pages = []
        self._rx_pages = []
        self._tx = self._rx = None
        self._tx_writer = None
        await super().disconnect()

    # -- buffers --------------------------------------------------------------------------

    def _end(self, buf: _Buf, pool: list[tuple[Gfn, memoryview]]) -> None:
        """End a buffer grant; recycle its page, or defer both if the backend maps it."""
        self._end_many([buf], pool)

    def _end_many(self, bufs: list[_Buf], pool: list[tuple[Gfn, memoryview]]) -> None:
        """End the grants of retired buffers and recycle their pages; a grant the
        backend still maps (it should only copy) keeps its ref and page, in
        ``pending_grants``, never reused."""
        if not bufs:
            return
        kept = self.grants.end_foreign_access_many(list(map(_BUF_REF, bufs)))
        if not kept:
            pool.extend(map(_BUF_PAGE, bufs))
            return
        held = set(kept)
        for ref, gfn, view in bufs:
            if ref not in held:
                pool.append((gfn, view))
                continue
            self.pending_grants.append((ref, gfn))
            _log.warning("%s: grant %d still in use by the backend; page not reused",
                         self.dev.path, ref)
        if len(self.pending_grants) > MAX_PENDING_GRANTS:
            self._set_broken("backend keeps too many grants mapped")

    def _alloc_rx_buffers(self) -> None:
        """Post rx requests until ``rx_target`` are outstanding (``xennet_alloc_rx_buffers``)."""
        rx = self._rx
        if rx is None or self.netdev.broken is not None:
            return
        want = min(self.rx_target, rx.size) - ((rx.req_prod_pvt - rx.rsp_cons) & _M)
        if want <= 0:
            return
        pool = self._rx_pages
        while len(pool) < want:
            pool.append(self.alloc_page())
        pages = pool[-want:]
        refs = self.grants.grant_access_many(self.dev.backend_id, list(map(_PAGE_GFN, pages)))
        del pool[-want:]
        posted = self._rx_posted
        mask = rx.size - 1
        i = rx.req_prod_pvt
        reqs: list[RxReqTuple] = []
        for ref, (gfn, view) in zip(refs, pages):
            k = i & mask
            posted[k] = (ref, gfn, view)
            reqs.append((k, ref))
            i += 1
        front_put_requests(rx, RX_REQ_SLOT, reqs)
        if rx.push_requests_and_check_notify():
            self._notify()

    def _notify(self) -> None:
        if self._port is not None:
            self.notifications_sent += 1
            self.hc.evtchn_send(self._port)

    # -- transmit --------------------------------------------------------------------------

    def _tx_pushed(self, tx: FrontRing[Any, Any], n: int) -> bool:
        """Count a frame of ``n`` bytes whose slots are written, publish them and
        notify if the ring asks; True (the frame is queued)."""
        stats = self.netdev.stats
        stats.tx_packets += 1
        stats.tx_bytes += n
        if tx.push_requests_and_check_notify():
            self._notify()
        return True

    def _try_xmit(self, frame: bytes) -> bool:
        """``xennet_start_xmit`` when the ring has room: put one frame on the tx ring.

        NetDevice calls this only while the device is usable.

        Returns:
            False (nothing done) when the ring or the id pool is full: then
            :meth:`_xmit` waits for room.

        Raises:
            ValueError: the frame needs several pages but the backend has no sg.
        """
        n = len(frame)
        if n > XEN_PAGE_SIZE:
            return self._put_frame(frame, n)
        tx = self._tx
        free_ids = self._tx_free_ids
        if tx is None or not free_ids or tx.free_requests() < 1:
            return False
        # one slot (the common case): one page, one grant, one request
        pool = self._tx_pages
        gfn, view = pool.pop() if pool else self.alloc_page()
        view[:n] = frame
        ref = self.grants.grant_access(self.dev.backend_id, gfn, readonly=True)
        txid = free_ids.pop()
        self._tx_inflight[txid] = (ref, gfn, view)
        self._tx_writer.put((ref, 0, 0, txid, n))  # type: ignore[union-attr]  # set with tx
        return self._tx_pushed(tx, n)

    async def _xmit(self, frame: bytes) -> None:
        """``xennet_start_xmit``: put one frame on the tx ring (waits for room).

        Raises:
            ValueError: the frame needs several pages but the backend has no sg.
            NetDeviceError: the device broke, closed or went down.
        """
        while True:
            self.netdev.check()
            if self._tx is None:
                raise NetDeviceClosed(f"{self.netdev.name}: device not connected")
            if self._try_xmit(frame):
                return
            await self._tx_lot.park()

    def _put_frame(self, frame: bytes, n: int) -> bool:
        """A frame of several slots: each page-sized fragment copied into its own
        page granted read-only; the first slot's size is the whole frame."""
        nslots = (n + XEN_PAGE_SIZE - 1) // XEN_PAGE_SIZE
        if not self._sg:
            raise ValueError(f"{n}-byte frame needs {nslots} slots; backend lacks feature-sg")
        tx = self._tx
        if tx is None or tx.free_requests() < nslots or len(self._tx_free_ids) < nslots:
            return False
        backend = self.dev.backend_id
        pool = self._tx_pages
        reqs: list[TxReqTuple] = []
        for s in range(nslots):
            chunk = frame[s * XEN_PAGE_SIZE:(s + 1) * XEN_PAGE_SIZE]
            gfn, view = pool.pop() if pool else self.alloc_page()
            view[:len(chunk)] = chunk
            ref = self.grants.grant_access(backend, gfn, readonly=True)
            txid = self._tx_free_ids.pop()
            self._tx_inflight[txid] = (ref, gfn, view)
            more = s < nslots - 1
            reqs.append((ref, 0, NETTXF_more_data if more else 0, txid,
                         n if s == 0 else len(chunk)))
        front_put_requests(tx, TX_REQ_SLOT, reqs)
        return self._tx_pushed(tx, n)

    def _tx_buf_gc(self) -> None:
        """``xennet_tx_buf_gc``: retire answered tx slots (validating each response)."""
        tx = self._tx
        assert tx is not None
        rp = tx.sring.rsp_prod  # read once
        cons = tx.rsp_cons
        n = (rp - cons) & _M
        if n == 0:
            return
        outstanding = (tx.req_prod_pvt - cons) & _M
        if n > outstanding:
            raise PeerProtocolError(
                f"tx: {n} responses published but only {outstanding} requests outstanding")
        stats = self.netdev.stats
        inflight = self._tx_inflight
        free_ids = self._tx_free_ids
        done: list[_Buf] = []
        idx = cons
        try:
            for rid, status in front_copy_responses(tx, TX_RSP_SLOT, cons, n):
                if status not in _TX_OK_STATUS:
                    raise PeerProtocolError(
                        f"tx response {tx_response((rid, status))}: bad status")
                if not 0 <= rid < NET_TX_RING_SIZE:
                    raise PeerProtocolError(f"tx response id {rid} out of range")
                buf = inflight[rid]
                if buf is None:
                    raise PeerProtocolError(f"tx response for inactive request id {rid}")
                inflight[rid] = None
                idx += 1
                if status != NETIF_RSP_OKAY:
                    stats.tx_errors += 1
                free_ids.append(rid)
                done.append(buf)
        finally:
            tx.rsp_cons = idx & _M
            self._end_many(done, self._tx_pages)
        if self._tx_lot:
            self._tx_lot.unpark_all()

    # -- receive ---------------------------------------------------------------------------

    def _reset_chain(self) -> None:
        self._rx_parts = []
        self._rx_slots = 0
        self._rx_extras = 0
        self._rx_extra_count = 0
        self._rx_chain_error = False
        self._rx_data_done = False

    def _rx_poll(self) -> int:
        """``xennet_poll``: consume rx responses, assemble frames, refill. Returns slots read.

        A chain still open at the last published response stays in private
        state (bytes already copied out); the next poll continues it.
        """
        rx = self._rx
        assert rx is not None
        rp = rx.sring.rsp_prod  # read once
        cons = rx.rsp_cons
        n = (rp - cons) & _M
        if n == 0:
            return 0
        posted = (rx.req_prod_pvt - cons) & _M
        if n > posted:
            raise PeerProtocolError(
                f"rx: {n} responses published but only {posted} buffers posted")
        mask = rx.size - 1
        posted_bufs = self._rx_posted
        netdev = self.netdev
        max_len = netdev.max_frame_len
        done: list[_Buf] = []
        idx = cons
        try:
            for fields in front_copy_responses(rx, RX_RSP_SLOT, cons, n):
                k = idx & mask
                buf = posted_bufs[k]
                if buf is None:  # cannot happen while n <= posted; keep the invariant loud
                    raise PeerProtocolError(f"rx response in slot {k}, which is not posted")
                rid, offset, flags, status = fields
                if (not flags and rid == k and status >= 0 and offset + status <= XEN_PAGE_SIZE
                        and not self._rx_extras and not self._rx_slots):
                    # the common case: a whole frame in one slot (the checks of
                    # _rx_data and _finish_frame for a one-slot chain, in one place)
                    data = bytes(buf[2][offset:offset + status])
                    posted_bufs[k] = None
                    idx += 1
                    done.append(buf)
                    if ETH_HLEN <= status <= max_len:
                        netdev.deliver(data)
                    else:
                        netdev.stats.rx_length_errors += 1
                        netdev.stats.rx_errors += 1
                    continue
                rsp = rx_response(fields)
                if self._rx_extras:
                    self._rx_extra(rsp)
                else:
                    self._rx_data(rsp, k, buf)
                posted_bufs[k] = None
                idx += 1
                done.append(buf)
                if self._rx_data_done and not self._rx_extras:
                    self._finish_frame()
        finally:  # what was consumed is retired even when the backend broke the device
            rx.rsp_cons = idx & _M
            self._end_many(done, self._rx_pages)
        self._alloc_rx_buffers()
        return n

    def _rx_data(self, rsp: NetifRxResponse, k: int, buf: _Buf) -> None:
        """Validate one data slot and take its bytes (``xennet_get_responses``)."""
        if rsp.id != k:
            raise PeerProtocolError(f"rx response id {rsp.id} in slot {k} (posted id {k})")
        if rsp.error is not None:
            raise PeerProtocolError(f"rx response in slot {k}: {rsp.error}")
        self._rx_slots += 1
        if self._rx_slots > XEN_NETIF_NR_SLOTS_MIN:
            raise PeerProtocolError(f"rx chain longer than {XEN_NETIF_NR_SLOTS_MIN} slots")
        if rsp.flags & NETRXF_extra_info:
            if self._rx_slots != 1:
                raise PeerProtocolError("rx extra-info flag on a later fragment")
            self._rx_extras = 1
        if not rsp.flags & NETRXF_more_data:
            self._rx_data_done = True
        if rsp.status < 0:  # NETIF_RSP_ERROR / DROPPED: this frame is lost
            self._rx_chain_error = True
        elif not self._rx_chain_error:
            self._rx_parts.append(bytes(buf[2][rsp.offset:rsp.offset + rsp.status]))

    def _rx_extra(self, rsp: NetifRxResponse) -> None:
        """One extra-info slot (``xennet_get_extras``): validated, then ignored."""
        extra = rsp.as_extra_info()
        if extra.error is not None:
            raise PeerProtocolError(f"rx extra-info: {extra.error}")
        self._rx_extra_count += 1
        if self._rx_extra_count > MAX_RX_EXTRAS:
            raise PeerProtocolError("too many rx extra-info slots")
        if not extra.more:
            self._rx_extras = 0

    def _finish_frame(self) -> None:
        stats = self.netdev.stats
        frame = b"".join(self._rx_parts)
        error = self._rx_chain_error
        self._reset_chain()
        if error:
            stats.rx_errors += 1
            return
        if not ETH_HLEN <= len(frame) <= self.netdev.max_frame_len:
            stats.rx_length_errors += 1
            stats.rx_errors += 1
            return
        self.netdev.deliver(frame)

    # -- the worker ------------------------------------------------------------------------

    def _set_broken(self, reason: str) -> None:
        if self.netdev.broken is None:
            _log.warning("%s: device broken: %s", self.dev.path, reason)
        self.netdev.set_broken(reason)
        self._tx_lot.unpark_all()

    def poll(self) -> bool:
        """Process both rings once; True if the worker may sleep (nothing left).

        Raises:
            PeerProtocolError: the backend misbehaved (the device is now broken).
        """
        tx, rx = self._tx, self._rx
        if tx is None or rx is None:
            return True
        try:
            self._tx_buf_gc()
            self._rx_poll()
            if tx.final_check_for_responses() or rx.final_check_for_responses():
                return False
        except PeerProtocolError as exc:
            self._set_broken(str(exc))
            raise
        return True

    async def _worker_loop(self) -> None:
        waiter = self._waiter
        assert waiter is not None
        while True:
            if self.netdev.broken is not None:
                raise PeerProtocolError(self.netdev.broken)
            if self.poll():
                await waiter.wait()
                self.events_seen += 1
            else:
                await trio.lowlevel.checkpoint()
