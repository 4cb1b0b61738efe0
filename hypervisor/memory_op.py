"""``HYPERVISOR_memory_op`` reservation operations (ballooning).

A domain's RAM is ``tot_pages`` populated gfns, never more than
``max_pages``. ``populate_physmap`` backs guest-chosen gfns with fresh zeroed
frames, ``increase_reservation`` does the same at the lowest free gfns (a PV
guest would then update its own p2m; here the hypervisor keeps the p2m),
``decrease_reservation`` gives frames back (a frame still grant-mapped by
another domain is only really freed when that mapping goes).

Return values follow Xen: the number of extents completed, stopping at the
first one that cannot be done (over ``max_pages``, machine memory exhausted,
bad or already-populated gfn). Where not even the first extent of a
populate/increase could be done the call fails with ENOMEM (over the limit)
or EINVAL (bad gfn) instead of returning 0, so callers cannot miss it.
An extent order larger than the caller may use is refused up front with
EINVAL, so a hostile order never makes the hypervisor loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from hypervisor.errno import Errno, XenError
from hypervisor.memory import MAX_GFN
from hypervisor.types import DOMID_SELF, INVALID_MFN, Gfn, Mfn

if TYPE_CHECKING:
    from hypervisor.domain import Domain
    from hypervisor.memory import MachineMemory

XENMEM_increase_reservation = 0
XENMEM_decrease_reservation = 1
XENMEM_current_reservation = 3
XENMEM_maximum_reservation = 4
XENMEM_populate_physmap = 6

DOMU_MAX_ORDER = 9
CTLDOM_MAX_ORDER = 12


def max_order(d: Domain) -> int:
    """Largest extent order ``d`` may request (Xen's CONFIG_*_MAX_ORDER)."""
    return CTLDOM_MAX_ORDER if d.privileged else DOMU_MAX_ORDER


class MemoryOps:
    """Reservation operations.

    Args:
        machine: machine memory.
        lookup: domid -> Domain or None.
    """

    def __init__(self, machine: MachineMemory, lookup: Callable[[int], Domain | None]) -> None:
        self._machine = machine
        self._lookup = lookup

    def _target(self, caller: Domain, domid: int) -> Domain:
        d = caller if domid in (DOMID_SELF, caller.domid) else self._lookup(domid)
        if d is None:
            raise XenError(Errno.ESRCH, f"no domain {domid}")
        if d.dying:
            raise XenError(Errno.EINVAL, "domain is dying")
        return d

    def _check_order(self, caller: Domain, extent_order: int) -> int:
        if not 0 <= extent_order <= max_order(caller):
            raise XenError(Errno.EINVAL, f"extent order {extent_order} too large")
        return 1 << extent_order

    def populate(self, d: Domain, gfns: Sequence[int], extent_order: int) -> int:
        """Back each extent starting at ``gfns[i]``; return extents done.

        Hypervisor-internal entry (no privilege/order checks): also used by
        domain creation.
        """
        n = 1 << extent_order
        done = 0
        first_error: XenError | None = None
        for base in gfns:
            if not (base >= 0 and base + n <= MAX_GFN) or any(
                    d.p2m.get(g) != INVALID_MFN for g in range(base, base + n)):
                first_error = XenError(Errno.EINVAL, f"gfn {base:#x} bad or populated")
                break
            if d.tot_pages + n > d.max_pages:
                first_error = XenError(Errno.ENOMEM, "over max_pages")
                break
            try:
                mfns = self._machine.alloc(d.domid, n)
            except XenError as e:
                first_error = e
                break
            for i, mfn in enumerate(mfns):
                d.p2m.set(Gfn(base + i), mfn)
            done += 1
        if done == 0 and first_error is not None:
            raise first_error
        return done

    def populate_physmap(self, caller: Domain, domid: int, gfns: Sequence[int],
                         extent_order: int = 0) -> int:
        """``XENMEM_populate_physmap``.

        Args:
            caller: calling domain (privilege for another domid already checked).
            domid: target (DOMID_SELF allowed).
            gfns: guest-chosen first gfn of each extent.
            extent_order: log2 pages per extent.

        Returns:
            Extents completed.

        Raises:
            XenError: ESRCH; EINVAL bad order/gfn or dying; ENOMEM nothing fit.
        """
        d = self._target(caller, domid)
        self._check_order(caller, extent_order)
        return self.populate(d, gfns, extent_order)

    def increase_reservation(self, caller: Domain, domid: int, nr_extents: int,
                             extent_order: int = 0) -> list[Gfn]:
        """``XENMEM_increase_reservation``: extents at the lowest free gfns.

        Returns:
            The first gfn of every extent done.

        Raises:
            XenError: ESRCH; EINVAL bad order/count; ENOMEM nothing fit.
        """
        d = self._target(caller, domid)
        n = self._check_order(caller, extent_order)
        if nr_extents < 0:
            raise XenError(Errno.EINVAL, "negative extent count")
        room = (d.max_pages - d.tot_pages) // n
        todo = min(nr_extents, max(room, 0))
        if nr_extents and not todo:
            raise XenError(Errno.ENOMEM, "over max_pages")
        bases: list[Gfn] = []
        g = 0
        while len(bases) < todo and g + n <= MAX_GFN:
            if all(d.p2m.get(x) == INVALID_MFN for x in range(g, g + n)):
                bases.append(Gfn(g))
            g += n
        done = self.populate(d, bases, extent_order) if bases else 0
        return bases[:done]

    def decrease_reservation(self, caller: Domain, domid: int, gfns: Sequence[int],
                             extent_order: int = 0) -> int:
        """``XENMEM_decrease_reservation``: give extents back (balloon out).

        Returns:
            Extents completed (stops at the first unpopulated gfn).

        Raises:
            XenError: ESRCH; EINVAL bad order or dying.
        """
        d = self._target(caller, domid)
        n = self._check_order(caller, extent_order)
        done = 0
        for base in gfns:
            if not 0 <= base <= MAX_GFN - n or any(
                    d.p2m.get(g) == INVALID_MFN for g in range(base, base + n)):
                break
            mfns: list[Mfn] = [d.p2m.clear(Gfn(g)) for g in range(base, base + n)]
            d.deferred_frames += self._machine.free(mfns)
            done += 1
        return done

    def current_reservation(self, caller: Domain, domid: int) -> int:
        """``XENMEM_current_reservation``: pages populated."""
        return self._target(caller, domid).tot_pages

    def maximum_reservation(self, caller: Domain, domid: int) -> int:
        """``XENMEM_maximum_reservation``: ``max_pages``."""
        return self._target(caller, domid).max_pages
