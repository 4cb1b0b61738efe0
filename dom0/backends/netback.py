"""netback: dom0's backend for PV network interfaces (``vif``), after Linux xen-netback.

Theory of operation
-------------------
One :class:`NetBack` instance serves one guest vif ``vif<D>.<V>``. The backend
bus (:mod:`dom0.backends.bus`) runs the xenbus handshake (xen-abi 5.4) and
calls the hooks:

* :meth:`NetBack.probe` publishes the features (``feature-sg=1``,
  ``feature-rx-copy=1``, ``feature-split-event-channels=1``, no GSO, no
  multicast control, one queue) and then does the *hotplug script's* job:
  it attaches the host interface ``vif<D>.<V>`` as a port of the bridge named
  in the toolstack's ``bridge`` key (dom0 creates it on first use) and writes
  ``hotplug-status=connected``. The bus defers Connected until
  :meth:`NetBack.hotplug_done` says so.
* :meth:`NetBack.map_ring` (frontend Connected - netfront goes 1 -> 4
  directly) reads ``tx-ring-ref``, ``rx-ring-ref``, ``event-channel`` or
  ``event-channel-tx``/``-rx``, ``request-rx-copy`` (must be 1),
  ``feature-sg`` and ``feature-rx-notify``; maps both rings and binds the
  port(s) through the base class, which releases them whatever happens.
* :meth:`NetBack.connect` starts the worker: a **tx loop** and an **rx loop**.
  Disconnect stops both, detaches the bridge port, unmaps, unbinds.

**Guest transmit** (tx ring; Linux ``xenvif_tx_build_gops``). A pass consumes
at most :data:`TX_BATCH_SLOTS` slots (each copied out of the page once by
:class:`~ring.sring.BackRing`), groups them into packets and checks each one
before any data moves::

    slot 0  first request: size = WHOLE packet, flags more_data|extra_info
    slot 1  extra-info (GSO/...; chained by FLAG_MORE)      -> NETIF_RSP_NULL
    slot 2  fragment, size = its own length, more_data
    slot 3  last fragment (no more_data)
    first fragment's length = slot0.size - (slot2.size + slot3.size)

A packet is dropped - every slot answered ``NETIF_RSP_ERROR`` (extra-info slots
``NETIF_RSP_NULL``), counted in :attr:`NetbackStats.tx_drops` by reason - when
it uses more than ``XEN_NETIF_NR_SLOTS_MIN`` (18) data slots, its fragments
add up to more than the first slot's size, the first fragment is shorter
than an Ethernet header, any fragment is empty or crosses its page, an
extra-info slot is malformed or more than four are chained, or a grant copy
fails. A more-data chain still open at ``req_prod`` after 18 slots is an
*endless chain*: what was consumed is dropped and the rest of the chain is
answered with errors as it arrives. A shorter open chain waits (consumed,
kept privately) for its remaining slots. Good packets are grant-copied into
dom0 bounce pages - guest pages are never mapped - one ``GNTTABOP_copy`` op
(``GNTCOPY_source_gref``) per data slot, each into its own bounce page, all
of a pass in one hypercall (Linux ``gnttab_batch_copy``), and handed to the
bridge as one batch. Every slot gets exactly one response, in ring order,
pushed once per pass. The slots are copied out of the ring as one run of
bytes (:func:`ring.netif.back_get_requests`); a one-slot packet - the
common case - is checked and copied without building a packet record.

**Guest receive** (rx ring; Linux ``xenvif_rx_action``). Frames for the guest
wait in the bridge port's bounded queue (the bound is in bytes: a guest that
reads nothing costs dom0 at most that). A pass delivers at most
:data:`RX_BATCH_FRAMES` frames: each needs ``ceil(len / 4096)`` posted rx
requests (one unless ``feature-sg``); each slot's bytes are written to their
own bounce page and grant-copied into the guest's buffer (one
``GNTCOPY_dest_gref`` op per slot, all of a pass in one hypercall); each
response goes into the slot of the request it consumes, with that request's
id, ``offset`` 0, ``status`` = bytes in the slot, ``NETRXF_more_data`` on all but
the last. A failed copy answers that slot ``NETIF_RSP_ERROR``. Timers (trio's
clock): a queued frame the guest has no buffer for is dropped
:data:`RX_DRAIN_TIMEOUT` (10 s) after it was queued; when nothing was
delivered for :data:`RX_STALL_TIMEOUT` (60 s) while the guest posts no
buffer, the carrier goes off (everything queued, and every frame arriving,
is dropped) until the guest posts a buffer again. Without
``feature-rx-notify`` the guest never signals new buffers, so (as Linux
does) the drain timeout becomes 30 ms and stall detection is off.

**Event storms** (XSA-332). Port handlers only set a coalescing flag; every
pass does bounded work; responses are pushed with the ring's notify check;
each loop re-arms the ring's event index and looks again before sleeping.

Worked example (a 2-slot frame from d1 to d2 on ``xenbr0``)::

    d1 tx: [gref 8, off 0, more_data, id 0, size 1514] [gref 9, off 0, 0, id 1, size 514]
    netback d1: one hypercall, two ops: 1000 bytes of gref 8 -> bounce page 0,
                514 bytes of gref 9 -> bounce page 1; frame = the two joined;
                answers (0, OKAY), (1, OKAY), pushes once,
                bridge.transmit_many("vif1.0", [frame])  # learned/flooded to vif2.0
    netback d2: rx request (id 5, gref 12) at slot 7 -> copy 1514 bytes into gref 12,
                response at slot 7: (id 5, offset 0, flags 0, status 1514)
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from dom0.backends.bus import PEER_ERRORS, Backend, BackendBus, Kick, register_backend
from dom0.kernel import Dom0Kernel
from dom0.native.bridge import DEFAULT_BRIDGE, DEFAULT_PORT_MAX_BYTES, BridgePort
from hypervisor.errno import XenError
from hypervisor.grant_table import (
    GNTCOPY_dest_gref,
    GNTCOPY_source_gref,
    GntCopyOp,
    GNTST_okay,
)
from hypervisor.types import DOMID_SELF, Gfn, Port
from ring.errors import PeerProtocolError
from ring.netif import (
    ETH_HLEN,
    NETIF_RSP_ERROR,
    NETIF_RSP_NULL,
    NETIF_RSP_OKAY,
    NETIF_RX_CODEC,
    NETIF_TX_CODEC,
    RX_REQ_SLOT,
    RX_RSP_SLOT,
    TX_REQ_SLOT,
    TX_RSP,
    XEN_NETIF_EXTRA_TYPE_MAX,
    XEN_NETIF_NR_SLOTS_MIN,
    XEN_PAGE_SIZE,
    NetifRxRequest,
    NetifRxResponse,
    NetifTxRequest,
    NetifTxResponse,
    NETRXF_more_data,
    NETTXF_extra_info,
    NETTXF_more_data,
    RxReqTuple,
    RxRspTuple,
    TxReqTuple,
    TxRspTuple,
    back_get_requests,
    back_put_responses,
    tx_fragment_error,
    tx_request,
)
from ring.sring import BackRing

__all__ = [
    "BOUNCE_PAGES",
    "RX_BATCH_FRAMES",
    "RX_DRAIN_TIMEOUT",
    "RX_QUEUE_MAX_BYTES",
    "RX_STALL_TIMEOUT",
    "TX_BATCH_SLOTS",
    "NetBack",
    "NetbackStats",
    "vif_name",
    "vif_statistics",
]

_log = logging.getLogger("xensim.dom0.netback")

TX_BATCH_SLOTS = 64
"""Tx slots consumed per pass (Linux's NAPI weight): bounds the work per event."""
RX_BATCH_FRAMES = 64
"""Frames delivered per rx pass (Linux ``RX_BATCH_SIZE``)."""
RX_DRAIN_TIMEOUT = 10.0
"""Seconds a frame may wait for a guest rx buffer (Linux ``rx_drain_timeout_msecs``)."""
RX_DRAIN_TIMEOUT_POLL = 0.03
"""Drain timeout for a frontend without ``feature-rx-notify`` (Linux: 30 ms)."""
RX_STALL_TIMEOUT = 60.0
"""Seconds without delivery, with no buffer posted, before carrier off (``stall_timeout``)."""
RX_QUEUE_MAX_BYTES = DEFAULT_PORT_MAX_BYTES
"""Bytes queued towards one guest at most (the bridge port's bound: 128 pages)."""
MAX_EXTRA_SLOTS = XEN_NETIF_EXTRA_TYPE_MAX - 1
"""Extra-info slots one tx packet may chain (one per type)."""
BOUNCE_PAGES = 64
"""dom0 pages (per host) that grant copies go through, one per slot: a pass whose
copies need more flushes them (one hypercall per ``BOUNCE_PAGES`` slots)."""

FEATURES = (
    ("feature-sg", "1"),
    ("feature-gso-tcpv4", "0"),
    ("feature-gso-tcpv6", "0"),
    ("feature-ipv6-csum-offload", "0"),
    ("feature-rx-copy", "1"),
    ("feature-rx-flip", "0"),
    ("feature-multicast-control", "0"),
    ("feature-dynamic-multicast-control", "0"),
    ("feature-split-event-channels", "1"),
    ("multi-queue-max-queues", "1"),
    ("feature-ctrl-ring", "0"),
)
"""What :meth:`NetBack.probe` publishes, in order (xen-abi 5.4 step 1, our subset)."""


def vif_name(domid: int, devid: int) -> str:
    """The host interface (bridge port) name of a vif: ``vif<domid>.<devid>``."""
    return f"vif{domid}.{devid}"


@dataclass
class NetbackStats:
    """Counters of one vif, from the **guest's** point of view (like ``xentop``).

    Attributes:
        tx_packets, tx_bytes: frames the guest transmitted that went to the bridge.
        tx_errors: packets answered with ``NETIF_RSP_ERROR`` (dropped).
        tx_error_slots: slots answered with ``NETIF_RSP_ERROR``.
        tx_null_slots: extra-info slots answered with ``NETIF_RSP_NULL``.
        tx_drops: dropped tx packets by reason (``too-many-slots``,
            ``endless-chain``, ``size-mismatch``, ``runt``, ``fragment``,
            ``extra-info``, ``grant-copy``).
        rx_packets, rx_bytes: frames delivered into the guest's buffers.
        rx_errors: rx slots whose grant copy failed (answered ``NETIF_RSP_ERROR``).
        rx_drops: frames for the guest dropped by reason (``drain-timeout``,
            ``carrier-off``, ``no-sg``, ``grant-copy``).
        carrier: link state (False once the guest stalled).
        stalls: times the carrier went off because the guest stalled.
        ring_errors: fatal ring errors (bogus indices: the vif was halted).
        tx_passes, rx_passes: worker passes (each does bounded work).
        notifies: events sent to the guest.
    """

    tx_packets: int = 0
    tx_bytes: int = 0
    tx_errors: int = 0
    tx_error_slots: int = 0
    tx_null_slots: int = 0
    tx_drops: collections.Counter[str] = field(default_factory=collections.Counter)
    rx_packets: int = 0
    rx_bytes: int = 0
    rx_errors: int = 0
    rx_drops: collections.Counter[str] = field(default_factory=collections.Counter)
    carrier: bool = False
    stalls: int = 0
    ring_errors: int = 0
    tx_passes: int = 0
    rx_passes: int = 0
    notifies: int = 0

    @property
    def tx_dropped(self) -> int:
        """Tx packets dropped, all reasons."""
        return sum(self.tx_drops.values())

    @property
    def rx_dropped(self) -> int:
        """Frames for the guest dropped, all reasons."""
        return sum(self.rx_drops.values())

    def as_dict(self) -> dict[str, object]:
        """A plain snapshot (for ``top`` and JSON)."""
        d: dict[str, object] = {k: v for k, v in vars(self).items()
                                if not isinstance(v, collections.Counter)}
        d["tx_drops"] = dict(self.tx_drops)
        d["rx_drops"] = dict(self.rx_drops)
        d["tx_dropped"] = self.tx_dropped
        d["rx_dropped"] = self.rx_dropped
        return d


def vif_statistics(bus: BackendBus) -> dict[str, NetbackStats]:
    """Every live vif's counters, by interface name (``vif<D>.<V>``).

    Args:
        bus: dom0's backend bus (``kernel.backends``).
    """
    out: dict[str, NetbackStats] = {}
    for (kind, domid, devid), runner in sorted(bus.devices.items()):
        if kind == "vif" and isinstance(runner.instance, NetBack):
            out[vif_name(domid, devid)] = runner.instance.stats
    return out


# -- dom0 bounce pages -----------------------------------------------------------------------


class _Bounce:
    """dom0 pages that grant copies go through (one set per host).

    One page per ring slot, data at offset 0, so every slot is exactly one
    copy op (a 1514-byte frame never straddles two bounce pages). Every use
    (fill ops, one hypercall, read back) is synchronous, so all vifs of a
    host can share one set: no other task runs in between.
    """

    def __init__(self, kernel: Dom0Kernel, n: int) -> None:
        pages = [kernel.pages.alloc() for _ in range(n)]
        self.gfns: list[Gfn] = [g for g, _ in pages]
        self.views: list[memoryview] = [v for _, v in pages]


_BOUNCE: weakref.WeakKeyDictionary[Dom0Kernel, _Bounce] = weakref.WeakKeyDictionary()


def _bounce_for(kernel: Dom0Kernel) -> _Bounce:
    b = _BOUNCE.get(kernel)
    if b is None:
        b = _BOUNCE[kernel] = _Bounce(kernel, BOUNCE_PAGES)
    return b


# -- tx packets --------------------------------------------------------------------------------


@dataclass
class _TxPacket:
    """The slots of one tx packet (private copies) and what became of it."""

    first: NetifTxRequest
    extras: list[NetifTxRequest] = field(default_factory=list)
    frags: list[NetifTxRequest] = field(default_factory=list)
    drop: str | None = None

    @property
    def first_len(self) -> int:
        return self.first.size - sum(f.size for f in self.frags)

    def segments(self) -> list[tuple[int, int, int]]:
        """``(gref, offset, length)`` of each fragment, first one first."""
        return [(self.first.gref, self.first.offset, self.first_len),
                *((f.gref, f.offset, f.size) for f in self.frags)]

    def responses(self) -> list[TxRspTuple]:
        """One ``(id, status)`` response per slot, in ring order."""
        st = NETIF_RSP_OKAY if self.drop is None else NETIF_RSP_ERROR
        # an extra-info slot's response keeps the slot's first two bytes as its id,
        # as Linux writes only the status there
        return [(self.first.id, st),
                *((e.gref & 0xFFFF, NETIF_RSP_NULL) for e in self.extras),
                *((f.id, st) for f in self.frags)]


def _check_packet(pkt: _TxPacket) -> str | None:
    """Why a complete tx packet must be dropped (None: it is fine)."""
    if 1 + len(pkt.frags) > XEN_NETIF_NR_SLOTS_MIN:
        return "too-many-slots"
    for f in pkt.frags:
        if f.error is not None or tx_fragment_error(f, f.size) is not None:
            return "fragment"
    if sum(f.size for f in pkt.frags) > pkt.first.size:
        return "size-mismatch"
    first_len = pkt.first_len
    if first_len < ETH_HLEN:
        return "runt"
    if pkt.first.error is not None or tx_fragment_error(pkt.first, first_len) is not None:
        return "fragment"
    return None


# -- the driver --------------------------------------------------------------------------------


def _number(raw: bytes | None, what: str) -> int:
    """A decimal key the frontend wrote (guest-controlled), checked."""
    if raw is None or not raw.isdigit() or len(raw) > 10:
        raise PeerProtocolError(f"{what}: expected a number, got {raw!r}")
    n = int(raw)
    if n > 0xFFFFFFFF:
        raise PeerProtocolError(f"{what}: {n} out of range")
    return n


def _flag(raw: bytes | None) -> bool:
    """A frontend ``feature-*`` key: absent or anything but a positive number is off."""
    return raw is not None and raw.isdigit() and len(raw) <= 10 and int(raw) > 0


@register_backend
class NetBack(Backend):
    """Backend of one vif: bridge port ``vif<D>.<V>`` <-> the guest's tx/rx rings.

    Attributes:
        stats: :class:`NetbackStats` (readable from dom0 at any time).
        port_name: the bridge port name.
        bridge_name: the bridge (from the toolstack's ``bridge`` key).
        can_sg: the frontend accepts multi-slot rx packets (``feature-sg``).
        rx_notify: the frontend signals new rx buffers (``feature-rx-notify``).
    """

    kind = "vif"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.stats = NetbackStats()
        self.port_name = vif_name(self.dev.frontend_id, self.dev.devid)
        self.bridge_name = DEFAULT_BRIDGE
        self.bport: BridgePort | None = None
        self.can_sg = False
        self.rx_notify = True
        self.tx_ring: BackRing[NetifTxRequest, NetifTxResponse] | None = None
        self.rx_ring: BackRing[NetifRxRequest, NetifRxResponse] | None = None
        self.tx_port: Port | None = None
        self.rx_port: Port | None = None
        self._tx_kick = Kick()
        self._rx_kick = Kick()
        self._tx_pending: list[TxReqTuple] = []
        self._tx_in_dropped_chain = False
        self._rx_times: collections.deque[list[float]] = collections.deque()
        self._rx_timed = 0  # frames _rx_times covers (== frames in the port queue)
        self._last_rx_time = 0.0
        self._kernel = Dom0Kernel.of(self.hc)

    # -- handshake hooks -----------------------------------------------------------------

    async def probe(self) -> None:
        """Publish features, then do the hotplug step: join the bridge, ``hotplug-status``."""
        await self.write_keys(dict(FEATURES))
        raw = await self.read_key("bridge")  # toolstack-written, dom0-owned
        if raw:
            self.bridge_name = raw.decode("ascii", "replace")
        self._attach_port()
        await self.write_key("hotplug-status", "connected")

    async def hotplug_done(self) -> bool:
        """True once our ``hotplug-status`` reads ``connected``."""
        return await self.read_key("hotplug-status") == b"connected"

    async def map_ring(self) -> None:
        """Read the frontend's keys, map both rings, bind the event channel(s).

        Raises:
            PeerProtocolError: a missing or malformed key, more than one queue,
                ``request-rx-copy`` not 1, a grant that does not map, a port
                that does not bind (the device goes to Closing; nothing leaks).
        """
        queues = await self.read_frontend("multi-queue-num-queues")
        if queues is not None and _number(queues, "multi-queue-num-queues") > 1:
            raise PeerProtocolError("multi-queue-num-queues > multi-queue-max-queues (1)")
        if not _flag(await self.read_frontend("request-rx-copy")):
            raise PeerProtocolError("request-rx-copy must be 1 (only copy mode is supported)")
        self.can_sg = _flag(await self.read_frontend("feature-sg"))
        self.rx_notify = _flag(await self.read_frontend("feature-rx-notify"))
        tx_ref = _number(await self.read_frontend("tx-ring-ref"), "tx-ring-ref")
        rx_ref = _number(await self.read_frontend("rx-ring-ref"), "rx-ring-ref")
        single = await self.read_frontend("event-channel")
        if single is not None:
            tx_evt = rx_evt = _number(single, "event-channel")
        else:
            tx_evt = _number(await self.read_frontend("event-channel-tx"), "event-channel-tx")
            rx_evt = _number(await self.read_frontend("event-channel-rx"), "event-channel-rx")
        self.tx_ring = BackRing.attach([self.map_grant(tx_ref)], NETIF_TX_CODEC)
        self.rx_ring = BackRing.attach([self.map_grant(rx_ref)], NETIF_RX_CODEC)
        if tx_evt == rx_evt:
            self.tx_port = self.rx_port = self.bind_port(tx_evt, self._on_event)
        else:
            self.tx_port = self.bind_port(tx_evt, self._on_tx_event)
            self.rx_port = self.bind_port(rx_evt, self._on_rx_event)

    async def connect(self) -> None:
        """Carrier on; start the tx and rx loops."""
        if self.tx_ring is None or self.rx_ring is None:
            raise PeerProtocolError("connect without mapped rings")
        self._attach_port()  # again after a reconnect
        self._tx_pending = []
        self._tx_in_dropped_chain = False
        self._last_rx_time = trio.current_time()
        self.stats.carrier = True
        self.start_worker(self._serve)

    def release_resources(self) -> None:
        """Leave the bridge, forget the rings, then unmap and unbind (idempotent)."""
        self.stats.carrier = False
        self._detach_port()
        self.tx_ring = self.rx_ring = None
        self.tx_port = self.rx_port = None
        self._tx_pending = []
        super().release_resources()

    # -- bridge port -------------------------------------------------------------------------

    def _attach_port(self) -> None:
        if self.bport is not None:
            return
        bridge = self._kernel.bridge(self.bridge_name)
        if self.port_name in bridge.ports:  # a stale port of a previous instance
            bridge.del_port(self.port_name)
        self._rx_forget_all()
        self.bport = bridge.add_port(self.port_name, notify=self._on_frames,
                                     max_bytes=RX_QUEUE_MAX_BYTES)

    def _detach_port(self) -> None:
        port, self.bport = self.bport, None
        if port is not None and not port.detached:
            port.bridge.del_port(port.name)
        self._rx_forget_all()

    def _on_frames(self) -> None:
        """Bridge: frames were queued for the guest (sync; never blocks).

        Arrival times are kept run-length encoded (``[time, count]``, oldest
        first; a bridge batch arrives at one instant), and they cover exactly
        the frames in the port queue: the new ones are those not yet counted.
        """
        port = self.bport
        n = port.queued_frames - self._rx_timed if port is not None else 0
        if n > 0:
            now = trio.current_time()
            times = self._rx_times
            if times and times[-1][0] == now:
                times[-1][1] += n
            else:
                times.append([now, n])
            self._rx_timed += n
        self._rx_kick.set()

    @property
    def _bounce(self) -> _Bounce:
        return _bounce_for(self._kernel)

    # -- event channel handlers (sync, O(1): storms only set flags) ---------------------------

    def _on_event(self, _port: int) -> None:
        self._tx_kick.set()
        self._rx_kick.set()

    def _on_tx_event(self, _port: int) -> None:
        self._tx_kick.set()

    def _on_rx_event(self, _port: int) -> None:
        self._rx_kick.set()

    def _notify(self, port: Port | None) -> None:
        if port is None:
            return
        self.stats.notifies += 1
        with contextlib.suppress(XenError):  # the guest closed its end: dropped, as Xen does
            self.hc.evtchn_send(port)

    # -- worker ------------------------------------------------------------------------------

    async def _serve(self) -> None:
        """The ring worker: both loops; a peer error in either stops both and is re-raised."""
        failed: list[BaseException] = []
        async with trio.open_nursery() as nursery:
            for loop in (self._tx_loop, self._rx_loop):
                nursery.start_soon(self._guard, loop, failed, nursery.cancel_scope)
        if failed:
            raise failed[0]

    async def _guard(self, loop: Callable[[], Awaitable[None]], failed: list[BaseException],
                     scope: trio.CancelScope) -> None:
        try:
            await loop()
        except PEER_ERRORS as exc:
            self.stats.ring_errors += 1
            self.stats.carrier = False
            failed.append(exc)
            scope.cancel()

    async def _tx_loop(self) -> None:
        ring = self.tx_ring
        assert ring is not None
        while True:
            self.tx_action()
            if ring.has_unconsumed_requests() or ring.final_check_for_requests():
                await trio.lowlevel.checkpoint()  # budget used up: let others run
                continue
            await self._tx_kick.wait()

    async def _rx_loop(self) -> None:
        ring = self.rx_ring
        assert ring is not None
        while True:
            deadline = self.rx_action()
            if deadline is None:
                await trio.lowlevel.checkpoint()  # budget used up: let others run
                continue
            with trio.move_on_at(deadline):
                await self._rx_kick.wait()

    # -- guest transmit ----------------------------------------------------------------------

    def tx_action(self) -> None:
        """One bounded tx pass: consume, check, copy, answer, transmit (sync).

        The slots are copied out of the ring once (one run of bytes); each
        packet is checked before any data moves; every data slot of a good
        packet becomes one ``GNTTABOP_copy`` op into its own bounce page, all
        of them in one hypercall (Linux ``gnttab_batch_copy``); every slot is
        answered in ring order and pushed once; the good frames go to the
        bridge as one batch.

        Raises:
            RingOverflowError: bogus ``req_prod`` (the frontend is hostile).
        """
        ring = self.tx_ring
        assert ring is not None
        stats = self.stats
        stats.tx_passes += 1
        reqs: list[TxReqTuple] = back_get_requests(ring, TX_REQ_SLOT, TX_BATCH_SLOTS)
        if self._tx_pending:
            reqs = self._tx_pending + reqs
            self._tx_pending = []
        if not reqs:
            return
        bounce = self._bounce
        gfns, views = bounce.gfns, bounce.views
        domid = self.dev.frontend_id
        rsps: list[TxRspTuple] = []
        ops: list[GntCopyOp] = []
        # packets waiting for their copies: (first op, nr ops, size, data-slot responses)
        goods: list[tuple[int, int, int, list[int] | int]] = []
        frames: list[bytes] = []

        def flush() -> None:
            statuses = self.hc.grant_copy(ops) if ops else []
            for first, nops, size, pos in goods:
                if nops == 1:
                    if statuses[first] == GNTST_okay:
                        frames.append(bytes(views[first][:size]))
                        continue
                elif all(st == GNTST_okay for st in statuses[first:first + nops]):
                    frames.append(b"".join(bytes(views[k][:ops[k][6]])
                                           for k in range(first, first + nops)))
                    continue
                for k in (pos,) if isinstance(pos, int) else pos:
                    rsps[k] = (rsps[k][0], NETIF_RSP_ERROR)
                self._tx_count_drop("grant-copy", 1 if isinstance(pos, int) else len(pos))
            ops.clear()
            goods.clear()

        i, n = 0, len(reqs)
        while i < n:
            gref, offset, flags, rid, size = reqs[i]
            if self._tx_in_dropped_chain:  # the rest of an endless chain
                i += 1
                rsps.append((rid, NETIF_RSP_ERROR))
                stats.tx_error_slots += 1
                if not flags & NETTXF_more_data:
                    self._tx_in_dropped_chain = False
                continue
            if not flags & (NETTXF_more_data | NETTXF_extra_info):
                # a one-slot packet: of _check_packet's rules only these two can fail
                i += 1
                if size < ETH_HLEN:
                    self._tx_count_drop("runt", 1)
                    rsps.append((rid, NETIF_RSP_ERROR))
                elif offset + size > XEN_PAGE_SIZE:
                    self._tx_count_drop("fragment", 1)
                    rsps.append((rid, NETIF_RSP_ERROR))
                else:
                    if len(ops) >= BOUNCE_PAGES:
                        flush()
                    k = len(ops)
                    goods.append((k, 1, size, len(rsps)))
                    ops.append((gref, domid, offset, gfns[k], DOMID_SELF, 0, size,
                                GNTCOPY_source_gref))
                    rsps.append((rid, NETIF_RSP_OKAY))
                continue
            pkt, used = self._tx_parse(reqs, i)
            if used is None:  # the chain is still open at req_prod
                if 1 + len(pkt.frags) > XEN_NETIF_NR_SLOTS_MIN:
                    pkt.drop = "endless-chain"
                    self._tx_in_dropped_chain = True
                    rsps.extend(pkt.responses())
                    self._tx_account(pkt)
                else:
                    self._tx_pending = reqs[i:]
                break
            i += used
            if pkt.drop is None:
                pkt.drop = _check_packet(pkt)
            if pkt.drop is not None:
                rsps.extend(pkt.responses())
                self._tx_account(pkt)
                continue
            segs = pkt.segments()
            if len(ops) + len(segs) > BOUNCE_PAGES:
                flush()
            base = len(rsps)
            pos = [base, *range(base + 1 + len(pkt.extras), base + 1 + len(pkt.extras)
                                + len(pkt.frags))]
            goods.append((len(ops), len(segs), pkt.first.size, pos))
            for sg, so, sl in segs:
                ops.append((sg, domid, so, gfns[len(ops)], DOMID_SELF, 0, sl,
                            GNTCOPY_source_gref))
            rsps.extend(pkt.responses())
            stats.tx_null_slots += len(pkt.extras)
        flush()
        if rsps:
            back_put_responses(ring, TX_RSP, rsps)
            if ring.push_responses_and_check_notify():
                self._notify(self.tx_port)
        if frames:
            stats.tx_packets += len(frames)
            stats.tx_bytes += sum(map(len, frames))
            if self.bport is not None:
                self.bport.transmit_many(frames)

    def _tx_parse(self, reqs: list[TxReqTuple], i: int) -> tuple[_TxPacket, int | None]:
        """The packet starting at ``reqs[i]`` and its slot count (None: incomplete)."""
        n = len(reqs)
        pkt = _TxPacket(tx_request(reqs[i]))
        j = i + 1
        if pkt.first.flags & NETTXF_extra_info:
            while True:
                if j >= n:
                    return pkt, None
                slot = tx_request(reqs[j])
                j += 1
                pkt.extras.append(slot)
                extra = slot.as_extra_info()
                if extra.error is not None:
                    pkt.drop = pkt.drop or "extra-info"
                if not extra.more:
                    break
                if len(pkt.extras) >= MAX_EXTRA_SLOTS:
                    pkt.drop = pkt.drop or "extra-info"
                    break
        more = pkt.first.flags & NETTXF_more_data
        while more:
            if j >= n:
                return pkt, None
            slot = tx_request(reqs[j])
            j += 1
            pkt.frags.append(slot)
            more = slot.flags & NETTXF_more_data
        return pkt, j - i

    def _tx_count_drop(self, reason: str, data_slots: int) -> None:
        """Count one dropped tx packet (its data slots answered with errors)."""
        s = self.stats
        s.tx_error_slots += data_slots
        s.tx_errors += 1
        s.tx_drops[reason] += 1
        _log.debug("%s: tx packet dropped: %s", self.port_name, reason)

    def _tx_account(self, p: _TxPacket) -> None:
        """Count a dropped multi-slot packet (or the start of an endless chain)."""
        assert p.drop is not None
        self.stats.tx_null_slots += len(p.extras)
        self._tx_count_drop(p.drop, 1 + len(p.frags))

    # -- guest receive -----------------------------------------------------------------------

    def _drain_timeout(self) -> float:
        return RX_DRAIN_TIMEOUT if self.rx_notify else RX_DRAIN_TIMEOUT_POLL

    def _slots_needed(self, frame: bytes) -> int:
        return max(1, math.ceil(len(frame) / XEN_PAGE_SIZE))

    def _rx_forget(self, n: int) -> None:
        """``n`` frames left the head of the port queue: drop their arrival times."""
        times = self._rx_times
        while n and times:
            head = times[0]
            if head[1] > n:
                head[1] -= n
                self._rx_timed -= n
                return
            n -= head[1]
            self._rx_timed -= head[1]
            times.popleft()

    def _rx_forget_all(self) -> None:
        self._rx_times.clear()
        self._rx_timed = 0

    def _rx_take(self) -> bytes | None:
        """Take the head frame off the port queue, and its arrival time."""
        port = self.bport
        frame = None
        if port is not None:
            with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                frame = port.receive_nowait()
        if frame is None:
            self._rx_forget_all()  # nothing queued: no arrival times either
        else:
            self._rx_forget(1)
        return frame

    def _rx_drop(self, reason: str) -> bool:
        """Drop the head frame (counted under ``reason``); False if there was none."""
        if self._rx_take() is None:
            return False
        self.stats.rx_drops[reason] += 1
        return True

    def _rx_deliver(self, ring: BackRing[NetifRxRequest, NetifRxResponse],
                    frames: list[bytes], nslots: int) -> None:
        """Copy ``frames`` (taken off the queue) into the next ``nslots`` posted
        buffers: one bounce page and one ``GNTCOPY_dest_gref`` op per slot, one
        hypercall per :data:`BOUNCE_PAGES` slots; each response goes in the slot
        of the request it consumes, with that request's id."""
        reqs: list[RxReqTuple] = back_get_requests(ring, RX_REQ_SLOT, nslots)
        if len(reqs) != nslots:  # unconsumed_requests() said they were there
            raise RuntimeError(f"rx: {len(reqs)} requests consumed, {nslots} expected")
        bounce = self._bounce
        gfns, views = bounce.gfns, bounce.views
        domid = self.dev.frontend_id
        rsps: list[RxRspTuple] = []
        ops: list[GntCopyOp] = []
        op_rsp: list[int] = []
        failed = False

        def flush() -> None:
            nonlocal failed
            if ops:
                statuses = self.hc.grant_copy(ops)
                if any(statuses):
                    failed = True
                    for st, k in zip(statuses, op_rsp):
                        if st != GNTST_okay:
                            rid, offset, flags, _ = rsps[k]
                            rsps[k] = (rid, offset, flags, NETIF_RSP_ERROR)
            ops.clear()
            op_rsp.clear()

        j = 0
        for frame in frames:
            size = len(frame)
            if size <= XEN_PAGE_SIZE:  # one slot
                if len(ops) >= BOUNCE_PAGES:
                    flush()
                q = len(ops)
                views[q][:size] = frame
                rid, gref = reqs[j]
                j += 1
                op_rsp.append(len(rsps))
                ops.append((gfns[q], DOMID_SELF, 0, gref, domid, 0, size, GNTCOPY_dest_gref))
                rsps.append((rid, 0, 0, size))
                continue
            for pos in range(0, size, XEN_PAGE_SIZE):
                if len(ops) >= BOUNCE_PAGES:
                    flush()
                q = len(ops)
                chunk = frame[pos:pos + XEN_PAGE_SIZE]
                n = len(chunk)
                views[q][:n] = chunk
                rid, gref = reqs[j]
                j += 1
                op_rsp.append(len(rsps))
                ops.append((gfns[q], DOMID_SELF, 0, gref, domid, 0, n, GNTCOPY_dest_gref))
                rsps.append((rid, 0, NETRXF_more_data if pos + n < size else 0, n))
        flush()
        stats = self.stats
        if not failed:
            stats.rx_packets += len(frames)
            stats.rx_bytes += sum(map(len, frames))
            frames = []  # counted
        k = 0
        for frame in frames:
            size = len(frame)
            used = 1 if size <= XEN_PAGE_SIZE else -(-size // XEN_PAGE_SIZE)
            if used == 1:
                bad = int(rsps[k][3] < 0)
            else:
                bad = sum(1 for r in rsps[k:k + used] if r[3] < 0)
            k += used
            if bad:
                stats.rx_errors += bad
                stats.rx_drops["grant-copy"] += 1
            else:
                stats.rx_packets += 1
                stats.rx_bytes += size
        back_put_responses(ring, RX_RSP_SLOT, rsps)
        if ring.push_responses_and_check_notify():
            self._notify(self.rx_port)

    def rx_action(self) -> float | None:
        """One bounded rx pass (sync): expire, deliver, detect stalls.

        Returns:
            None when the batch budget ran out with work left (run again at
            once); else the trio time to wake up at unless kicked first
            (``inf`` when only a kick can bring work).

        Raises:
            RingOverflowError: bogus rx ``req_prod`` (the frontend is hostile).
        """
        ring = self.rx_ring
        port = self.bport
        assert ring is not None
        self.stats.rx_passes += 1
        now = trio.current_time()
        inf = math.inf
        if port is None:
            return inf
        drain = self._drain_timeout()
        # 1. frames that waited too long for a buffer (Linux xenvif_rx_queue_drop_expired)
        while self._rx_times and self._rx_times[0][0] + drain <= now:
            if not self._rx_drop("drain-timeout"):
                break
        # 2. carrier off: nothing is kept; back on when the guest posts a buffer
        if not self.stats.carrier:
            if ring.unconsumed_requests() >= 1:
                self.stats.carrier = True
                self._last_rx_time = now
                _log.info("%s: carrier on", self.port_name)
            else:
                while self._rx_drop("carrier-off"):
                    pass
                ring.sring.req_event = ring.req_cons + 1  # wake me when one is posted
                return now if ring.unconsumed_requests() >= 1 else inf
        # 3. deliver: take what fits the posted buffers, copy it in one hypercall
        taken: list[bytes] = []
        nslots = 0
        avail = ring.unconsumed_requests()
        head = port.peek_many(min(avail, RX_BATCH_FRAMES))
        if head and max(map(len, head)) <= XEN_PAGE_SIZE:  # one slot each: take them all
            taken = port.take(len(head))
            nslots = len(taken)
            avail -= nslots
        while len(taken) < RX_BATCH_FRAMES:
            frame = port.peek_nowait()
            if frame is None:
                break
            size = len(frame)
            if size <= XEN_PAGE_SIZE:
                needed = 1
            elif not self.can_sg:
                self._rx_drop("no-sg")
                continue
            else:
                needed = -(-size // XEN_PAGE_SIZE)
            if avail < needed:
                break
            port.receive_nowait()
            taken.append(frame)
            avail -= needed
            nslots += needed
        if taken:
            self._rx_forget(len(taken))
            self._rx_deliver(ring, taken, nslots)
            self._last_rx_time = now
        head = port.peek_nowait()
        if head is None:
            return inf
        needed = self._slots_needed(head)
        if ring.unconsumed_requests() >= needed:
            return None if len(taken) >= RX_BATCH_FRAMES else now
        # 4. waiting for buffers: ask to be told, look again, then check for a stall
        ring.sring.req_event = ring.req_cons + needed
        if ring.unconsumed_requests() >= needed:
            return now
        if self.rx_notify and now >= self._last_rx_time + RX_STALL_TIMEOUT:
            self.stats.carrier = False
            self.stats.stalls += 1
            _log.info("%s: guest rx stalled: carrier off", self.port_name)
            while self._rx_drop("carrier-off"):
                pass
            ring.sring.req_event = ring.req_cons + 1
            return inf
        wake = (self._rx_times[0][0] + drain) if self._rx_times else now + drain
        if self.rx_notify:
            wake = min(wake, self._last_rx_time + RX_STALL_TIMEOUT)
        return wake
