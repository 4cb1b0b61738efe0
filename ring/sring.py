"""Request/response shared rings: Xen's ``io/ring.h`` with Python manners.

Theory of operation
-------------------
A split driver's frontend (in the guest) and backend (in dom0) share one or
more 4 KiB pages. The first 64 bytes of page 0 are the *sring header*::

    offset  field      written by  meaning
         0  req_prod   front       requests ever published
         4  req_event  back        "notify me when req_prod passes this"
         8  rsp_prod   back        responses ever published
        12  rsp_event  front       "notify me when rsp_prod passes this"
        16  pvt        -           4 private bytes (netif smartpoll), zeroed
        20  __pad      -           44 bytes, zeroed
        64  ring[]     both        nr_ents slots of slot_size bytes

``nr_ents`` is the largest power of two that fits (blkif: 32 per page with
112-byte slots; netif tx/rx: 256). Every index is a **free-running unsigned
32-bit counter**; the slot for index ``i`` is ``i & (nr_ents - 1)`` and every
comparison is a modular difference ``(a - b) & 0xFFFFFFFF``. A slot is a union
of request and response: the response for a request is written into the slot
the request came from once the backend has consumed it.

Each end keeps private (unshared) indices, exactly like ``struct *_front_ring``
and ``struct *_back_ring``:

* :class:`FrontRing`: ``req_prod_pvt`` (next slot to fill) and ``rsp_cons``
  (next response to read);
* :class:`BackRing`: ``rsp_prod_pvt`` (next response slot to fill) and
  ``req_cons`` (next request to read).

**Notification hold-off.** After publishing, a producer notifies only if the
consumer's event index lies in the half-open window ``(old_prod, new_prod]``
(:meth:`FrontRing.push_requests_and_check_notify`). A consumer about to sleep
re-arms (``event = cons + 1``) and then looks again
(:meth:`BackRing.final_check_for_requests`), which closes the race with a
producer that published just before the re-arm. Keep that two-step structure:
another task may run between your awaits.

**Copy once (XSA-155).** Consuming reads the peer's producer index once,
checks it against the ring size (a hostile peer may write anything:
:class:`~ring.errors.RingOverflowError`), copies each slot's bytes out of the
shared page exactly once and hands the private copy to the slot codec, which
returns an immutable record. Nothing re-reads a slot afterwards.

**Multi-page rings.** Xen maps ``2**order`` pages virtually contiguously; here
the ring is built over a list of page memoryviews and slot ``k`` lives at byte
``64 + k * slot_size`` of that concatenation. With 112-byte blkif slots a slot
*does* straddle a page boundary in rings of 4 or more pages (slot 72 of a
4-page ring covers bytes 8128..8239), so such slots are copied in two pieces.

Worked example (one-page blkif ring, indices starting near 2**32)::

    front = FrontRing.init([page], BLKIF_CODEC)   # SHARED_RING_INIT + FRONT_RING_INIT
    back = BackRing.attach([page], BLKIF_CODEC)   # BACK_RING_INIT (never inits)
    front.put_request(req)                        # fills slot req_prod_pvt & 31
    if front.push_requests_and_check_notify():    # req_event was 1: 0 < 1 <= 1
        send_event(port)                          # -> notify
    for r in back.get_requests():                 # copy, decode, req_cons += 1
        back.put_response(make_response(r, BLKIF_RSP_OKAY))
    if back.push_responses_and_check_notify():    # rsp_event was 1 -> notify
        send_event(port)
    if not back.final_check_for_requests():       # req_event = req_cons + 1 = 2
        ...sleep on the event channel...

If the ring was attached at ``start = 0xFFFFFFF0``, the same code works
unchanged: after 32 requests ``req_prod`` wraps to ``0x00000010`` and
``(0x10 - 0xFFFFFFF0) & 0xFFFFFFFF == 32``.

**Batch calls.** Each consume/produce call has a batch twin with the same
contract, the same results, the same page bytes and the same errors:
:meth:`FrontRing.put_requests_batch`, :meth:`BackRing.get_requests_batch`,
:meth:`BackRing.put_responses_batch`, :meth:`FrontRing.get_responses_batch`.
They differ only in how the slots are touched:

* consuming reads the producer index once and checks it exactly as the
  single call does, then copies *all* the claimed slots out of the page at
  once (:meth:`SharedRing.copy_slots`: one memcpy per page-contiguous run,
  so at most two on a one-page ring, split where the indices wrap) and hands
  that private copy to the codec's batch decoder. Copy once still holds: the
  page is read once per slot, every check and decode works on the copy;
* producing hands each page-contiguous run of slots, as one writable view, to
  the codec's batch encoder, which writes each record straight into its slot
  (no intermediate ``bytes`` per record), then moves the private producer
  index once. Nothing is published until the usual push.

A codec opts in with any of ``decode_requests(raw)``, ``decode_responses(raw)``
(``raw`` = whole slots, result = one record per slot, never raises on
content), ``encode_requests_into(buf, records)`` and
``encode_responses_into(buf, records)`` (record ``j`` at ``buf[j * slot_size:]``,
only its own bytes): see :class:`BatchSlotCodec`. For a codec without them
(netif, msgpack rings) the batch calls fall back to the codec's per-slot
methods, so any codec works with either family. The batch calls pay off from
a handful of slots up; ``ring.blkif``'s batch codec decodes and encodes runs
of direct requests a field at a time across all the slots (see there).

Worked example (a null blkif backend and its frontend, batch style)::

    front.put_requests_batch(reqs[: front.free_requests()])  # encode in place
    if front.push_requests_and_check_notify():
        send_event(port)
    got = back.get_requests_batch()          # req_prod once, one copy, decode
    back.put_responses_batch(make_responses(got, BLKIF_RSP_OKAY))
    if back.push_responses_and_check_notify():
        send_event(port)
    done = front.get_responses_batch()       # rsp_prod once, one copy, decode

Barriers: a single-threaded simulation needs none, but the order of stores
(slots before the producer index; the producer index before reading the event
index) is kept exactly as in ``ring.h`` so that a multi-process port stays
correct.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, Protocol, TypeVar

from ring.errors import RingFullError, RingOverflowError, RingUsageError

__all__ = [
    "PAGE_SIZE",
    "SRING_HEADER_SIZE",
    "BackRing",
    "BatchSlotCodec",
    "FrontRing",
    "SharedRing",
    "SlotCodec",
    "ring_size",
    "shared_ring_init",
]

PAGE_SIZE = 4096
"""A Xen page, whatever the host's page size (``XEN_PAGE_SIZE``)."""

SRING_HEADER_SIZE = 64
"""Bytes before ``ring[0]`` in ``struct *_sring``."""

REQ_PROD_OFFSET = 0
REQ_EVENT_OFFSET = 4
RSP_PROD_OFFSET = 8
RSP_EVENT_OFFSET = 12
PVT_OFFSET = 16
# the same four as indices of SharedRing._hdr (the header as native u32s)
_REQ_PROD, _REQ_EVENT, _RSP_PROD, _RSP_EVENT = 0, 1, 2, 3

_M = 0xFFFFFFFF

ReqT = TypeVar("ReqT")
RspT = TypeVar("RspT")
T = TypeVar("T")


class SlotCodec(Protocol[ReqT, RspT]):
    """How one protocol's requests and responses are laid out in a ring slot.

    ``slot_size`` is ``sizeof(union <proto>_sring_entry)``. Encoders return at
    most ``slot_size`` bytes with every padding byte zero (XSA-216); like C's
    ``*RING_GET_RESPONSE(r, i) = rsp`` only that many bytes of the slot are
    written. Decoders receive a private ``bytes`` copy of the whole slot and
    must **never raise** on any content: malformed fields come back as a record
    with ``error`` set (see each protocol module).
    """

    slot_size: int

    def encode_request(self, req: ReqT) -> bytes:
        """Bytes of one request (our own record; may raise on our misuse)."""
        ...

    def decode_request(self, raw: bytes) -> ReqT:
        """Record for one request slot copied from the peer; never raises."""
        ...

    def encode_response(self, rsp: RspT) -> bytes:
        """Bytes of one response (our own record; may raise on our misuse)."""
        ...

    def decode_response(self, raw: bytes) -> RspT:
        """Record for one response slot copied from the peer; never raises."""
        ...


class BatchSlotCodec(SlotCodec[ReqT, RspT], Protocol):
    """Optional batch hooks a :class:`SlotCodec` may add (any subset of them).

    The ``*_batch`` ring calls use a hook when the codec has it and otherwise
    fall back to the per-slot method, so each hook must give exactly what the
    per-slot method gives: ``decode_requests(raw) == [decode_request(slot)
    for each slot of raw]``, and ``encode_requests_into`` must leave the same
    bytes as writing ``encode_request(r)`` at the start of each slot (and
    nothing beyond it). The same holds for responses.
    """

    def decode_requests(self, raw: bytes) -> list[ReqT]:
        """Records for a private copy of ``len(raw) // slot_size`` whole slots.

        Never raises on the content (peer data); may raise ``ValueError`` when
        ``raw`` is not whole slots (a caller bug).
        """
        ...

    def decode_responses(self, raw: bytes) -> list[RspT]:
        """As :meth:`decode_requests`, for response slots."""
        ...

    def encode_requests_into(self, buf: memoryview, reqs: Sequence[ReqT]) -> None:
        """Write ``reqs[j]`` at ``buf[j * slot_size:]`` (``buf``: whole slots, ours).

        May raise on our misuse like ``encode_request``; the slots of the
        requests before the bad one may have been written.
        """
        ...

    def encode_responses_into(self, buf: memoryview, rsps: Sequence[RspT]) -> None:
        """As :meth:`encode_requests_into`, for responses."""
        ...


def ring_size(ring_bytes: int, slot_size: int) -> int:
    """Number of entries of a ring (``__CONST_RING_SIZE`` / ``__RING_SIZE``).

    Args:
        ring_bytes: total bytes of the ring pages (``4096 << order``); ours.
        slot_size: bytes per slot; from the codec, ours.

    Returns:
        The largest power of two ``<= (ring_bytes - 64) // slot_size``, or 0
        when not even one slot fits.
    """
    n = (ring_bytes - SRING_HEADER_SIZE) // slot_size
    if n <= 0:
        return 0
    return 1 << (n.bit_length() - 1)


def _as_pages(pages: Sequence[memoryview]) -> list[memoryview]:
    """Validate ring pages (our input) and return them as byte views."""
    if len(pages) == 0 or len(pages) & (len(pages) - 1):
        raise ValueError(f"a ring needs 2**order pages, got {len(pages)}")
    out = []
    for i, page in enumerate(pages):
        mv = memoryview(page)
        if mv.format != "B" or mv.itemsize != 1:
            mv = mv.cast("B")
        if mv.nbytes != PAGE_SIZE:
            raise ValueError(f"ring page {i} is {mv.nbytes} bytes, not {PAGE_SIZE}")
        if mv.readonly:
            raise ValueError(f"ring page {i} is read-only")
        out.append(mv)
    return out


def shared_ring_init(pages: Sequence[memoryview], start: int = 0) -> None:
    """``SHARED_RING_INIT``: reset the shared header (frontend only).

    Sets ``req_prod = rsp_prod = start``, ``req_event = rsp_event = start + 1``
    and zeroes the private and padding bytes. Slots are left alone. Only the
    frontend does this, once, before granting the pages; a backend never
    initialises. Xen always starts at 0; a non-zero ``start`` (say
    ``0xFFFFFFF0``) exercises index wrap-around from the first request.

    Args:
        pages: the ring pages (our own memory, as the frontend).
        start: the first index (ours; any u32).

    Raises:
        ValueError: not 2**order writable 4096-byte pages.
    """
    page0 = _as_pages(pages)[0]
    page0[:SRING_HEADER_SIZE] = bytes(SRING_HEADER_SIZE)
    hdr = page0[:16].cast("I")
    hdr[0] = hdr[2] = start & _M
    hdr[1] = hdr[3] = (start + 1) & _M


class SharedRing:
    """The shared part of a ring (``struct <proto>_sring``) over page views.

    Gives access to the four header indices and to slots by free-running
    index. It holds no private state; :class:`FrontRing` and
    :class:`BackRing` wrap it. Slots that do not straddle a page boundary are
    pre-sliced so that one slot access costs one slice copy.

    Args:
        pages: ``2**order`` writable 4096-byte memoryviews, in ring order (the
            order of ``ring-ref0..N``). Controlled by the caller (own memory
            for a frontend, mapped grants for a backend).
        slot_size: ``sizeof`` one ring entry, from the codec.

    Raises:
        ValueError: bad pages, or no slot fits.
        RuntimeError: on a big-endian host (Xen rings are little-endian and
            the index view relies on native order).
    """

    __slots__ = (
        "_area", "_chunks", "_hdr", "_mask", "_slots", "_split", "nr_ents", "pages", "slot_size",
    )

    def __init__(self, pages: Sequence[memoryview], slot_size: int) -> None:
        if sys.byteorder != "little":  # pragma: no cover - all supported hosts are LE
            raise RuntimeError("xensim rings need a little-endian host")
        if slot_size <= 0:
            raise ValueError("slot_size must be positive")
        self.pages = _as_pages(pages)
        self.slot_size = slot_size
        self.nr_ents = ring_size(len(self.pages) * PAGE_SIZE, slot_size)
        if self.nr_ents == 0:
            raise ValueError(f"a {slot_size}-byte slot does not fit in the ring pages")
        self._mask = self.nr_ents - 1
        # req_prod, req_event, rsp_prod, rsp_event as native (LE) u32s.
        self._hdr = self.pages[0][:16].cast("I")
        self._slots: list[memoryview | None] = []
        self._split: dict[int, tuple[memoryview, memoryview]] = {}
        for k in range(self.nr_ents):
            start = SRING_HEADER_SIZE + k * slot_size
            page, off = divmod(start, PAGE_SIZE)
            if off + slot_size <= PAGE_SIZE:
                self._slots.append(self.pages[page][off : off + slot_size])
            else:
                head = self.pages[page][off:]
                tail = self.pages[page + 1][: slot_size - len(head)]
                self._slots.append(None)
                self._split[k] = (head, tail)
        # For the batch calls: maximal runs of slots that lie whole in one page,
        # as (first slot, end slot, view of exactly those slots); a slot that
        # straddles a page boundary is a run of its own with view None.
        self._chunks: list[tuple[int, int, memoryview | None]] = []
        k = 0
        while k < self.nr_ents:
            if self._slots[k] is None:
                self._chunks.append((k, k + 1, None))
                k += 1
                continue
            start = SRING_HEADER_SIZE + k * slot_size
            page, off = divmod(start, PAGE_SIZE)
            end = min(self.nr_ents, k + (PAGE_SIZE - off) // slot_size)
            self._chunks.append((k, end, self.pages[page][off : off + (end - k) * slot_size]))
            k = end
        # The whole slot array as one view when it lies in one page (every
        # one-page ring): the batch calls' fast path.
        self._area = self._chunks[0][2] if len(self._chunks) == 1 else None

    # -- header ---------------------------------------------------------
    @property
    def req_prod(self) -> int:
        """Shared ``req_prod`` (written by the front; peer data on the back)."""
        return self._hdr[0]

    @req_prod.setter
    def req_prod(self, value: int) -> None:
        self._hdr[0] = value & _M

    @property
    def req_event(self) -> int:
        """Shared ``req_event`` (written by the back; peer data on the front)."""
        return self._hdr[1]

    @req_event.setter
    def req_event(self, value: int) -> None:
        self._hdr[1] = value & _M

    @property
    def rsp_prod(self) -> int:
        """Shared ``rsp_prod`` (written by the back; peer data on the front)."""
        return self._hdr[2]

    @rsp_prod.setter
    def rsp_prod(self, value: int) -> None:
        self._hdr[2] = value & _M

    @property
    def rsp_event(self) -> int:
        """Shared ``rsp_event`` (written by the front; peer data on the back)."""
        return self._hdr[3]

    @rsp_event.setter
    def rsp_event(self, value: int) -> None:
        self._hdr[3] = value & _M

    # -- slots ----------------------------------------------------------
    def read_slot(self, idx: int) -> bytes:
        """Copy the whole slot for free-running index ``idx`` out of the page.

        Args:
            idx: any u32 index (ours); reduced with ``idx & (nr_ents - 1)``.

        Returns:
            A private ``bytes`` copy of ``slot_size`` bytes.
        """
        k = idx & self._mask
        mv = self._slots[k]
        if mv is not None:
            return bytes(mv)
        head, tail = self._split[k]
        return bytes(head) + bytes(tail)

    def write_slot(self, idx: int, data: bytes) -> None:
        """Write ``data`` at the start of the slot for index ``idx``.

        Args:
            idx: any u32 index (ours).
            data: at most ``slot_size`` bytes (ours, from a codec).

        Raises:
            ValueError: ``data`` is longer than a slot (a codec bug).
        """
        n = len(data)
        if n > self.slot_size:
            raise ValueError(f"{n} bytes do not fit a {self.slot_size}-byte slot")
        k = idx & self._mask
        mv = self._slots[k]
        if mv is not None:
            mv[:n] = data
            return
        head, tail = self._split[k]
        h = len(head)
        if n <= h:
            head[:n] = data
        else:
            head[:] = data[:h]
            tail[: n - h] = data[h:]

    def straddling_slots(self) -> list[int]:
        """Slot numbers that cross a page boundary (for tests and curiosity)."""
        return sorted(self._split)

    # -- runs of slots (the batch calls) --------------------------------
    def _runs(self, first: int, n: int) -> list[tuple[int, int, memoryview | None]]:
        """Split ``n`` slots from index ``first`` into page-contiguous runs.

        Returns ``(position in the batch, count, view)`` triples in ring
        order: ``view`` covers exactly ``count`` whole slots, or is None for
        one slot that straddles a page boundary (``count`` 1).
        """
        if not 0 <= n <= self.nr_ents:
            raise ValueError(f"{n} slots requested from a {self.nr_ents}-slot ring")
        k = first & self._mask
        pieces = [(k, min(k + n, self.nr_ents))]
        if k + n > self.nr_ents:  # wraps past the last slot
            pieces.append((0, k + n - self.nr_ents))
        out: list[tuple[int, int, memoryview | None]] = []
        pos = 0
        size = self.slot_size
        for lo, hi in pieces:
            for c0, c1, view in self._chunks:
                a, b = max(lo, c0), min(hi, c1)
                if a >= b:
                    continue
                if view is None:
                    out.append((pos, 1, None))
                else:
                    out.append((pos, b - a, view[(a - c0) * size : (b - c0) * size]))
                pos += b - a
        return out

    def copy_slots(self, first: int, n: int) -> bytes:
        """Copy ``n`` consecutive slots out of the page in one go (batch ``read_slot``).

        Each contiguous run of slots is copied with one memcpy (at most two
        on a one-page ring: before and after the wrap); the result is the
        same bytes as ``b"".join(read_slot(first + k) for k in range(n))``.

        Args:
            first: free-running index of the first slot (ours).
            n: how many slots, ``0 <= n <= nr_ents`` (ours).

        Returns:
            A private ``bytes`` copy of ``n * slot_size`` bytes.

        Raises:
            ValueError: ``n`` out of range (a caller bug).
        """
        area = self._area
        if area is not None and 0 <= n <= self.nr_ents:
            size = self.slot_size
            k = first & self._mask
            end = k + n
            if end <= self.nr_ents:
                return bytes(area[k * size : end * size])
            return b"".join((area[k * size :], area[: (end - self.nr_ents) * size]))
        views: list[memoryview] = []
        for pos, _count, view in self._runs(first, n):
            if view is None:
                views.extend(self._split[(first + pos) & self._mask])
            else:
                views.append(view)
        return b"".join(views)

    def write_records(
        self,
        first: int,
        records: Sequence[T],
        encode_into: Callable[[memoryview, Sequence[T]], None],
        encode: Callable[[T], bytes],
    ) -> None:
        """Encode ``records`` straight into consecutive slots from index ``first``.

        The batch form of :meth:`write_slot`: each page-contiguous run of
        slots is handed to ``encode_into`` as one writable view; a slot that
        straddles a page boundary is encoded with ``encode`` and written in
        two pieces. Only the bytes each record's encoding covers are written.

        Args:
            first: free-running index of the first slot (ours).
            records: at most ``nr_ents`` records (ours).
            encode_into: ``(view of k whole slots, k records)`` -> writes
                record ``j`` at ``j * slot_size`` (a codec's batch encoder).
            encode: the codec's single-record encoder.

        Raises:
            ValueError: more records than slots, or an encoding longer than
                a slot (a codec bug).
            Whatever the encoders raise for a bad record (our misuse).
        """
        area = self._area
        n = len(records)
        if area is not None and n <= self.nr_ents:
            size = self.slot_size
            k = first & self._mask
            end = k + n
            if end <= self.nr_ents:
                encode_into(area[k * size : end * size], records)
            else:
                split = self.nr_ents - k
                encode_into(area[k * size :], records[:split])
                encode_into(area[: (end - self.nr_ents) * size], records[split:])
            return
        for pos, count, view in self._runs(first, n):
            if view is None:
                self.write_slot(first + pos, encode(records[pos]))
            else:
                encode_into(view, records[pos : pos + count])


def _decode_each(decode: Callable[[bytes], T], slot_size: int) -> Callable[[bytes], list[T]]:
    """A batch decoder for a codec without one: ``decode`` each slot of the copy."""

    def decode_all(raw: bytes) -> list[T]:
        return [decode(raw[off : off + slot_size]) for off in range(0, len(raw), slot_size)]

    return decode_all


def _encode_each(
    encode: Callable[[T], bytes], slot_size: int
) -> Callable[[memoryview, Sequence[T]], None]:
    """A batch encoder for a codec without one: ``encode`` each record into its slot."""

    def encode_into(buf: memoryview, records: Sequence[T]) -> None:
        off = 0
        for rec in records:
            data = encode(rec)
            n = len(data)
            if n > slot_size:
                raise ValueError(f"{n} bytes do not fit a {slot_size}-byte slot")
            buf[off : off + n] = data
            off += slot_size

    return encode_into


def _copy_out(s: SharedRing, decode: Callable[[bytes], T], first: int, n: int) -> list[T]:
    """Copy ``n`` slots from index ``first`` out of the page, once each, and
    decode the private copies (the batch form of :meth:`SharedRing.read_slot`)."""
    slots, mask = s._slots, s._mask
    if not s._split:  # no slot straddles a page: one C-level copy per slot
        return [decode(bytes(slots[(first + k) & mask])) for k in range(n)]  # type: ignore[arg-type]
    read = s.read_slot
    return [decode(read(first + k)) for k in range(n)]


class FrontRing(Generic[ReqT, RspT]):
    """The frontend's end of a ring (``struct <proto>_front_ring``).

    The frontend produces requests and consumes responses. Everything read
    from the shared page (``rsp_prod``, ``req_event``, response slots) is
    controlled by the backend and treated as hostile.

    Args:
        sring: the shared ring (pages the frontend allocated and granted).
        codec: the protocol's slot codec.
        start: initial ``req_prod_pvt`` and ``rsp_cons`` (``FRONT_RING_ATTACH``);
            0 for a fresh ring. Ours.

    Attributes:
        req_prod_pvt: next request index to fill (private).
        rsp_cons: next response index to consume (private).
        broken: set once the backend published an impossible ``rsp_prod``.
    """

    __slots__ = (
        "_codec", "_decode_responses", "_encode_requests_into", "broken", "req_prod_pvt",
        "rsp_cons", "sring",
    )

    def __init__(
        self, sring: SharedRing, codec: SlotCodec[ReqT, RspT], start: int = 0
    ) -> None:
        if codec.slot_size != sring.slot_size:
            raise ValueError("codec and shared ring disagree on the slot size")
        self.sring = sring
        self._codec = codec
        self.req_prod_pvt = start & _M
        self.rsp_cons = start & _M
        self.broken = False
        size = codec.slot_size
        self._encode_requests_into: Callable[[memoryview, Sequence[ReqT]], None] = getattr(
            codec, "encode_requests_into", None
        ) or _encode_each(codec.encode_request, size)
        self._decode_responses: Callable[[bytes], list[RspT]] = getattr(
            codec, "decode_responses", None
        ) or _decode_each(codec.decode_response, size)

    @classmethod
    def init(
        cls, pages: Sequence[memoryview], codec: SlotCodec[ReqT, RspT], start: int = 0
    ) -> FrontRing[ReqT, RspT]:
        """``XEN_FRONT_RING_INIT``: initialise the shared header and attach.

        Args:
            pages: the frontend's own ring pages (``2**order`` of them).
            codec: the protocol's slot codec.
            start: the first index, shared and private (Xen uses 0; tests
                and tutorials start near 2**32 to see indices wrap).

        Returns:
            A front ring with both private indices at ``start``.

        Raises:
            ValueError: bad pages or a slot that does not fit.
        """
        shared_ring_init(pages, start)
        return cls(SharedRing(pages, codec.slot_size), codec, start & _M)

    @classmethod
    def attach(
        cls, pages: Sequence[memoryview], codec: SlotCodec[ReqT, RspT], start: int = 0
    ) -> FrontRing[ReqT, RspT]:
        """``FRONT_RING_ATTACH``: wrap pages without touching the shared header.

        Used by tests and by re-attaching to a live ring. To start a *new*
        ring at a non-zero index (e.g. near 2**32), also set the shared
        ``req_prod``/``rsp_prod`` to ``start`` and the events to ``start + 1``.

        Args:
            pages: the ring pages.
            codec: the protocol's slot codec.
            start: initial private indices (ours).

        Returns:
            The front ring.

        Raises:
            ValueError: bad pages or a slot that does not fit.
        """
        return cls(SharedRing(pages, codec.slot_size), codec, start)

    @property
    def size(self) -> int:
        """``RING_SIZE``: number of slots."""
        return self.sring.nr_ents

    # -- producing requests --------------------------------------------
    def free_requests(self) -> int:
        """``RING_FREE_REQUESTS``: slots the frontend may still fill.

        Returns:
            ``nr_ents - (req_prod_pvt - rsp_cons)``; depends only on private
            indices, so the backend cannot influence it.
        """
        return self.sring.nr_ents - ((self.req_prod_pvt - self.rsp_cons) & _M)

    def full(self) -> bool:
        """``RING_FULL``: True when no request slot is free."""
        return self.free_requests() == 0

    def put_request(self, req: ReqT) -> None:
        """Write one request into slot ``req_prod_pvt`` and advance it.

        Not visible to the backend until a push.

        Args:
            req: the request record (ours).

        Raises:
            RingFullError: no free slot (check :meth:`free_requests` first).
        """
        if self.free_requests() <= 0:
            raise RingFullError("front ring is full")
        self.sring.write_slot(self.req_prod_pvt, self._codec.encode_request(req))
        self.req_prod_pvt = (self.req_prod_pvt + 1) & _M

    def put_requests(self, reqs: Sequence[ReqT]) -> None:
        """Write several requests (all or nothing) and advance ``req_prod_pvt``.

        Args:
            reqs: request records (ours).

        Raises:
            RingFullError: fewer free slots than ``len(reqs)``; nothing written.
        """
        if len(reqs) > self.free_requests():
            raise RingFullError(f"{len(reqs)} requests, {self.free_requests()} free slots")
        encode = self._codec.encode_request
        s = self.sring
        slots, mask, write = s._slots, s._mask, s.write_slot
        i = self.req_prod_pvt
        for req in reqs:
            data = encode(req)
            mv = slots[i & mask]
            if mv is not None and len(data) <= s.slot_size:
                mv[: len(data)] = data  # write_slot's fast path, inlined
            else:
                write(i, data)
            i += 1
        self.req_prod_pvt = i & _M

    def put_requests_batch(self, reqs: Sequence[ReqT]) -> None:
        """Batch :meth:`put_requests`: encode every request straight into its slot.

        Same contract and same page bytes as :meth:`put_requests`; the codec's
        ``encode_requests_into`` (when it has one) writes each page-contiguous
        run of slots in one call, so there is no per-request ``bytes`` object
        and no per-slot slice.

        Args:
            reqs: request records (ours), at most :meth:`free_requests`.

        Raises:
            RingFullError: fewer free slots than ``len(reqs)``; nothing written.
            ValueError, struct.error: a record the codec cannot encode (our
                bug); ``req_prod_pvt`` is unchanged, and the unpublished slots
                may hold part of the batch.
        """
        n = len(reqs)
        free = self.free_requests()
        if n > free:
            raise RingFullError(f"{n} requests, {free} free slots")
        if n:
            self.sring.write_records(
                self.req_prod_pvt, reqs, self._encode_requests_into, self._codec.encode_request
            )
            self.req_prod_pvt = (self.req_prod_pvt + n) & _M

    def push_requests(self) -> None:
        """``RING_PUSH_REQUESTS``: publish ``req_prod = req_prod_pvt``, no notify check."""
        self.sring.req_prod = self.req_prod_pvt

    def push_requests_and_check_notify(self) -> bool:
        """``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY``: publish, then decide on notifying.

        Returns:
            True when the backend's ``req_event`` (backend-controlled) lies in
            ``(old req_prod, new req_prod]``: send on the event channel.
        """
        hdr = self.sring._hdr  # the properties, inlined: this runs once per push
        old = hdr[_REQ_PROD]
        new = self.req_prod_pvt
        hdr[_REQ_PROD] = new
        return ((new - hdr[_REQ_EVENT]) & _M) < ((new - old) & _M)

    # -- consuming responses -------------------------------------------
    def unconsumed_responses(self) -> int:
        """``XEN_RING_NR_UNCONSUMED_RESPONSES``: ``rsp_prod - rsp_cons`` (mod 2**32).

        Returns:
            The raw difference; a hostile backend can make it anything, so use
            :meth:`get_responses` (which checks it) to actually consume.
        """
        return (self.sring.rsp_prod - self.rsp_cons) & _M

    def has_unconsumed_responses(self) -> bool:
        """``RING_HAS_UNCONSUMED_RESPONSES``."""
        return self.sring.rsp_prod != self.rsp_cons

    def response_prod_overflow(self, prod: int) -> bool:
        """``RING_RESPONSE_PROD_OVERFLOW``: can there be this many responses?

        Args:
            prod: a snapshot of ``rsp_prod`` (backend-controlled).

        Returns:
            True when ``prod - rsp_cons > nr_ents``: the backend is ill-behaved.
        """
        return ((prod - self.rsp_cons) & _M) > self.sring.nr_ents

    def copy_response(self, idx: int) -> RspT:
        """``RING_COPY_RESPONSE``: copy and decode the response at ``idx``.

        Args:
            idx: a free-running index (ours; normally ``rsp_cons``).

        Returns:
            The decoded record (never raises on slot contents).
        """
        return self._codec.decode_response(self.sring.read_slot(idx))

    def get_responses(self, limit: int | None = None) -> list[RspT]:
        """Consume every published response (or at most ``limit``).

        Reads ``rsp_prod`` once, checks it, copies each slot once, decodes it
        and advances ``rsp_cons``. The caller must still check each response
        (id in range and outstanding, operation matching).

        Args:
            limit: at most this many (bounds the work per event); ours.

        Returns:
            Decoded responses in ring order (possibly empty).

        Raises:
            RingOverflowError: ``rsp_prod - rsp_cons > nr_ents``, or more
                responses than requests made (``> req_prod_pvt - rsp_cons``):
                the backend misbehaved, now or earlier; the ring is marked broken.
        """
        cons, n = self._claim_responses(limit)
        out = _copy_out(self.sring, self._codec.decode_response, cons, n)
        self.rsp_cons = (cons + n) & _M
        return out

    def get_responses_batch(self, limit: int | None = None) -> list[RspT]:
        """Batch :meth:`get_responses`: one copy of all the slots, one batch decode.

        Same checks, same results and same errors as :meth:`get_responses`:
        ``rsp_prod`` is read once and checked, then the slots are copied out
        of the page in one go (:meth:`SharedRing.copy_slots`) and the private
        copy is decoded with the codec's ``decode_responses`` (when it has
        one). The page is never read again for these responses.

        Args:
            limit: at most this many (bounds the work per event); ours.

        Returns:
            Decoded responses in ring order (possibly empty).

        Raises:
            RingOverflowError: ``rsp_prod - rsp_cons > nr_ents``, or more
                responses than requests made (``> req_prod_pvt - rsp_cons``):
                the backend misbehaved, now or earlier; the ring is marked broken.
        """
        cons, n = self._claim_responses(limit)
        if not n:
            return []
        out = self._decode_responses(self.sring.copy_slots(cons, n))
        self.rsp_cons = (cons + n) & _M
        return out

    def _claim_responses(self, limit: int | None) -> tuple[int, int]:
        """Read ``rsp_prod`` once, check it; return ``(rsp_cons, how many to take)``."""
        if self.broken:
            raise RingOverflowError("front ring is broken")
        rp = self.sring._hdr[_RSP_PROD]  # read once
        cons = self.rsp_cons
        n = (rp - cons) & _M
        if n > self.sring.nr_ents:
            self.broken = True
            raise RingOverflowError(
                f"illegal number of responses: rsp_prod={rp:#x} rsp_cons={cons:#x}"
            )
        if n > (self.req_prod_pvt - cons) & _M:
            # Answers to requests never made: taking them would move rsp_cons past
            # req_prod_pvt and make free_requests() nonsense.
            self.broken = True
            raise RingOverflowError(
                f"more responses than requests: rsp_prod={rp:#x} rsp_cons={cons:#x} "
                f"req_prod_pvt={self.req_prod_pvt:#x}"
            )
        if limit is not None and n > limit:
            n = max(limit, 0)
        return cons, n

    def final_check_for_responses(self) -> bool:
        """``RING_FINAL_CHECK_FOR_RESPONSES``: re-arm ``rsp_event`` and re-check.

        Returns:
            True when there is (still) work: do not sleep, consume again.
            False when ``rsp_event = rsp_cons + 1`` was armed and nothing
            arrived: sleep on the event channel.
        """
        hdr = self.sring._hdr
        cons = self.rsp_cons
        if hdr[_RSP_PROD] != cons:
            return True
        hdr[_RSP_EVENT] = (cons + 1) & _M
        return hdr[_RSP_PROD] != cons


class BackRing(Generic[ReqT, RspT]):
    """The backend's end of a ring (``struct <proto>_back_ring``).

    The backend consumes requests and produces responses. Everything read from
    the shared page (``req_prod``, ``rsp_event``, request slots) is controlled
    by the frontend and treated as hostile.

    Args:
        sring: the shared ring over the mapped grant pages.
        codec: the protocol's slot codec.
        start: initial ``rsp_prod_pvt`` and ``req_cons`` (``BACK_RING_ATTACH``);
            0 for a fresh ring. Ours.

    Attributes:
        rsp_prod_pvt: next response index to fill (private).
        req_cons: next request index to consume (private).
        broken: set once the frontend published an impossible ``req_prod``.
    """

    __slots__ = (
        "_codec", "_decode_requests", "_encode_responses_into", "broken", "req_cons",
        "rsp_prod_pvt", "sring",
    )

    def __init__(
        self, sring: SharedRing, codec: SlotCodec[ReqT, RspT], start: int = 0
    ) -> None:
        if codec.slot_size != sring.slot_size:
            raise ValueError("codec and shared ring disagree on the slot size")
        self.sring = sring
        self._codec = codec
        self.rsp_prod_pvt = start & _M
        self.req_cons = start & _M
        self.broken = False
        size = codec.slot_size
        self._decode_requests: Callable[[bytes], list[ReqT]] = getattr(
            codec, "decode_requests", None
        ) or _decode_each(codec.decode_request, size)
        self._encode_responses_into: Callable[[memoryview, Sequence[RspT]], None] = getattr(
            codec, "encode_responses_into", None
        ) or _encode_each(codec.encode_response, size)

    @classmethod
    def attach(
        cls, pages: Sequence[memoryview], codec: SlotCodec[ReqT, RspT], start: int = 0
    ) -> BackRing[ReqT, RspT]:
        """``BACK_RING_INIT`` / ``BACK_RING_ATTACH``: wrap mapped pages.

        The backend never initialises the shared header.

        Args:
            pages: the mapped ring pages, in ``ring-ref0..N`` order.
            codec: the protocol's slot codec.
            start: initial private indices (ours; 0 for a fresh ring).

        Returns:
            The back ring.

        Raises:
            ValueError: bad pages or a slot that does not fit.
        """
        return cls(SharedRing(pages, codec.slot_size), codec, start)

    @property
    def size(self) -> int:
        """``RING_SIZE``: number of slots."""
        return self.sring.nr_ents

    # -- consuming requests --------------------------------------------
    def unconsumed_requests(self) -> int:
        """``XEN_RING_NR_UNCONSUMED_REQUESTS``.

        Returns:
            ``min(req_prod - req_cons, nr_ents - (req_cons - rsp_prod_pvt))``:
            published requests, capped by the slots that still have room for
            a response. ``req_prod`` is frontend-controlled, so the result is
            at most ``nr_ents`` however hostile the frontend.
        """
        s = self.sring
        req = (s._hdr[_REQ_PROD] - self.req_cons) & _M
        rsp = s.nr_ents - ((self.req_cons - self.rsp_prod_pvt) & _M)
        return req if req < rsp else rsp

    def has_unconsumed_requests(self) -> bool:
        """``RING_HAS_UNCONSUMED_REQUESTS``."""
        return self.unconsumed_requests() != 0

    def request_cons_overflow(self, cons: int) -> bool:
        """``RING_REQUEST_CONS_OVERFLOW``: would consuming ``cons`` leave no room?

        Args:
            cons: a request index (ours).

        Returns:
            True when ``cons - rsp_prod_pvt >= nr_ents``.
        """
        return ((cons - self.rsp_prod_pvt) & _M) >= self.sring.nr_ents

    def request_prod_overflow(self, prod: int) -> bool:
        """``RING_REQUEST_PROD_OVERFLOW``: can there be this many requests?

        Args:
            prod: a snapshot of ``req_prod`` (frontend-controlled).

        Returns:
            True when ``prod - rsp_prod_pvt > nr_ents``: the frontend is
            ill-behaved ("bogus ring requests").
        """
        return ((prod - self.rsp_prod_pvt) & _M) > self.sring.nr_ents

    def copy_request(self, idx: int) -> ReqT:
        """``RING_COPY_REQUEST``: copy the slot at ``idx`` once and decode the copy.

        Args:
            idx: a free-running index (ours; normally ``req_cons``).

        Returns:
            The decoded record (never raises on slot contents).
        """
        return self._codec.decode_request(self.sring.read_slot(idx))

    def get_requests(self, limit: int | None = None) -> list[ReqT]:
        """Consume published requests (at most ``limit``), Linux-backend style.

        Reads ``req_prod`` once, checks ``request_prod_overflow``, then copies
        and decodes each slot once while advancing ``req_cons``. An exactly
        full ring (``nr_ents`` outstanding) is fine.

        Args:
            limit: at most this many (bounds work per event); ours.

        Returns:
            Decoded requests in ring order (possibly empty). Records with a
            non-None ``error`` must be answered with an error response.

        Raises:
            RingOverflowError: ``req_prod - rsp_prod_pvt > nr_ents`` (the
                frontend misbehaved) now or earlier; the ring is marked broken.
        """
        cons, n = self._claim_requests(limit)
        out = _copy_out(self.sring, self._codec.decode_request, cons, n)
        self.req_cons = (cons + n) & _M
        return out

    def get_requests_batch(self, limit: int | None = None) -> list[ReqT]:
        """Batch :meth:`get_requests`: one copy of all the slots, one batch decode.

        Same checks, same results and same errors as :meth:`get_requests`:
        ``req_prod`` is read once and checked (``request_prod_overflow``),
        then every claimed slot is copied out of the page in one go
        (:meth:`SharedRing.copy_slots`: one memcpy per contiguous run) and the
        private copy is decoded and validated with the codec's
        ``decode_requests`` (when it has one). The shared page is never read
        again for these requests (copy once, XSA-155).

        Args:
            limit: at most this many (bounds work per event); ours.

        Returns:
            Decoded requests in ring order (possibly empty). Records with a
            non-None ``error`` must be answered with an error response.

        Raises:
            RingOverflowError: ``req_prod - rsp_prod_pvt > nr_ents`` (the
                frontend misbehaved) now or earlier; the ring is marked broken.
        """
        cons, n = self._claim_requests(limit)
        if not n:
            return []
        out = self._decode_requests(self.sring.copy_slots(cons, n))
        self.req_cons = (cons + n) & _M
        return out

    def _claim_requests(self, limit: int | None) -> tuple[int, int]:
        """Read ``req_prod`` once, check it; return ``(req_cons, how many to take)``."""
        if self.broken:
            raise RingOverflowError("back ring is broken")
        s = self.sring
        rp = s._hdr[_REQ_PROD]  # read once
        if ((rp - self.rsp_prod_pvt) & _M) > s.nr_ents:
            self.broken = True
            raise RingOverflowError(
                f"bogus ring requests: req_prod={rp:#x} rsp_prod_pvt={self.rsp_prod_pvt:#x}"
            )
        cons = self.req_cons
        n = (rp - cons) & _M
        room = s.nr_ents - ((cons - self.rsp_prod_pvt) & _M)
        if room < n:
            n = room
        if limit is not None and n > limit:
            n = max(limit, 0)
        return cons, n

    def final_check_for_requests(self) -> bool:
        """``RING_FINAL_CHECK_FOR_REQUESTS``: re-arm ``req_event`` and re-check.

        Returns:
            True when there is (still) work: consume again before sleeping.
            False when ``req_event = req_cons + 1`` was armed and nothing
            arrived: sleep on the event channel.
        """
        if self.unconsumed_requests():
            return True
        self.sring._hdr[_REQ_EVENT] = (self.req_cons + 1) & _M
        return self.unconsumed_requests() != 0

    # -- producing responses -------------------------------------------
    def put_response(self, rsp: RspT) -> None:
        """Write one response into slot ``rsp_prod_pvt`` and advance it.

        The slot is that of an already-consumed request, so netif rx responses
        land in the slot of the request they answer. Not visible to the
        frontend until a push.

        Args:
            rsp: the response record (ours).

        Raises:
            RingUsageError: every consumed request already has a response.
        """
        if self.req_cons == self.rsp_prod_pvt:
            raise RingUsageError("no consumed request left to answer")
        self.sring.write_slot(self.rsp_prod_pvt, self._codec.encode_response(rsp))
        self.rsp_prod_pvt = (self.rsp_prod_pvt + 1) & _M

    def put_responses(self, rsps: Iterable[RspT]) -> None:
        """Write several responses in order (see :meth:`put_response`).

        Args:
            rsps: response records (ours).

        Raises:
            RingUsageError: more responses than consumed requests; the ones
                that fitted were written.
        """
        rsps = list(rsps)
        room = (self.req_cons - self.rsp_prod_pvt) & _M
        encode = self._codec.encode_response
        s = self.sring
        slots, mask, write = s._slots, s._mask, s.write_slot
        i = self.rsp_prod_pvt
        for rsp in rsps[:room]:
            data = encode(rsp)
            mv = slots[i & mask]
            if mv is not None and len(data) <= s.slot_size:
                mv[: len(data)] = data  # write_slot's fast path, inlined
            else:
                write(i, data)
            i += 1
        self.rsp_prod_pvt = i & _M
        if len(rsps) > room:
            raise RingUsageError("no consumed request left to answer")

    def put_responses_batch(self, rsps: Iterable[RspT]) -> None:
        """Batch :meth:`put_responses`: encode every response straight into its slot.

        Same contract and same page bytes as :meth:`put_responses`; the
        codec's ``encode_responses_into`` (when it has one) writes each
        page-contiguous run of slots in one call. Only each response's own
        bytes are written (16 for blkif): the rest of the slot keeps the
        request that was there, exactly as C's ``*RING_GET_RESPONSE() = rsp``.

        Args:
            rsps: response records (ours), one per consumed request at most.

        Raises:
            RingUsageError: more responses than consumed requests; the ones
                that fitted were written and ``rsp_prod_pvt`` counts them.
            ValueError, struct.error: a record the codec cannot encode (our
                bug); ``rsp_prod_pvt`` is unchanged.
        """
        rsps = rsps if isinstance(rsps, list) else list(rsps)
        room = (self.req_cons - self.rsp_prod_pvt) & _M
        fit = rsps if len(rsps) <= room else rsps[:room]
        if fit:
            self.sring.write_records(
                self.rsp_prod_pvt, fit, self._encode_responses_into, self._codec.encode_response
            )
            self.rsp_prod_pvt = (self.rsp_prod_pvt + len(fit)) & _M
        if len(rsps) > room:
            raise RingUsageError("no consumed request left to answer")

    def push_responses(self) -> None:
        """``RING_PUSH_RESPONSES``: publish ``rsp_prod = rsp_prod_pvt``, no notify check."""
        self.sring.rsp_prod = self.rsp_prod_pvt

    def push_responses_and_check_notify(self) -> bool:
        """``RING_PUSH_RESPONSES_AND_CHECK_NOTIFY``: publish, then decide on notifying.

        Returns:
            True when the frontend's ``rsp_event`` (frontend-controlled) lies
            in ``(old rsp_prod, new rsp_prod]``: send on the event channel.
        """
        hdr = self.sring._hdr
        old = hdr[_RSP_PROD]
        new = self.rsp_prod_pvt
        hdr[_RSP_PROD] = new
        return ((new - hdr[_RSP_EVENT]) & _M) < ((new - old) & _M)
