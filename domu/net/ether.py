"""Ethernet II framing (IEEE 802.3 with an EtherType), sans-IO.

A frame here is what a NIC hands over: destination MAC, source MAC,
EtherType, payload; no preamble, no FCS. Frames shorter than 60 bytes are
padded with zeros on encode (the minimum Ethernet frame without FCS);
decoders keep the padding in the payload, so upper layers use their own
length fields (IPv4 ``total_length``, ARP's fixed size).

Worked example::

    >>> raw = encode_frame(BROADCAST, bytes.fromhex("00163e000001"), ETH_P_ARP, b"x")
    >>> len(raw), decode_frame(raw).ethertype == ETH_P_ARP
    (60, True)
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = [
    "BROADCAST",
    "ETH_HLEN",
    "ETH_P_ARP",
    "ETH_P_IP",
    "ETH_ZLEN",
    "EthernetFrame",
    "decode_frame",
    "encode_frame",
    "format_mac",
    "is_multicast",
    "parse_mac",
]

ETH_HLEN = 14
ETH_ZLEN = 60  # minimum frame length without FCS
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6

# struct ethhdr { u8 h_dest[6]; u8 h_source[6]; __be16 h_proto; } /* 14 */
_ETH = struct.Struct("!6s6sH")
assert _ETH.size == ETH_HLEN


class EthernetFrame(NamedTuple):
    """A decoded frame (payload may carry padding)."""

    dst: bytes
    src: bytes
    ethertype: int
    payload: bytes


def parse_mac(text: str) -> bytes:
    """``"00:16:3e:00:00:01"`` -> 6 bytes. Raises ValueError when malformed (our input)."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"MAC {text!r}: expected XX:XX:XX:XX:XX:XX")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes) -> str:
    """6 bytes -> ``"00:16:3e:00:00:01"``."""
    return ":".join(f"{b:02x}" for b in mac)


def is_multicast(mac: bytes) -> bool:
    """The I/G bit: broadcast and multicast destinations."""
    return bool(mac[0] & 1)


def encode_frame(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    """Build a frame, zero-padded to 60 bytes.

    Args:
        dst, src: 6-byte MACs; ethertype: 0..0xFFFF; payload: bytes (all ours).

    Raises:
        ValueError / struct.error: malformed arguments (our bug).
    """
    if len(dst) != 6 or len(src) != 6:
        raise ValueError("MAC addresses are 6 bytes")
    raw = _ETH.pack(dst, src, ethertype) + payload
    if len(raw) < ETH_ZLEN:
        raw += bytes(ETH_ZLEN - len(raw))
    return raw


def decode_frame(raw: bytes) -> EthernetFrame | None:
    """Split a received frame; None if shorter than the header (never raises)."""
    if len(raw) < ETH_HLEN:
        return None
    dst, src, ethertype = _ETH.unpack_from(raw)
    return EthernetFrame(dst, src, ethertype, bytes(raw[ETH_HLEN:]))
