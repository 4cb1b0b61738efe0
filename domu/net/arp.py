"""ARP for IPv4 over Ethernet (RFC 826), sans-IO, with a bounded cache.

Packet layout (28 bytes): ``htype=1 ptype=0x0800 hlen=6 plen=4 op sha spa
tha tpa``. A request asks "who has ``tpa``? tell ``spa``"; the reply comes
from the owner of ``tpa`` with its MAC in ``sha``. A *gratuitous* ARP is a
request with ``spa == tpa`` (an announcement, RFC 5227).

:class:`ArpCache` keeps at most ``max_entries`` IP -> MAC entries, each
valid for ``ttl`` seconds; the least recently updated entry goes first when
full, so a peer spraying addresses cannot grow the guest's memory.

Worked example::

    >>> req = ArpPacket(ARP_REQUEST, b"\\x02" * 6, ip(10, 0, 0, 1), bytes(6), ip(10, 0, 0, 2))
    >>> decode_arp(encode_arp(req)) == req
    True
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import NamedTuple

__all__ = [
    "ARP_LEN",
    "ARP_REPLY",
    "ARP_REQUEST",
    "ArpCache",
    "ArpPacket",
    "decode_arp",
    "encode_arp",
    "ip",
]

ARP_REQUEST = 1
ARP_REPLY = 2
ARP_LEN = 28
_HTYPE_ETHER = 1
_PTYPE_IP = 0x0800

# struct arphdr + ether/ipv4 addresses /* 28 */
_ARP = struct.Struct("!HHBBH6s4s6s4s")
assert _ARP.size == ARP_LEN


def ip(a: int, b: int, c: int, d: int) -> bytes:
    """Four octets -> a 4-byte address."""
    return bytes((a, b, c, d))


class ArpPacket(NamedTuple):
    """An Ethernet/IPv4 ARP packet (addresses as bytes)."""

    op: int
    sha: bytes
    spa: bytes
    tha: bytes
    tpa: bytes


def encode_arp(pkt: ArpPacket) -> bytes:
    """28 bytes (ours). Raises struct.error on malformed fields."""
    return _ARP.pack(_HTYPE_ETHER, _PTYPE_IP, 6, 4, pkt.op, pkt.sha, pkt.spa, pkt.tha, pkt.tpa)


def decode_arp(raw: bytes) -> ArpPacket | None:
    """Decode an ARP payload (trailing padding allowed); None unless Ethernet/IPv4
    request or reply. Never raises."""
    if len(raw) < ARP_LEN:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(raw)
    if (htype, ptype, hlen, plen) != (_HTYPE_ETHER, _PTYPE_IP, 6, 4):
        return None
    if op not in (ARP_REQUEST, ARP_REPLY):
        return None
    return ArpPacket(op, sha, spa, tha, tpa)


class ArpCache:
    """A bounded IPv4 -> MAC table with expiry.

    Args:
        max_entries: bound on entries (ours).
        ttl: seconds an entry stays valid (Linux ``base_reachable_time`` is 30 s).
    """

    def __init__(self, max_entries: int = 64, ttl: float = 60.0) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self.ttl = ttl
        self._table: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def update(self, addr: bytes, mac: bytes, now: float) -> None:
        """Learn ``addr`` is at ``mac`` (peer data: only stored, bounded)."""
        self._table.pop(addr, None)
        self._table[addr] = (mac, now)
        while len(self._table) > self.max_entries:
            self._table.popitem(last=False)

    def lookup(self, addr: bytes, now: float) -> bytes | None:
        """The MAC of ``addr``, or None if unknown or expired (expired ones are dropped)."""
        hit = self._table.get(addr)
        if hit is None:
            return None
        mac, when = hit
        if when + self.ttl <= now:
            del self._table[addr]
            return None
        return mac
