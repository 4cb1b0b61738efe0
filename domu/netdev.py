"""What a guest program sees of a NIC: Linux's ``struct net_device``, trio-shaped.

Theory of operation
-------------------
A :class:`NetDevice` sits between a guest program and a driver (netfront).
The program sends and receives whole Ethernet frames (``bytes``, without
FCS); the driver does the ring work.

* **Transmit.** ``await nic.send(frame)`` hands the frame to the driver's
  ``xmit`` coroutine. It waits while the carrier is down or the tx ring is
  full (backpressure: the ring *is* the queue, nothing grows without bound)
  and raises :class:`NetDeviceBroken` / :class:`NetDeviceDown` instead of
  waiting forever when the device broke or was taken down.
* **Receive.** The driver calls :meth:`NetDevice.deliver` for each frame. It
  lands in a bounded queue (``rx_queue_len`` frames); when the program does
  not read, new frames are dropped and counted in ``stats.rx_dropped`` -
  the driver never blocks on a slow program. ``await nic.receive()`` or
  ``async for frame in nic`` take frames out; queued frames are still
  returned after the device breaks, then the error is raised.
* **Admin and link state.** :meth:`up` / :meth:`down` are the program's
  switch (``ip link set dev eth0 down``): while down, sends raise and
  received frames are dropped. ``carrier`` is the driver's view of the link
  (netfront: the backend is Connected).

Worked example::

    nic = guest.nic(0)
    await nic.wait_carrier()
    await nic.send(frame)
    reply = await nic.receive()
    async for frame in nic:       # until the device goes away
        ...
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

__all__ = [
    "DEFAULT_RX_QUEUE_LEN",
    "NetDevice",
    "NetDeviceBroken",
    "NetDeviceClosed",
    "NetDeviceDown",
    "NetDeviceError",
    "NetStats",
    "max_frame_len",
]

DEFAULT_RX_QUEUE_LEN = 512
"""Frames the receive queue holds before it drops (Linux ``netdev_max_backlog`` is 1000)."""
ETH_HLEN = 14
VLAN_HLEN = 4


def max_frame_len(mtu: int) -> int:
    """Largest frame (no FCS) for a link MTU: ``mtu + 14``, plus 4 when VLAN tagged."""
    return mtu + ETH_HLEN + VLAN_HLEN


class NetDeviceError(OSError):
    """The device cannot carry frames (the program's I/O error)."""


class NetDeviceBroken(NetDeviceError):
    """The backend misbehaved; the driver stopped using the rings (XSA-391)."""


class NetDeviceDown(NetDeviceError):
    """The program took the device down (:meth:`NetDevice.down`)."""


class NetDeviceClosed(NetDeviceError):
    """The device was disconnected (backend closed, or the guest is shutting down)."""


@dataclass
class NetStats:
    """Counters from the guest's point of view (``ip -s link``)."""

    tx_packets: int = 0
    tx_bytes: int = 0
    tx_errors: int = 0
    tx_dropped: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    rx_errors: int = 0
    rx_dropped: int = 0
    rx_length_errors: int = 0


class NetDevice:
    """One network interface of a guest.

    Args:
        name: interface name (``eth0``); ours.
        xmit: the driver's transmit coroutine (waits for ring space, raises
            :class:`NetDeviceError`); ours.
        rx_queue_len: receive queue bound in frames; ours.
        try_xmit: optionally, the driver's transmit without waiting: True if
            it took the frame, False if it would have to wait (then
            :meth:`send` awaits ``xmit``); ours.

    Attributes:
        mac: 6-byte MAC address (from the toolstack's ``mac`` key).
        mtu: link MTU (``mtu`` key, default 1500).
        stats: :class:`NetStats`.
        broken: why the driver gave up, or None.
    """

    def __init__(self, name: str, xmit: Callable[[bytes], Awaitable[None]],
                 rx_queue_len: int = DEFAULT_RX_QUEUE_LEN,
                 try_xmit: Callable[[bytes], bool] | None = None) -> None:
        if rx_queue_len < 1:
            raise ValueError("rx_queue_len must be positive")
        self.name = name
        self.mac = bytes(6)
        self.mtu = 1500
        self.stats = NetStats()
        self.broken: str | None = None
        self.closed = False
        self._xmit = xmit
        self._try_xmit = try_xmit
        self._queue: deque[bytes] = deque()
        self._queue_len = rx_queue_len
        self._admin_up = True
        self._carrier = False
        self._rx_lot = trio.lowlevel.ParkingLot()
        self._link_lot = trio.lowlevel.ParkingLot()

    def __repr__(self) -> str:
        mac = ":".join(f"{b:02x}" for b in self.mac)
        return f"<NetDevice {self.name} {mac} mtu {self.mtu} {self.operstate}>"

    # -- state ---------------------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        """Administratively up (the program's switch)."""
        return self._admin_up

    @property
    def carrier(self) -> bool:
        """Link detected (netfront: the backend is Connected)."""
        return self._carrier

    @property
    def operstate(self) -> str:
        """``up``, ``down``, ``no-carrier``, ``broken`` or ``closed``."""
        if self.broken is not None:
            return "broken"
        if self.closed:
            return "closed"
        if not self._admin_up:
            return "down"
        return "up" if self._carrier else "no-carrier"

    @property
    def max_frame_len(self) -> int:
        """Largest frame :meth:`send` accepts (``mtu + 14``, ``+ 4`` VLAN tagged)."""
        return max_frame_len(self.mtu)

    def up(self) -> None:
        """Bring the interface up (the default)."""
        self._admin_up = True
        self._link_lot.unpark_all()

    def down(self) -> None:
        """Take the interface down: queued frames are dropped, waiters get errors."""
        self._admin_up = False
        self.stats.rx_dropped += len(self._queue)
        self._queue.clear()
        self._wake_all()

    def check(self) -> None:
        """Raise the error a send would get now (none when the device is usable).

        Raises:
            NetDeviceBroken / NetDeviceClosed / NetDeviceDown.
        """
        if self.broken is not None:
            raise NetDeviceBroken(f"{self.name}: device broken: {self.broken}")
        if self.closed:
            raise NetDeviceClosed(f"{self.name}: device closed")
        if not self._admin_up:
            raise NetDeviceDown(f"{self.name}: interface is down")

    async def wait_carrier(self) -> None:
        """Wait until the link is up (raises if the device breaks, closes or goes down)."""
        while True:
            self.check()
            if self._carrier:
                return
            await self._link_lot.park()

    # -- transmit ------------------------------------------------------------------------

    async def send(self, frame: bytes | bytearray | memoryview) -> None:
        """Transmit one Ethernet frame (no FCS).

        Waits while the carrier is down or the tx ring is full.

        Args:
            frame: 14 .. :attr:`max_frame_len` bytes (the program's data).

        Raises:
            ValueError: the frame is too short or too long (the program's bug).
            NetDeviceBroken / NetDeviceClosed / NetDeviceDown: the device
                cannot carry it (also while waiting).
        """
        data = bytes(frame)
        if not ETH_HLEN <= len(data) <= self.mtu + ETH_HLEN:  # else only a tagged frame fits
            limit = self.max_frame_len if data[12:14] == b"\x81\x00" else self.mtu + ETH_HLEN
            if not ETH_HLEN <= len(data) <= limit:
                raise ValueError(f"{self.name}: frame of {len(data)} bytes "
                                 f"(expected {ETH_HLEN}..{limit})")
        if self._carrier and self._admin_up and self.broken is None and not self.closed:
            if self._try_xmit is not None and self._try_xmit(data):
                return  # the common case: room on the ring, nothing to wait for
        else:
            await self.wait_carrier()
        await self._xmit(data)

    # -- receive -------------------------------------------------------------------------

    async def receive(self) -> bytes:
        """The next received frame (waits for one).

        Raises:
            NetDeviceBroken / NetDeviceClosed / NetDeviceDown: no queued frame
                left and the device cannot receive any more.
        """
        while True:
            if self._queue:
                return self._queue.popleft()
            self.check()
            await self._rx_lot.park()

    def receive_nowait(self) -> bytes | None:
        """A queued frame, or None (raises like :meth:`receive` when unusable)."""
        if self._queue:
            return self._queue.popleft()
        self.check()
        return None

    @property
    def queued(self) -> int:
        """Frames waiting in the receive queue."""
        return len(self._queue)

    def __aiter__(self) -> NetDevice:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.receive()
        except NetDeviceClosed:
            raise StopAsyncIteration from None

    # -- driver side ---------------------------------------------------------------------

    def deliver(self, frame: bytes) -> bool:
        """Driver: queue a received frame; False (and counted) when dropped."""
        if not self._admin_up or len(self._queue) >= self._queue_len:
            self.stats.rx_dropped += 1
            return False
        self._queue.append(frame)
        stats = self.stats
        stats.rx_packets += 1
        stats.rx_bytes += len(frame)
        if self._rx_lot:
            self._rx_lot.unpark()
        return True

    def set_carrier(self, on: bool) -> None:
        """Driver: the link went up or down."""
        self._carrier = on
        self.closed = self.closed and not on
        self._link_lot.unpark_all()

    def set_broken(self, reason: str) -> None:
        """Driver: the device is unusable for good; every waiter gets an error."""
        if self.broken is None:
            self.broken = reason
        self._carrier = False
        self._wake_all()

    def set_closed(self) -> None:
        """Driver: disconnected (no more frames until it reconnects)."""
        self.closed = True
        self._carrier = False
        self._wake_all()

    def _wake_all(self) -> None:
        self._rx_lot.unpark_all()
        self._link_lot.unpark_all()
