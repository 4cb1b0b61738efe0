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

**Batch helpers** (end of the module): the drivers move up to a ring of
slots per pass, so :func:`back_get_requests` / :func:`front_copy_responses`
copy a run of slots out of the page in one piece and unpack it into plain
tuples, and :func:`back_put_responses` / :func:`front_put_requests`
(:class:`FrontRequestWriter` for one at a time) pack
tuples straight into the slots - same indices and overflow checks as
``ring.sring``'s ``BackRing`` / ``FrontRing``, without a record per slot.
:func:`tx_request` / :func:`tx_response` / :func:`rx_response` turn such a
tuple into the checked record when a driver needs one.

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

import itertools
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from ring.errors import RingFullError, RingOverflowError, RingUsageError
from ring.sring import SRING_HEADER_SIZE, BackRing, FrontRing

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


def tx_request(fields: tuple[int, int, int, int, int]) -> NetifTxRequest:
    """The record for an unpacked tx slot ``(gref, offset, flags, id, size)``;
    ``error`` set when ``offset >= 4096``. Never raises on peer data."""
    gref, offset, flags, rid, size = fields
    err = None if offset < XEN_PAGE_SIZE else f"offset {offset} beyond the page"
    return NetifTxRequest(gref, offset, flags, rid, size, err)


def tx_response(fields: tuple[int, int]) -> NetifTxResponse:
    """The record for an unpacked tx response ``(id, status)``; ``error`` set for
    an unknown status. Never raises on peer data."""
    rid, status = fields
    return NetifTxResponse(rid, status,
                           None if status in _TX_STATUS else f"unknown status {status}")


def rx_response(fields: tuple[int, int, int, int]) -> NetifRxResponse:
    """The record for an unpacked rx response ``(id, offset, flags, status)``;
    ``error`` set when a data slot (status >= 0) claims ``offset + status > 4096``
    or the status is a negative non-RSP value. Never raises on peer data."""
    rid, offset, flags, status = fields
    err = None
    if status >= 0 and offset + status > XEN_PAGE_SIZE:
        err = f"offset {offset} + {status} bytes beyond the page"
    elif status < NETIF_RSP_DROPPED:
        err = f"unknown status {status}"
    return NetifRxResponse(rid, offset, flags, status, err)


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
        return tx_request(_TX_REQ.unpack_from(raw))

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
        return tx_response(_TX_RSP.unpack_from(raw))


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
        return rx_response(_RX_RSP.unpack_from(raw))


NETIF_TX_CODEC = NetifTxCodec()
NETIF_RX_CODEC = NetifRxCodec()


# --- batch slot access (the drivers' hot paths) ---------------------------
#
# The codec classes above decode one slot into one record; netback and netfront
# move up to a whole ring of slots per pass, so these helpers copy a run of slots
# out of the page in one piece and unpack it into plain tuples (field order as in
# the C structs), or pack tuples straight into the slots. The ring's private
# indices and checks are exactly those of ``BackRing.get_requests`` /
# ``FrontRing.put_requests`` & co. (ring/sring.py); only one-page rings, which is
# what netif uses (tx and rx, 256 slots each), are supported.

TxReqTuple = tuple[int, int, int, int, int]
"""``(gref, offset, flags, id, size)`` of a ``netif_tx_request``."""
TxRspTuple = tuple[int, int]
"""``(id, status)`` of a ``netif_tx_response``."""
RxReqTuple = tuple[int, int]
"""``(id, gref)`` of a ``netif_rx_request``."""
RxRspTuple = tuple[int, int, int, int]
"""``(id, offset, flags, status)`` of a ``netif_rx_response``."""

TX_REQ_SLOT = _TX_REQ
"""A tx request slot (12 bytes) for the batch helpers: ``TxReqTuple``."""
TX_RSP = _TX_RSP
"""A tx response as a backend writes it (4 bytes at the start of the slot)."""
TX_RSP_SLOT = struct.Struct("<Hh8x")
"""A tx response as a frontend copies it (the whole 12-byte slot): ``TxRspTuple``."""
assert TX_RSP_SLOT.size == NET_TX_SLOT_SIZE
RX_REQ_SLOT = _RX_REQ
"""An rx request slot (8 bytes): ``RxReqTuple``."""
RX_RSP_SLOT = _RX_RSP
"""An rx response slot (8 bytes): ``RxRspTuple``."""
_HDR = SRING_HEADER_SIZE
_M = 0xFFFFFFFF


def _one_page(ring: Any, slot: struct.Struct, whole_slot: bool = True) -> memoryview:
    """Page 0 of a one-page ring, after checking ``slot`` fits its slots (our misuse
    raises ValueError)."""
    s = ring.sring
    if len(s.pages) != 1:
        raise ValueError("the netif batch helpers work on one-page rings only")
    if slot.size > s.slot_size or (whole_slot and slot.size != s.slot_size):
        raise ValueError(f"a {slot.size}-byte layout for {s.slot_size}-byte slots")
    return s.pages[0]


def _copy_slots(page: memoryview, slot: struct.Struct, nr_ents: int, first: int,
                n: int) -> list[Any]:
    """Copy ``n`` slots from free-running index ``first`` out of ``page`` (one copy
    of each contiguous run) and unpack them with ``slot``."""
    if n <= 0:
        return []
    size = slot.size
    k = first & (nr_ents - 1)
    head = min(n, nr_ents - k)
    raw = bytes(page[_HDR + k * size:_HDR + (k + head) * size])
    if head < n:  # the run wraps to slot 0
        raw += bytes(page[_HDR:_HDR + (n - head) * size])
    return list(slot.iter_unpack(raw))


def _write_slots(page: memoryview, slot: struct.Struct, nr_ents: int, first: int,
                 records: Sequence[tuple[int, ...]]) -> None:
    """Pack ``records`` into whole slots from free-running index ``first``: one
    run of bytes, written in one piece (two when it wraps to slot 0)."""
    n = len(records)
    if n == 0:
        return
    size = slot.size
    raw = b"".join(itertools.starmap(slot.pack, records))
    k = first & (nr_ents - 1)
    head = min(n, nr_ents - k)
    page[_HDR + k * size:_HDR + (k + head) * size] = raw[:head * size]
    if head < n:
        page[_HDR:_HDR + (n - head) * size] = raw[head * size:]


def back_get_requests(ring: BackRing[Any, Any], slot: struct.Struct,
                      limit: int) -> list[Any]:
    """``BackRing.get_requests`` returning raw tuples: read ``req_prod`` once,
    check it, copy the slots once, advance ``req_cons``.

    Args:
        ring: a backend ring over one page (netback's).
        slot: the request layout (``TX_REQ_SLOT`` or ``RX_REQ_SLOT``).
        limit: at most this many (bounds work per pass); ours.

    Returns:
        Tuples in ring order (peer data: every field must still be checked).

    Raises:
        RingOverflowError: bogus ``req_prod`` (the frontend misbehaved); the
            ring is marked broken.
    """
    if ring.broken:
        raise RingOverflowError("back ring is broken")
    s = ring.sring
    page = _one_page(ring, slot)
    rp = s.req_prod
    nr = s.nr_ents
    if ((rp - ring.rsp_prod_pvt) & _M) > nr:
        ring.broken = True
        raise RingOverflowError(
            f"bogus ring requests: req_prod={rp:#x} rsp_prod_pvt={ring.rsp_prod_pvt:#x}")
    cons = ring.req_cons
    n = (rp - cons) & _M
    room = nr - ((cons - ring.rsp_prod_pvt) & _M)
    n = min(n, room, max(limit, 0))
    out = _copy_slots(page, slot, nr, cons, n)
    ring.req_cons = (cons + n) & _M
    return out


def back_put_responses(ring: BackRing[Any, Any], slot: struct.Struct,
                       rsps: Sequence[tuple[int, ...]]) -> None:
    """``BackRing.put_responses`` from raw tuples (each written over the first
    ``slot.size`` bytes of its slot, as C's ``*RING_GET_RESPONSE() = rsp``).

    Raises:
        RingUsageError: more responses than consumed requests (our bug);
            nothing is written.
    """
    room = (ring.req_cons - ring.rsp_prod_pvt) & _M
    if len(rsps) > room:
        raise RingUsageError("no consumed request left to answer")
    page = _one_page(ring, slot, whole_slot=False)
    step = ring.sring.slot_size
    i = ring.rsp_prod_pvt
    if slot.size == step:  # whole slots: one run of bytes
        _write_slots(page, slot, ring.sring.nr_ents, i, rsps)
    else:
        pack = slot.pack_into
        mask = ring.sring.nr_ents - 1
        for r in rsps:
            pack(page, _HDR + (i & mask) * step, *r)
            i += 1
    ring.rsp_prod_pvt = (ring.rsp_prod_pvt + len(rsps)) & _M


def front_put_requests(ring: FrontRing[Any, Any], slot: struct.Struct,
                       reqs: Sequence[tuple[int, ...]]) -> None:
    """``FrontRing.put_requests`` from raw tuples (all or nothing).

    Raises:
        RingFullError: fewer free slots than requests (our bug); nothing written.
    """
    if len(reqs) > ring.free_requests():
        raise RingFullError(f"{len(reqs)} requests, {ring.free_requests()} free slots")
    page = _one_page(ring, slot)
    _write_slots(page, slot, ring.sring.nr_ents, ring.req_prod_pvt, reqs)
    ring.req_prod_pvt = (ring.req_prod_pvt + len(reqs)) & _M


class FrontRequestWriter:
    """``FrontRing.put_request`` from a raw tuple, for a driver that puts one
    request at a time (netfront's transmit): the ring's layout is checked once,
    here, instead of on every request.

    Args:
        ring: a frontend ring over one page (ours).
        slot: the request layout; it must fill a whole slot.

    Raises:
        ValueError: not a one-page ring, or a layout for another slot size.
    """

    __slots__ = ("_mask", "_nr", "_pack", "_page", "_step", "ring")

    def __init__(self, ring: FrontRing[Any, Any], slot: struct.Struct) -> None:
        self.ring = ring
        self._page = _one_page(ring, slot)
        self._pack = slot.pack_into
        self._step = slot.size
        self._nr = ring.sring.nr_ents
        self._mask = self._nr - 1

    def put(self, req: tuple[int, ...]) -> None:
        """Write one request at ``req_prod_pvt`` and advance it (not yet pushed).

        Raises:
            RingFullError: no free slot (our bug); nothing written.
        """
        ring = self.ring
        i = ring.req_prod_pvt
        if ((i - ring.rsp_cons) & _M) >= self._nr:
            raise RingFullError("front ring is full")
        self._pack(self._page, _HDR + (i & self._mask) * self._step, *req)
        ring.req_prod_pvt = (i + 1) & _M


def front_copy_responses(ring: FrontRing[Any, Any], slot: struct.Struct, first: int,
                         n: int) -> list[Any]:
    """Copy ``n`` response slots from index ``first`` once and unpack them.

    The caller read ``rsp_prod`` once and checked ``n`` against what it has
    outstanding; ``rsp_cons`` is the caller's to advance.
    """
    return _copy_slots(_one_page(ring, slot), slot, ring.sring.nr_ents, first, n)

