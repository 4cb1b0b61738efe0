"""Domain lifecycle: domids, pause, shutdown, info flags, start_info, destroy."""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing

from hypervisor import grant_table as gt
from hypervisor.domain import (
    DomainConfig,
    DomainTable,
    ShutdownReason,
    XEN_DOMINF_blocked,
    XEN_DOMINF_dying,
    XEN_DOMINF_paused,
    XEN_DOMINF_running,
    XEN_DOMINF_shutdown,
)
from hypervisor.errno import Errno, XenError
from hypervisor.event_channel import VIRQ_DOM_EXC
from hypervisor.hypercall import HypercallInterface
from hypervisor.hypervisor import Hypervisor
from hypervisor.types import DOMID_FIRST_RESERVED
from hypervisor.vcpu import DomainDestroyed

from .conftest import MakeDomU


def errno_of(fn, *args) -> Errno:  # type: ignore[no-untyped-def]
    with pytest.raises(XenError) as ei:
        fn(*args)
    return ei.value.errno


def test_dom0_at_boot(hv: Hypervisor, dom0: HypercallInterface) -> None:
    info = dom0.domctl_getdomaininfo(0)
    assert info.domid == 0 and info.name == "Domain-0" and info.tot_pages == 64
    assert info.flags & XEN_DOMINF_running and not info.flags & XEN_DOMINF_paused
    assert dom0.start_info.flags == 3  # SIF_PRIVILEGED | SIF_INITDOMAIN
    assert dom0.xen_version() == (4 << 16) | 17


def test_domids_come_from_a_rover(dom0: HypercallInterface) -> None:
    a = dom0.domctl_createdomain(DomainConfig())
    b = dom0.domctl_createdomain(DomainConfig())
    assert (a, b) == (1, 2)
    dom0.domctl_destroydomain(a)
    assert dom0.domctl_createdomain(DomainConfig()) == 3  # not reused lowest-first
    assert errno_of(dom0.domctl_createdomain, DomainConfig(domid=2)) == Errno.EEXIST
    assert errno_of(dom0.domctl_createdomain, DomainConfig(domid=DOMID_FIRST_RESERVED)) \
        == Errno.EINVAL
    assert dom0.domctl_createdomain(DomainConfig(domid=0x7FEF)) == 0x7FEF


def test_rover_wraps_and_exhausts() -> None:
    t = DomainTable()

    class Fake:
        def __init__(self, domid: int) -> None:
            self.domid = domid

    t._rover = 0x7FEE
    ids = []
    for _ in range(3):
        d = t.allocate_id(0)
        t.add(Fake(d))  # type: ignore[arg-type]
        ids.append(d)
    assert ids == [0x7FEF, 1, 2]
    for i in range(3, DOMID_FIRST_RESERVED):
        t.add(Fake(i))  # type: ignore[arg-type]
    assert errno_of(t.allocate_id, 0) == Errno.ENOMEM


def test_pause_counts(dom0: HypercallInterface, make_domu: MakeDomU) -> None:
    g = make_domu(unpause=False)
    info = dom0.domctl_getdomaininfo(g.domid)
    assert info.flags & XEN_DOMINF_paused
    dom0.domctl_unpausedomain(g.domid)
    assert errno_of(dom0.domctl_unpausedomain, g.domid) == Errno.EINVAL
    for _ in range(255):
        dom0.domctl_pausedomain(g.domid)
    assert errno_of(dom0.domctl_pausedomain, g.domid) == Errno.EOVERFLOW
    assert errno_of(dom0.domctl_pausedomain, 0) == Errno.EINVAL  # oneself
    assert errno_of(dom0.domctl_destroydomain, 0) == Errno.EINVAL
    assert errno_of(dom0.domctl_pausedomain, 999) == Errno.ESRCH


def test_shutdown_first_reason_wins_and_raises_dom_exc(hv: Hypervisor, dom0: HypercallInterface,
                                                       make_domu: MakeDomU) -> None:
    port = dom0.evtchn_bind_virq(VIRQ_DOM_EXC)
    words = dom0.shared_info.cast("Q")
    g = make_domu()
    g.sched_shutdown_code(ShutdownReason.CRASH)
    g.sched_shutdown(ShutdownReason.REBOOT)
    assert words[256] >> port & 1
    words[256] = 0
    g.sched_shutdown(ShutdownReason.POWEROFF)  # already shut down: no new event
    assert not words[256] >> port & 1
    info = dom0.domctl_getdomaininfo(g.domid)
    assert info.flags & XEN_DOMINF_shutdown and info.shutdown_reason == ShutdownReason.CRASH
    assert info.xl_state() == "---sc-"
    assert errno_of(g.sched_shutdown, 9) == Errno.EINVAL
    dom0.domctl_resumedomain(g.domid)
    assert not dom0.domctl_getdomaininfo(g.domid).flags & XEN_DOMINF_shutdown
    h = make_domu()
    dom0.sched_remote_shutdown(h.domid, ShutdownReason.SUSPEND)
    assert dom0.domctl_getdomaininfo(h.domid).xl_state() == "---ss-"
    assert errno_of(g.sched_remote_shutdown, h.domid, 0) == Errno.EPERM
    assert errno_of(g.sched_remote_shutdown, 999, 0) == Errno.EPERM
    assert errno_of(dom0.sched_remote_shutdown, 999, 0) == Errno.ESRCH


async def test_destroy_wakes_blocked_tasks_with_domain_destroyed(
        hv: Hypervisor, dom0: HypercallInterface, make_domu: MakeDomU) -> None:
    g = make_domu()
    caught: list[BaseException] = []

    async def guest_vcpu() -> None:
        try:
            await g.sched_block()
        except DomainDestroyed as e:
            caught.append(e)

    async with trio.open_nursery() as n:
        n.start_soon(guest_vcpu)
        await trio.testing.wait_all_tasks_blocked()
        info = dom0.domctl_getdomaininfo(g.domid)
        assert info.flags & XEN_DOMINF_blocked and info.xl_state() == "-b----"
        dom0.domctl_destroydomain(g.domid)
    assert len(caught) == 1
    with pytest.raises(DomainDestroyed):
        g.evtchn_alloc_unbound(0)
    assert hv.resource_counts()["waiting_tasks"] == 0


def test_create_destroy_leaks_nothing(hv: Hypervisor, dom0: HypercallInterface) -> None:
    base = hv.resource_counts()
    for _ in range(200):
        d = dom0.domctl_createdomain(DomainConfig(nr_pages=8, max_pages=8, max_vcpus=2))
        g = hv.interface(d)
        g.evtchn_alloc_unbound(0)
        dom0.evtchn_alloc_unbound(d)
        dom0.domctl_destroydomain(d)
    assert hv.resource_counts()["ports"] == base["ports"] + 200  # dom0's unbound ports stay
    dom0.evtchn_reset()
    assert hv.resource_counts() == base
    hv.check_invariants()


def test_create_fails_cleanly_when_memory_runs_out(dom0: HypercallInterface,
                                                   hv: Hypervisor) -> None:
    base = hv.resource_counts()
    big = hv.machine.nr_frames
    assert errno_of(dom0.domctl_createdomain,
                    DomainConfig(nr_pages=big, max_pages=big)) == Errno.ENOMEM
    assert errno_of(dom0.domctl_createdomain, DomainConfig(nr_pages=9, max_pages=8)) \
        == Errno.ENOMEM
    assert errno_of(dom0.domctl_createdomain, DomainConfig(max_vcpus=33)) == Errno.EINVAL
    assert hv.resource_counts() == base


def test_start_info_layout(dom0: HypercallInterface, make_domu: MakeDomU) -> None:
    g = make_domu(cmdline="console=hvc0")
    dom0.domctl_setstartinfo(g.domid, store_mfn=0x1234, store_evtchn=5,
                             console_mfn=0x5678, console_evtchn=6)
    assert errno_of(lambda: dom0.domctl_setstartinfo(g.domid, nr_pages=1)) == Errno.EINVAL
    raw = g.start_info.pack()
    assert len(raw) == 1168
    assert raw[:14] == b"xen-3.0-x86_64"
    assert struct.unpack_from("<Q", raw, 32)[0] == 16  # nr_pages
    assert struct.unpack_from("<Q", raw, 40)[0] % 4096 == 0  # shared_info machine address
    assert struct.unpack_from("<I", raw, 48)[0] == 0  # flags: unprivileged
    assert struct.unpack_from("<QI", raw, 56) == (0x1234, 5)
    assert struct.unpack_from("<Q", raw, 72)[0] == 0x5678
    assert struct.unpack_from("<I", raw, 80)[0] == 6
    assert raw[128:140] == b"console=hvc0"


def test_getdomaininfolist(dom0: HypercallInterface, make_domu: MakeDomU) -> None:
    make_domu()
    make_domu()
    assert [i.domid for i in dom0.sysctl_getdomaininfolist()] == [0, 1, 2]
    assert [i.domid for i in dom0.sysctl_getdomaininfolist(1, 1)] == [1]


def test_dying_flag_on_zombie(hv: Hypervisor, dom0: HypercallInterface,
                              make_domu: MakeDomU) -> None:
    from domu.gnttab import GrantTableClient

    g = make_domu()
    ref = GrantTableClient(g).grant_access(0, 1)
    m = dom0.grant_map_one(g.domid, ref)
    dom0.domctl_destroydomain(g.domid)
    dom0.domctl_destroydomain(g.domid)  # idempotent on a zombie
    info = dom0.domctl_getdomaininfo(g.domid)
    assert info.flags & XEN_DOMINF_dying and not info.flags & XEN_DOMINF_running
    assert errno_of(dom0.domctl_pausedomain, g.domid) == Errno.EINVAL
    d2 = dom0.domctl_createdomain(DomainConfig())
    assert d2 != g.domid  # a zombie keeps its domid
    dom0.grant_unmap_one(m.handle)
    hv.check_invariants()


def test_new_domain_starts_paused_with_count_one(hv: Hypervisor, dom0: HypercallInterface,
                                                 make_domu: MakeDomU) -> None:
    g = make_domu(unpause=False)
    d = hv.domains.get(g.domid)
    assert d is not None and d.pause_count == 1 and not d.runnable
    assert dom0.domctl_getdomaininfo(g.domid).xl_state() == "--p---"
    dom0.domctl_pausedomain(g.domid)
    dom0.domctl_unpausedomain(g.domid)
    assert d.pause_count == 1  # nested pauses need matching unpauses
    dom0.domctl_unpausedomain(g.domid)
    assert d.pause_count == 0 and d.runnable


def test_rover_in_a_live_hypervisor_wraps_below_reserved_ids(hv: Hypervisor,
                                                             dom0: HypercallInterface) -> None:
    first = dom0.domctl_createdomain(DomainConfig())
    hv.domains._rover = DOMID_FIRST_RESERVED - 2  # knob: jump to the end of the id space
    ids = [dom0.domctl_createdomain(DomainConfig()) for _ in range(3)]
    assert ids == [DOMID_FIRST_RESERVED - 1, first + 1, first + 2]  # skips the id in use
    assert all(0 < i < DOMID_FIRST_RESERVED for i in ids)
    hv.check_invariants()


def test_domain_table_full_gives_enomem(hv: Hypervisor, dom0: HypercallInterface,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hypervisor.domain.DOMID_FIRST_RESERVED", 4)
    assert [dom0.domctl_createdomain(DomainConfig()) for _ in range(3)] == [1, 2, 3]
    base = hv.resource_counts()
    assert errno_of(dom0.domctl_createdomain, DomainConfig()) == Errno.ENOMEM
    assert hv.resource_counts() == base  # nothing half-built is left behind
    dom0.domctl_destroydomain(2)
    assert dom0.domctl_createdomain(DomainConfig()) == 2  # the only free id


def test_dom_exc_on_shutdown_destroy_and_final_free(hv: Hypervisor, dom0: HypercallInterface,
                                                    make_domu: MakeDomU) -> None:
    from domu.evtchn import EventDispatcher

    disp = EventDispatcher(dom0)
    port = dom0.evtchn_bind_virq(VIRQ_DOM_EXC)
    seen: list[int] = []
    disp.bind(port, seen.append)
    g = make_domu()
    g.sched_shutdown(ShutdownReason.POWEROFF)
    disp.do_upcall()
    assert seen == [port]
    dom0.domctl_destroydomain(g.domid)  # relinquish + final free: two raises, one edge
    assert disp.do_upcall() == 1
    assert hv.statistics()[0]["evtchn.deliver"] + hv.statistics()[0]["evtchn.coalesced"] == 3


def test_destroy_releases_every_frame_port_and_grant(hv: Hypervisor, dom0: HypercallInterface,
                                                     make_domu: MakeDomU) -> None:
    from domu.gnttab import GrantTableClient

    base = hv.resource_counts()
    backend = make_domu(name="backend")
    g = make_domu(name="guest", max_vcpus=2, max_grant_frames=4)
    # ports of every kind
    p0 = dom0.evtchn_alloc_unbound(g.domid)
    g.evtchn_bind_interdomain(0, p0)
    g.evtchn_alloc_unbound(backend.domid)
    g.evtchn_bind_ipi(1)
    g.evtchn_bind_virq(0, 1)
    # grants in both directions, and a grown grant table
    gc, bc = GrantTableClient(g), GrantTableClient(backend)
    refs = [gc.grant_access(backend.domid, i % 16) for i in range(600)]
    maps = [backend.grant_map_one(g.domid, r) for r in refs[:20]]
    theirs = bc.grant_access(g.domid, 3)
    mine = g.grant_map_one(backend.domid, theirs)
    assert mine.status == 0 and all(m.status == 0 for m in maps)
    g.populate_physmap([100, 101])
    hv.check_invariants()
    dom0.domctl_destroydomain(g.domid)
    rc = hv.resource_counts()
    assert rc["zombies"] == 1 and rc["maptrack"] == 20  # backend still maps g's pages
    assert not bc.query_foreign_access(theirs)  # g's own mapping of backend's page is gone
    assert dom0.evtchn_status(p0).status == 1  # dom0's end is unbound again
    hv.check_invariants()
    assert backend.grant_unmap([gt.UnmapGrantRef(m.handle) for m in maps]) == [0] * 20
    assert g.domid not in hv.domains
    dom0.domctl_destroydomain(backend.domid)
    dom0.evtchn_close(p0)
    assert hv.resource_counts() == base
    hv.check_invariants()
