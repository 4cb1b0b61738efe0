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

    __slots__ = ("_hdr", "_mask", "_slots", "_split", "nr_ents", "pages", "slot_size")

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

    __slots__ = ("_codec", "broken", "req_prod_pvt", "rsp_cons", "sring")

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

    def push_requests(self) -> None:
        """``RING_PUSH_REQUESTS``: publish ``req_prod = req_prod_pvt``, no notify check."""
        self.sring.req_prod = self.req_prod_pvt

    def push_requests_and_check_notify(self) -> bool:
        """``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY``: publish, then decide on notifying.

        Returns:
            True when the backend's ``req_event`` (backend-controlled) lies in
            ``(old req_prod, new req_prod]``: send on the event channel.
        """
        s = self.sring
        old = s.req_prod
        new = self.req_prod_pvt
        s.req_prod = new
        return ((new - s.req_event) & _M) < ((new - old) & _M)

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
            RingOverflowError: ``rsp_prod - rsp_cons > nr_ents`` (backend
                misbehaved) now or earlier; the ring is marked broken.
        """
        if self.broken:
            raise RingOverflowError("front ring is broken")
        rp = self.sring.rsp_prod
        cons = self.rsp_cons
        n = (rp - cons) & _M
        if n > self.sring.nr_ents:
            self.broken = True
            raise RingOverflowError(
                f"illegal number of responses: rsp_prod={rp:#x} rsp_cons={cons:#x}"
            )
        if limit is not None and n > limit:
            n = max(limit, 0)
        out = _copy_out(self.sring, self._codec.decode_response, cons, n)
        self.rsp_cons = (cons + n) & _M
        return out

    def final_check_for_responses(self) -> bool:
        """``RING_FINAL_CHECK_FOR_RESPONSES``: re-arm ``rsp_event`` and re-check.

        Returns:
            True when there is (still) work: do not sleep, consume again.
            False when ``rsp_event = rsp_cons + 1`` was armed and nothing
            arrived: sleep on the event channel.
        """
        if self.has_unconsumed_responses():
            return True
        self.sring.rsp_event = self.rsp_cons + 1
        return self.has_unconsumed_responses()


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

    __slots__ = ("_codec", "broken", "req_cons", "rsp_prod_pvt", "sring")

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
        req = (self.sring.req_prod - self.req_cons) & _M
        rsp = self.sring.nr_ents - ((self.req_cons - self.rsp_prod_pvt) & _M)
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
        if self.broken:
            raise RingOverflowError("back ring is broken")
        s = self.sring
        rp = s.req_prod
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
        out = _copy_out(s, self._codec.decode_request, cons, n)
        self.req_cons = (cons + n) & _M
        return out

    def final_check_for_requests(self) -> bool:
        """``RING_FINAL_CHECK_FOR_REQUESTS``: re-arm ``req_event`` and re-check.

        Returns:
            True when there is (still) work: consume again before sleeping.
            False when ``req_event = req_cons + 1`` was armed and nothing
            arrived: sleep on the event channel.
        """
        if self.has_unconsumed_requests():
            return True
        self.sring.req_event = self.req_cons + 1
        return self.has_unconsumed_requests()

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

    def push_responses(self) -> None:
        """``RING_PUSH_RESPONSES``: publish ``rsp_prod = rsp_prod_pvt``, no notify check."""
        self.sring.rsp_prod = self.rsp_prod_pvt

    def push_responses_and_check_notify(self) -> bool:
        """``RING_PUSH_RESPONSES_AND_CHECK_NOTIFY``: publish, then decide on notifying.

        Returns:
            True when the frontend's ``rsp_event`` (frontend-controlled) lies
            in ``(old rsp_prod, new rsp_prod]``: send on the event channel.
        """
        s = self.sring
        old = s.rsp_prod
        new = self.rsp_prod_pvt
        s.rsp_prod = new
        return ((new - s.rsp_event) & _M) < ((new - old) & _M)
