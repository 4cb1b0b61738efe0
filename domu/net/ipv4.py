"""IPv4 (RFC 791) headers and the Internet checksum (RFC 1071), sans-IO.

Encoding writes a 20-byte header (no options, DF clear, TTL 64 by default)
with its checksum. Decoding checks version 4, ``IHL >= 5``, the header
checksum, and ``total_length`` against what arrived; the payload is cut to
``total_length`` (dropping Ethernet padding). Fragments are not
reassembled: a packet with MF set or a non-zero fragment offset decodes
with ``fragment=True`` and the helper ignores it.

Worked example::

    >>> raw = encode_ipv4(IPPROTO_ICMP, ip_from_str("10.0.0.1"), ip_from_str("10.0.0.2"), b"hi")
    >>> internet_checksum(raw[:20]), decode_ipv4(raw).payload
    (0, b'hi')
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = [
    "IPPROTO_ICMP",
    "IPV4_HLEN",
    "Ipv4Packet",
    "decode_ipv4",
    "encode_ipv4",
    "internet_checksum",
    "ip_from_str",
    "ip_to_str",
]

IPPROTO_ICMP = 1
IPV4_HLEN = 20

# struct iphdr { u8 ver_ihl; u8 tos; be16 tot_len; be16 id; be16 frag_off; u8 ttl;
#                u8 protocol; be16 check; be32 saddr; be32 daddr; } /* 20 */
_IP = struct.Struct("!BBHHHBBH4s4s")
assert _IP.size == IPV4_HLEN


def internet_checksum(data: bytes) -> int:
    """RFC 1071 ones'-complement sum of 16-bit words (odd length zero-padded).

    Over data that already contains a correct checksum field, the result is 0.
    """
    if len(data) & 1:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_from_str(text: str) -> bytes:
    """``"10.0.0.1"`` -> 4 bytes. Raises ValueError when malformed (our input)."""
    parts = text.strip().split(".")
    if len(parts) != 4 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise ValueError(f"IPv4 address {text!r}: expected a.b.c.d")
    return bytes(int(p) for p in parts)


def ip_to_str(addr: bytes) -> str:
    """4 bytes -> ``"10.0.0.1"``."""
    return ".".join(str(b) for b in addr)


class Ipv4Packet(NamedTuple):
    """A decoded IPv4 packet (options skipped)."""

    src: bytes
    dst: bytes
    proto: int
    ttl: int
    ident: int
    payload: bytes
    fragment: bool = False


def encode_ipv4(proto: int, src: bytes, dst: bytes, payload: bytes, *, ttl: int = 64,
                ident: int = 0) -> bytes:
    """A 20-byte header with checksum, then ``payload`` (all ours).

    Raises:
        ValueError: the packet would exceed 65535 bytes; struct.error: bad fields.
    """
    total = IPV4_HLEN + len(payload)
    if total > 0xFFFF:
        raise ValueError(f"IPv4 packet of {total} bytes")
    hdr = _IP.pack(0x45, 0, total, ident & 0xFFFF, 0, ttl, proto, 0, src, dst)
    csum = internet_checksum(hdr)
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + payload


def decode_ipv4(raw: bytes) -> Ipv4Packet | None:
    """Decode an IPv4 packet (trailing padding allowed); None if malformed. Never raises."""
    if len(raw) < IPV4_HLEN:
        return None
    ver_ihl, _tos, total, ident, frag, ttl, proto, _csum, src, dst = _IP.unpack_from(raw)
    ihl = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or ihl < IPV4_HLEN or total < ihl or total > len(raw):
        return None
    if internet_checksum(bytes(raw[:ihl])) != 0:
        return None
    fragment = bool(frag & 0x2000) or (frag & 0x1FFF) != 0
    return Ipv4Packet(src, dst, proto, ttl, ident, bytes(raw[ihl:total]), fragment)
