"""Machine memory: 4 KiB machine frames, who owns each, and each domain's view.

Theory of operation
-------------------
All simulated RAM is ONE ``mmap``: anonymous and lazily backed by default (a
4 GiB machine costs the host nothing until a page is written), or a shared
file so that another OS process can map the same machine memory later. Machine
frame ``mfn`` is bytes ``[mfn * 4096, (mfn + 1) * 4096)`` of that map.

The frame allocator is a bump pointer plus a free list, so it costs O(1) per
frame and creates no per-frame Python objects up front; ``owner`` is one
``array('H')`` with the owning domid of every frame (``DOMID_INVALID`` when
free). A frame freed while a foreign grant mapping still references it is not
reused: it becomes *deferred* (owned by ``DOMID_XEN``, invisible to its old
owner) until the last reference is dropped, and only then returns to the free
list. That is what keeps a destroyed granter a zombie in :mod:`domain`.
Reused frames are zeroed when they are handed out again
(``madvise(MADV_DONTNEED)`` on the anonymous map, explicit zeroing on a shared
file), so no data leaks between domains; the anonymous map is also released
to the host when frames are freed.

A domain reaches memory only through its :class:`GuestMemory`: guest frame
numbers go through the domain's p2m (gfn -> mfn), and every access checks that
the frame is still owned by that domain, raising :class:`PageFault` otherwise.

Simulation corner: Python cannot revoke a ``memoryview``. A view handed out
earlier (a grant mapping, a guest's cached page) keeps pointing at the same
bytes after the frame is freed and reused. Correct code drops its views when
it unmaps; the ownership checks catch every *new* access.

Worked example::

    mem = MachineMemory(64 * PAGE_SIZE)
    p2m = P2M()
    (mfn,) = mem.alloc(DomId(1), 1)
    p2m.set(Gfn(0), mfn)
    gm = GuestMemory(mem, DomId(1), p2m)
    gm.write(Gfn(0), 0, b"hi")        # fine
    gm.read(Gfn(1), 0, 1)              # PageFault: gfn 1 not populated
"""

from __future__ import annotations

import mmap
from array import array
from collections.abc import Callable, Iterable

from hypervisor.errno import Errno, XenError
from hypervisor.types import (
    DOMID_INVALID,
    DOMID_XEN,
    INVALID_MFN,
    PAGE_SHIFT,
    PAGE_SIZE,
    DomId,
    Gfn,
    Mfn,
)

DEFAULT_MACHINE_BYTES = 4 << 30
"""Default machine memory size: 4 GiB, lazily backed."""
MAX_GFN = 1 << 26
"""Largest guest frame number + 1 (a 256 GiB pseudo-physical space)."""

_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux value; 3.11 lacks the name
_ZERO_PAGE = bytes(PAGE_SIZE)


class PageFault(Exception):
    """A domain touched memory it does not own (or that is not populated).

    This is a guest bug seen from the guest's own view; it never changes
    hypervisor state.
    """

    def __init__(self, domid: int, what: str) -> None:
        self.domid = domid
        super().__init__(f"page fault in d{domid}: {what}")


class MachineMemory:
    """All machine frames of the simulated host, and their ownership.

    Args:
        size: bytes of machine memory (rounded down to whole frames); chosen
            by whoever builds the :class:`Hypervisor`.
        path: if given, back the memory with this file (created or resized,
            ``MAP_SHARED``) so an outside process can map the same frames.
    """

    def __init__(self, size: int = DEFAULT_MACHINE_BYTES, path: str | None = None) -> None:
        self.nr_frames = size >> PAGE_SHIFT
        if self.nr_frames <= 0:
            raise ValueError("machine memory must hold at least one frame")
        length = self.nr_frames << PAGE_SHIFT
        self._file = None
        if path is None:
            self._mmap = mmap.mmap(
                -1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
            )
            self._anonymous = True
        else:
            self._file = open(path, "w+b")  # noqa: SIM115 - lives as long as the map
            self._file.truncate(length)
            self._mmap = mmap.mmap(self._file.fileno(), length, flags=mmap.MAP_SHARED)
            self._anonymous = False
        self._mv = memoryview(self._mmap)
        self.move: Callable[[int, int, int], None] = self._mmap.move
        """``move(dest, src, count)``: memmove between machine byte addresses
        (``mfn << PAGE_SHIFT | offset``), hypervisor-internal like :meth:`frame`;
        the caller has checked both ranges lie inside frames it may touch
        (``mmap.move`` itself only refuses ranges outside machine memory)."""
        self.owner = array("H", [DOMID_INVALID]) * self.nr_frames
        self._bump = 0
        self._free: list[int] = []
        self._refs: dict[int, int] = {}
        self._deferred: dict[int, DomId] = {}
        self.allocated = 0
        self.on_deferred_release: Callable[[DomId], None] | None = None

    # -- raw frames (hypervisor only) -------------------------------------------------

    def frame(self, mfn: Mfn) -> memoryview:
        """The 4096 bytes of machine frame ``mfn`` (hypervisor-internal access).

        Args:
            mfn: a machine frame number chosen by the hypervisor.

        Raises:
            IndexError: ``mfn`` is outside machine memory (a hypervisor bug).
        """
        if not 0 <= mfn < self.nr_frames:
            raise IndexError(f"mfn {mfn:#x} outside machine memory")
        off = mfn << PAGE_SHIFT
        return self._mv[off : off + PAGE_SIZE]

    def frames(self, mfn: Mfn, count: int) -> memoryview:
        """The bytes of ``count`` consecutive machine frames from ``mfn`` (one view).

        Args:
            mfn, count: a run of frames chosen by the hypervisor.

        Raises:
            IndexError: the run leaves machine memory (a hypervisor bug).
        """
        if count < 1 or mfn < 0 or mfn + count > self.nr_frames:
            raise IndexError(f"frames [{mfn:#x}, +{count}) outside machine memory")
        off = mfn << PAGE_SHIFT
        return self._mv[off : off + (count << PAGE_SHIFT)]

    # -- allocation ---------------------------------------------------------------------

    def free_frames(self) -> int:
        """How many frames can still be allocated."""
        return len(self._free) + self.nr_frames - self._bump

    def alloc(self, domid: DomId, n: int) -> list[Mfn]:
        """Allocate ``n`` zeroed frames owned by ``domid`` (all or nothing).

        Args:
            domid: the new owner (hypervisor-chosen).
            n: how many frames.

        Returns:
            The machine frame numbers, in allocation order.

        Raises:
            XenError: ENOMEM when machine memory is exhausted.
        """
        if n > self.free_frames():
            raise XenError(Errno.ENOMEM, "machine memory exhausted")
        out: list[Mfn] = []
        free = self._free
        owner = self.owner
        while free and len(out) < n:
            mfn = free.pop()
            owner[mfn] = domid
            out.append(Mfn(mfn))
        if out:
            # Zero reused frames now: a stale, unrevocable view may have written
            # to a frame after it was freed (module docstring).
            self._zero_runs(out)
        rest = n - len(out)
        if rest:
            base = self._bump
            self._bump = base + rest
            owner[base : base + rest] = array("H", [domid]) * rest
            out.extend(Mfn(m) for m in range(base, base + rest))
        self.allocated += n
        return out

    def free(self, mfns: Iterable[Mfn]) -> int:
        """Release frames; referenced ones are deferred until their last ref drops.

        Args:
            mfns: frames currently allocated (hypervisor-chosen).

        Returns:
            How many of them were deferred (still referenced by a mapping).
        """
        batch = list(mfns)
        if len(set(batch)) != len(batch):
            raise RuntimeError("double free within one batch")
        ready: list[int] = []
        deferred = 0
        for mfn in batch:
            prev = self.owner[mfn]
            if prev == DOMID_INVALID or mfn in self._deferred:
                raise RuntimeError(f"double free of mfn {mfn:#x}")
            if self._refs.get(mfn):
                self._deferred[mfn] = DomId(prev)
                self.owner[mfn] = DOMID_XEN
                deferred += 1
            else:
                ready.append(mfn)
        self._release(ready)
        return deferred

    def _release(self, mfns: list[int]) -> None:
        if not mfns:
            return
        if self._anonymous:
            self._zero_runs(mfns)  # give the host its memory back early
        owner = self.owner
        for mfn in mfns:
            owner[mfn] = DOMID_INVALID
        self._free.extend(reversed(mfns))
        self.allocated -= len(mfns)

    def _zero_runs(self, mfns: list[int]) -> None:
        ordered = sorted(mfns)
        start = prev = ordered[0]
        for mfn in [*ordered[1:], -2]:
            if mfn == prev + 1:
                prev = mfn
                continue
            self._zero(start, prev - start + 1)
            start = prev = mfn

    def _zero(self, first: int, count: int) -> None:
        if self._anonymous:
            self._mmap.madvise(mmap.MADV_DONTNEED, first << PAGE_SHIFT, count << PAGE_SHIFT)
        else:
            for mfn in range(first, first + count):
                off = mfn << PAGE_SHIFT
                self._mv[off : off + PAGE_SIZE] = _ZERO_PAGE

    # -- references held by foreign mappings ----------------------------------------------

    def get_ref(self, mfn: Mfn) -> None:
        """Take a reference on an allocated frame (a grant mapping of it)."""
        self._refs[mfn] = self._refs.get(mfn, 0) + 1

    def put_ref(self, mfn: Mfn) -> None:
        """Drop a reference; a deferred frame is freed when its last one goes."""
        left = self._refs[mfn] - 1
        if left:
            self._refs[mfn] = left
            return
        del self._refs[mfn]
        owner = self._deferred.pop(mfn, None)
        if owner is not None:
            self.owner[mfn] = owner  # so _release's bookkeeping sees an allocated frame
            self._release([mfn])
            if self.on_deferred_release is not None:
                self.on_deferred_release(owner)

    def refs(self, mfn: Mfn) -> int:
        """Outstanding mapping references on ``mfn``."""
        return self._refs.get(mfn, 0)

    def deferred_count(self, domid: DomId | None = None) -> int:
        """Frames freed by (``domid``'s) owner but still referenced."""
        if domid is None:
            return len(self._deferred)
        return sum(1 for d in self._deferred.values() if d == domid)

    def close(self) -> None:
        """Release the host mapping (fails if views are still alive)."""
        self._mv.release()
        self._mmap.close()
        if self._file is not None:
            self._file.close()


class P2M:
    """One domain's pseudo-physical to machine map (gfn -> mfn).

    Stored in a growable ``array('I')`` with :data:`INVALID_MFN` in empty
    slots, so a big guest costs 4 bytes per gfn and no Python objects.
    """

    def __init__(self) -> None:
        self._map = array("I")
        self.populated = 0

    def get(self, gfn: int) -> int:
        """The mfn backing ``gfn`` or :data:`INVALID_MFN`."""
        if 0 <= gfn < len(self._map):
            return self._map[gfn]
        return INVALID_MFN

    def set(self, gfn: Gfn, mfn: Mfn) -> None:
        """Back ``gfn`` with ``mfn`` (the slot must be empty)."""
        if not 0 <= gfn < MAX_GFN:
            raise ValueError(f"gfn {gfn:#x} out of range")
        m = self._map
        if gfn >= len(m):
            grow = max(gfn + 1 - len(m), len(m), 64)
            m.extend(array("I", [INVALID_MFN]) * grow)
        if m[gfn] != INVALID_MFN:
            raise ValueError(f"gfn {gfn:#x} already populated")
        m[gfn] = mfn
        self.populated += 1

    def clear(self, gfn: Gfn) -> Mfn:
        """Empty ``gfn``'s slot and return the mfn it held."""
        mfn = self.get(gfn)
        if mfn == INVALID_MFN:
            raise ValueError(f"gfn {gfn:#x} not populated")
        self._map[gfn] = INVALID_MFN
        self.populated -= 1
        return Mfn(mfn)

    def items(self) -> list[tuple[Gfn, Mfn]]:
        """Every populated (gfn, mfn) pair, in gfn order."""
        return [(Gfn(g), Mfn(m)) for g, m in enumerate(self._map) if m != INVALID_MFN]

    def clear_all(self) -> list[Mfn]:
        """Empty the map and return every mfn it held."""
        out = [Mfn(m) for m in self._map if m != INVALID_MFN]
        self._map = array("I")
        self.populated = 0
        return out


class GuestMemory:
    """A domain's only way to touch memory: its own frames, by gfn or mfn.

    Handed to the guest kernel by the toolstack; bound to one domain. Every
    access checks the p2m and frame ownership *now*, so a page ballooned out
    or a domain destroyed faults instead of reaching someone else's bytes.

    Args:
        machine: the host's machine memory.
        domid: the domain this view belongs to.
        p2m: that domain's p2m.
    """

    def __init__(self, machine: MachineMemory, domid: DomId, p2m: P2M) -> None:
        self._machine = machine
        self.domid = domid
        self._p2m = p2m

    def gfn_to_mfn(self, gfn: Gfn) -> Mfn:
        """Translate an own gfn (PV guests know their mfns).

        Raises:
            PageFault: ``gfn`` is not populated or not owned by this domain.
        """
        mfn = self._p2m.get(gfn)
        if mfn == INVALID_MFN:
            raise PageFault(self.domid, f"gfn {gfn:#x} is not populated")
        if self._machine.owner[mfn] != self.domid:
            raise PageFault(self.domid, f"gfn {gfn:#x} -> mfn {mfn:#x} not owned")
        return Mfn(mfn)

    def page(self, gfn: Gfn) -> memoryview:
        """The writable 4096-byte view of own page ``gfn``.

        Args:
            gfn: guest-chosen frame number.

        Raises:
            PageFault: not populated or no longer owned.
        """
        return self._machine.frame(self.gfn_to_mfn(gfn))

    def span(self, gfn: Gfn, count: int) -> memoryview | None:
        """One writable view of own pages ``gfn .. gfn + count - 1``, if they are
        backed by consecutive machine frames (pages populated together usually
        are); None otherwise.

        Like a kernel mapping a physically contiguous buffer once: a copy into
        or out of the whole run is then one ``memcpy`` instead of one per page.
        Ownership is checked now, as for :meth:`page`; the view is as
        unrevocable as any other.

        Args:
            gfn: first guest-chosen frame number.
            count: pages (>= 1).

        Raises:
            PageFault: a page is not populated or no longer owned.
        """
        if count < 1:
            raise ValueError("a span holds at least one page")
        first = self.gfn_to_mfn(gfn)
        contiguous = True
        for i in range(1, count):
            if self.gfn_to_mfn(Gfn(gfn + i)) != first + i:
                contiguous = False
        if not contiguous:
            return None
        return self._machine.frames(first, count)

    def frame(self, mfn: Mfn) -> memoryview:
        """The view of an own machine frame (shared_info, grant-table frames).

        Args:
            mfn: guest-supplied machine frame number.

        Raises:
            PageFault: the frame is not owned by this domain.
        """
        if not 0 <= mfn < self._machine.nr_frames or self._machine.owner[mfn] != self.domid:
            raise PageFault(self.domid, f"mfn {mfn:#x} not owned")
        return self._machine.frame(mfn)

    def read(self, gfn: Gfn, offset: int, length: int) -> bytes:
        """Copy ``length`` bytes at ``offset`` of own page ``gfn``.

        Raises:
            PageFault: bad page, or the range leaves the page.
        """
        if offset < 0 or length < 0 or offset + length > PAGE_SIZE:
            raise PageFault(self.domid, f"access [{offset}, +{length}) crosses gfn {gfn:#x}")
        return bytes(self.page(gfn)[offset : offset + length])

    def write(self, gfn: Gfn, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at ``offset`` of own page ``gfn``.

        Raises:
            PageFault: bad page, or the range leaves the page.
        """
        n = len(data)
        if offset < 0 or offset + n > PAGE_SIZE:
            raise PageFault(self.domid, f"access [{offset}, +{n}) crosses gfn {gfn:#x}")
        self.page(gfn)[offset : offset + n] = data

    def read_gaddr(self, gaddr: int, length: int) -> bytes:
        """Read ``length`` bytes at guest-physical address ``gaddr`` (may span pages)."""
        out = bytearray()
        while length > 0:
            off = gaddr & (PAGE_SIZE - 1)
            n = min(length, PAGE_SIZE - off)
            out += self.read(Gfn(gaddr >> PAGE_SHIFT), off, n)
            gaddr += n
            length -= n
        return bytes(out)

    def write_gaddr(self, gaddr: int, data: bytes) -> None:
        """Write ``data`` at guest-physical address ``gaddr`` (may span pages)."""
        mv = memoryview(data)
        while mv:
            off = gaddr & (PAGE_SIZE - 1)
            n = min(len(mv), PAGE_SIZE - off)
            self.write(Gfn(gaddr >> PAGE_SHIFT), off, mv[:n])
            gaddr += n
            mv = mv[n:]

    @property
    def nr_populated(self) -> int:
        """How many gfns are populated."""
        return self._p2m.populated
