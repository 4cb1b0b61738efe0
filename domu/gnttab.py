"""Guest kernel: granting pages (Linux ``grant-table.c``, v1 entries).

The guest owns its grant table frames and writes entries directly through
its own memory view: ``domid`` and ``frame`` first, ``flags`` last (the
hypervisor never reads a half-written grant as valid because the type bits
come last). Ending access is a compare-and-swap of ``flags`` to 0 that is
refused while Xen has ``GTF_reading``/``GTF_writing`` set, i.e. while the
grantee still maps (or is copying) the page: there is no revoke.

Refs 0..7 are reserved (0 = console ring, 1 = xenstore ring, pre-filled by
the domain builder); this allocator hands out refs from 8 upward and grows
the table with ``GNTTABOP_setup_table`` when it runs out.
"""

from __future__ import annotations

import struct

from hypervisor.errno import Errno, XenError
from hypervisor.grant_table import (
    ENTRIES_PER_FRAME,
    GNTTAB_NR_RESERVED_ENTRIES,
    GRANT_ENTRY_V1,
    GNTST_okay,
    GTF_permit_access,
    GTF_reading,
    GTF_readonly,
    GTF_writing,
)
from hypervisor.hypercall import HypercallInterface
from hypervisor.types import DomId, Gfn, GrantRef

_DOMID_FRAME = struct.Struct("<HI")
_FLAGS = struct.Struct("<H")
_REF_SHIFT = ENTRIES_PER_FRAME.bit_length() - 1  # ref >> 9: its table frame
_REF_MASK = ENTRIES_PER_FRAME - 1
assert 1 << _REF_SHIFT == ENTRIES_PER_FRAME
_RO_ACCESS = GTF_permit_access | GTF_readonly
_IN_USE = GTF_reading | GTF_writing


class GrantTableClient:
    """A guest's grant-reference allocator and entry writer.

    Args:
        hc: the guest's own hypercall interface.
    """

    def __init__(self, hc: HypercallInterface) -> None:
        self.hc = hc
        q = hc.grant_query_size()
        self.max_frames = q.max_nr_frames
        self._views: list[memoryview] = []
        self._free: list[int] = []
        self._setup(max(q.nr_frames, 1))

    def _setup(self, nr_frames: int) -> None:
        res = self.hc.grant_setup_table(nr_frames)
        if res.status != GNTST_okay:
            raise XenError(Errno.ENOSPC, f"setup_table failed with GNTST {res.status}")
        old = len(self._views) * ENTRIES_PER_FRAME
        self._views = [self.hc.memory.frame(m) for m in res.frames]
        # the same frames as native u16 / u32 arrays (x86 is little-endian, like the
        # entries): entry e has flags at u16[4e], domid at u16[4e + 1], frame at u32[2e + 1]
        self._u16 = [v.cast("H") for v in self._views]
        self._u32 = [v.cast("I") for v in self._views]
        new = len(self._views) * ENTRIES_PER_FRAME
        first = max(old, GNTTAB_NR_RESERVED_ENTRIES)
        self._free.extend(range(new - 1, first - 1, -1))
        self._free.sort(reverse=True)

    @property
    def nr_entries(self) -> int:
        """Refs the table holds now."""
        return len(self._views) * ENTRIES_PER_FRAME

    @property
    def free_count(self) -> int:
        """Refs available without growing."""
        return len(self._free)

    def _loc(self, ref: int) -> tuple[memoryview, int]:
        return self._views[ref >> _REF_SHIFT], (ref & _REF_MASK) << 3

    def read_entry(self, ref: GrantRef | int) -> tuple[int, int, int]:
        """(flags, domid, frame) of own entry ``ref``."""
        view, off = self._loc(ref)
        return GRANT_ENTRY_V1.unpack_from(view, off)

    def write_entry(self, ref: GrantRef | int, domid: int, frame: int, flags: int) -> None:
        """Write an entry in Linux's order: domid/frame, then flags last."""
        view, off = self._loc(ref)
        _DOMID_FRAME.pack_into(view, off + 2, domid, frame)
        _FLAGS.pack_into(view, off, flags)

    def grant_access(self, domid: DomId | int, gfn: Gfn | int, readonly: bool = False,
                     ) -> GrantRef:
        """Grant ``domid`` access to own page ``gfn``; return the ref to advertise.

        Args:
            domid: the grantee (e.g. the backend domain).
            gfn: own page to share (must fit 32 bits).
            readonly: grantee may only read.

        Raises:
            XenError: ENOSPC when the table cannot grow any more.
        """
        if not 0 <= gfn <= 0xFFFFFFFF:
            raise ValueError("gfn does not fit a v1 grant entry")
        if not self._free:
            if len(self._views) >= self.max_frames:
                raise XenError(Errno.ENOSPC, "grant table full")
            self._setup(len(self._views) + 1)
        ref = self._free.pop()
        # write_entry, inlined (drivers grant a page per packet): flags last
        page, e = ref >> _REF_SHIFT, ref & _REF_MASK
        self._u32[page][(e << 1) | 1] = gfn
        u16 = self._u16[page]
        u16[(e << 2) | 1] = domid
        u16[e << 2] = _RO_ACCESS if readonly else GTF_permit_access
        return ref  # type: ignore[return-value]  # a GrantRef (NewType of int)

    def grant_access_many(self, domid: DomId | int, gfns: list[Gfn], readonly: bool = False,
                          ) -> list[GrantRef]:
        """:meth:`grant_access` for each page of ``gfns`` (a driver refilling a ring).

        Raises:
            XenError: ENOSPC when the table cannot grow any more (nothing is
                left granted).
        """
        out: list[GrantRef] = []
        if len(self._free) < len(gfns):  # the slow way: grows the table as needed
            try:
                for gfn in gfns:
                    out.append(self.grant_access(domid, gfn, readonly))
            except (XenError, ValueError):
                self.end_foreign_access_many(out)  # never used: cannot be in use
                raise
            return out
        if gfns and (min(gfns) < 0 or max(gfns) > 0xFFFFFFFF):
            raise ValueError("gfn does not fit a v1 grant entry")
        flags = _RO_ACCESS if readonly else GTF_permit_access
        free, u16s, u32s = self._free, self._u16, self._u32
        for gfn in gfns:
            ref = free.pop()
            page, e = ref >> _REF_SHIFT, ref & _REF_MASK
            u32s[page][(e << 1) | 1] = gfn
            u16 = u16s[page]
            u16[(e << 2) | 1] = domid
            u16[e << 2] = flags
            out.append(ref)  # type: ignore[arg-type]
        return out

    def query_foreign_access(self, ref: GrantRef | int) -> bool:
        """True while the grantee maps or copies the page."""
        return bool(self.read_entry(ref)[0] & (GTF_reading | GTF_writing))

    def end_foreign_access_ref(self, ref: GrantRef | int) -> bool:
        """CAS flags -> 0 unless reading/writing is set; True if access ended."""
        view, off = self._loc(ref)
        (flags,) = _FLAGS.unpack_from(view, off)
        if flags & (GTF_reading | GTF_writing):
            return False
        _FLAGS.pack_into(view, off, 0)  # single-threaded: the CAS cannot race
        return True

    def end_foreign_access(self, ref: GrantRef | int) -> bool:
        """End access and free ``ref``; False (ref kept) while still mapped."""
        # end_foreign_access_ref, inlined (drivers end a grant per packet)
        u16 = self._u16[ref >> _REF_SHIFT]
        i = (ref & _REF_MASK) << 2
        if u16[i] & _IN_USE:
            return False
        u16[i] = 0  # single-threaded: the CAS cannot race
        self._free.append(ref)
        return True

    def end_foreign_access_many(self, refs: list[GrantRef]) -> list[GrantRef]:
        """:meth:`end_foreign_access` for each of ``refs`` (a driver retiring a batch).

        Returns:
            The refs still in use by the grantee (kept, not freed), in order.
        """
        kept: list[GrantRef] = []
        u16s, free = self._u16, self._free
        for ref in refs:
            u16 = u16s[ref >> _REF_SHIFT]
            i = (ref & _REF_MASK) << 2
            if u16[i] & _IN_USE:
                kept.append(ref)
                continue
            u16[i] = 0
            free.append(ref)
        return kept
