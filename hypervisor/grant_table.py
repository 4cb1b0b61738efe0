"""Grant tables, version 1 (xen/common/grant_table.c), byte-exact.

Theory of operation
-------------------
A domain's grant table is an array of 8-byte ``grant_entry_v1`` records
``{flags u16, domid u16, frame u32}`` (``<HHI``, 512 per 4 KiB frame) stored in
machine frames *the granting domain owns*. The granter writes its entries
directly through its own memory view, exactly as Linux does; the hypervisor
therefore re-reads an entry from the frame bytes every time it needs it,
copies it once, validates the copy and acts on the copy (the guest may change
the bytes at any moment).

Hypervisor-private per-ref state is the *active entry*: pin counts of
read-only and writable users (mappings and in-flight copies), plus the
grantee and machine frame captured at the first pin (later pins reuse them,
as Xen does). While pinned, ``GTF_reading`` (any pin) and ``GTF_writing``
(a writable pin) are set in the shared entry; they are cleared when the last
such pin goes. The granter ends access with a compare-and-swap of ``flags`` to
0 that fails while either bit is set, so there is no revoke while mapped
(see ``domu/gnttab.py``).

Each grantee has a *maptrack* table: a mapping handle is an index into it;
each live entry remembers (granter, ref, flags, mfn, addresses) and holds
one reference on the machine frame, so a frame freed by its owner (ballooned
out or domain destroyed) is only really freed when the last mapping goes.

Every per-element result is ``GNTST_okay`` (0) or a negative ``GNTST_*``
code; no guest input can make an operation raise. Where each code comes from
(xen-abi 3.4; all reachable ones are exercised by tests/hypervisor):

* ``GNTST_general_error``: entry not permit_access or for another grantee;
  writable map/copy of a read-only grant; unsupported map flags; unmap with a
  host_addr that does not match; setup_table beyond ``max_grant_frames``;
  a ref pinned by another grantee.
* ``GNTST_bad_domain``: no such granter, or it is dying.
* ``GNTST_bad_gntref``: ref beyond the table; map without host/device flag.
* ``GNTST_bad_handle``: unmap of an unknown (or already unmapped) handle.
* ``GNTST_bad_dev_addr``: unmap with a dev_bus_addr that does not match.
* ``GNTST_permission_denied``: a copy side given as a frame number that is
  not ``DOMID_SELF``.
* ``GNTST_bad_page``: the granted gfn (or a copy's own gfn) is unpopulated.
* ``GNTST_bad_copy_arg``: copy offset/length outside the page.
* ``GNTST_no_space``: the grantee's maptrack is full.
* Not reachable, by design of the simulation: ``GNTST_bad_virt_addr`` (Xen
  4.17 itself reports a bad PV host address as general_error, and
  ``host_addr`` here is an opaque cookie with no page tables behind it);
  ``GNTST_no_device_space`` (no IOMMU is modelled); ``GNTST_address_too_big``
  (only ``GNTTABOP_transfer`` returns it, and transfer is not implemented:
  ENOSYS); ``GNTST_eagain`` (no memory paging/sharing, so a frame is never
  paged out).

Worked example (dom1 grants gfn 0x42 to dom0, dom0 maps it read-write)::

    dom1 writes entry 8 = (flags=GTF_permit_access, domid=0, frame=0x42)
    dom0 map(ref=8, dom=1, GNTMAP_host_map) -> status 0, handle 0
         entry 8 flags |= GTF_reading | GTF_writing
    dom1 end_foreign_access(8) -> CAS refused (still mapped)
    dom0 unmap(handle 0)      -> flags back to GTF_permit_access
    dom1 end_foreign_access(8) -> flags 0, ref free again
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hypervisor.errno import Errno, XenError
from hypervisor.types import DOMID_SELF, INVALID_MFN, PAGE_SHIFT, PAGE_SIZE, DomId, Mfn

if TYPE_CHECKING:
    from hypervisor.domain import Domain
    from hypervisor.memory import MachineMemory

GRANT_ENTRY_V1 = struct.Struct("<HHI")
assert GRANT_ENTRY_V1.size == 8  # struct grant_entry_v1
_FLAGS = struct.Struct("<H")  # grant_entry_v1.flags
ENTRIES_PER_FRAME = PAGE_SIZE // GRANT_ENTRY_V1.size  # 512

GNTTAB_NR_RESERVED_ENTRIES = 8
GNTTAB_RESERVED_CONSOLE = 0
GNTTAB_RESERVED_XENSTORE = 1

GTF_invalid = 0
GTF_permit_access = 1
GTF_accept_transfer = 2
GTF_transitive = 3
GTF_type_mask = 3
GTF_readonly = 0x4
GTF_reading = 0x8
GTF_writing = 0x10
GTF_sub_page = 0x100
_UNPIN = 0xFFFF & ~(GTF_reading | GTF_writing)

GNTMAP_device_map = 1
GNTMAP_host_map = 2
GNTMAP_readonly = 4
GNTMAP_application_map = 8
GNTMAP_contains_pte = 16

GNTCOPY_source_gref = 1
GNTCOPY_dest_gref = 2

GNTTABOP_map_grant_ref = 0
GNTTABOP_unmap_grant_ref = 1
GNTTABOP_setup_table = 2
GNTTABOP_copy = 5
GNTTABOP_query_size = 6

GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3
GNTST_bad_handle = -4
GNTST_bad_virt_addr = -5
GNTST_bad_dev_addr = -6
GNTST_no_device_space = -7
GNTST_permission_denied = -8
GNTST_bad_page = -9
GNTST_bad_copy_arg = -10
GNTST_address_too_big = -11
GNTST_eagain = -12
GNTST_no_space = -13

DEFAULT_MAX_GRANT_FRAMES = 64
DEFAULT_MAX_MAPTRACK_FRAMES = 1024
MAPTRACK_PER_FRAME = PAGE_SIZE // 16  # sizeof(struct grant_mapping) == 16 in Xen
INITIAL_GRANT_FRAMES = 1
HOST_ADDR_BASE = 0xFFFF_C900_0000_0000
"""Synthetic 'virtual address' handed back for a host mapping with host_addr 0."""


class GntError(Exception):
    """Internal: abort one batch element with a GNTST code."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(status)


# -- argument and result records (Python values; codes are Xen's) ------------------------


@dataclass(frozen=True)
class MapGrantRef:
    """One ``gnttab_map_grant_ref`` element (guest-controlled).

    Args:
        dom: the granting domain.
        ref: its grant reference.
        flags: ``GNTMAP_host_map`` and/or ``GNTMAP_device_map``, plus
            ``GNTMAP_readonly`` for a read-only mapping.
        host_addr: opaque address the mapper wants recorded (0 = pick one).
    """

    dom: int
    ref: int
    flags: int = GNTMAP_host_map
    host_addr: int = 0


@dataclass(frozen=True)
class MapResult:
    """Outcome of one map: ``status`` (GNTST), ``handle``, addresses and the view.

    ``view`` is the granted frame's 4096 bytes (read-only memoryview for a
    read-only mapping), or None on failure. It cannot be revoked by Python:
    drop it when you unmap.
    """

    status: int
    handle: int = 0
    host_addr: int = 0
    dev_bus_addr: int = 0
    view: memoryview | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class UnmapGrantRef:
    """One ``gnttab_unmap_grant_ref`` element (guest-controlled).

    ``host_addr`` / ``dev_bus_addr`` of 0 mean "whatever was mapped"; a
    non-zero value must match the mapping or the unmap is refused.
    """

    handle: int
    host_addr: int = 0
    dev_bus_addr: int = 0


@dataclass(frozen=True)
class GntCopyPtr:
    """One side of a copy: a grant ref (flag set) or an own gfn (``DOMID_SELF``)."""

    ref_or_gfn: int
    domid: int = DOMID_SELF
    offset: int = 0


@dataclass(frozen=True)
class GntCopy:
    """One ``gnttab_copy`` element (guest-controlled)."""

    source: GntCopyPtr
    dest: GntCopyPtr
    len: int
    flags: int = 0

    def flat(self) -> GntCopyOp:
        """The same element as a :data:`GntCopyOp` tuple."""
        s, d = self.source, self.dest
        return (s.ref_or_gfn, s.domid, s.offset, d.ref_or_gfn, d.domid, d.offset,
                self.len, self.flags)


GntCopyOp = tuple[int, int, int, int, int, int, int, int]
"""One ``gnttab_copy`` element as a flat tuple, in ``struct gnttab_copy``'s field order::

    (source.u, source.domid, source.offset, dest.u, dest.domid, dest.offset, len, flags)

``u`` is a grant ref when that side's ``GNTCOPY_*_gref`` flag is set, else one of
the caller's own gfns (then ``domid`` must be ``DOMID_SELF``). The cheap form for
drivers that build many copies per pass (netback); :class:`GntCopy` is the readable
one. A batch may mix both."""


@dataclass(frozen=True)
class SetupTableResult:
    """``gnttab_setup_table`` outcome: status and the table's machine frames."""

    status: int
    frames: tuple[Mfn, ...] = ()


@dataclass(frozen=True)
class QuerySizeResult:
    """``gnttab_query_size`` outcome."""

    status: int
    nr_frames: int = 0
    max_nr_frames: int = 0


# -- per-domain state ---------------------------------------------------------------------


class ActiveEntry:
    """Hypervisor-private state of one pinned grant ref (``struct active_grant_entry``)."""

    __slots__ = ("domid", "mfn", "pin_r", "pin_w")

    def __init__(self, domid: DomId, mfn: Mfn) -> None:
        self.domid = domid
        self.mfn = mfn
        self.pin_r = 0
        self.pin_w = 0


class GrantTable:
    """A domain's own grant table: frames it owns plus active entries.

    Args:
        machine: machine memory (frames are allocated from it).
        domid: the owning (granting) domain.
        max_frames: toolstack limit (xl ``max_grant_frames``).
    """

    def __init__(self, machine: MachineMemory, domid: DomId,
                 max_frames: int = DEFAULT_MAX_GRANT_FRAMES) -> None:
        self._machine = machine
        self.domid = domid
        self.max_frames = max_frames
        self.frames: list[Mfn] = []
        self._views: list[memoryview] = []
        # the same frames as native u16 / u32 arrays (hosts are little-endian, like
        # the entries): entry e of a frame has flags at u16[4e], domid at u16[4e+1]
        # and frame at u32[2e+1] - read and written without struct calls
        self._u16: list[memoryview] = []
        self._u32: list[memoryview] = []
        self.active: dict[int, ActiveEntry] = {}

    @property
    def nr_entries(self) -> int:
        """How many refs the table currently holds."""
        return len(self.frames) * ENTRIES_PER_FRAME

    def grow(self, nr_frames: int) -> None:
        """Grow to ``nr_frames`` frames (zeroed, owned by the granter).

        Raises:
            XenError: ENOMEM if machine memory is exhausted.
        """
        need = nr_frames - len(self.frames)
        if need <= 0:
            return
        new = self._machine.alloc(self.domid, need)
        self.frames.extend(new)
        views = [self._machine.frame(m) for m in new]
        self._views.extend(views)
        self._u16.extend(v.cast("H") for v in views)
        self._u32.extend(v.cast("I") for v in views)

    def read_entry(self, ref: int) -> tuple[int, int, int]:
        """Copy entry ``ref`` out of the shared frame: (flags, domid, frame)."""
        return GRANT_ENTRY_V1.unpack_from(self._views[ref >> 9], (ref & 511) << 3)

    def _set_flag_bits(self, ref: int, set_bits: int, clear_bits: int) -> None:
        flags = self._u16[ref >> 9]
        i = (ref & 511) << 2
        flags[i] = (flags[i] | set_bits) & ~clear_bits & 0xFFFF

    def release_frames(self) -> list[Mfn]:
        """Forget every frame (domain final free) and return them."""
        out = self.frames
        self.frames = []
        self._views = []
        self._u16 = []
        self._u32 = []
        self.active.clear()
        return out

    def pins(self) -> int:
        """Total outstanding pins (read-only + writable) on this table."""
        return sum(a.pin_r + a.pin_w for a in self.active.values())


class MapEntry:
    """One live mapping in a grantee's maptrack."""

    __slots__ = ("dev_bus_addr", "flags", "granter", "host_addr", "mfn", "ref")

    def __init__(self, granter: Domain, ref: int, flags: int, mfn: Mfn,
                 host_addr: int, dev_bus_addr: int) -> None:
        self.granter = granter
        self.ref = ref
        self.flags = flags
        self.mfn = mfn
        self.host_addr = host_addr
        self.dev_bus_addr = dev_bus_addr


class Maptrack:
    """A grantee's table of its mappings of other domains' grants.

    Args:
        max_frames: toolstack limit (xl ``max_maptrack_frames``); each frame
            holds 256 handles as in Xen.
    """

    def __init__(self, max_frames: int = DEFAULT_MAX_MAPTRACK_FRAMES) -> None:
        self.limit = max_frames * MAPTRACK_PER_FRAME
        self.entries: list[MapEntry | None] = []
        self._free: list[int] = []
        self.in_use = 0

    def get(self, handle: int) -> MapEntry | None:
        """The live entry for ``handle`` or None."""
        if 0 <= handle < len(self.entries):
            return self.entries[handle]
        return None

    def add(self, entry: MapEntry) -> int:
        """Store ``entry``; return its handle. Raises GntError(no_space) when full."""
        if self._free:
            h = self._free.pop()
            self.entries[h] = entry
        elif len(self.entries) < self.limit:
            h = len(self.entries)
            self.entries.append(entry)
        else:
            raise GntError(GNTST_no_space)
        self.in_use += 1
        return h

    def remove(self, handle: int) -> None:
        """Free ``handle``."""
        self.entries[handle] = None
        self._free.append(handle)
        self.in_use -= 1

    def live(self) -> list[tuple[int, MapEntry]]:
        """Every (handle, entry) in use."""
        return [(h, e) for h, e in enumerate(self.entries) if e is not None]


# -- the operations -------------------------------------------------------------------------


class GrantTables:
    """Grant-table operations of the whole host.

    Args:
        machine: machine memory.
        lookup: domid -> live or zombie :class:`Domain`, or None.
    """

    def __init__(self, machine: MachineMemory, lookup: Callable[[int], Domain | None]) -> None:
        self._machine = machine
        self._lookup = lookup

    def _domain(self, caller: Domain, dom: int) -> Domain | None:
        if dom == DOMID_SELF or dom == caller.domid:
            return caller
        return self._lookup(dom)

    # -- pins --------------------------------------------------------------------------------

    def _pin(self, caller: Domain, rd: Domain, ref: int, readonly: bool) -> ActiveEntry:
        """Validate entry ``ref`` of ``rd`` for ``caller`` and take one pin.

        Xen's ``_set_status`` + active-entry logic: the entry is copied once
        from the granter's frame and only the copy is examined.
        """
        gt = rd.grant_table
        if not 0 <= ref < gt.nr_entries:
            raise GntError(GNTST_bad_gntref)
        act = gt.active.get(ref)
        if act is not None and act.domid != caller.domid:
            raise GntError(GNTST_general_error)
        if act is None or (not readonly and not act.pin_w):
            flags, domid, frame = gt.read_entry(ref)
            if (flags & GTF_type_mask) != GTF_permit_access or domid != caller.domid:
                raise GntError(GNTST_general_error)
            if not readonly and flags & GTF_readonly:
                raise GntError(GNTST_general_error)
            if act is None:
                mfn = rd.p2m.get(frame)
                if mfn == INVALID_MFN or self._machine.owner[mfn] != rd.domid:
                    raise GntError(GNTST_bad_page)
                act = ActiveEntry(caller.domid, Mfn(mfn))
                gt.active[ref] = act
        if readonly:
            act.pin_r += 1
        else:
            act.pin_w += 1
        gt._set_flag_bits(ref, GTF_reading if readonly else GTF_reading | GTF_writing, 0)
        return act

    @staticmethod
    def _unpin(rd: Domain, ref: int, readonly: bool) -> None:
        gt = rd.grant_table
        act = gt.active[ref]
        if readonly:
            act.pin_r -= 1
        else:
            act.pin_w -= 1
        clear = 0
        if not act.pin_w:
            clear |= GTF_writing
        if not act.pin_r and not act.pin_w:
            clear |= GTF_reading
            del gt.active[ref]
        if clear and gt.frames:
            gt._set_flag_bits(ref, 0, clear)

    # -- GNTTABOP_setup_table / query_size ------------------------------------------------------

    def setup_table(self, caller: Domain, dom: int, nr_frames: int) -> SetupTableResult:
        """Grow ``dom``'s table to at least ``nr_frames`` and list its frames.

        Args:
            caller: calling domain (privilege for another ``dom`` checked by the table).
            dom: target domain (DOMID_SELF allowed).
            nr_frames: guest-controlled frame count.

        Returns:
            status (okay; bad_domain; general_error beyond the limit or out of
            memory) and the first ``nr_frames`` machine frames of the table.
        """
        d = self._domain(caller, dom)
        if d is None or d.dying:
            return SetupTableResult(GNTST_bad_domain)
        gt = d.grant_table
        if not 0 <= nr_frames <= gt.max_frames:
            return SetupTableResult(GNTST_general_error)
        if nr_frames > len(gt.frames):
            try:
                gt.grow(nr_frames)
            except XenError:
                return SetupTableResult(GNTST_general_error)
        return SetupTableResult(GNTST_okay, tuple(gt.frames[:nr_frames]))

    def query_size(self, caller: Domain, dom: int) -> QuerySizeResult:
        """Current and maximum table frames of ``dom`` (status bad_domain if none)."""
        d = self._domain(caller, dom)
        if d is None:
            return QuerySizeResult(GNTST_bad_domain)
        gt = d.grant_table
        return QuerySizeResult(GNTST_okay, len(gt.frames), gt.max_frames)

    # -- GNTTABOP_map_grant_ref -------------------------------------------------------------------

    def map(self, caller: Domain, ops: Sequence[MapGrantRef]) -> list[MapResult]:
        """Map a batch of grants; one :class:`MapResult` per element."""
        out = []
        for op in ops:
            try:
                out.append(self._map_one(caller, op))
            except GntError as e:
                out.append(MapResult(e.status))
        return out

    def _map_one(self, caller: Domain, op: MapGrantRef) -> MapResult:
        flags = op.flags
        if not flags & (GNTMAP_host_map | GNTMAP_device_map):
            raise GntError(GNTST_bad_gntref)
        if flags & ~(GNTMAP_host_map | GNTMAP_device_map | GNTMAP_readonly):
            raise GntError(GNTST_general_error)  # PV pte-based maps are not modelled
        rd = self._domain(caller, op.dom)
        if rd is None or rd.dying:
            raise GntError(GNTST_bad_domain)
        mt = caller.maptrack
        if mt.in_use >= mt.limit:
            raise GntError(GNTST_no_space)
        readonly = bool(flags & GNTMAP_readonly)
        act = self._pin(caller, rd, op.ref, readonly)
        mfn = act.mfn
        host_addr = 0
        if flags & GNTMAP_host_map:
            host_addr = op.host_addr
        dev_bus_addr = mfn << PAGE_SHIFT if flags & GNTMAP_device_map else 0
        entry = MapEntry(rd, op.ref, flags, mfn, host_addr, dev_bus_addr)
        handle = mt.add(entry)
        if flags & GNTMAP_host_map and not host_addr:
            entry.host_addr = host_addr = HOST_ADDR_BASE + (handle << PAGE_SHIFT)
        self._machine.get_ref(mfn)
        view = self._machine.frame(mfn)
        if readonly:
            view = view.toreadonly()
        return MapResult(GNTST_okay, handle, host_addr, dev_bus_addr, view)

    # -- GNTTABOP_unmap_grant_ref -----------------------------------------------------------------

    def unmap(self, caller: Domain, ops: Sequence[UnmapGrantRef]) -> list[int]:
        """Unmap a batch; one GNTST status per element."""
        return _statuses(self._unmap_one, caller, ops)

    def _unmap_one(self, caller: Domain, op: UnmapGrantRef) -> None:
        entry = caller.maptrack.get(op.handle)
        if entry is None:
            raise GntError(GNTST_bad_handle)
        if op.dev_bus_addr and (not entry.flags & GNTMAP_device_map
                                or op.dev_bus_addr != entry.dev_bus_addr):
            raise GntError(GNTST_bad_dev_addr)
        if op.host_addr and (not entry.flags & GNTMAP_host_map
                             or op.host_addr != entry.host_addr):
            raise GntError(GNTST_general_error)
        self._drop(caller, op.handle, entry)

    def _drop(self, caller: Domain, handle: int, entry: MapEntry) -> None:
        caller.maptrack.remove(handle)
        self._unpin(entry.granter, entry.ref, bool(entry.flags & GNTMAP_readonly))
        self._machine.put_ref(entry.mfn)  # may finally free a zombie granter

    def release_mappings(self, d: Domain) -> None:
        """Unmap everything ``d`` has mapped (``gnttab_release_mappings``)."""
        for handle, entry in d.maptrack.live():
            self._drop(d, handle, entry)

    # -- GNTTABOP_copy ----------------------------------------------------------------------------

    def copy(self, caller: Domain, ops: Sequence[GntCopy | GntCopyOp]) -> list[int]:
        """Copy a batch; one GNTST status per element (rules: xen-abi 3.3).

        Every element is checked on its own, in the order Xen checks it:
        offsets and length, each side's domain (a frame-number side must be
        ``DOMID_SELF``), then the source and the destination - a grant side
        is validated against a fresh copy of the granter's entry (type,
        grantee, read-only for a destination, the granted gfn populated and
        owned by the granter), a frame side must be the caller's own
        populated page. Grant sides are pinned (``GTF_reading``, plus
        ``GTF_writing`` for a destination) while the bytes move and unpinned
        before the next element, so a batch leaves no pins behind. A failed
        element never stops the rest.

        The common element - one side a grant nobody has pinned, the other
        the caller's own page (netback's tx and rx copies) - runs inline
        here: its pin is taken and dropped around the copy without an
        active-entry record, which nothing can observe (no other task runs
        during a hypercall). Everything else (both sides grants, or a grant
        that is already mapped) goes through the general pin/unpin path.

        Args:
            caller: the calling domain.
            ops: :class:`GntCopy` records or :data:`GntCopyOp` tuples
                (guest-controlled).

        Returns:
            One GNTST status per element.

        Raises:
            XenError: EFAULT for an element that is not a copy record (the C
                call would fault reading it); elements before it were done.
        """
        out: list[int] = []
        append = out.append
        machine = self._machine
        move = machine.move  # memmove between machine addresses (mfn << 12 | offset)
        owner = machine.owner
        me = caller.domid
        own_p2m = caller.p2m.get
        routes: dict[tuple[int, int, int], _CopyRoute] = {}
        key: tuple[int, int, int] | None = None  # the route in the locals below is key's
        rstatus: int = 0
        kind = _COPY_GENERAL
        sd = dd = caller
        nr, active, u16s, u32s, gp2m, gdom = 0, {}, [], [], _no_p2m, 0
        try:
            for op in ops:
                try:
                    s_u, s_dom, s_off, d_u, d_dom, d_off, n, flags = op  # type: ignore[misc]
                except TypeError:  # a GntCopy record
                    if not isinstance(op, GntCopy):
                        raise
                    op = op.flat()
                    s_u, s_dom, s_off, d_u, d_dom, d_off, n, flags = op
                if (n | s_off | d_off) < 0 or s_off + n > PAGE_SIZE or d_off + n > PAGE_SIZE:
                    append(GNTST_bad_copy_arg)
                    continue
                # what the two sides' domains and flags allow: worked out once per
                # batch, and kept in locals while consecutive elements share it
                if key is None or s_dom != key[0] or d_dom != key[1] or flags != key[2]:
                    key = (s_dom, d_dom, flags)
                    route = routes.get(key)
                    if route is None:
                        route = routes[key] = self._copy_route(caller, s_dom, d_dom, flags)
                    if type(route) is int:
                        rstatus = route
                    else:
                        rstatus = 0
                        kind, sd, dd, nr, active, u16s, u32s, gp2m, gdom = route  # type: ignore[misc]
                if rstatus:
                    append(rstatus)
                    continue
                if kind is _COPY_GENERAL:
                    append(self._copy_general(caller, sd, dd, op))
                    continue
                if kind is _COPY_OWN:  # both sides the caller's own pages
                    smfn = own_p2m(s_u)
                    dmfn = own_p2m(d_u)
                    if (smfn == INVALID_MFN or owner[smfn] != me
                            or dmfn == INVALID_MFN or owner[dmfn] != me):
                        append(GNTST_bad_page)
                        continue
                    move(dmfn << PAGE_SHIFT | d_off, smfn << PAGE_SHIFT | s_off, n)
                    append(GNTST_okay)
                    continue
                # one side a grant (ref), the other an own page: Xen checks the source first
                writable = kind is _COPY_TO_GRANT
                if writable:
                    ref = d_u
                    own_mfn = own_p2m(s_u)
                    own_bad = own_mfn == INVALID_MFN or owner[own_mfn] != me
                    if own_bad:
                        append(GNTST_bad_page)
                        continue
                else:
                    ref = s_u
                    own_mfn = own_p2m(d_u)
                    own_bad = own_mfn == INVALID_MFN or owner[own_mfn] != me
                if not 0 <= ref < nr:
                    append(GNTST_bad_gntref)
                    continue
                if ref in active:  # mapped too: pin counts matter
                    append(self._copy_general(caller, sd, dd, op))
                    continue
                # the entry, read once: flags, domid, frame
                page, e = ref >> 9, ref & 511
                flags16 = u16s[page]
                i = e << 2
                e_flags = flags16[i]
                if ((e_flags & GTF_type_mask) != GTF_permit_access or flags16[i + 1] != me
                        or (writable and e_flags & GTF_readonly)):
                    append(GNTST_general_error)
                    continue
                gmfn = gp2m(u32s[page][(e << 1) | 1])
                if gmfn == INVALID_MFN or owner[gmfn] != gdom or own_bad:
                    append(GNTST_bad_page)
                    continue
                if writable:
                    flags16[i] = e_flags | GTF_reading | GTF_writing
                    move(gmfn << PAGE_SHIFT | d_off, own_mfn << PAGE_SHIFT | s_off, n)
                else:
                    flags16[i] = e_flags | GTF_reading
                    move(own_mfn << PAGE_SHIFT | d_off, gmfn << PAGE_SHIFT | s_off, n)
                flags16[i] &= _UNPIN
                append(GNTST_okay)
        except (TypeError, ValueError, AttributeError):
            raise XenError(Errno.EFAULT, "gnttab_copy: malformed element") from None
        return out

    def _copy_route(self, caller: Domain, s_dom: int, d_dom: int, flags: int) -> _CopyRoute:
        """How :meth:`copy` handles elements with these domains and flags: a GNTST
        error for all of them, or the path and what it needs (domains, and the
        granter's table for a one-grant element)."""
        s_gref = flags & GNTCOPY_source_gref
        d_gref = flags & GNTCOPY_dest_gref
        sides: list[Domain] = []
        for dom, is_gref in ((s_dom, s_gref), (d_dom, d_gref)):
            if dom != DOMID_SELF and not is_gref:
                return GNTST_permission_denied
            d = self._domain(caller, dom)
            if d is None or d.dying:
                return GNTST_bad_domain
            sides.append(d)
        sd, dd = sides
        if s_gref and d_gref:
            return (_COPY_GENERAL, sd, dd, 0, {}, [], [], _no_p2m, 0)
        if not s_gref and not d_gref:
            return (_COPY_OWN, sd, dd, 0, {}, [], [], _no_p2m, 0)
        gd = sd if s_gref else dd
        gt = gd.grant_table
        return (_COPY_TO_GRANT if d_gref else _COPY_FROM_GRANT, sd, dd, gt.nr_entries,
                gt.active, gt._u16, gt._u32, gd.p2m.get, gd.domid)

    def _copy_general(self, caller: Domain, sd: Domain, dd: Domain, op: GntCopyOp) -> int:
        """One element through the general pin path (both sides grants, or a
        grant that is also mapped); sides and domains were checked by
        :meth:`copy`."""
        s_u, _, s_off, d_u, _, d_off, n, flags = op
        pinned: list[tuple[Domain, int, bool]] = []
        try:
            if flags & GNTCOPY_source_gref:
                smfn = self._pin(caller, sd, s_u, True).mfn
                pinned.append((sd, s_u, True))
            else:
                smfn = self._own_frame(caller, s_u)
            if flags & GNTCOPY_dest_gref:
                dmfn = self._pin(caller, dd, d_u, False).mfn
                pinned.append((dd, d_u, False))
            else:
                dmfn = self._own_frame(caller, d_u)
            frame = self._machine.frame
            frame(dmfn)[d_off : d_off + n] = frame(smfn)[s_off : s_off + n]
        except GntError as e:
            return e.status
        finally:
            for d, ref, ro in reversed(pinned):
                self._unpin(d, ref, ro)
        return GNTST_okay

    def _own_frame(self, caller: Domain, gfn: int) -> Mfn:
        mfn = caller.p2m.get(gfn)
        if mfn == INVALID_MFN or self._machine.owner[mfn] != caller.domid:
            raise GntError(GNTST_bad_page)
        return Mfn(mfn)


_COPY_GENERAL, _COPY_OWN, _COPY_FROM_GRANT, _COPY_TO_GRANT = (
    "general", "own", "from-grant", "to-grant")
_CopyRoute = int | tuple[str, "Domain", "Domain", int, dict[int, ActiveEntry],
                         list[memoryview], list[memoryview], Callable[[int], int], int]
"""A GNTST error for every element with these sides, or (path, source domain,
destination domain, and for a one-grant path: the granter's nr_entries, active
entries, entry views, p2m lookup and domid)."""


def _no_p2m(gfn: int) -> int:
    return INVALID_MFN


def _statuses(fn: Callable[[Domain, Any], None], caller: Domain, ops: Sequence[Any]) -> list[int]:
    """Run ``fn`` on each element of a batch; its GNTST status, one per element
    (a failed element never stops the rest, as in Xen)."""
    out = []
    for op in ops:
        try:
            fn(caller, op)
            out.append(GNTST_okay)
        except GntError as e:
            out.append(e.status)
    return out
