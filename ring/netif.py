"""The PV network protocol: slot layouts, flags and limits from ``io/netif.h``.

Theory of operation
-------------------
Each netif queue has two rings, one page each:

* **tx** (guest transmit, 12-byte slots, 256 entries): the frontend posts
  ``netif_tx_request`` slots describing packet fragments; the backend answers
  every consumed slot with a 4-byte ``netif_tx_response``.
* **rx** (guest receive, 8-byte slots, 256 entries): the frontend posts empty
  buffers as ``netif_rx_request``; the backend fills them and answers with a
  ``netif_rx_response`` *in the slot of the request it consumed*.

A slot may instead hold a ``netif_extra_info`` (GSO, multicast, hash): on tx
when the previous request had ``NETTXF_extra_info`` (or the previous extra had
``XEN_NETIF_EXTRA_FLAG_MORE``), on rx likewise with ``NETRXF_extra_info``. The
slot codec cannot know that from one slot, so tx requests and rx responses
are decoded as the normal record and reinterpreted with ``as_extra_info()``
(which works on the same private copy; nothing is re-read from the page).

**Decoders never raise**: every record decoded from peer bytes has ``error``
(None when well formed). Checks that need packet context (fragment sizes,
the 18-slot limit, the 65535-byte limit) belong to netback; see
:func:`tx_fragment_error`.

Worked example: a 1514-byte frame in one fragment, then with a GSO extra::

    NetifTxRequest(gref=9, offset=0, flags=0, id=3, size=1514)
    NetifTxRequest(9, 0, NETTXF_extra_info, 3, 9000)   # first slot, total size
    NetifExtraInfo.gso(1448, XEN_NETIF_GSO_TYPE_TCPV4)  # next slot
    # backend answers: NetifTxResponse(3, NETIF_RSP_OKAY), then
    #                  NetifTxResponse(<id of the extra slot>, NETIF_RSP_NULL)
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# --- constants (io/netif.h) ----------------------------------------------
NETTXF_csum_blank = 1
NETTXF_data_validated = 2
NETTXF_more_data = 4
NETTXF_extra_info = 8

NETRXF_data_validated = 1  # note: swapped with csum_blank relative to TX
NETRXF_csum_blank = 2
NETRXF_more_data = 4
NETRXF_extra_info = 8
NETRXF_gso_prefix = 16

XEN_NETIF_EXTRA_TYPE_NONE = 0
XEN_NETIF_EXTRA_TYPE_GSO = 1
XEN_NETIF_EXTRA_TYPE_MCAST_ADD = 2
XEN_NETIF_EXTRA_TYPE_MCAST_DEL = 3
XEN_NETIF_EXTRA_TYPE_HASH = 4
XEN_NETIF_EXTRA_TYPE_MAX = 5
XEN_NETIF_EXTRA_FLAG_MORE = 1

XEN_NETIF_GSO_TYPE_NONE = 0
XEN_NETIF_GSO_TYPE_TCPV4 = 1
XEN_NETIF_GSO_TYPE_TCPV6 = 2

NETIF_RSP_DROPPED = -2
NETIF_RSP_ERROR = -1
NETIF_RSP_OKAY = 0
NETIF_RSP_NULL = 1

XEN_NETIF_MAX_TX_SIZE = 65535
XEN_NETIF_NR_SLOTS_MIN = 18
XEN_PAGE_SIZE = 4096
ETH_HLEN = 14

NET_TX_SLOT_SIZE = 12  # sizeof(union netif_tx_sring_entry)
NET_RX_SLOT_SIZE = 8  # sizeof(union netif_rx_sring_entry)
NET_TX_RING_SIZE = 256
NET_RX_RING_SIZE = 256

# --- layouts --------------------------------------------------------------
# struct netif_tx_request { grant_ref_t gref; u16 offset; u16 flags; u16 id; u16 size; } /* 12 */
_TX_REQ = struct.Struct("<IHHHH")
assert _TX_REQ.size == 12
# struct netif_tx_response { u16 id; i16 status; } /* 4 */
_TX_RSP = struct.Struct("<Hh")
assert _TX_RSP.size == 4
# struct netif_rx_request { u16 id; u16 pad; grant_ref_t gref; } /* 8 */
_RX_REQ = struct.Struct("<H2xI")
assert _RX_REQ.size == 8
# struct netif_rx_response { u16 id; u16 offset; u16 flags; i16 status; } /* 8 */
_RX_RSP = struct.Struct("<HHHh")
assert _RX_RSP.size == 8
# struct netif_extra_info { u8 type; u8 flags; union { gso; mcast; hash; } u; } /* 8 */
_EXTRA = struct.Struct("<BB6s")
assert _EXTRA.size == 8
#   u.gso { u16 size; u8 type; u8 pad; u16 features; }
_GSO = struct.Struct("<HBxH")
assert _GSO.size == 6
#   u.hash { u8 type; u8 algorithm; u8 value[4]; }
_HASH = struct.Struct("<BB4s")
assert _HASH.size == 6

_TX_STATUS = frozenset((NETIF_RSP_OKAY, NETIF_RSP_ERROR, NETIF_RSP_DROPPED, NETIF_RSP_NULL))


class NetifExtraInfo(NamedTuple):
    """``struct netif_extra_info``; the 6-byte union is kept raw in ``data``.

    ``error`` is set for an unknown or NONE ``type`` (peer data only).
    """

    type: int
    flags: int
    data: bytes
    error: str | None = None

    @classmethod
    def gso(
        cls, size: int, gso_type: int, features: int = 0, more: bool = False
    ) -> NetifExtraInfo:
        """A GSO extra: ``size`` = MSS, ``gso_type`` = XEN_NETIF_GSO_TYPE_*."""
        flags = XEN_NETIF_EXTRA_FLAG_MORE if more else 0
        return cls(XEN_NETIF_EXTRA_TYPE_GSO, flags, _GSO.pack(size, gso_type, features))

    @classmethod
    def mcast(cls, add: bool, addr: bytes, more: bool = False) -> NetifExtraInfo:
        """A MCAST_ADD / MCAST_DEL extra for the 6-byte MAC ``addr``."""
        if len(addr) != 6:
            raise ValueError("a MAC address has 6 bytes")
        typ = XEN_NETIF_EXTRA_TYPE_MCAST_ADD if add else XEN_NETIF_EXTRA_TYPE_MCAST_DEL
        return cls(typ, XEN_NETIF_EXTRA_FLAG_MORE if more else 0, bytes(addr))

    @property
    def more(self) -> bool:
        """Another extra-info slot follows."""
        return bool(self.flags & XEN_NETIF_EXTRA_FLAG_MORE)

    @property
    def gso_size(self) -> int:
        """``u.gso.size`` (MSS)."""
        return _GSO.unpack_from(self.data)[0]

    @property
    def gso_type(self) -> int:
        """``u.gso.type``."""
        return _GSO.unpack_from(self.data)[1]

    @property
    def gso_features(self) -> int:
        """``u.gso.features``."""
        return _GSO.unpack_from(self.data)[2]

    @property
    def mcast_addr(self) -> bytes:
        """``u.mcast.addr``."""
        return self.data

    @property
    def hash(self) -> tuple[int, int, bytes]:
        """``(u.hash.type, u.hash.algorithm, u.hash.value)``."""
        return _HASH.unpack_from(self.data)

    def encode(self) -> bytes:
        """The 8 bytes of this extra (ours). Raises struct.error / ValueError on misuse."""
        if len(self.data) != 6:
            raise ValueError("extra-info data must be 6 bytes")
        return _EXTRA.pack(self.type, self.flags, self.data)


def decode_extra_info(raw: bytes) -> NetifExtraInfo:
    """Decode 8 bytes (a private copy) as an extra-info; never raises.

    Args:
        raw: at least 8 bytes from a slot (peer-controlled).

    Returns:
        The record; ``error`` set for type NONE or >= MAX.
    """
    if len(raw) < _EXTRA.size:
        return NetifExtraInfo(0, 0, bytes(6), "short extra-info")
    typ, flags, data = _EXTRA.unpack_from(raw)
    err = None
    if not XEN_NETIF_EXTRA_TYPE_NONE < typ < XEN_NETIF_EXTRA_TYPE_MAX:
        err = f"unknown extra-info type {typ}"
    return NetifExtraInfo(typ, flags, data, err)


class NetifTxRequest(NamedTuple):
    """``struct netif_tx_request``: one fragment (``size`` = whole packet on the first)."""

    gref: int
    offset: int
    flags: int
    id: int
    size: int
    error: str | None = None

    def as_extra_info(self) -> NetifExtraInfo:
        """Reinterpret this slot (same private copy) as a ``netif_extra_info``."""
        return decode_extra_info(_TX_REQ.pack(self.gref, self.offset, self.flags, self.id,
                                              self.size))


class NetifTxResponse(NamedTuple):
    """``struct netif_tx_response``; ``error`` set for an unknown status."""

    id: int
    status: int
    error: str | None = None


class NetifRxRequest(NamedTuple):
    """``struct netif_rx_request``: an empty page ``gref`` the backend may fill."""

    id: int
    gref: int
    error: str | None = None


class NetifRxResponse(NamedTuple):
    """``struct netif_rx_response``; ``status`` >= 0 is the byte count in this slot."""

    id: int
    offset: int
    flags: int
    status: int
    error: str | None = None

    def as_extra_info(self) -> NetifExtraInfo:
        """Reinterpret this slot (same private copy) as a ``netif_extra_info``."""
        return decode_extra_info(_RX_RSP.pack(self.id, self.offset, self.flags, self.status))


def tx_fragment_error(req: NetifTxRequest, frag_len: int) -> str | None:
    """Check one tx fragment the way netback does before mapping it.

    Args:
        req: the decoded request (frontend-controlled).
        frag_len: this fragment's length (``size`` for later fragments; for the
            first, total minus the later fragments), computed by the backend.

    Returns:
        None when ``0 < frag_len`` and ``offset + frag_len <= 4096``; else why.
    """
    if frag_len <= 0:
        return f"fragment length {frag_len}"
    if req.offset + frag_len > XEN_PAGE_SIZE:
        return f"fragment crosses page boundary: offset {req.offset} + {frag_len}"
    return None


class NetifTxCodec:
    """Slot codec for netif tx rings (12-byte slots)."""

    slot_size = NET_TX_SLOT_SIZE

    def encode_request(self, req: NetifTxRequest | NetifExtraInfo) -> bytes:
        """12 bytes for a tx request, or 8 for an extra-info slot (ours).

        Raises:
            struct.error: a field out of range.
        """
        if isinstance(req, NetifExtraInfo):
            return req.encode()
        return _TX_REQ.pack(req.gref, req.offset, req.flags, req.id, req.size)

    def decode_request(self, raw: bytes) -> NetifTxRequest:
        """Decode a private copy of a tx slot; never raises.

        Args:
            raw: 12 bytes (frontend-controlled).

        Returns:
            The record; ``error`` set when ``offset >= 4096``. Use
            ``as_extra_info()`` when the previous slot announced an extra.
        """
        if len(raw) != NET_TX_SLOT_SIZE:
            return NetifTxRequest(0, 0, 0, 0, 0, f"slot of {len(raw)} bytes")
        gref, offset, flags, rid, size = _TX_REQ.unpack_from(raw)
        err = None if offset < XEN_PAGE_SIZE else f"offset {offset} beyond the page"
        return NetifTxRequest(gref, offset, flags, rid, size, err)

    def encode_response(self, rsp: NetifTxResponse) -> bytes:
        """4 bytes (ours). Raises struct.error on out-of-range fields."""
        return _TX_RSP.pack(rsp.id, rsp.status)

    def decode_response(self, raw: bytes) -> NetifTxResponse:
        """Decode a private copy of a tx response; never raises.

        Args:
            raw: the slot (backend-controlled); first 4 bytes used.

        Returns:
            The record; ``error`` set for an unknown status.
        """
        if len(raw) < _TX_RSP.size:
            return NetifTxResponse(0, NETIF_RSP_ERROR, "short slot")
        rid, status = _TX_RSP.unpack_from(raw)
        return NetifTxResponse(rid, status,
                               None if status in _TX_STATUS else f"unknown status {status}")


class NetifRxCodec:
    """Slot codec for netif rx rings (8-byte slots)."""

    slot_size = NET_RX_SLOT_SIZE

    def encode_request(self, req: NetifRxRequest) -> bytes:
        """8 bytes, pad zero (ours). Raises struct.error on out-of-range fields."""
        return _RX_REQ.pack(req.id, req.gref)

    def decode_request(self, raw: bytes) -> NetifRxRequest:
        """Decode a private copy of an rx request; never raises.

        Args:
            raw: 8 bytes (frontend-controlled).

        Returns:
            The record (every bit pattern is well formed except a short slot).
        """
        if len(raw) != NET_RX_SLOT_SIZE:
            return NetifRxRequest(0, 0, f"slot of {len(raw)} bytes")
        rid, gref = _RX_REQ.unpack_from(raw)
        return NetifRxRequest(rid, gref)

    def encode_response(self, rsp: NetifRxResponse | NetifExtraInfo) -> bytes:
        """8 bytes for a response or an extra-info slot (ours)."""
        if isinstance(rsp, NetifExtraInfo):
            return rsp.encode()
        return _RX_RSP.pack(rsp.id, rsp.offset, rsp.flags, rsp.status)

    def decode_response(self, raw: bytes) -> NetifRxResponse:
        """Decode a private copy of an rx response; never raises.

        Args:
            raw: 8 bytes (backend-controlled).

        Returns:
            The record; ``error`` set when a data slot (status >= 0) claims
            ``offset + status > 4096``, or status is a negative non-RSP value.
        """
        if len(raw) != NET_RX_SLOT_SIZE:
            return NetifRxResponse(0, 0, 0, NETIF_RSP_ERROR, f"slot of {len(raw)} bytes")
        rid, offset, flags, status = _RX_RSP.unpack_from(raw)
        err = None
        if status >= 0 and offset + status > XEN_PAGE_SIZE:
            err = f"offset {offset} + {status} bytes beyond the page"
        elif status < NETIF_RSP_DROPPED:
            err = f"unknown status {status}"
        return NetifRxResponse(rid, offset, flags, status, err)


NETIF_TX_CODEC = NetifTxCodec()
NETIF_RX_CODEC = NetifRxCodec()
