"""dom0's software Ethernet bridge (``xenbr0``): a learning switch for vifs.

Theory of operation (as Linux ``net/bridge``)
---------------------------------------------
Ports are attached by name - ``vif<domid>.<devid>`` for netback, anything
else for dom0's own taps. A frame enters with :meth:`Bridge.transmit` (the
port's *rx* - counters are from dom0's side, so what a guest transmits is rx
on its vif) and leaves through other ports' bounded queues (their *tx*).

Per frame, synchronously (nothing here awaits, so each frame is atomic with
respect to other tasks):

1. **Check.** Shorter than 14 bytes, longer than ``mtu + 14`` (``+ 4`` when
   VLAN tagged, ethertype ``0x8100``), or with a multicast or all-zero source
   MAC (Linux ``is_valid_ether_addr``): dropped, counted on the ingress port.
2. **Learn** ``source MAC -> ingress port`` with the current trio time. The
   forwarding database (FDB) is an insertion-ordered dict kept in
   last-seen order, so the oldest entry is always first.
3. **Forward.** Broadcast/multicast destination (I/G bit set) or an unknown or
   expired unicast: flood to every port except the ingress one. A learned
   unicast goes to its port only - unless that is the ingress port, then the
   frame is filtered (never hairpinned).
4. **Enqueue** on each egress port without waiting: each port holds at most
   ``max_frames`` frames and ``max_bytes`` bytes; past that the frame is
   dropped for that port only and counted (``tx_dropped``). A guest that
   never reads costs the bridge at most its queue and slows nobody.

Frames come in batches (:meth:`Bridge.transmit_many`; netback hands over a
whole tx pass): every frame still takes steps 1-3 on its own, in order; step
4 then runs per egress port over its frames in order (the same outcome: only
this batch touches a port's queue meanwhile); the batch shares one clock
reading, and each egress port's owner is notified once, after the batch, if
it got frames.

Ageing is lazy (no timer per entry): an entry is expired when
``updated + ageing_time <= now`` (Linux ``has_expired``); lookups ignore and
delete expired entries, and every frame pops expired entries off the front of
the FDB (amortised O(1)). The FDB is bounded (``fdb_max``): when full, expired
entries are purged and, if none are, the new address is simply not learned
(frames to it are flooded) - a guest spraying random source MACs cannot grow
dom0's memory.

Worked example (ageing 300 s)::

    t=0   vif1.0 sends A->broadcast   learn A@vif1.0; flood to vif2.0, vif3.0
    t=1   vif2.0 sends B->A           learn B@vif2.0; A known: to vif1.0 only
    t=302 vif2.0 sends B->A           A expired (0+300 <= 302): flood again

Capture: :meth:`Bridge.open_capture` records one port (frames it sent into
the bridge and frames delivered to it) or the whole bridge (every accepted
frame, once, as it enters) to a pcap file through a bounded
:class:`~.pcap.PcapWriter` (buffered; file writes in a worker thread).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import trio

from .pcap import DEFAULT_MAX_BUFFER, SNAPLEN, PcapWriter, open_pcap

__all__ = [
    "DEFAULT_AGEING_TIME",
    "DEFAULT_BRIDGE",
    "DEFAULT_FDB_MAX",
    "DEFAULT_MTU",
    "DEFAULT_PORT_MAX_BYTES",
    "DEFAULT_PORT_MAX_FRAMES",
    "ETH_HLEN",
    "Bridge",
    "BridgePort",
    "BridgeStats",
    "PortStats",
    "format_mac",
]

DEFAULT_BRIDGE = "xenbr0"  # libxl's default `bridge` for a vif
DEFAULT_MTU = 1500
DEFAULT_AGEING_TIME = 300.0  # Linux BR_DEFAULT_AGEING_TIME, 802.1D default
DEFAULT_FDB_MAX = 8192
# Linux netback queues at most XEN_NETIF_RX_RING_SIZE/2 pages per vif (128 x 4 KiB).
DEFAULT_PORT_MAX_BYTES = 128 * 4096
DEFAULT_PORT_MAX_FRAMES = 256  # one rx ring's worth of slots
ETH_HLEN = 14
VLAN_HLEN = 4
ETH_P_8021Q = b"\x81\x00"
_ZERO_MAC = bytes(6)


def format_mac(mac: bytes) -> str:
    """``aa:bb:cc:dd:ee:ff`` for messages and ``fdb()`` listings."""
    return ":".join(f"{b:02x}" for b in mac)


@dataclass(slots=True)
class PortStats:
    """Counters of one port, from the bridge's side.

    Attributes:
        rx_frames, rx_bytes: valid frames the port sent into the bridge.
        rx_dropped: frames from the port refused (bad length or source MAC).
        tx_frames, tx_bytes: frames queued for the port.
        tx_dropped: frames for the port dropped because its queue was full.
        floods: frames from the port that were flooded.
    """

    rx_frames: int = 0
    rx_bytes: int = 0
    rx_dropped: int = 0
    tx_frames: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0
    floods: int = 0


@dataclass(slots=True)
class BridgeStats:
    """Bridge-wide counters.

    Attributes:
        frames: valid frames switched.
        floods: of those, flooded.
        filtered: unicast frames whose destination sits on the ingress port.
        dropped: invalid frames (all ports).
        fdb_full: source addresses not learned because the FDB was full.
    """

    frames: int = 0
    floods: int = 0
    filtered: int = 0
    dropped: int = 0
    fdb_full: int = 0


class BridgePort:
    """One attached port: a bounded queue of frames for its owner to take.

    Created by :meth:`Bridge.add_port`. Its owner (netback) takes frames with
    :meth:`receive` / :meth:`receive_nowait` and sends with :meth:`transmit`.

    Attributes:
        name: the port name (``vif<domid>.<devid>``).
        stats: :class:`PortStats`.
        max_frames, max_bytes: the queue bounds.
    """

    def __init__(
        self,
        bridge: Bridge,
        name: str,
        *,
        max_frames: int,
        max_bytes: int,
        notify: Callable[[], None] | None,
    ) -> None:
        self.bridge = bridge
        self.name = name
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.stats = PortStats()
        self._notify = notify
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._lot = trio.lowlevel.ParkingLot()
        self._detached = False

    def __repr__(self) -> str:
        return f"<BridgePort {self.bridge.name}/{self.name} queued={len(self._queue)}>"

    @property
    def detached(self) -> bool:
        """True once removed from its bridge."""
        return self._detached

    @property
    def queued_frames(self) -> int:
        """Frames waiting for the owner."""
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting for the owner."""
        return self._queued_bytes

    def _enqueue_many(self, frames: list[bytes]) -> list[bytes]:
        """Bridge side: queue frames, in order, each if the bounds allow then.
        Never blocks. Returns the frames queued.

        The owner's ``notify`` is not called here: the bridge calls
        :meth:`_notify_owner` once per egress port at the end of a batch.
        """
        q = self._queue
        queued_bytes = self._queued_bytes
        max_frames, max_bytes = self.max_frames, self.max_bytes
        if len(q) + len(frames) <= max_frames and queued_bytes + sum(map(len, frames)) <= max_bytes:
            taken = frames  # all of them fit: the common case
            q.extend(frames)
        else:
            taken = []
            for frame in frames:
                if len(q) >= max_frames or queued_bytes + len(frame) > max_bytes:
                    continue
                q.append(frame)
                queued_bytes += len(frame)
                taken.append(frame)
        nbytes = sum(map(len, taken))
        self._queued_bytes = self._queued_bytes + nbytes
        stats = self.stats
        stats.tx_frames += len(taken)
        stats.tx_bytes += nbytes
        stats.tx_dropped += len(frames) - len(taken)
        if taken and self._lot:
            self._lot.unpark(count=len(taken))
        return taken

    def _notify_owner(self) -> None:
        if self._notify is not None:
            self._notify()

    def _detach(self) -> None:
        self._detached = True
        self._queue.clear()
        self._queued_bytes = 0
        self._lot.unpark_all()

    def peek_nowait(self) -> bytes | None:
        """The next frame without taking it (netback checks it has rx slots).

        Returns:
            The frame, or None if the queue is empty.
        """
        return self._queue[0] if self._queue else None

    def peek_many(self, n: int) -> list[bytes]:
        """Up to ``n`` frames from the head of the queue, without taking them."""
        return list(itertools.islice(self._queue, max(n, 0)))

    def take(self, n: int) -> list[bytes]:
        """Take ``n`` frames off the head of the queue (``n`` <= :attr:`queued_frames`).

        Raises:
            ValueError: fewer than ``n`` frames are queued (the caller's bug).
        """
        q = self._queue
        if not 0 <= n <= len(q):
            raise ValueError(f"take({n}) with {len(q)} frames queued")
        out = [q.popleft() for _ in range(n)]
        self._queued_bytes -= sum(map(len, out))
        return out

    def receive_nowait(self) -> bytes:
        """Take the next frame.

        Returns:
            The frame (``bytes``; possibly shared with other ports - immutable).

        Raises:
            trio.WouldBlock: nothing queued.
            trio.EndOfChannel: the port was detached.
        """
        if self._detached:
            raise trio.EndOfChannel
        if not self._queue:
            raise trio.WouldBlock
        frame = self._queue.popleft()
        self._queued_bytes -= len(frame)
        return frame

    async def receive(self) -> bytes:
        """Wait for and take the next frame.

        Raises:
            trio.EndOfChannel: the port was (or gets) detached.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._queue or self._detached:
            frame = self.receive_nowait()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return frame
        while not self._queue and not self._detached:
            await self._lot.park()
        return self.receive_nowait()

    def __aiter__(self) -> BridgePort:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def transmit(self, frame: bytes | bytearray | memoryview) -> None:
        """Send a frame into the bridge from this port (see :meth:`Bridge.transmit`)."""
        self.bridge.transmit_many(self.name, (frame,))

    def transmit_many(self, frames: Iterable[bytes | bytearray | memoryview]) -> None:
        """Send frames into the bridge from this port, in order (one batch)."""
        self.bridge.transmit_many(self.name, frames)


@dataclass(slots=True)
class _FdbEntry:
    port: BridgePort
    updated: float


@dataclass(slots=True, eq=False)
class _Tap:
    writer: PcapWriter
    port: str | None  # None: the whole bridge


class Bridge:
    """A learning Ethernet switch.

    Args:
        name: bridge name (the vif's ``bridge`` key; default ``xenbr0``).
        mtu: largest payload; frames over ``mtu + 14`` (``+ 4`` tagged) drop.
        ageing_time: seconds a learned address stays valid since last seen.
        fdb_max: most addresses remembered at once.
        clock: seconds, monotonic (default: the trio clock).

    Attributes:
        stats: :class:`BridgeStats`.
    """

    def __init__(
        self,
        name: str = DEFAULT_BRIDGE,
        *,
        mtu: int = DEFAULT_MTU,
        ageing_time: float = DEFAULT_AGEING_TIME,
        fdb_max: int = DEFAULT_FDB_MAX,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.name = name
        self.mtu = mtu
        self.ageing_time = ageing_time
        self.fdb_max = fdb_max
        self._clock = clock or trio.current_time
        self.stats = BridgeStats()
        self._ports: dict[str, BridgePort] = {}
        self._fdb: dict[bytes, _FdbEntry] = {}  # insertion order == last-seen order
        self._taps: list[_Tap] = []

    def __repr__(self) -> str:
        return f"<Bridge {self.name} ports={list(self._ports)}>"

    # -- ports -------------------------------------------------------------------

    @property
    def ports(self) -> dict[str, BridgePort]:
        """Attached ports by name (a copy)."""
        return dict(self._ports)

    def add_port(
        self,
        name: str,
        *,
        notify: Callable[[], None] | None = None,
        max_frames: int = DEFAULT_PORT_MAX_FRAMES,
        max_bytes: int = DEFAULT_PORT_MAX_BYTES,
    ) -> BridgePort:
        """Attach a port.

        Args:
            name: unique on this bridge (``vif<domid>.<devid>``; chosen by the
                toolstack, not the guest).
            notify: called (synchronously, must not block or raise) once per
                :meth:`Bridge.transmit_many` batch that queued frames for this
                port (after all of them) - e.g. netback's rx kick.
            max_frames, max_bytes: queue bounds.

        Returns:
            The new :class:`BridgePort`.

        Raises:
            ValueError: the name is taken or a bound is not positive.
        """
        if name in self._ports:
            raise ValueError(f"port {name!r} already on bridge {self.name}")
        if max_frames <= 0 or max_bytes <= 0:
            raise ValueError("queue bounds must be positive")
        port = BridgePort(self, name, max_frames=max_frames, max_bytes=max_bytes, notify=notify)
        self._ports[name] = port
        return port

    def del_port(self, name: str) -> None:
        """Detach a port: forget its addresses, drop its queue, end its receivers.

        Raises:
            KeyError: no such port.
        """
        port = self._ports.pop(name)
        self._fdb = {mac: e for mac, e in self._fdb.items() if e.port is not port}
        port._detach()

    def port(self, name: str) -> BridgePort:
        """The attached port called ``name``.

        Raises:
            KeyError: no such port.
        """
        return self._ports[name]

    # -- forwarding database -------------------------------------------------------

    def _expired(self, entry: _FdbEntry, now: float) -> bool:
        return entry.updated + self.ageing_time <= now

    def _expire_front(self, now: float) -> int:
        """Pop expired entries off the (oldest-first) front of the FDB."""
        popped = 0
        while self._fdb:
            mac, entry = next(iter(self._fdb.items()))
            if not self._expired(entry, now):
                break
            del self._fdb[mac]
            popped += 1
        return popped

    def expire(self) -> int:
        """Drop every expired FDB entry now (forwarding does it lazily anyway).

        Returns:
            Entries removed.
        """
        return self._expire_front(self._clock())

    def _learn(self, mac: bytes, port: BridgePort, now: float) -> None:
        entry = self._fdb.pop(mac, None)
        if entry is None:
            if len(self._fdb) >= self.fdb_max:
                self._expire_front(now)
                if len(self._fdb) >= self.fdb_max:
                    self.stats.fdb_full += 1
                    return
            entry = _FdbEntry(port, now)
        entry.port = port
        entry.updated = now
        self._fdb[mac] = entry  # (re)inserted at the end: newest last

    def lookup(self, mac: bytes) -> str | None:
        """The port a unicast MAC was learned on, if not expired.

        Args:
            mac: 6 bytes.

        Returns:
            The port name, or None.
        """
        entry = self._fdb.get(bytes(mac))
        if entry is None:
            return None
        if self._expired(entry, self._clock()):
            del self._fdb[bytes(mac)]
            return None
        return entry.port.name

    def fdb(self) -> dict[str, str]:
        """Live FDB entries as ``{"aa:bb:..": port_name}`` (diagnostics)."""
        now = self._clock()
        return {
            format_mac(mac): e.port.name
            for mac, e in self._fdb.items()
            if not self._expired(e, now)
        }

    # -- switching ---------------------------------------------------------------

    def _max_frame_len(self, frame: bytes) -> int:
        extra = VLAN_HLEN if frame[12:14] == ETH_P_8021Q else 0
        return self.mtu + ETH_HLEN + extra

    def transmit(self, port_name: str, frame: bytes | bytearray | memoryview) -> None:
        """Switch one frame that arrived on ``port_name``. Never blocks.

        Args:
            port_name: the ingress port (its owner's own name - not guest data).
            frame: the Ethernet frame, from a guest: any length, any content.
                Copied once; every egress queue shares the copy.

        Raises:
            KeyError: no such port (the caller's bug: transmit after detach).
        """
        self.transmit_many(port_name, (frame,))

    def transmit_many(self, port_name: str,
                      frames: Iterable[bytes | bytearray | memoryview]) -> None:
        """Switch frames that arrived on ``port_name``, in order. Never blocks.

        Each frame goes through steps 1-4 on its own, exactly as if sent by
        :meth:`transmit` one after the other at this instant; what a batch
        shares is the clock reading and one ``notify`` per egress port that
        got frames, at the end.

        Args:
            port_name: the ingress port (its owner's own name - not guest data).
            frames: Ethernet frames from a guest (any length, any content).

        Raises:
            KeyError: no such port (the caller's bug: transmit after detach).
        """
        src = self._ports[port_name]
        now = self._clock()
        sstats = src.stats
        bstats = self.stats
        taps = self._taps
        fdb = self._fdb
        mtu_len = self.mtu + ETH_HLEN
        out: dict[BridgePort, list[bytes]] = {}  # frames for each egress port, in order
        others: list[list[bytes]] | None = None  # out's lists of the flood targets
        learned: bytes | None = None
        good = good_bytes = floods = 0  # counters, added once at the end
        for frame in frames:
            data = bytes(frame)
            n = len(data)
            if taps:
                self._tap(port_name, data)
            if n < ETH_HLEN or (n > mtu_len and n > self._max_frame_len(data)):
                sstats.rx_dropped += 1
                bstats.dropped += 1
                continue
            src_mac = data[6:12]
            if src_mac[0] & 1 or src_mac == _ZERO_MAC:
                sstats.rx_dropped += 1
                bstats.dropped += 1
                continue
            good += 1
            good_bytes += n
            if taps:
                self._tap(None, data)
            if src_mac != learned:  # relearning the newest entry at `now` changes nothing
                self._expire_front(now)
                self._learn(src_mac, src, now)
                learned = src_mac if fdb.get(src_mac) is not None else None
            dst = data[0:6]
            if not dst[0] & 1:
                entry = fdb.get(dst)
                if entry is not None and not self._expired(entry, now):
                    if entry.port is src:
                        bstats.filtered += 1
                    else:
                        out.setdefault(entry.port, []).append(data)
                    continue
            floods += 1
            if others is None:  # no port comes or goes during a batch
                others = [out.setdefault(p, []) for p in self._ports.values() if p is not src]
            for dest in others:
                dest.append(data)
        sstats.rx_frames += good
        sstats.rx_bytes += good_bytes
        bstats.frames += good
        sstats.floods += floods
        bstats.floods += floods
        # step 4 per egress port: its frames in order, each if its bounds allow then
        queued = []
        for port, batch in out.items():
            if not batch:
                continue
            taken = port._enqueue_many(batch)
            if taken:
                queued.append(port)
                if taps:
                    for data in taken:
                        self._tap(port.name, data)
        for port in queued:
            if not port.detached:
                port._notify_owner()

    def _tap(self, port_name: str | None, data: bytes) -> None:
        """Give ``data`` to the captures of ``port_name`` (None: whole-bridge ones)."""
        for tap in self._taps:
            if tap.port == port_name:
                tap.writer.write_frame(data)

    # -- capture -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open_capture(
        self,
        path: str | os.PathLike[str],
        *,
        port: str | None = None,
        snaplen: int = SNAPLEN,
        clock: Callable[[], float] | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> AsyncIterator[PcapWriter]:
        """Capture to a pcap file while the block runs (start/stop at run time).

        Args:
            path: output file (created or truncated).
            port: capture this port only (both directions), or the whole
                bridge (every accepted frame once) when None.
            snaplen, clock, max_buffer: see :class:`~.pcap.PcapWriter`.

        Yields:
            The writer (its ``frames`` / ``dropped`` counters).

        Raises:
            KeyError: ``port`` is not attached.
            OSError: the file cannot be written.
        """
        if port is not None and port not in self._ports:
            raise KeyError(port)
        async with open_pcap(path, snaplen=snaplen, clock=clock, max_buffer=max_buffer) as w:
            tap = _Tap(w, port)
            self._taps.append(tap)
            try:
                yield w
            finally:
                self._taps.remove(tap)
