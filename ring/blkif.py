"""The PV block protocol: slot layouts, constants and checks from ``io/blkif.h``.

Theory of operation
-------------------
A blkif ring slot is ``union blkif_sring_entry`` (112 bytes on x86_64): a
request in one of three layouts chosen by its first byte (``operation``), or a
16-byte response. :data:`BLKIF_CODEC` plugs these layouts into
:mod:`ring.sring`.

**Decoders never raise.** Every record decoded from peer bytes has an ``error``
attribute: ``None`` when the record is well formed, otherwise a short reason
("nr_segments 12 > 11", "unknown operation 9"). A backend answers such a
request with :func:`error_response` and keeps serving the ring; nothing about
an unknown operation or a bad field can crash it. The checks done at decode
time are the static ones Linux blkback performs on its private copy; checks
that need device state (I/O past the end, writes to a read-only disk, the
negotiated indirect limit) are the backend's.

Worked example: a 4 KiB write at sector 8 from grant 77::

    req = BlkifRequest(BLKIF_OP_WRITE, handle=51712, id=5, sector_number=8,
                       segments=(BlkifSegment(77, 0, 7),))
    BLKIF_CODEC.encode_request(req)[:24].hex()
    # '0101 00ca 00000000 0500000000000000 0800000000000000' (spaces added)
    back_req = BLKIF_CODEC.decode_request(slot_bytes)   # error is None
    make_response(back_req, BLKIF_RSP_OKAY)             # BlkifResponse(5, 1, 0)

Sectors are 512-byte units; a segment covers sectors ``first_sect..last_sect``
(inclusive) of one 4 KiB page, so ``first_sect <= last_sect <= 7``.

**Batches.** :data:`BLKIF_CODEC` also has the batch hooks the ``*_batch``
calls of :mod:`ring.sring` use (``decode_requests``, ``encode_requests_into``,
``decode_responses``, ``encode_responses_into``), each giving exactly what the
per-slot method gives. A run of direct requests (READ, WRITE, WRITE_BARRIER,
FLUSH_DISKCACHE) with one segment count is handled *by column*: a field of
every slot at once through a strided view (``raw[0::112]`` is every
``operation``; ``view.cast("Q")[1::14]`` every ``id``), with the records
assembled by ``zip`` in C, instead of one ``struct`` call per record; the
static checks are made per column too (every ``(first_sect, last_sect)``
pair, read as one u16, must be one of the 36 valid ones). Anything else
(discard, indirect, unknown operations, a bad count or segment, short runs)
goes slot by slot through the single-record methods, so its record and
``error`` are the same by construction. :func:`make_responses` answers a
whole batch. Worked example (a null backend)::

    got = back.get_requests_batch()                      # [BlkifRequest, ...]
    back.put_responses_batch(make_responses(got, BLKIF_RSP_OKAY))
    # each well-formed request answered OKAY, each one with ``error`` set
    # answered by error_response() (EOPNOTSUPP for unknown operations)
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import chain as _chain
from itertools import repeat as _repeat
from operator import le as _le
from typing import NamedTuple

# --- constants (io/blkif.h) ----------------------------------------------
BLKIF_OP_READ = 0
BLKIF_OP_WRITE = 1
BLKIF_OP_WRITE_BARRIER = 2
BLKIF_OP_FLUSH_DISKCACHE = 3
BLKIF_OP_RESERVED_1 = 4
BLKIF_OP_DISCARD = 5
BLKIF_OP_INDIRECT = 6

BLKIF_MAX_SEGMENTS_PER_REQUEST = 11
BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = 8
BLKIF_SEGS_PER_INDIRECT_FRAME = 512  # 4096 // sizeof(struct blkif_request_segment)
BLKIF_MAX_INDIRECT_SEGMENTS = BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * BLKIF_SEGS_PER_INDIRECT_FRAME
BLKIF_DISCARD_SECURE = 1

BLKIF_RSP_EOPNOTSUPP = -2
BLKIF_RSP_ERROR = -1
BLKIF_RSP_OKAY = 0

VDISK_CDROM = 1
VDISK_REMOVABLE = 2
VDISK_READONLY = 4

SECTOR_SIZE = 512
SECTORS_PER_PAGE = 8

# io/protocols.h: the `protocol` key a frontend writes.
XEN_IO_PROTO_ABI_X86_32 = "x86_32-abi"
XEN_IO_PROTO_ABI_X86_64 = "x86_64-abi"
XEN_IO_PROTO_ABI_ARM = "arm-abi"
XEN_IO_PROTO_ABI_NATIVE = XEN_IO_PROTO_ABI_X86_64

# --- layouts --------------------------------------------------------------
# struct blkif_request_segment { grant_ref_t gref; uint8_t first_sect, last_sect; } /* 8 */
_SEG = struct.Struct("<IBB2x")
assert _SEG.size == 8
# struct blkif_request { u8 operation; u8 nr_segments; u16 handle; u64 id;
#                        u64 sector_number; struct blkif_request_segment seg[11]; } /* 112 */
_RW = struct.Struct("<BBH4xQQ" + "IBB2x" * BLKIF_MAX_SEGMENTS_PER_REQUEST)
assert _RW.size == 112
# struct blkif_request_discard { u8 operation; u8 flag; u16 handle; u64 id;
#                                u64 sector_number; u64 nr_sectors; } /* 32 */
_DISCARD = struct.Struct("<BBH4xQQQ")
assert _DISCARD.size == 32
# struct blkif_request_indirect { u8 operation; u8 indirect_op; u16 nr_segments; u64 id;
#     u64 sector_number; u16 handle; u16 _pad2; grant_ref_t indirect_grefs[8]; u32 _pad3; } /* 64 */
_INDIRECT = struct.Struct("<BBH4xQQH2x8I4x")
assert _INDIRECT.size == 64
# struct blkif_response { u64 id; u8 operation; i16 status; } /* 16 */
_RSP = struct.Struct("<QBxh4x")
assert _RSP.size == 16
# union blkif_sring_entry { struct blkif_request req; struct blkif_response rsp; } /* 112 */
BLKIF_SLOT_SIZE = 112

_KNOWN_STATUS = frozenset((BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP))

# Hot-path helpers. Records are built with ``tuple.__new__`` straight from
# unpacked fields (NamedTuple's generated ``__new__`` costs a Python call per
# record); the results are ordinary, immutable NamedTuple instances.
_new = tuple.__new__
# the request header (operation .. sector_number), segments start after it
_RW_HDR = struct.Struct("<BBH4xQQ")
assert _RW_HDR.size == 24
# a whole blkif_request with n segments used and the rest zero-filled
_RW_N = [struct.Struct(f"<BBH4xQQ{'IBB2x' * n}{8 * (BLKIF_MAX_SEGMENTS_PER_REQUEST - n)}x")
         for n in range(BLKIF_MAX_SEGMENTS_PER_REQUEST + 1)]
assert all(st.size == _RW.size for st in _RW_N)
_RW_N_INTO = [st.pack_into for st in _RW_N]

# The batch codec (BlkifCodec.decode_requests / encode_requests_into) reads and
# writes a run of direct requests *by column*: field F of every slot at once,
# through a strided view (``view[offset::112]`` for bytes, a u16/u32/u64 cast
# for wider fields). Byte offsets in struct blkif_request:
_OFF_NR = 1  # u8 nr_segments (operation is byte 0)
_OFF_HANDLE = 2  # u16
_OFF_ID = 8  # u64
_OFF_SECTOR = 16  # u64
_OFF_SEG = 24  # seg[c] at 24 + 8 * c: u32 gref, u8 first_sect (+4), u8 last_sect (+5)
assert struct.calcsize("<BBH4x") == _OFF_ID and _RW_HDR.size == _OFF_SEG
_RSP_SLOT = struct.Struct("<QBxh4x96x")  # a response, then the rest of its slot
_OFF_RSP_OP = 8  # struct blkif_response: u64 id, u8 operation, pad, i16 status
_OFF_STATUS = 10
assert _RSP_SLOT.size == 112
# Runs shorter than these go record by record: the column passes cost a few
# microseconds per run, whatever its length (measured break-even: about 3
# slots to decode, about 10 requests to encode).
_MIN_COLUMN_DECODE = 4
_MIN_COLUMN_ENCODE = 12


@lru_cache(maxsize=64)
def _segments_struct(count: int) -> struct.Struct:
    """``count`` consecutive blkif_request_segments (8 bytes each)."""
    return struct.Struct("<" + "IBB2x" * count)


# --- records ----------------------------------------------------------------
class BlkifSegment(NamedTuple):
    """``struct blkif_request_segment``: sectors first_sect..last_sect of page ``gref``."""

    gref: int
    first_sect: int
    last_sect: int

    @property
    def nbytes(self) -> int:
        """Bytes covered: ``(last_sect - first_sect + 1) * 512`` (validate first)."""
        return (self.last_sect - self.first_sect + 1) * SECTOR_SIZE


class BlkifRequest(NamedTuple):
    """``struct blkif_request``: READ, WRITE, WRITE_BARRIER or FLUSH_DISKCACHE.

    ``nr_segments`` is the raw field as the frontend wrote it (``-1`` when
    building a request: derived from ``segments``); ``segments`` holds at most
    11 entries. ``error`` is None for a well-formed request.
    """

    operation: int
    handle: int
    id: int
    sector_number: int
    segments: tuple[BlkifSegment, ...]
    nr_segments: int = -1
    error: str | None = None


class BlkifDiscardRequest(NamedTuple):
    """``struct blkif_request_discard`` (operation 5); ``flag`` bit0 = secure erase."""

    operation: int
    flag: int
    handle: int
    id: int
    sector_number: int
    nr_sectors: int
    error: str | None = None


class BlkifIndirectRequest(NamedTuple):
    """``struct blkif_request_indirect`` (operation 6).

    ``indirect_grefs`` holds the ``ceil(nr_segments / 512)`` grant refs that
    are in use (all 8 when ``nr_segments`` is out of range). The segments
    themselves live in those pages: see :func:`decode_indirect_segments`.
    """

    operation: int
    indirect_op: int
    nr_segments: int
    id: int
    sector_number: int
    handle: int
    indirect_grefs: tuple[int, ...]
    error: str | None = None


class BlkifUnknownRequest(NamedTuple):
    """A request whose operation this codec does not know (or RESERVED_1).

    Only ``operation`` and ``id`` (bytes 0 and 8..15, common to all layouts)
    are meaningful; answer it with ``BLKIF_RSP_EOPNOTSUPP``.
    """

    operation: int
    id: int
    error: str | None = None


BlkifAnyRequest = BlkifRequest | BlkifDiscardRequest | BlkifIndirectRequest | BlkifUnknownRequest


class BlkifResponse(NamedTuple):
    """``struct blkif_response``; ``error`` is set when ``status`` is not a BLKIF_RSP_*."""

    id: int
    operation: int
    status: int
    error: str | None = None


# --- validation -------------------------------------------------------------
def validate_segments(
    segments: Sequence[BlkifSegment], nr_segments: int, max_segments: int
) -> str | None:
    """Check a request's segment list the way blkback does (on a private copy).

    Args:
        segments: the decoded segments (from the frontend, already copied).
        nr_segments: the count the frontend claimed (frontend-controlled).
        max_segments: the limit for this request kind (11 direct, or the
            negotiated indirect maximum); backend-controlled.

    Returns:
        None when ``1 <= nr_segments <= max_segments``, the list has exactly
        that many entries and each has ``first_sect <= last_sect <= 7``;
        otherwise the reason.
    """
    if nr_segments < 1:
        return "no segments"
    if nr_segments > max_segments:
        return f"nr_segments {nr_segments} > {max_segments}"
    if len(segments) != nr_segments:
        return f"{len(segments)} segments present, {nr_segments} claimed"
    for _gref, first, last in segments:
        if last >= SECTORS_PER_PAGE or last < first:
            break
    else:
        return None
    for i, seg in enumerate(segments):  # slow path: name the first bad segment
        if seg.last_sect >= SECTORS_PER_PAGE:
            return f"segment {i}: last_sect {seg.last_sect} > 7"
        if seg.last_sect < seg.first_sect:
            return f"segment {i}: last_sect {seg.last_sect} < first_sect {seg.first_sect}"
    return None  # pragma: no cover - the fast loop found a bad segment


def decode_indirect_segments(
    pages: Sequence[bytes | memoryview], nr_segments: int, max_segments: int
) -> tuple[tuple[BlkifSegment, ...], str | None]:
    """Copy and decode the segments of an indirect request; never raises.

    Each page is copied once (double-fetch rule) before any field is used.

    Args:
        pages: the mapped indirect pages in ``indirect_grefs`` order
            (frontend-controlled contents); at least ``ceil(nr_segments/512)``.
        nr_segments: from the request (frontend-controlled).
        max_segments: the backend's ``feature-max-indirect-segments``.

    Returns:
        ``(segments, error)``; ``error`` is None when every check passed.
    """
    if nr_segments < 1 or nr_segments > min(max_segments, BLKIF_MAX_INDIRECT_SEGMENTS):
        return (), f"indirect nr_segments {nr_segments} out of range 1..{max_segments}"
    needed = -(-nr_segments // BLKIF_SEGS_PER_INDIRECT_FRAME)
    if len(pages) < needed:
        return (), f"{len(pages)} indirect pages given, {needed} needed"
    segs: list[BlkifSegment] = []
    left = nr_segments
    for page in pages[:needed]:
        count = min(left, BLKIF_SEGS_PER_INDIRECT_FRAME)
        raw = bytes(page[: count * _SEG.size])
        if len(raw) < count * _SEG.size:
            return (), "indirect page too short"
        segs.extend(BlkifSegment._make(t) for t in _SEG.iter_unpack(raw))
        left -= count
    out = tuple(segs)
    return out, validate_segments(out, nr_segments, max_segments)


def encode_indirect_segments(segments: Sequence[BlkifSegment]) -> list[bytes]:
    """Lay out segments into 4096-byte indirect pages (frontend side).

    Args:
        segments: our segments, 1..4096 of them.

    Returns:
        ``ceil(len / 512)`` page images, unused bytes zero.

    Raises:
        ValueError: no segments or more than 8 pages' worth.
    """
    if not 1 <= len(segments) <= BLKIF_MAX_INDIRECT_SEGMENTS:
        raise ValueError(f"{len(segments)} segments for an indirect request")
    pages = []
    for start in range(0, len(segments), BLKIF_SEGS_PER_INDIRECT_FRAME):
        page = bytearray(4096)
        for i, seg in enumerate(segments[start : start + BLKIF_SEGS_PER_INDIRECT_FRAME]):
            _SEG.pack_into(page, i * _SEG.size, seg.gref, seg.first_sect, seg.last_sect)
        pages.append(bytes(page))
    return pages


# --- responses --------------------------------------------------------------
def make_response(req: BlkifAnyRequest, status: int) -> BlkifResponse:
    """Build the response to a request, echoing ``id`` and the operation.

    For an indirect request the *inner* operation is echoed (Linux blkfront
    rejects anything else).

    Args:
        req: the decoded request (frontend-controlled values, copied).
        status: a BLKIF_RSP_* value (backend's choice).

    Returns:
        The response record.
    """
    if type(req) is BlkifIndirectRequest:
        return _new(BlkifResponse, (req.id, req.indirect_op, status, None))
    return _new(BlkifResponse, (req.id, req.operation, status, None))


def error_response(req: BlkifAnyRequest) -> BlkifResponse:
    """The answer to a request whose ``error`` is set (or that the backend refuses).

    Args:
        req: the decoded request.

    Returns:
        ``BLKIF_RSP_EOPNOTSUPP`` for an unknown operation, else ``BLKIF_RSP_ERROR``.
    """
    if isinstance(req, BlkifUnknownRequest):
        return make_response(req, BLKIF_RSP_EOPNOTSUPP)
    return make_response(req, BLKIF_RSP_ERROR)


def make_responses(reqs: Iterable[BlkifAnyRequest], status: int) -> list[BlkifResponse]:
    """Answer a batch: ``status`` for each well-formed request, an error otherwise.

    The same records as ``[make_response(r, status) if r.error is None else
    error_response(r) for r in reqs]`` (for a backend, or a null backend, that
    gives every good request the same status), built in one pass.

    Args:
        reqs: decoded requests (frontend-controlled values, copied).
        status: a BLKIF_RSP_* value for the well-formed ones (backend's choice).

    Returns:
        One response per request, in order.
    """
    reqs = reqs if isinstance(reqs, list) else list(reqs)
    if reqs and set(map(type, reqs)) == _JUST_RW:
        ops, _h, ids, _s, _g, _n, errors = zip(*reqs)
        if errors.count(None) == len(errors):  # all well-formed: build by column
            return list(map(_new, _repeat(BlkifResponse),
                            zip(ids, ops, _repeat(status), _repeat(None))))
    out = []
    for req in reqs:
        if req.error is not None:
            out.append(error_response(req))
        elif type(req) is BlkifRequest:
            out.append(_new(BlkifResponse, (req.id, req.operation, status, None)))
        else:
            out.append(make_response(req, status))
    return out


# --- codec ------------------------------------------------------------------
_RW_OPS = frozenset((BLKIF_OP_READ, BLKIF_OP_WRITE))
_NOSEG_OPS = frozenset((BLKIF_OP_WRITE_BARRIER, BLKIF_OP_FLUSH_DISKCACHE))
_ID = struct.Struct("<8xQ")
_JUST_RW = {BlkifRequest}
_JUST_RSP = {BlkifResponse}


class BlkifCodec:
    """Slot codec for blkif rings (x86_64 layout, 112-byte slots).

    Only the native ``x86_64-abi`` layout is implemented; a backend must
    refuse any other ``protocol`` string.
    """

    slot_size = BLKIF_SLOT_SIZE

    def encode_request(self, req: BlkifAnyRequest) -> bytes:
        """Encode our request; a direct request always fills all 112 bytes.

        Args:
            req: a BlkifRequest, BlkifDiscardRequest or BlkifIndirectRequest.

        Returns:
            112 bytes (direct), 32 (discard) or 64 (indirect); padding and
            unused segments zero.

        Raises:
            ValueError: more than 11 segments, or an unknown record type.
            struct.error: a field out of its C type's range.
        """
        if isinstance(req, BlkifRequest):
            segs = req.segments
            n = len(segs)
            if n > BLKIF_MAX_SEGMENTS_PER_REQUEST:
                raise ValueError(f"{n} segments > {BLKIF_MAX_SEGMENTS_PER_REQUEST}")
            nr = n if req.nr_segments < 0 else req.nr_segments
            # BlkifSegment is a (gref, first_sect, last_sect) tuple: flatten in C;
            # _RW_N[n] zero-fills the unused segments.
            return _RW_N[n].pack(req.operation, nr, req.handle, req.id, req.sector_number,
                                 *_chain.from_iterable(segs))
        if isinstance(req, BlkifDiscardRequest):
            return _DISCARD.pack(
                req.operation, req.flag, req.handle, req.id, req.sector_number, req.nr_sectors
            )
        if isinstance(req, BlkifIndirectRequest):
            grefs = tuple(req.indirect_grefs) + (0,) * (
                BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST - len(req.indirect_grefs)
            )
            return _INDIRECT.pack(
                req.operation, req.indirect_op, req.nr_segments, req.id,
                req.sector_number, req.handle, *grefs,
            )
        raise ValueError(f"cannot encode {type(req).__name__} as a blkif request")

    def decode_request(self, raw: bytes) -> BlkifAnyRequest:
        """Decode a private copy of one slot; never raises.

        Args:
            raw: 112 bytes copied from the ring (frontend-controlled).

        Returns:
            The record for ``raw[0]``'s layout, with ``error`` set when the
            static checks fail; :class:`BlkifUnknownRequest` for unknown ops.
        """
        if len(raw) != BLKIF_SLOT_SIZE:
            return BlkifUnknownRequest(-1, 0, f"slot of {len(raw)} bytes")
        op = raw[0]
        if op in _RW_OPS or op in _NOSEG_OPS:
            # ``raw`` is our private copy: reading it field by field is safe.
            _op, nr, handle, rid, sector = _RW_HDR.unpack_from(raw)
            n = nr if nr <= BLKIF_MAX_SEGMENTS_PER_REQUEST else BLKIF_MAX_SEGMENTS_PER_REQUEST
            segs = tuple([_new(BlkifSegment, t)
                          for t in _SEG.iter_unpack(raw[_RW_HDR.size : _RW_HDR.size + 8 * n])])
            if nr == 0 and op in _NOSEG_OPS:
                err = None
            else:
                err = validate_segments(segs, nr, BLKIF_MAX_SEGMENTS_PER_REQUEST)
            return _new(BlkifRequest, (op, handle, rid, sector, segs, nr, err))
        if op == BLKIF_OP_DISCARD:
            d = _DISCARD.unpack_from(raw)
            return BlkifDiscardRequest(*d, None)
        if op == BLKIF_OP_INDIRECT:
            v = _INDIRECT.unpack_from(raw)
            indirect_op, nr = v[1], v[2]
            err = None
            if indirect_op not in _RW_OPS:
                err = f"indirect_op {indirect_op} is not READ or WRITE"
                used = BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST
            elif not 1 <= nr <= BLKIF_MAX_INDIRECT_SEGMENTS:
                err = f"indirect nr_segments {nr} out of range"
                used = BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST
            else:
                used = -(-nr // BLKIF_SEGS_PER_INDIRECT_FRAME)
            return BlkifIndirectRequest(
                op, indirect_op, nr, v[3], v[4], v[5], tuple(v[6 : 6 + used]), err
            )
        return BlkifUnknownRequest(op, _ID.unpack_from(raw)[0], f"unknown operation {op}")

    def encode_response(self, rsp: BlkifResponse) -> bytes:
        """Encode our response: 16 bytes, padding bytes 9 and 12..15 zero (XSA-216).

        Args:
            rsp: the response record.

        Returns:
            16 bytes.

        Raises:
            struct.error: a field out of range.
        """
        return _RSP.pack(rsp.id, rsp.operation, rsp.status)

    def decode_response(self, raw: bytes) -> BlkifResponse:
        """Decode a private copy of one slot as a response; never raises.

        Args:
            raw: the slot bytes (backend-controlled); only the first 16 matter.

        Returns:
            The record; ``error`` set for an unknown status. The frontend
            must still check ``id`` and ``operation`` against its shadow.
        """
        if len(raw) < _RSP.size:
            return BlkifResponse(0, 0, BLKIF_RSP_ERROR, f"slot of {len(raw)} bytes")
        v = _RSP.unpack_from(raw)
        if v[2] in _KNOWN_STATUS:
            return _new(BlkifResponse, (*v, None))
        return _new(BlkifResponse, (*v, f"unknown status {v[2]}"))

    # -- batch hooks (ring.sring's ``*_batch`` calls use these) ---------------
    def decode_requests(self, raw: bytes) -> list[BlkifAnyRequest]:
        """Decode a private copy of consecutive whole slots; never raises on content.

        The result equals ``[decode_request(slot) for slot in slots of raw]``.
        Fast path: a run of at least 4 consecutive slots with the same
        ``nr_segments`` (1..11), whose operations are all READ, WRITE,
        WRITE_BARRIER or FLUSH_DISKCACHE (one ``struct blkif_request`` layout)
        and whose used segments all have ``first_sect <= last_sect <= 7``, is
        decoded column by column: each field of every slot in the run is read
        through one strided view and the records are assembled by ``zip``,
        all in C. Any other slot (discard, indirect, unknown, a bad segment
        count or segment, a short run) goes through :meth:`decode_request`, so
        its record and ``error`` are exactly the single-slot ones.

        Args:
            raw: ``k * 112`` bytes copied out of the ring (frontend-controlled
                contents); ours in length.

        Returns:
            ``k`` records in slot order.

        Raises:
            ValueError: ``raw`` is not a whole number of slots (a caller bug).
        """
        size = BLKIF_SLOT_SIZE
        total = len(raw)
        if total % size:
            raise ValueError(f"{total} bytes are not whole {size}-byte slots")
        decode = self.decode_request
        count = total // size
        if count < _MIN_COLUMN_DECODE:
            return [decode(raw[off : off + size]) for off in range(0, total, size)]
        nrs = raw[_OFF_NR::size]
        ops = raw[0::size]
        out: list[BlkifAnyRequest] = []
        k = 0
        while k < count:
            nr = nrs[k]
            if nrs.count(nr, k) == count - k:  # the rest share one segment count
                j = count
            else:
                j = k + 1
                while j < count and nrs[j] == nr:
                    j += 1
            run = None
            if (j - k >= _MIN_COLUMN_DECODE
                    and 0 < nr <= BLKIF_MAX_SEGMENTS_PER_REQUEST
                    and max(ops[k:j]) <= BLKIF_OP_FLUSH_DISKCACHE):
                run = _decode_rw_columns(raw, k * size, j * size, nr)
            if run is None:
                run = [decode(raw[off : off + size]) for off in range(k * size, j * size, size)]
            if k == 0 and j == count:
                return run
            out += run
            k = j
        return out

    def decode_responses(self, raw: bytes) -> list[BlkifResponse]:
        """Decode a private copy of consecutive whole slots as responses; never raises.

        The result equals ``[decode_response(slot) for slot in slots of raw]``.

        Args:
            raw: ``k * 112`` bytes copied out of the ring (backend-controlled).

        Returns:
            ``k`` records in slot order.

        Raises:
            ValueError: ``raw`` is not a whole number of slots (a caller bug).
        """
        size = BLKIF_SLOT_SIZE
        if len(raw) % size:
            raise ValueError(f"{len(raw)} bytes are not whole {size}-byte slots")
        known = _KNOWN_STATUS
        run = memoryview(raw)
        statuses = run.cast("h")[_OFF_STATUS // 2 :: size // 2].tolist()
        if known.issuperset(statuses):  # every status valid: by column, as requests
            return list(map(_new, _repeat(BlkifResponse), zip(
                run.cast("Q")[0 :: size // 8].tolist(),  # id
                raw[_OFF_RSP_OP::size],  # operation
                statuses,
                _repeat(None),  # error
            )))
        return [_new(BlkifResponse, (rid, op, st, None if st in known else f"unknown status {st}"))
                for rid, op, st in _RSP_SLOT.iter_unpack(raw)]

    def encode_requests_into(self, buf: memoryview, reqs: Sequence[BlkifAnyRequest]) -> None:
        """Encode our requests straight into consecutive slots of ``buf``.

        Request ``j`` is written at ``buf[j * 112:]`` with exactly the bytes
        :meth:`encode_request` returns for it (a direct request fills its
        slot; discard and indirect write 32 and 64 bytes). A batch of at least
        12 direct requests with one segment count is written column by column
        (each field of every slot through one strided view); other batches
        are packed request by request.

        Args:
            buf: a writable byte view of at least ``len(reqs)`` whole slots
                (ours).
            reqs: our request records.

        Raises:
            ValueError, struct.error: as :meth:`encode_request`; the requests
                before the bad one have been written.
        """
        off = 0
        if set(map(type, reqs)) == _JUST_RW:  # all direct requests
            if len(reqs) >= _MIN_COLUMN_ENCODE and _encode_rw_columns(buf, reqs):
                return
            pack_into = _RW_N_INTO
            flat = _chain.from_iterable
            for op, handle, rid, sector, segs, nr, _err in reqs:
                n = len(segs)
                if n > BLKIF_MAX_SEGMENTS_PER_REQUEST:
                    raise ValueError(f"{n} segments > {BLKIF_MAX_SEGMENTS_PER_REQUEST}")
                pack_into[n](buf, off, op, n if nr < 0 else nr, handle, rid, sector, *flat(segs))
                off += BLKIF_SLOT_SIZE
            return
        for req in reqs:
            data = self.encode_request(req)
            buf[off : off + len(data)] = data
            off += BLKIF_SLOT_SIZE

    def encode_responses_into(self, buf: memoryview, rsps: Sequence[BlkifResponse]) -> None:
        """Encode our responses straight into consecutive slots of ``buf``.

        Response ``j`` overwrites the first 16 bytes of ``buf[j * 112:]``
        (padding zero, XSA-216); the rest of the slot is left alone.

        Args:
            buf: a writable view of at least ``len(rsps)`` whole slots (ours).
            rsps: our response records.

        Raises:
            struct.error: a field out of range; the responses before it have
                been written.
        """
        pack_into = _RSP.pack_into
        off = 0
        if set(map(type, rsps)) == _JUST_RSP:
            for rid, op, status, _err in rsps:
                pack_into(buf, off, rid, op, status)
                off += BLKIF_SLOT_SIZE
            return
        for rsp in rsps:
            pack_into(buf, off, rsp.id, rsp.operation, rsp.status)
            off += BLKIF_SLOT_SIZE


def _decode_rw_columns(raw: bytes, start: int, end: int, nr: int) -> list[BlkifAnyRequest] | None:
    """Records for the slots in ``raw[start:end]``, all direct requests with
    ``nr`` segments (1..11, the caller checked), read by column and built by
    zip; or None when some used segment breaks ``first_sect <= last_sect <=
    7`` (the caller then decodes slot by slot, which names the error).

    ``raw[offset::112]`` is one byte of every slot, so each segment field is
    one strided read for the whole run. ``zip`` over the columns yields each
    slot's fields in record order; ``tuple.__new__`` turns them into the
    NamedTuple, exactly as :meth:`BlkifCodec.decode_request` builds it.
    """
    size = BLKIF_SLOT_SIZE
    run = memoryview(raw)[start:end]
    u32 = run.cast("I")
    columns = []
    for c in range(nr):
        first = raw[start + _OFF_SEG + 8 * c + 4 : end : size]
        last = raw[start + _OFF_SEG + 8 * c + 5 : end : size]
        if max(last) >= SECTORS_PER_PAGE or not all(map(_le, first, last)):
            return None
        columns.append(map(_new, _repeat(BlkifSegment), zip(
            u32[(_OFF_SEG + 8 * c) // 4 :: size // 4].tolist(), first, last)))  # gref
    u64 = run.cast("Q")
    return list(map(_new, _repeat(BlkifRequest), zip(
        raw[start:end:size],  # operation
        run.cast("H")[_OFF_HANDLE // 2 :: size // 2].tolist(),
        u64[_OFF_ID // 8 :: size // 8].tolist(),
        u64[_OFF_SECTOR // 8 :: size // 8].tolist(),
        zip(*columns),  # segments
        _repeat(nr),  # nr_segments
        _repeat(None),  # error
    )))


def _encode_rw_columns(buf: memoryview, reqs: Sequence[BlkifRequest]) -> bool:
    """Write direct requests that all have the same number of segments by column.

    Produces the same bytes as packing each request with ``_RW_N[n]``: the
    run is zeroed (padding and unused segments), then each field is stored
    into every slot through one strided view. The segments are packed once,
    back to back, and moved a segment position at a time as u64 words.

    Returns:
        False, having possibly written part of ``buf``, when the batch does
        not fit this path (mixed segment counts, an explicit ``nr_segments``
        other than the count, a value a column rejects): the caller then packs
        request by request, which raises the usual error for a bad value.
    """
    ops, handles, ids, sectors, segss, nrs, _errors = zip(*reqs)
    counts = set(map(len, segss))
    if len(counts) != 1:
        return False
    (n,) = counts
    if n > BLKIF_MAX_SEGMENTS_PER_REQUEST or not set(nrs) <= {-1, n}:
        return False
    m = len(reqs)
    size = BLKIF_SLOT_SIZE
    try:
        run = memoryview(buf)[: m * size]
        run[:] = bytes(m * size)
        run[0::size] = bytes(ops)
        run[_OFF_NR::size] = bytes((n,)) * m
        run.cast("H")[_OFF_HANDLE // 2 :: size // 2] = array("H", handles)
        u64 = run.cast("Q")
        u64[_OFF_ID // 8 :: size // 8] = array("Q", ids)
        u64[_OFF_SECTOR // 8 :: size // 8] = array("Q", sectors)
        if n:
            flat = _chain.from_iterable
            packed = _segments_struct(n * m).pack(*flat(flat(segss)))
            words = memoryview(packed).cast("Q")  # one u64 per segment, request-major
            for c in range(n):
                u64[_OFF_SEG // 8 + c :: size // 8] = words[c::n]
    except (struct.error, OverflowError, TypeError, ValueError):
        return False
    return True


BLKIF_CODEC = BlkifCodec()
"""The codec to hand to :class:`ring.sring.FrontRing` / :class:`ring.sring.BackRing`."""


# --- virtual device numbers (xen-vbd-interface.7) -------------------------------
_XVD_MAJOR = 202
_SD_MAJOR = 8
_HD_MAJORS = (3, 22)
_EXTENDED = 1 << 28


def _disk_letters(disk: int) -> str:
    """0 -> 'a', 25 -> 'z', 26 -> 'aa' (bijective base 26)."""
    out = ""
    n = disk + 1
    while n:
        n, r = divmod(n - 1, 26)
        out = chr(ord("a") + r) + out
    return out


def _parse_letters(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 26 + (ord(ch) - ord("a") + 1)
    return n - 1


def vdev_encode(name: str) -> int:
    """Encode a disk name (``xvda``, ``xvdb3``, ``xvdaa``, ``sda``, ``hdc1``) or a decimal.

    Args:
        name: from a domain config (the user's input, not a peer's).

    Returns:
        The ``virtual-device`` number (xvda -> 51712, xvdq -> 268439552).

    Raises:
        ValueError: not a valid disk name.
    """
    if name.isdigit():
        return int(name)
    for prefix in ("xvd", "sd", "hd"):
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            break
    else:
        raise ValueError(f"unknown disk name {name!r}")
    letters = rest.rstrip("0123456789")
    digits = rest[len(letters) :]
    if not letters or not letters.isascii() or not letters.isalpha() or not letters.islower():
        raise ValueError(f"bad disk letters in {name!r}")
    if digits.startswith("0"):
        raise ValueError(f"bad partition in {name!r}")
    disk = _parse_letters(letters)
    part = int(digits) if digits else 0
    if prefix == "xvd":
        if disk <= 15 and part <= 15:
            return (_XVD_MAJOR << 8) | (disk << 4) | part
        if disk < (1 << 20) and part <= 255:
            return _EXTENDED | (disk << 8) | part
    elif prefix == "sd":
        if disk <= 15 and part <= 15:
            return (_SD_MAJOR << 8) | (disk << 4) | part
    elif disk <= 3 and part <= 63:
        return (_HD_MAJORS[disk // 2] << 8) | ((disk % 2) << 6) | part
    raise ValueError(f"disk name {name!r} out of range")


def vdev_decode(devid: int) -> tuple[str, int, int] | None:
    """Split a ``virtual-device`` number into ``(prefix, disk, partition)``; never raises.

    Args:
        devid: from xenstore (toolstack/frontend-controlled).

    Returns:
        e.g. ``("xvd", 0, 1)`` for 51713, or None when it matches no scheme.
    """
    if devid < 0:
        return None
    if devid & _EXTENDED:
        if devid >> 29:
            return None
        return ("xvd", (devid >> 8) & 0xFFFFF, devid & 0xFF)
    major, minor = devid >> 8, devid & 0xFF
    if major == _XVD_MAJOR:
        return ("xvd", minor >> 4, minor & 15)
    if major == _SD_MAJOR:
        return ("sd", minor >> 4, minor & 15)
    if major in _HD_MAJORS:
        return ("hd", _HD_MAJORS.index(major) * 2 + (minor >> 6), minor & 63)
    return None


def vdev_name(devid: int) -> str | None:
    """Name for a ``virtual-device`` number (51713 -> ``"xvda1"``); never raises.

    Args:
        devid: from xenstore (toolstack/frontend-controlled).

    Returns:
        The name, or None when the number matches no scheme.
    """
    parts = vdev_decode(devid)
    if parts is None:
        return None
    prefix, disk, part = parts
    return f"{prefix}{_disk_letters(disk)}{part if part else ''}"
