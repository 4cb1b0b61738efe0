"""The XenStore wire protocol (xen/io/xs_wire.h), sans-IO.

Every XenStore message, on every transport (the dom0 Unix socket, a guest's
``/dev/xen/xenbus``, a domain's shared ring page), is a 16-byte header
``struct xsd_sockmsg { u32 type, req_id, tx_id, len; }`` followed by ``len``
payload bytes, ``len <= XENSTORE_PAYLOAD_MAX`` (4096).

Payloads are NUL-terminated strings, except two: the value in a ``WRITE``
request and the reply to ``READ`` are raw bytes with no terminator. Errors
travel as a type ``XS_ERROR`` reply whose payload is the error *name* plus a
NUL (``b"ENOENT\\x00"``), from the fixed table :data:`XSD_ERRORS`.

Worked example: a client reads ``/vm`` with request id 7::

    >>> encode_message(XsType.READ, 7, 0, b"/vm\\x00").hex(" ")
    '02 00 00 00 07 00 00 00 00 00 00 00 04 00 00 00 2f 76 6d 00'

and the reply ``b"uuid"`` comes back as type 2, req_id 7, len 4, with no
NUL. If ``/vm`` did not exist the reply would be type 16 with
``b"ENOENT\\x00"``.

:class:`MessageParser` reassembles messages from a byte stream. It never
raises on peer data: a header announcing more than 4096 bytes is returned
as a :class:`WireViolation` value (the transport then kills the connection,
or for a ring sets ``XENSTORE_ERROR_PROTO``) and the parser stays dead.

This module is pure: no trio, no other xensim package.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "XENSTORE_ABS_PATH_MAX",
    "XENSTORE_ERROR_COMM",
    "XENSTORE_ERROR_NONE",
    "XENSTORE_ERROR_PROTO",
    "XENSTORE_ERROR_RINGIDX",
    "XENSTORE_PAYLOAD_MAX",
    "XENSTORE_REL_PATH_MAX",
    "XENSTORE_RING_SIZE",
    "XSD_ERRORS",
    "MessageParser",
    "WireViolation",
    "XsMessage",
    "XsType",
    "encode_error",
    "encode_message",
    "encode_strings",
    "error_name",
    "split_strings",
]

# struct xsd_sockmsg { uint32_t type, req_id, tx_id, len; }  (16 bytes)
HEADER = struct.Struct("<IIII")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 16

XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048

# struct xenstore_domain_interface: two 1024-byte byte streams + indices.
XENSTORE_RING_SIZE = 1024
XENSTORE_SERVER_FEATURE_RECONNECTION = 1
XENSTORE_SERVER_FEATURE_ERROR = 2
XENSTORE_CONNECTED = 0
XENSTORE_RECONNECT = 1
XENSTORE_ERROR_NONE = 0
XENSTORE_ERROR_COMM = 1
XENSTORE_ERROR_RINGIDX = 2
XENSTORE_ERROR_PROTO = 3

XS_WRITE_NONE = "NONE"
XS_WRITE_CREATE = "CREATE"
XS_WRITE_CREATE_EXCL = "CREATE|EXCL"


class XsType(enum.IntEnum):
    """``enum xsd_sockmsg_type`` of Xen 4.17 (numbers checked against the header)."""

    CONTROL = 0  # alias XS_DEBUG
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    # 20 was XS_RESTRICT, removed.
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    TYPE_COUNT = 23  # first invalid type in 4.17
    INVALID = 0xFFFF


XS_DEBUG = XsType.CONTROL

# struct xsd_errors xsd_errors[]: the fixed order of xs_wire.h. Any other
# error is reported as the first entry, EINVAL.
XSD_ERRORS: tuple[str, ...] = (
    "EINVAL",
    "EACCES",
    "EEXIST",
    "EISDIR",
    "ENOENT",
    "ENOMEM",
    "ENOSPC",
    "EIO",
    "ENOTEMPTY",
    "ENOSYS",
    "EROFS",
    "EBUSY",
    "EAGAIN",
    "EISCONN",
    "E2BIG",
    "EPERM",
)
_XSD_ERROR_SET = frozenset(XSD_ERRORS)


def error_name(name: str) -> str:
    """Map an error name onto the wire table (xs_wire.h ``send_error`` rule).

    Args:
        name: an errno name chosen by our own code (e.g. ``"ENOENT"``).

    Returns:
        ``name`` if it is in :data:`XSD_ERRORS`, else ``"EINVAL"``.
    """
    return name if name in _XSD_ERROR_SET else "EINVAL"


@dataclass(frozen=True, slots=True)
class XsMessage:
    """One decoded message (header fields + payload copy).

    Attributes:
        type: the raw type number (may be unknown: servers answer ENOSYS).
        req_id: echoed in replies; chosen by the client.
        tx_id: transaction id, 0 for none.
        payload: the ``len`` bytes after the header (an immutable copy).
    """

    type: int
    req_id: int
    tx_id: int
    payload: bytes

    def encode(self) -> bytes:
        """Header + payload bytes; raises ValueError if the payload is too long."""
        return encode_message(self.type, self.req_id, self.tx_id, self.payload)


@dataclass(frozen=True, slots=True)
class WireViolation:
    """A framing error in a peer's byte stream (returned, never raised).

    Attributes:
        reason: human text.
        ring_error: the ``XENSTORE_ERROR_*`` code a ring transport publishes.
    """

    reason: str
    ring_error: int = XENSTORE_ERROR_PROTO


def encode_message(type_: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    """Frame one message.

    Args:
        type_: message type (our choice; any u32).
        req_id: request id (u32).
        tx_id: transaction id (u32).
        payload: at most 4096 bytes.

    Returns:
        The 16-byte header followed by ``payload``.

    Raises:
        ValueError: ``payload`` exceeds ``XENSTORE_PAYLOAD_MAX`` (a bug in the
            caller: the daemon and client must never emit such a message).
    """
    if len(payload) > XENSTORE_PAYLOAD_MAX:
        raise ValueError(f"xenstore payload of {len(payload)} bytes exceeds 4096")
    return HEADER.pack(type_, req_id, tx_id, len(payload)) + payload


def encode_strings(*items: str | bytes) -> bytes:
    """Join items as NUL-terminated strings: ``("a", "b") -> b"a\\0b\\0"``.

    Args:
        items: str (encoded as UTF-8; path validity is checked by the daemon)
            or bytes; chosen by the caller.

    Returns:
        The concatenation with a NUL after every item.
    """
    out = bytearray()
    for item in items:
        out += item.encode() if isinstance(item, str) else item
        out += b"\0"
    return bytes(out)


def encode_error(name: str) -> bytes:
    """The payload of an ``XS_ERROR`` reply: the table name plus a NUL."""
    return error_name(name).encode() + b"\0"


def split_strings(payload: bytes) -> list[bytes] | None:
    """Split a payload made only of NUL-terminated strings.

    Args:
        payload: peer-controlled bytes.

    Returns:
        The strings without their terminators, or ``None`` when the payload
        is non-empty and does not end in NUL (a malformed request). An empty
        payload gives ``[]``.
    """
    if not payload:
        return []
    if payload[-1] != 0:
        return None
    return payload[:-1].split(b"\0")


class MessageParser:
    """Incremental reassembly of ``xsd_sockmsg`` messages from a byte stream.

    Feed it whatever the transport read; it returns every complete message.
    Memory is bounded: at most one partial message (16 + 4096 bytes) plus the
    unconsumed tail of the last feed is held.

    Args:
        payload_max: the largest payload accepted (4096 in Xen).
    """

    __slots__ = ("_buf", "_payload_max", "violation")

    def __init__(self, payload_max: int = XENSTORE_PAYLOAD_MAX) -> None:
        self._buf = bytearray()
        self._payload_max = payload_max
        self.violation: WireViolation | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[XsMessage | WireViolation]:
        """Add bytes; return the complete messages they finish.

        Args:
            data: bytes from the peer (hostile).

        Returns:
            Messages in stream order. If the stream breaks framing the last
            element is a :class:`WireViolation`; after that the parser is
            dead and every later call returns ``[]``.
        """
        if self.violation is not None:
            return []
        buf = self._buf
        buf += data
        out: list[XsMessage | WireViolation] = []
        pos = 0
        end = len(buf)
        unpack = HEADER.unpack_from
        while end - pos >= HEADER_SIZE:
            type_, req_id, tx_id, length = unpack(buf, pos)
            if length > self._payload_max:
                self.violation = WireViolation(
                    f"payload length {length} exceeds {self._payload_max}"
                )
                out.append(self.violation)
                buf.clear()
                return out
            stop = pos + HEADER_SIZE + length
            if stop > end:
                break
            out.append(XsMessage(type_, req_id, tx_id, bytes(buf[pos + HEADER_SIZE:stop])))
            pos = stop
        if pos:
            del buf[:pos]
        return out
