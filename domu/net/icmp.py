"""ICMP echo request / reply (RFC 792), sans-IO.

Layout: ``type u8, code u8, checksum be16, identifier be16, sequence be16``,
then data echoed back verbatim. The checksum covers the whole ICMP message.

Worked example::

    >>> raw = encode_echo(ICMP_ECHO_REQUEST, 0x1234, 1, b"ping")
    >>> decode_echo(raw)
    IcmpEcho(type=8, ident=4660, seq=1, data=b'ping')
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .ipv4 import internet_checksum

__all__ = ["ICMP_ECHO_REPLY", "ICMP_ECHO_REQUEST", "IcmpEcho", "decode_echo", "encode_echo"]

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8

# struct icmphdr (echo) { u8 type; u8 code; be16 checksum; be16 id; be16 sequence; } /* 8 */
_ECHO = struct.Struct("!BBHHH")
assert _ECHO.size == 8


class IcmpEcho(NamedTuple):
    """An echo request (type 8) or reply (type 0)."""

    type: int
    ident: int
    seq: int
    data: bytes


def encode_echo(icmp_type: int, ident: int, seq: int, data: bytes) -> bytes:
    """An echo message with its checksum (ours; struct.error on bad fields)."""
    body = _ECHO.pack(icmp_type, 0, 0, ident, seq) + data
    csum = internet_checksum(body)
    return body[:2] + struct.pack("!H", csum) + body[4:]


def decode_echo(raw: bytes) -> IcmpEcho | None:
    """Decode an echo request/reply; None for other types, short data or a bad checksum."""
    if len(raw) < _ECHO.size:
        return None
    icmp_type, code, _csum, ident, seq = _ECHO.unpack_from(raw)
    if icmp_type not in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY) or code != 0:
        return None
    if internet_checksum(bytes(raw)) != 0:
        return None
    return IcmpEcho(icmp_type, ident, seq, bytes(raw[_ECHO.size:]))
