"""The host daemon's control protocol: framing, messages, socket paths (sans-IO).

This module is what both ends share -- the daemon (:mod:`dom0.toolstack.hostd`)
and the CLI (:mod:`dom0.toolstack.client`) -- and it imports neither trio nor
the simulation, so the CLI starts fast.

Wire format: each message is one **frame**, a 4-byte big-endian body length
then that many bytes of msgpack (bin type for bytes, UTF-8 strings). Requests
are maps ``{"op": str, "args": map, "id": int}``; responses are
``{"id", "ok": true, "result"}``, ``{"id", "ok": false, "error": {"code",
"message"}}`` or, for streams, ``{"id", "ok": true, "event"}`` (repeated)
before the final response. See :mod:`dom0.toolstack.hostd` for the ops.

Worked example::

    >>> frame = encode_frame({"op": "list", "args": {}, "id": 1})
    >>> len(frame), frame[:4] == (len(frame) - 4).to_bytes(4, "big")
    (23, True)
    >>> d = FrameDecoder()
    >>> d.feed(frame[:10]), d.pending    # half a frame: nothing yet
    ([], 10)
    >>> parse_request(decode_body(d.feed(frame[10:])[0]))
    Request(op='list', args={}, id=1)
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = [
    "ERROR_CODES",
    "FRAME_HEADER",
    "MAX_CLIENTS",
    "MAX_FRAME",
    "FrameDecoder",
    "FrameTooLarge",
    "ProtocolError",
    "Request",
    "SocketInUse",
    "claim_socket",
    "decode_body",
    "encode_frame",
    "error_response",
    "is_live",
    "parse_request",
    "request_id",
]

FRAME_HEADER = struct.Struct(">I")
"""Every frame starts with its body length (u32, big-endian)."""
MAX_FRAME = 1 << 20
"""Largest frame body the daemon accepts (1 MiB)."""
MAX_CLIENTS = 64
"""Connections served at once; more are answered ``EBUSY`` and closed."""
MAX_OP_LEN = 64

ERROR_CODES: Mapping[str, str] = {
    "EPROTO": "malformed frame or message (not msgpack, not a request)",
    "E2BIG": "frame larger than MAX_FRAME (the connection is closed)",
    "EUNKNOWNOP": "no such op",
    "EINVAL": "bad arguments, or an operation that makes no sense for that domain",
    "ENODOMAIN": "no domain with that name or id",
    "ENODEV": "no such device in that domain",
    "ECONFIG": "the configuration (file, settings, device spec) is invalid",
    "EXEN": "the hypervisor refused (the message carries Xen's errno name)",
    "ETIMEDOUT": "a guest or backend did not answer in time",
    "ENOTSUP": "this host cannot do that (e.g. no driver for the device type)",
    "EBUSY": "too many clients",
    "EFAILED": "the operation failed (e.g. the guest crashed while booting)",
    "EINTERNAL": "a bug in the daemon (logged); the daemon carries on",
}
"""Every ``error.code`` a response may carry, with its meaning."""


# ------------------------------------------------------------------------------------------
# The codec (sans-IO)
# ------------------------------------------------------------------------------------------


class ProtocolError(Exception):
    """A peer's frame or message is malformed (``code`` is an :data:`ERROR_CODES` key)."""

    code = "EPROTO"


class FrameTooLarge(ProtocolError):
    """A frame header announced more than the limit."""

    code = "E2BIG"


def encode_frame(message: Any) -> bytes:
    """One frame: length prefix + msgpack body.

    Raises:
        ValueError: the body would exceed 4 GiB (a bug: callers send small messages).
    """
    body = msgpack.packb(message, use_bin_type=True)
    if len(body) >= 1 << 32:
        raise ValueError("message too large to frame")
    return FRAME_HEADER.pack(len(body)) + body


class FrameDecoder:
    """Splits a byte stream into frame bodies (sans-IO; never decodes msgpack).

    Args:
        max_frame: largest body accepted.

    Worked example::

        d = FrameDecoder()
        d.feed(b"\\x00\\x00\\x00\\x01")   -> []         (header only)
        d.feed(b"\\xc0\\x00")             -> [b"\\xc0"]  (body; 1 byte left over)
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every complete frame body, in order.

        Raises:
            FrameTooLarge: a header announced more than ``max_frame`` (the
                stream cannot be resynchronised; bodies decoded before it in
                this call are lost with it).
        """
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= FRAME_HEADER.size:
            (size,) = FRAME_HEADER.unpack_from(self._buf)
            if size > self.max_frame:
                raise FrameTooLarge(f"frame of {size} bytes exceeds the {self.max_frame} limit")
            end = FRAME_HEADER.size + size
            if len(self._buf) < end:
                break
            out.append(bytes(self._buf[FRAME_HEADER.size:end]))
            del self._buf[:end]
        return out


def decode_body(body: bytes) -> Any:
    """Unpack one frame body (peer data) into Python objects.

    Raises:
        ProtocolError: not exactly one valid msgpack object (bad UTF-8,
            truncation, trailing bytes, too deep...).
    """
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types; all mean "malformed"
        raise ProtocolError(f"malformed msgpack: {type(exc).__name__}") from None


@dataclass(frozen=True)
class Request:
    """A validated request."""

    op: str
    args: dict[str, Any]
    id: int | None


def parse_request(obj: Any) -> Request:
    """Validate a decoded message as a request.

    Raises:
        ProtocolError: not a map, or ``op`` / ``args`` / ``id`` of the wrong type.
    """
    if not isinstance(obj, dict):
        raise ProtocolError("a request is a map with op, args and id")
    op = obj.get("op")
    req_id = obj.get("id")
    args = obj.get("args", {})
    if args is None:
        args = {}
    if not isinstance(op, str) or not 0 < len(op) <= MAX_OP_LEN:
        raise ProtocolError("request 'op' must be a short string")
    if req_id is not None and (not isinstance(req_id, int) or isinstance(req_id, bool)):
        raise ProtocolError("request 'id' must be an integer")
    if not isinstance(args, dict):
        raise ProtocolError("request 'args' must be a map")
    return Request(op, args, req_id)


def error_response(req_id: int | None, code: str, message: str) -> dict[str, Any]:
    """``{"id", "ok": False, "error": {"code", "message"}}``."""
    return {"id": req_id, "ok": False, "error": {"code": code, "message": message}}


def request_id(obj: Any) -> int | None:
    """The id of a message that failed validation, if it has a usable one."""
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool):
            return rid
    return None



class SocketInUse(Exception):
    """A live server already listens on the path (or the path is not a socket)."""


def is_live(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
        return True


def claim_socket(path: str) -> None:
    """Prepare ``path`` for a listening socket: make its directory, remove a stale socket.

    Raises:
        SocketInUse: something listens there, or the path is not a socket.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket")
    if is_live(path):
        raise SocketInUse(f"a host is already running: something is listening on {path}")
    os.unlink(path)  # stale: left by a process that died
