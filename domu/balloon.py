"""Guest kernel: the balloon driver (Linux ``drivers/xen/balloon.c`` and ``xen-balloon.c``).

Theory of operation
-------------------
The toolstack sets a domain's memory target in ``memory/target``, in KiB
(``xl mem-set``, :meth:`~dom0.host.DomainHandle.set_memory_target`). The
balloon watches that key and converts it to pages (``KiB / 4``). Its worker
compares the target with the domain's current reservation (its populated
pages, ``XENMEM_current_reservation``, which is what ``xl list`` shows as
Mem) and moves at most :data:`BATCH` pages per pass, yielding between passes:

* over target (balloon *out*): take free pages from the kernel's page
  allocator and give them back to Xen with ``XENMEM_decrease_reservation``;
  their gfns go into the balloon;
* under target (balloon *in*): repopulate gfns from the balloon with
  ``XENMEM_populate_physmap`` and give the pages to the allocator.

At boot the gfns between the domain's initial memory and
``memory/static-max`` (xl.cfg ``maxmem``) start out in the balloon, as Linux
PV puts its extra memory region there: a domain created with ``memory`` below
``maxmem`` can be grown up to ``maxmem``, and never past it.

When it cannot make progress it backs off, as Linux does: it never takes the
allocator's last :data:`RESERVE_PAGES` free pages (Linux allocates balloon
pages with ``__GFP_NORETRY``, giving up rather than pushing the kernel into
OOM), and when Xen refuses pages (over ``max_pages``, machine memory
exhausted) it stops. Either way it retries after ``schedule_delay`` seconds,
which doubles with each fruitless wait from 1 s up to :data:`MAX_SCHEDULE_DELAY`
(32 s, Linux's ``max_schedule_delay``) and goes back to 1 s once the target is
reached; a new target makes it try again at once.

Differences from Linux, on purpose: when the target is above what the
balloon holds (past ``maxmem``) Linux keeps retrying; xensim stops there
(neither has memory hotplug here). A target that is not a decimal number is
ignored (Linux's ``scanf`` fails and returns). There is no sysfs:
``guest.balloon`` exposes :attr:`Balloon.current_kb`,
:attr:`Balloon.target_kb`, :attr:`Balloon.ballooned_kb` and the counters.
No self-ballooning.

Usage (the guest kernel does this at boot)::

    balloon = Balloon(hc, pages, await extra_memory(xs, home, hc))
    await nursery.start(balloon.run)
    await nursery.start(balloon.watch_target, xs, f"/local/domain/{domid}")
"""

from __future__ import annotations

import logging

import trio

from domu.frontends.bus import PageAllocator
from domu.sync import Kick
from domu.xenstore import XenStoreClient, read_or_none
from hypervisor.errno import XenError
from hypervisor.hypercall import HypercallInterface
from hypervisor.memory import MAX_GFN
from hypervisor.types import Gfn

_log = logging.getLogger(__name__)

PAGE_KIB = 4
"""KiB per page (``memory/target`` is in KiB)."""

BATCH = 512
"""Pages moved per pass (Linux: one page of ``xen_pfn_t`` frame numbers)."""

RESERVE_PAGES = 16
"""Free pages the balloon always leaves to the kernel's allocator (rings, buffers)."""

MAX_SCHEDULE_DELAY = 32.0
"""Longest wait, in seconds, before retrying a balloon that could not make progress."""

_MAX_TARGET_KIB = 1 << 40
"""Targets above this many KiB are treated as garbage (not a number a toolstack writes)."""


class Balloon:
    """The guest kernel's balloon: moves pages between Xen and the page allocator.

    Args:
        hc: the guest's hypercall interface.
        pages: the kernel's page allocator (free pages are taken from it and
            given back to it).
        extra: gfns above the domain's initial memory, up to its static
            maximum, that start out in the balloon (never populated).

    Attributes:
        target_pages: the target, in pages (None until ``memory/target`` was read).
        schedule_delay: seconds before the next retry when stuck.
        retries: passes that could not make progress.
        pages_out, pages_in: pages given to and taken back from Xen so far.
        bad_targets: ``memory/target`` values that were not a decimal number.
    """

    def __init__(self, hc: HypercallInterface, pages: PageAllocator,
                 extra: range = range(0)) -> None:
        self.hc = hc
        self.pages = pages
        self._ballooned: list[Gfn] = []  # gfns given back to Xen, most recent last
        self._extra = extra  # never populated; taken from the low end
        self.target_pages: int | None = None
        self.schedule_delay = 1.0
        self.retries = 0
        self.pages_out = 0
        self.pages_in = 0
        self.bad_targets = 0
        self._kick = Kick()

    # -- what sysfs shows in Linux -----------------------------------------------------------

    @property
    def current_kb(self) -> int:
        """The domain's current reservation, in KiB."""
        return self.hc.current_reservation() * PAGE_KIB

    @property
    def target_kb(self) -> int | None:
        """The target the balloon is working towards, in KiB (None before the first read)."""
        return None if self.target_pages is None else self.target_pages * PAGE_KIB

    @property
    def ballooned_kb(self) -> int:
        """KiB the balloon holds: pages given back to Xen plus the unpopulated extra region."""
        return (len(self._ballooned) + len(self._extra)) * PAGE_KIB

    # -- the target ------------------------------------------------------------------------------

    def set_target(self, pages: int) -> None:
        """Aim for ``pages`` populated pages (``balloon_set_new_target``); wakes the worker."""
        self.target_pages = max(pages, 0)
        self._kick.set()

    async def watch_target(self, xs: XenStoreClient, home: str, *,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                           ) -> None:
        """Follow ``<home>/memory/target`` (toolstack-written KiB) until cancelled."""
        path = f"{home}/memory/target"
        async with xs.watch(path, token="balloon-target") as w:
            task_status.started()
            async for _ in w:
                raw = await read_or_none(xs, path)
                if raw is None:
                    continue  # not set (yet): nothing to aim for, as Linux
                text = raw.decode("ascii", "replace")
                if not text.isdigit() or len(text) > 14 or int(text) > _MAX_TARGET_KIB:
                    self.bad_targets += 1
                    _log.warning("d%d: ignoring memory/target %r", self.hc.domid, text[:40])
                    continue
                self.set_target(int(text) // PAGE_KIB)

    # -- the worker ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Move pages towards the target whenever it changes (Linux's ``balloon_process``)."""
        task_status.started()
        while True:
            await self._kick.wait()
            while not await self.process():
                self.retries += 1
                with trio.move_on_after(self.schedule_delay) as waited:
                    await self._kick.wait()  # a new target: try again at once
                if waited.cancelled_caught:
                    self.schedule_delay = min(self.schedule_delay * 2, MAX_SCHEDULE_DELAY)
            self.schedule_delay = 1.0  # done: the next stall starts from 1 s again

    async def process(self) -> bool:
        """Move pages in passes of at most :data:`BATCH` until done or stuck.

        Returns:
            True when there is nothing (more) to do: at the target, no target
            yet, or the target lies past what the balloon holds. False when
            stuck: retry later.
        """
        while True:
            if self.target_pages is None:
                return True
            credit = self.target_pages - self.hc.current_reservation()
            if credit > 0:
                progress = self._increase(min(credit, BATCH))
            elif credit < 0:
                progress = self._decrease(min(-credit, BATCH))
            else:
                return True
            if progress is not None:
                return progress
            await trio.lowlevel.checkpoint()  # bounded work per pass

    def _increase(self, n: int) -> bool | None:
        """Repopulate up to ``n`` ballooned gfns and free them to the allocator.

        The gfns ballooned out most recently come back first, then the extra
        region from its low end. Returns None when every gfn asked for came
        back (:meth:`process` goes on), True when the balloon is empty, False
        when Xen refused some (stuck).
        """
        from_list = self._ballooned[-n:][::-1]
        from_extra = self._extra[: n - len(from_list)]
        gfns = from_list + [Gfn(g) for g in from_extra]
        if not gfns:
            return True  # past what the balloon holds: no memory hotplug
        try:
            done = self.hc.populate_physmap(gfns)
        except XenError as exc:  # not even one (over max_pages, no machine memory)
            _log.info("d%d: balloon: Xen gave no page back: %s", self.hc.domid, exc)
            return False
        used_list = min(done, len(from_list))
        if used_list:
            del self._ballooned[-used_list:]
        self._extra = self._extra[done - used_list :]
        for g in gfns[:done]:
            self.pages.free(g)
        self.pages_in += done
        return None if done == len(gfns) else False

    def _decrease(self, n: int) -> bool | None:
        """Give up to ``n`` free pages back to Xen.

        Returns None when all ``n`` went (:meth:`process` goes on), False
        when the allocator's reserve or Xen stopped it (stuck).
        """
        k = min(n, self.pages.free_count - RESERVE_PAGES)
        if k <= 0:
            return False  # the kernel needs what is left: try again later
        gfns = self.pages.take(k)
        done = self.hc.decrease_reservation(gfns)
        self._ballooned += gfns[:done]
        for g in gfns[done:]:
            self.pages.free(g)
        self.pages_out += done
        return None if done == n else False


async def extra_memory(xs: XenStoreClient, home: str, hc: HypercallInterface) -> range:
    """The gfns between the domain's boot memory and ``memory/static-max`` (xl.cfg
    ``maxmem``): they start out in the balloon, as Linux PV's extra memory region.

    Empty when ``static-max`` is missing, not a number, or not above the boot
    memory; never past :data:`~hypervisor.memory.MAX_GFN`.
    """
    raw = await read_or_none(xs, f"{home}/memory/static-max")
    nr = hc.current_reservation()
    if raw is None or not raw.isdigit() or len(raw) > 12:
        return range(nr, nr)
    return range(nr, max(nr, min(int(raw) // PAGE_KIB, MAX_GFN)))
