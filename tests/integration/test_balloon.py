"""The guest balloon driver: ``xl mem-set`` moves a domain's memory, within its bounds."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from dom0.host import DomainHandle, Host
from dom0.testing import GuestFactory
from domu.balloon import MAX_SCHEDULE_DELAY, RESERVE_PAGES, Balloon
from domu.guest import Guest

MIB = 1024  # KiB


async def boot(guest_factory: GuestFactory, **fields: object) -> tuple[DomainHandle, Balloon]:
    """A guest that idles, and its balloon (once its program runs)."""
    box: list[Balloon] = []

    async def idle(guest: Guest) -> None:
        assert guest.balloon is not None
        box.append(guest.balloon)
        await trio.sleep_forever()

    dom = await guest_factory(idle, **fields)
    await wait_all_tasks_blocked()
    return dom, box[0]


async def settle(dom: DomainHandle, kib: int) -> None:
    await dom.set_memory_target(kib)
    await wait_all_tasks_blocked()


async def test_mem_set_shrinks_and_grows_up_to_maxmem(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, balloon = await boot(guest_factory, memory=8, maxmem=16)
    # the memory between `memory` and `maxmem` starts in the balloon (Linux PV)
    assert (dom.memory_kib, balloon.target_kb, balloon.ballooned_kb) == (8 * MIB, 8 * MIB, 8 * MIB)
    free_at_boot = xen_host.hv.machine.free_frames()

    await settle(dom, 6 * MIB)
    assert dom.memory_kib == balloon.current_kb == 6 * MIB
    assert balloon.ballooned_kb == 10 * MIB and balloon.pages_out == 512
    assert xen_host.hv.machine.free_frames() == free_at_boot + 512  # back in Xen's heap
    row = next(r for r in xen_host.list() if r.domid == dom.domid)
    assert row.mem_mib == 6  # xl list's Mem column

    await settle(dom, 12 * MIB)  # the pages ballooned out, then the extra region
    assert dom.memory_kib == 12 * MIB and balloon.ballooned_kb == 4 * MIB
    await settle(dom, 16 * MIB)
    assert dom.memory_kib == 16 * MIB and balloon.ballooned_kb == 0
    assert balloon.retries == 0 and balloon.pages_in == 512 + 2048
    with pytest.raises(ValueError, match="static-max"):
        await dom.set_memory_target(17 * MIB)
    with pytest.raises(ValueError, match="1 MiB"):
        await dom.set_memory_target(1000)
    assert dom.memory_kib == 16 * MIB  # a refused target changes nothing

    # every page the allocator holds is populated and usable
    pages = balloon.pages
    for gfn in pages.take(pages.free_count):
        view = pages.hc.memory.page(gfn)
        view[:4] = b"used"
        pages.free(gfn)


async def test_the_kernel_keeps_a_reserve_and_the_balloon_retries(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, balloon = await boot(guest_factory, memory=8)
    held = balloon.pages.take(balloon.pages.free_count - 100)  # the kernel uses most pages
    await settle(dom, 1 * MIB)  # far below what it can give
    assert balloon.pages.free_count == RESERVE_PAGES
    stuck_at = dom.memory_kib
    assert stuck_at > 1 * MIB and balloon.retries == 1
    await trio.sleep(200)  # it keeps trying, backing off from 1 s up to 32 s
    assert balloon.schedule_delay == MAX_SCHEDULE_DELAY
    assert 10 <= balloon.retries <= 12 and dom.memory_kib == stuck_at
    gfn, _view = balloon.pages.alloc()  # the reserve is there for the kernel
    balloon.pages.free(gfn)
    # pages the kernel frees go to the balloon at its next retry
    for g in held[:8]:
        balloon.pages.free(g)
    await trio.sleep(MAX_SCHEDULE_DELAY + 1)
    assert dom.memory_kib == stuck_at - 8 * 4
    # a new target wakes it at once, with the delay reset
    for g in held[8:]:
        balloon.pages.free(g)
    await settle(dom, 8 * MIB)
    assert dom.memory_kib == 8 * MIB and balloon.schedule_delay == 1.0


async def test_a_bad_target_is_ignored(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, balloon = await boot(guest_factory, memory=8)
    target = f"/local/domain/{dom.domid}/memory/target"
    for junk in ("lots", "-5", "", "9" * 30):
        await xen_host.kernel.xs.write(target, junk)
        await wait_all_tasks_blocked()
    assert balloon.bad_targets == 4 and balloon.target_kb == 8 * MIB
    assert dom.memory_kib == 8 * MIB
    await settle(dom, 4 * MIB)
    assert dom.memory_kib == 4 * MIB


async def test_xen_refusing_pages_stalls_the_balloon_until_it_may(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, balloon = await boot(guest_factory, memory=8)
    await settle(dom, 4 * MIB)
    assert dom.domid is not None
    # the target says 8 MiB but Xen's ceiling stays at 5 MiB
    await xen_host.kernel.xs.write(f"/local/domain/{dom.domid}/memory/target", str(8 * MIB))
    xen_host.kernel.hc.domctl_max_mem(dom.domid, 5 * MIB)
    await wait_all_tasks_blocked()
    assert dom.memory_kib == 5 * MIB and balloon.retries >= 1
    xen_host.kernel.hc.domctl_max_mem(dom.domid, 9 * MIB)
    await trio.sleep(MAX_SCHEDULE_DELAY + 1)  # the next retry gets the rest
    assert dom.memory_kib == 8 * MIB
