"""The guest network helper's async loop: ARP and ICMP echo over a NetDevice.

Theory of operation
-------------------
A :class:`NetStack` owns one :class:`~domu.netdev.NetDevice` and one IPv4
address. Its :meth:`NetStack.run` task reads every received frame and hands
it to :meth:`NetStack.handle_frame`, which is synchronous and returns the
frames to send back (so the protocol logic is testable without a device):

* ARP request for our address -> ARP reply; any ARP naming a sender (request
  or reply) refreshes the cache *only if* it is addressed to us or the
  sender is already known (RFC 826's merge rule), so strangers cannot fill
  the cache - which is bounded anyway;
* ICMP echo request to our address -> echo reply with the same id, sequence
  and data;
* ICMP echo reply to us -> wakes the matching :meth:`NetStack.ping` waiter;
* anything else (other protocols, other addresses, malformed) -> counted in
  ``stats["ignored"]``.

On start, and whenever it is asked to (:meth:`NetStack.announce`), the stack
sends a gratuitous ARP so the bridge learns the guest's MAC (netfront's
ANNOUNCE step: Linux netfront sends one once it is connected).

Worked example (a guest program)::

    async with open_netstack(guest.nic(0), "10.0.0.1") as stack:
        stats = await stack.ping("10.0.0.2", count=3, timeout=1.0)
        await guest.console.print(stats.summary())
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from domu.netdev import NetDevice, NetDeviceError

from .arp import ARP_REPLY, ARP_REQUEST, ArpCache, ArpPacket, decode_arp, encode_arp
from .ether import BROADCAST, ETH_P_ARP, ETH_P_IP, decode_frame, encode_frame
from .icmp import ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, decode_echo, encode_echo
from .ipv4 import IPPROTO_ICMP, decode_ipv4, encode_ipv4, ip_from_str, ip_to_str

if TYPE_CHECKING:
    from domu.guest import Guest

__all__ = ["NetStack", "PingReply", "PingStats", "guest_ip", "open_netstack"]

ARP_RETRIES = 3
_ids = itertools.count(0x4242)


@dataclass(frozen=True)
class PingReply:
    """One answered echo request."""

    seq: int
    rtt: float
    ttl: int
    size: int


@dataclass
class PingStats:
    """The outcome of :meth:`NetStack.ping` (like ``ping``'s summary)."""

    target: str
    transmitted: int = 0
    replies: list[PingReply] = field(default_factory=list)

    @property
    def received(self) -> int:
        """Replies received."""
        return len(self.replies)

    @property
    def loss(self) -> float:
        """Fraction of requests without a reply."""
        return 1.0 - self.received / self.transmitted if self.transmitted else 0.0

    def summary(self) -> str:
        """``3 packets transmitted, 3 received, 0% packet loss``."""
        return (f"{self.transmitted} packets transmitted, {self.received} received, "
                f"{round(self.loss * 100)}% packet loss")


def _ip(addr: str | bytes) -> bytes:
    return ip_from_str(addr) if isinstance(addr, str) else bytes(addr)


class NetStack:
    """ARP + ICMP echo for one address on one NIC.

    Args:
        nic: the device (ours).
        ip: our IPv4 address, ``"a.b.c.d"`` or 4 bytes (ours).
        arp_cache_size: bound on the ARP cache.
        clock: time source (default ``trio.current_time``, so autojump works).
    """

    def __init__(self, nic: NetDevice, ip: str | bytes, *, arp_cache_size: int = 64,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.nic = nic
        self.ip = _ip(ip)
        self.arp = ArpCache(arp_cache_size)
        self.clock = clock
        self.stats = {"arp_requests": 0, "arp_replies": 0, "echo_requests": 0,
                      "echo_replies": 0, "ignored": 0}
        self._arp_waiters: dict[bytes, trio.Event] = {}
        self._echo_waiters: dict[tuple[int, int], tuple[trio.Event, list[PingReply], float]] = {}

    # -- sans-IO core -------------------------------------------------------------------------

    def arp_request(self, target: bytes, *, gratuitous: bool = False) -> bytes:
        """An ARP request frame for ``target`` (ours); gratuitous: target = our own IP."""
        tpa = self.ip if gratuitous else target
        pkt = ArpPacket(ARP_REQUEST, self.nic.mac, self.ip, bytes(6), tpa)
        return encode_frame(BROADCAST, self.nic.mac, ETH_P_ARP, encode_arp(pkt))

    def handle_frame(self, raw: bytes) -> list[bytes]:
        """Process one received frame (peer data); return the frames to send."""
        eth = decode_frame(raw)
        if eth is None or (eth.dst != self.nic.mac and eth.dst != BROADCAST):
            self.stats["ignored"] += 1
            return []
        if eth.ethertype == ETH_P_ARP:
            return self._handle_arp(eth.payload)
        if eth.ethertype == ETH_P_IP:
            return self._handle_ip(eth.src, eth.payload)
        self.stats["ignored"] += 1
        return []

    def _handle_arp(self, payload: bytes) -> list[bytes]:
        pkt = decode_arp(payload)
        if pkt is None or pkt.sha[0] & 1 or pkt.sha == bytes(6):
            self.stats["ignored"] += 1
            return []
        now = self.clock()
        for_us = pkt.tpa == self.ip
        if for_us or self.arp.lookup(pkt.spa, now) is not None or pkt.spa in self._arp_waiters:
            self.arp.update(pkt.spa, pkt.sha, now)
            waiter = self._arp_waiters.pop(pkt.spa, None)
            if waiter is not None:
                waiter.set()
        if pkt.op == ARP_REQUEST and for_us and pkt.spa != self.ip:
            self.stats["arp_requests"] += 1
            reply = ArpPacket(ARP_REPLY, self.nic.mac, self.ip, pkt.sha, pkt.spa)
            return [encode_frame(pkt.sha, self.nic.mac, ETH_P_ARP, encode_arp(reply))]
        if pkt.op == ARP_REPLY and for_us:
            self.stats["arp_replies"] += 1
        return []

    def _handle_ip(self, src_mac: bytes, payload: bytes) -> list[bytes]:
        pkt = decode_ipv4(payload)
        if pkt is None or pkt.dst != self.ip or pkt.proto != IPPROTO_ICMP or pkt.fragment:
            self.stats["ignored"] += 1
            return []
        echo = decode_echo(pkt.payload)
        if echo is None:
            self.stats["ignored"] += 1
            return []
        if echo.type == ICMP_ECHO_REQUEST:
            self.stats["echo_requests"] += 1
            body = encode_echo(ICMP_ECHO_REPLY, echo.ident, echo.seq, echo.data)
            ipraw = encode_ipv4(IPPROTO_ICMP, self.ip, pkt.src, body, ident=pkt.ident)
            return [encode_frame(src_mac, self.nic.mac, ETH_P_IP, ipraw)]
        waiter = self._echo_waiters.pop((echo.ident, echo.seq), None)
        if waiter is None:
            self.stats["ignored"] += 1
            return []
        event, box, sent_at = waiter
        self.stats["echo_replies"] += 1
        box.append(PingReply(echo.seq, self.clock() - sent_at, pkt.ttl, len(pkt.payload)))
        event.set()
        return []

    # -- async ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Answer ARP/ICMP until the device goes away (start with ``nursery.start``)."""
        task_status.started()
        with contextlib.suppress(NetDeviceError):
            await self.nic.wait_carrier()
            await self.announce()
            async for raw in self.nic:
                for out in self.handle_frame(raw):
                    await self.nic.send(out)

    async def announce(self) -> None:
        """Send a gratuitous ARP (the bridge learns where we are)."""
        await self.nic.send(self.arp_request(self.ip, gratuitous=True))

    async def resolve(self, target: str | bytes, timeout: float = 1.0) -> bytes | None:
        """The MAC of ``target``: cached, or asked for up to 3 times within ``timeout``."""
        addr = _ip(target)
        mac = self.arp.lookup(addr, self.clock())
        if mac is not None:
            return mac
        event = self._arp_waiters.setdefault(addr, trio.Event())
        with trio.move_on_after(timeout):
            for _ in range(ARP_RETRIES):
                await self.nic.send(self.arp_request(addr))
                with trio.move_on_after(timeout / ARP_RETRIES):
                    await event.wait()
                if event.is_set():
                    break
        if self._arp_waiters.get(addr) is event:
            del self._arp_waiters[addr]
        return self.arp.lookup(addr, self.clock())

    async def ping(self, target: str | bytes, count: int = 3, timeout: float = 1.0,
                   interval: float = 1.0, size: int = 56) -> PingStats:
        """Send ``count`` echo requests to ``target``, each waiting ``timeout`` s for its reply.

        Raises:
            NetDeviceError: the device cannot send.
        """
        addr = _ip(target)
        stats = PingStats(ip_to_str(addr))
        ident = next(_ids) & 0xFFFF
        for seq in range(1, count + 1):
            started = self.clock()
            mac = await self.resolve(addr, timeout)
            stats.transmitted += 1
            if mac is not None:
                event = trio.Event()
                self._echo_waiters[(ident, seq)] = (event, stats.replies, self.clock())
                data = bytes(i & 0xFF for i in range(size))
                body = encode_echo(ICMP_ECHO_REQUEST, ident, seq, data)
                ipraw = encode_ipv4(IPPROTO_ICMP, self.ip, addr, body, ident=seq)
                await self.nic.send(encode_frame(mac, self.nic.mac, ETH_P_IP, ipraw))
                with trio.move_on_after(max(0.0, timeout - (self.clock() - started))):
                    await event.wait()
                self._echo_waiters.pop((ident, seq), None)
            if seq < count:
                await trio.sleep(max(0.0, interval - (self.clock() - started)))
        return stats


@contextlib.asynccontextmanager
async def open_netstack(nic: NetDevice, ip: str | bytes, **kwargs: object,
                        ) -> AsyncIterator[NetStack]:
    """Run a :class:`NetStack` on ``nic`` for the duration of the block."""
    stack = NetStack(nic, ip, **kwargs)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(stack.run)
        yield stack
        nursery.cancel_scope.cancel()


async def guest_ip(guest: Guest, devid: int = 0) -> str | None:
    """The guest's IPv4 address for vif ``devid``.

    Looks for ``ip=a.b.c.d`` (vif 0) or ``ip<devid>=a.b.c.d`` in ``guest.extra``
    (the command line, toolstack-controlled), then for an ``ip`` key in
    ``device/vif/<devid>``. Returns None when neither names a valid address.
    """
    keys = (f"ip{devid}", "ip") if devid == 0 else (f"ip{devid}",)
    tokens = dict(t.split("=", 1) for t in guest.extra.split() if "=" in t)
    for key in keys:
        if key in tokens:
            with contextlib.suppress(ValueError):
                return ip_to_str(ip_from_str(tokens[key]))
    try:
        raw = await guest.xenstore.read(f"/local/domain/{guest.domid}/device/vif/{devid}/ip")
    except Exception:  # absent or unreadable
        return None
    with contextlib.suppress(ValueError):
        return ip_to_str(ip_from_str(raw.decode("ascii", "replace")))
    return None
