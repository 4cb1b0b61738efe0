"""Machine memory, p2m, guest views, ballooning."""

from __future__ import annotations

import mmap
import os

import pytest

from hypervisor.domain import DomainConfig
from hypervisor.errno import Errno, XenError
from hypervisor.hypercall import HypercallInterface
from hypervisor.hypervisor import Hypervisor
from hypervisor.memory import P2M, GuestMemory, MachineMemory, PageFault
from hypervisor.types import DOMID_INVALID, PAGE_SIZE, DomId, Gfn, Mfn

from .conftest import MakeDomU


def test_default_machine_is_large_and_lazy() -> None:
    m = MachineMemory()
    assert m.nr_frames == (4 << 30) // PAGE_SIZE
    assert m.owner[m.nr_frames - 1] == DOMID_INVALID
    (mfn,) = m.alloc(DomId(1), 1)
    m.frame(mfn)[:3] = b"abc"
    m.close()


def test_alloc_free_zeroes_and_ownership() -> None:
    m = MachineMemory(16 * PAGE_SIZE)
    a = m.alloc(DomId(1), 4)
    assert [m.owner[x] for x in a] == [1] * 4 and m.allocated == 4
    for x in a:
        m.frame(x)[:] = b"\xaa" * PAGE_SIZE
    stale = m.frame(a[0])
    m.free(a)
    stale[:4] = b"leak"  # a stale view writes after free (cannot be revoked)
    b = m.alloc(DomId(2), 16)
    assert sorted(b) == list(range(16))
    assert all(bytes(m.frame(x)) == bytes(PAGE_SIZE) for x in b)
    with pytest.raises(XenError) as ei:
        m.alloc(DomId(2), 1)
    assert ei.value.errno == Errno.ENOMEM
    with pytest.raises(RuntimeError):
        m.free([b[0], b[0]])


def test_file_backed_memory_is_shared(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "ram")
    m = MachineMemory(8 * PAGE_SIZE, path)
    (mfn,) = m.alloc(DomId(1), 1)
    m.frame(mfn)[:5] = b"hello"
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as other:
        assert other[mfn * PAGE_SIZE : mfn * PAGE_SIZE + 5] == b"hello"
    m.free([mfn])
    (again,) = m.alloc(DomId(2), 1)
    assert again == mfn and bytes(m.frame(again)[:5]) == bytes(5)


def test_guest_memory_faults() -> None:
    m = MachineMemory(16 * PAGE_SIZE)
    p2m = P2M()
    (mfn,) = m.alloc(DomId(1), 1)
    (foreign,) = m.alloc(DomId(2), 1)
    p2m.set(Gfn(0), mfn)
    gm = GuestMemory(m, DomId(1), p2m)
    gm.write(Gfn(0), 4090, b"123456")
    assert gm.read(Gfn(0), 4090, 6) == b"123456"
    with pytest.raises(PageFault):
        gm.write_gaddr(4094, b"wxyz")  # spans into unpopulated gfn 1
    assert gm.read_gaddr(4090, 6) == b"1234wx"  # the part before the fault landed
    with pytest.raises(PageFault, match=r"d1.*gfn 0x1"):
        gm.read(Gfn(1), 0, 1)
    with pytest.raises(PageFault):
        gm.read(Gfn(0), 4095, 2)
    with pytest.raises(PageFault, match="not owned"):
        gm.frame(Mfn(foreign))
    with pytest.raises(PageFault):
        gm.frame(Mfn(10**9))
    p2m.set(Gfn(1), foreign)  # a corrupted p2m still cannot reach another domain's frame
    with pytest.raises(PageFault, match="not owned"):
        gm.page(Gfn(1))


def test_populate_decrease_and_max_pages(hv: Hypervisor, make_domu: MakeDomU) -> None:
    g = make_domu(nr_pages=4, max_pages=8)
    assert (g.current_reservation(), g.maximum_reservation()) == (4, 8)
    assert g.populate_physmap([10, 11]) == 2
    assert g.populate_physmap([12, 13, 14]) == 2  # stops at max_pages
    with pytest.raises(XenError) as ei:
        g.populate_physmap([20])
    assert ei.value.errno == Errno.ENOMEM
    assert g.decrease_reservation([10, 11, 99]) == 2  # stops at the unpopulated gfn
    with pytest.raises(PageFault):
        g.memory.read(10, 0, 1)
    with pytest.raises(XenError) as ei:
        g.populate_physmap([0])  # already populated
    assert ei.value.errno == Errno.EINVAL
    assert g.populate_physmap([16], extent_order=1) == 1
    assert g.current_reservation() == 8
    with pytest.raises(XenError) as ei:
        g.populate_physmap([64], extent_order=10)  # too big an order: refused up front
    assert ei.value.errno == Errno.EINVAL
    with pytest.raises(XenError) as ei:
        g.increase_reservation(2**62, extent_order=40)
    assert ei.value.errno == Errno.EINVAL
    with pytest.raises(XenError) as ei:
        g.increase_reservation(2**62)  # huge count: no loop, nothing fits
    assert ei.value.errno == Errno.ENOMEM
    assert g.decrease_reservation([0, 1]) == 2
    assert g.increase_reservation(2**40) == [Gfn(0), Gfn(1)]
    assert g.memory.read(0, 0, 8) == bytes(8)
    hv.check_invariants()


def test_memory_op_on_other_domains(dom0: HypercallInterface, make_domu: MakeDomU) -> None:
    g, h = make_domu(), make_domu()
    assert dom0.current_reservation(g.domid) == 16
    assert dom0.populate_physmap([100], domid=g.domid) == 1
    for fn in (lambda d: h.current_reservation(d), lambda d: h.populate_physmap([1], domid=d),
               lambda d: h.decrease_reservation([1], domid=d)):
        for target in (g.domid, 999):
            with pytest.raises(XenError) as ei:
                fn(target)
            assert ei.value.errno == Errno.EPERM
    with pytest.raises(XenError) as ei:
        dom0.current_reservation(999)
    assert ei.value.errno == Errno.ESRCH


def test_max_mem_domctl(dom0: HypercallInterface, make_domu: MakeDomU) -> None:
    g = make_domu(nr_pages=4, max_pages=4)
    dom0.domctl_max_mem(g.domid, 8 * 4)
    assert g.maximum_reservation() == 8
    assert g.populate_physmap([20, 21, 22, 23, 24]) == 4


def test_map_foreign(hv: Hypervisor, dom0: HypercallInterface, make_domu: MakeDomU) -> None:
    g = make_domu()
    g.memory.write(2, 0, b"guest")
    assert bytes(dom0.map_foreign(g.domid, gfn=2)[:5]) == b"guest"
    ro = dom0.map_foreign(g.domid, mfn=g.memory.gfn_to_mfn(2), readonly=True)
    assert ro.readonly
    for kw in ({"gfn": 99}, {"mfn": 0}, {}, {"mfn": -1}):
        with pytest.raises(XenError) as ei:
            dom0.map_foreign(g.domid, **kw)  # type: ignore[arg-type]
        assert ei.value.errno == Errno.EINVAL
    with pytest.raises(XenError) as ei:
        g.map_foreign(0, gfn=0)
    assert ei.value.errno == Errno.EPERM


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_huge_machine_is_lazily_backed() -> None:
    before = _rss_bytes()
    hv = Hypervisor(memory_bytes=64 << 30, dom0_pages=16)
    dom0 = hv.interface(0)
    assert hv.machine.nr_frames == 16 << 20
    domid = dom0.domctl_createdomain(DomainConfig(nr_pages=8, max_pages=1 << 20))
    g = hv.interface(domid)
    for gfn in range(8):
        g.memory.write(Gfn(gfn), 0, b"x" * PAGE_SIZE)
    grown = _rss_bytes() - before
    # the 2-byte-per-frame owner array (32 MiB) is the only per-frame cost; the 64 GiB of
    # frames themselves cost nothing until touched
    assert grown < 96 << 20, f"RSS grew by {grown >> 20} MiB"
    dom0.domctl_destroydomain(domid)
    hv.check_invariants()


def test_file_backed_memory_shares_both_ways_through_domains(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "machine")
    hv = Hypervisor(memory_bytes=4 << 20, memory_path=path, dom0_pages=8)
    dom0 = hv.interface(0)
    g = hv.interface(dom0.domctl_createdomain(DomainConfig(nr_pages=2, max_pages=2)))
    mfn = g.memory.gfn_to_mfn(Gfn(1))
    g.memory.write(Gfn(1), 100, b"from the guest")
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as outside:
        off = mfn * PAGE_SIZE
        assert outside[off + 100 : off + 114] == b"from the guest"
        outside[off : off + 12] = b"from outside"  # e.g. a debugger process
        assert g.memory.read(Gfn(1), 0, 12) == b"from outside"
    assert os.path.getsize(path) == 4 << 20


def test_freed_frames_are_zeroed_before_another_domain_gets_them(
        hv: Hypervisor, make_domu: MakeDomU) -> None:
    a = make_domu(nr_pages=4, max_pages=4)
    b = make_domu(nr_pages=0, max_pages=4)
    mfn = a.memory.gfn_to_mfn(Gfn(2))
    a.memory.write(Gfn(2), 0, b"secret key material")
    assert a.decrease_reservation([2]) == 1
    with pytest.raises(PageFault, match="not populated"):
        a.memory.read(Gfn(2), 0, 1)
    assert b.populate_physmap([7]) == 1
    assert b.memory.gfn_to_mfn(Gfn(7)) == mfn  # the very frame a gave back
    assert b.memory.read(Gfn(7), 0, PAGE_SIZE) == bytes(PAGE_SIZE)
    with pytest.raises(PageFault, match="not owned"):
        a.memory.frame(Mfn(mfn))  # a cannot reach it by machine frame number either
    hv.check_invariants()


def test_extent_order_is_checked_before_any_work(dom0: HypercallInterface,
                                                 make_domu: MakeDomU) -> None:
    g = make_domu(nr_pages=4, max_pages=4)
    many = list(range(0, 1 << 20, 1 << 10))
    for order in (10, 40, 2**62, -1):
        for fn in (lambda o: g.populate_physmap(many, extent_order=o),
                   lambda o: g.increase_reservation(2**62, extent_order=o),
                   lambda o: g.decrease_reservation(many, extent_order=o)):
            with pytest.raises(XenError) as ei:
                fn(order)
            assert ei.value.errno == Errno.EINVAL
    # dom0 (a control domain) may use larger extents than a domU
    dom0.domctl_max_mem(g.domid, 4 * (4 + 4096))
    assert dom0.populate_physmap([1 << 12], extent_order=12, domid=g.domid) == 1
    with pytest.raises(XenError) as ei:
        dom0.populate_physmap([1 << 13], extent_order=13, domid=g.domid)
    assert ei.value.errno == Errno.EINVAL
    assert g.current_reservation() == 4 + 4096


def test_ballooning_bounded_by_max_pages(hv: Hypervisor, dom0: HypercallInterface,
                                         make_domu: MakeDomU) -> None:
    g = make_domu(nr_pages=8, max_pages=8)
    base = hv.resource_counts()["frames"]
    assert g.decrease_reservation(list(range(8))) == 8  # balloon all the way down
    assert hv.resource_counts()["frames"] == base - 8
    assert g.increase_reservation(100) == [Gfn(i) for i in range(8)]  # back up to the limit
    with pytest.raises(XenError) as ei:
        g.increase_reservation(1)
    assert ei.value.errno == Errno.ENOMEM
    dom0.domctl_max_mem(g.domid, 4 * 4)  # lowering below tot_pages keeps what is there
    assert g.current_reservation() == 8
    with pytest.raises(XenError) as ei:
        g.populate_physmap([100])
    assert ei.value.errno == Errno.ENOMEM
    hv.check_invariants()
