"""Grant tables v1: byte layout, map/unmap/copy with every GNTST path, zombies."""

from __future__ import annotations

import struct

import pytest

from domu.gnttab import GrantTableClient
from hypervisor.errno import Errno, XenError
from hypervisor.event_channel import VIRQ_DOM_EXC
from hypervisor.grant_table import (
    GntCopy,
    GNTCOPY_dest_gref,
    GNTCOPY_source_gref,
    GntCopyPtr,
    GntError,
    GNTMAP_device_map,
    GNTMAP_host_map,
    GNTMAP_readonly,
    GNTST_bad_copy_arg,
    GNTST_bad_dev_addr,
    GNTST_bad_domain,
    GNTST_bad_gntref,
    GNTST_bad_handle,
    GNTST_bad_page,
    GNTST_general_error,
    GNTST_no_space,
    GNTST_okay,
    GNTST_permission_denied,
    GTF_permit_access,
    GTF_reading,
    GTF_readonly,
    GTF_writing,
    MapGrantRef,
    UnmapGrantRef,
)
from hypervisor.hypercall import HypercallInterface
from hypervisor.hypervisor import Hypervisor
from hypervisor.types import DOMID_SELF, PAGE_SIZE

from .conftest import MakeDomU


@pytest.fixture
def guest(make_domu: MakeDomU) -> HypercallInterface:
    return make_domu()


@pytest.fixture
def client(guest: HypercallInterface) -> GrantTableClient:
    return GrantTableClient(guest)


def raw_entry(hc: HypercallInterface, ref: int) -> tuple[int, int, int]:
    frame = hc.grant_setup_table(1).frames[0]
    return struct.unpack_from("<HHI", hc.memory.frame(frame), ref * 8)


def test_entry_layout_is_byte_exact(guest: HypercallInterface, client: GrantTableClient) -> None:
    guest.memory.write(3, 0, b"x")
    ref = client.grant_access(0, 3, readonly=True)
    assert ref == 8  # 0..7 reserved
    frame = guest.grant_setup_table(1).frames[0]
    raw = bytes(guest.memory.frame(frame)[ref * 8 : ref * 8 + 8])
    assert raw == struct.pack("<HHI", GTF_permit_access | GTF_readonly, 0, 3)
    assert client.grant_access(0, 4) == 9


def test_map_rw_sets_reading_and_writing_and_shares_bytes(
        hv: Hypervisor, dom0: HypercallInterface, guest: HypercallInterface,
        client: GrantTableClient) -> None:
    ref = client.grant_access(0, 5)
    res = dom0.grant_map_one(guest.domid, ref)
    assert res.status == GNTST_okay and res.view is not None
    assert raw_entry(guest, ref)[0] == GTF_permit_access | GTF_reading | GTF_writing
    res.view[0:4] = b"ping"
    assert guest.memory.read(5, 0, 4) == b"ping"
    assert not client.end_foreign_access(ref)  # no revoke while mapped
    assert client.query_foreign_access(ref)
    assert hv.resource_counts()["grant_pins"] == 1
    hv.check_invariants()
    assert dom0.grant_unmap_one(res.handle) == GNTST_okay
    assert raw_entry(guest, ref)[0] == GTF_permit_access
    assert dom0.grant_unmap_one(res.handle) == GNTST_bad_handle  # unmap twice
    assert client.end_foreign_access(ref)
    assert raw_entry(guest, ref)[0] == 0
    assert hv.resource_counts()["grant_pins"] == 0
    hv.check_invariants()


def test_readonly_map_and_mixed_pins(hv: Hypervisor, dom0: HypercallInterface,
                                     guest: HypercallInterface, client: GrantTableClient) -> None:
    ro_ref = client.grant_access(0, 1, readonly=True)
    assert dom0.grant_map_one(guest.domid, ro_ref).status == GNTST_general_error  # rw of ro
    r = dom0.grant_map_one(guest.domid, ro_ref, readonly=True)
    assert r.status == GNTST_okay and r.view is not None and r.view.readonly
    assert raw_entry(guest, ro_ref)[0] & (GTF_reading | GTF_writing) == GTF_reading
    ref = client.grant_access(0, 2)
    a = dom0.grant_map_one(guest.domid, ref, readonly=True)
    b = dom0.grant_map_one(guest.domid, ref)
    c = dom0.grant_map_one(guest.domid, ref)  # map twice RW
    assert raw_entry(guest, ref)[0] & GTF_writing
    assert dom0.grant_unmap_one(b.handle) == GNTST_okay
    assert raw_entry(guest, ref)[0] & GTF_writing
    assert dom0.grant_unmap_one(c.handle) == GNTST_okay
    assert raw_entry(guest, ref)[0] & (GTF_reading | GTF_writing) == GTF_reading
    hv.check_invariants()
    assert dom0.grant_unmap_one(a.handle) == GNTST_okay
    assert dom0.grant_unmap_one(r.handle) == GNTST_okay
    assert hv.resource_counts()["grant_pins"] == 0
    hv.check_invariants()


def test_map_error_paths(hv: Hypervisor, dom0: HypercallInterface, make_domu: MakeDomU,
                         guest: HypercallInterface, client: GrantTableClient) -> None:
    other = make_domu()
    ref = client.grant_access(0, 1)
    wrong = client.grant_access(other.domid, 2)
    unpopulated = client.grant_access(0, 40)  # gfn 40 not populated
    res = dom0.grant_map([
        MapGrantRef(guest.domid, ref, 0),  # no host/device flag
        MapGrantRef(guest.domid, ref, GNTMAP_host_map | 0x40),  # unknown flag
        MapGrantRef(999, ref),  # no such granter
        MapGrantRef(guest.domid, 10_000),  # ref beyond table
        MapGrantRef(guest.domid, wrong),  # granted to someone else
        MapGrantRef(guest.domid, 100),  # never granted (GTF_invalid)
        MapGrantRef(guest.domid, unpopulated),
        MapGrantRef(guest.domid, ref, GNTMAP_device_map),
    ])
    assert [r.status for r in res] == [GNTST_bad_gntref, GNTST_general_error, GNTST_bad_domain,
                                       GNTST_bad_gntref, GNTST_general_error,
                                       GNTST_general_error, GNTST_bad_page, GNTST_okay]
    assert res[-1].dev_bus_addr != 0 and res[-1].dev_bus_addr % PAGE_SIZE == 0
    # the granter changing its entry while pinned is ignored for the pinned frame
    client.write_entry(ref, 0, 2, GTF_permit_access | GTF_reading | GTF_writing)
    again = dom0.grant_map_one(guest.domid, ref)
    assert again.status == GNTST_okay
    again.view[0:1] = b"Z"  # type: ignore[index]
    assert guest.memory.read(1, 0, 1) == b"Z"
    assert dom0.grant_unmap([UnmapGrantRef(again.handle), UnmapGrantRef(res[-1].handle)]) == [0, 0]
    hv.check_invariants()
    assert [r.status for r in dom0.grant_map([MapGrantRef(guest.domid, ref)])] == [GNTST_okay]


def test_unmap_with_wrong_addresses_refused(hv: Hypervisor, dom0: HypercallInterface,
                                            guest: HypercallInterface,
                                            client: GrantTableClient) -> None:
    ref = client.grant_access(0, 1)
    host = dom0.grant_map([MapGrantRef(guest.domid, ref, GNTMAP_host_map, 0x7000)])[0]
    assert host.host_addr == 0x7000
    dev = dom0.grant_map([MapGrantRef(guest.domid, ref, GNTMAP_device_map)])[0]
    assert dom0.grant_unmap([
        UnmapGrantRef(host.handle, host_addr=0x8000),
        UnmapGrantRef(host.handle, dev_bus_addr=dev.dev_bus_addr),  # not device-mapped
        UnmapGrantRef(dev.handle, dev_bus_addr=dev.dev_bus_addr + PAGE_SIZE),
        UnmapGrantRef(dev.handle, host_addr=0x7000),  # not host-mapped
        UnmapGrantRef(12345),
        UnmapGrantRef(-1),
    ]) == [GNTST_general_error, GNTST_bad_dev_addr, GNTST_bad_dev_addr, GNTST_general_error,
           GNTST_bad_handle, GNTST_bad_handle]
    assert hv.resource_counts()["maptrack"] == 2
    assert dom0.grant_unmap([UnmapGrantRef(host.handle, host_addr=0x7000),
                             UnmapGrantRef(dev.handle, dev_bus_addr=dev.dev_bus_addr)]) == [0, 0]
    hv.check_invariants()


def test_maptrack_exhaustion_gives_no_space(hv: Hypervisor, make_domu: MakeDomU,
                                            guest: HypercallInterface,
                                            client: GrantTableClient) -> None:
    backend = make_domu(max_maptrack_frames=1)
    ref = client.grant_access(backend.domid, 1, readonly=True)
    res = backend.grant_map([MapGrantRef(guest.domid, ref, GNTMAP_host_map | GNTMAP_readonly)]
                            * 257)
    assert [r.status for r in res[:256]] == [GNTST_okay] * 256
    assert res[256].status == GNTST_no_space
    assert backend.grant_unmap_one(res[0].handle) == GNTST_okay
    assert backend.grant_map_one(guest.domid, ref, readonly=True).status == GNTST_okay
    hv.check_invariants()


def test_copy_rules(hv: Hypervisor, dom0: HypercallInterface, guest: HypercallInterface,
                    client: GrantTableClient) -> None:
    guest.memory.write(1, 100, b"granted data")
    dom0.memory.write(7, 0, b"dom0 bytes")
    src = client.grant_access(0, 1, readonly=True)
    dst = client.grant_access(0, 2)
    d = guest.domid
    ok = GntCopy(GntCopyPtr(src, d, 100), GntCopyPtr(7, DOMID_SELF, 10), 12, GNTCOPY_source_gref)
    back = GntCopy(GntCopyPtr(7, DOMID_SELF, 0), GntCopyPtr(dst, d, 50), 10, GNTCOPY_dest_gref)
    ops = [
        ok,
        back,
        GntCopy(GntCopyPtr(src, d, 4090), GntCopyPtr(7, DOMID_SELF, 0), 10, GNTCOPY_source_gref),
        GntCopy(GntCopyPtr(src, d, 0), GntCopyPtr(7, DOMID_SELF, 4095), 2, GNTCOPY_source_gref),
        GntCopy(GntCopyPtr(1, d, 0), GntCopyPtr(7, DOMID_SELF, 0), 4),  # frame side not SELF
        GntCopy(GntCopyPtr(7, 0, 0), GntCopyPtr(8, DOMID_SELF, 0), 4),  # own id, not SELF
        GntCopy(GntCopyPtr(7, DOMID_SELF, 0), GntCopyPtr(src, d, 0), 4, GNTCOPY_dest_gref),
        GntCopy(GntCopyPtr(src, 999, 0), GntCopyPtr(7, DOMID_SELF, 0), 4, GNTCOPY_source_gref),
        GntCopy(GntCopyPtr(9999, d, 0), GntCopyPtr(7, DOMID_SELF, 0), 4, GNTCOPY_source_gref),
        GntCopy(GntCopyPtr(src, d, 0), GntCopyPtr(5000, DOMID_SELF, 0), 4, GNTCOPY_source_gref),
        GntCopy(GntCopyPtr(src, d, -1), GntCopyPtr(7, DOMID_SELF, 0), 4, GNTCOPY_source_gref),
    ]
    assert dom0.grant_copy(ops) == [
        GNTST_okay, GNTST_okay, GNTST_bad_copy_arg, GNTST_bad_copy_arg,
        GNTST_permission_denied, GNTST_permission_denied, GNTST_general_error,
        GNTST_bad_domain, GNTST_bad_gntref, GNTST_bad_page, GNTST_bad_copy_arg]
    assert dom0.memory.read(7, 10, 12) == b"granted data"
    assert guest.memory.read(2, 50, 10) == b"dom0 bytes"
    # copies never leave pins behind, so access can end at once
    assert hv.resource_counts()["grant_pins"] == 0
    assert raw_entry(guest, src)[0] == GTF_permit_access | GTF_readonly
    assert client.end_foreign_access(src) and client.end_foreign_access(dst)
    hv.check_invariants()


def test_setup_table_query_size_and_growth(hv: Hypervisor, dom0: HypercallInterface,
                                           make_domu: MakeDomU) -> None:
    g = make_domu(max_grant_frames=3)
    q = g.grant_query_size()
    assert (q.status, q.nr_frames, q.max_nr_frames) == (0, 1, 3)
    assert g.grant_setup_table(4).status == GNTST_general_error
    c = GrantTableClient(g)
    refs = [c.grant_access(0, 1) for _ in range(3 * 512 - 8)]
    assert refs[0] == 8 and refs[-1] == 3 * 512 - 1
    assert g.grant_query_size().nr_frames == 3
    with pytest.raises(XenError) as ei:
        c.grant_access(0, 1)
    assert ei.value.errno == Errno.ENOSPC
    assert dom0.grant_query_size(g.domid).nr_frames == 3
    assert dom0.grant_query_size(999).status == GNTST_bad_domain
    assert dom0.grant_setup_table(1, 999).status == GNTST_bad_domain
    for fn in (g.grant_query_size, lambda dom: g.grant_setup_table(1, dom)):
        for target in (0, 999):
            with pytest.raises(XenError) as ei:
                fn(target)
            assert ei.value.errno == Errno.EPERM
    hv.check_invariants()


def test_destroy_with_outstanding_mapping_leaves_zombie(hv: Hypervisor, dom0: HypercallInterface,
                                                        guest: HypercallInterface,
                                                        client: GrantTableClient) -> None:
    # the guest holds 16 RAM frames + shared_info + one grant-table frame
    before_frames = hv.resource_counts()["frames"] - 18
    dom_exc = dom0.evtchn_bind_virq(VIRQ_DOM_EXC)
    guest.memory.write(3, 0, b"still here")
    ref = client.grant_access(0, 3)
    m = dom0.grant_map_one(guest.domid, ref)
    dom0.domctl_destroydomain(guest.domid)

    def dom_exc_pending() -> bool:
        words = dom0.shared_info.cast("Q")
        hit = bool(words[256] >> dom_exc & 1)
        words[256] = 0
        return hit

    assert dom_exc_pending()
    info = dom0.domctl_getdomaininfo(guest.domid)
    assert info.xl_state().endswith("d") and info.tot_pages == 0
    rc = hv.resource_counts()
    assert rc["zombies"] == 1 and rc["deferred_frames"] == 1
    assert m.view is not None and bytes(m.view[:10]) == b"still here"
    # the grantee can still unmap; the mapping was of a zombie's page
    assert dom0.grant_map_one(guest.domid, ref).status == GNTST_bad_domain
    hv.check_invariants()
    assert dom0.grant_unmap_one(m.handle) == GNTST_okay
    assert dom_exc_pending()
    with pytest.raises(XenError) as ei:
        dom0.domctl_getdomaininfo(guest.domid)
    assert ei.value.errno == Errno.ESRCH
    rc = hv.resource_counts()
    assert rc["frames"] == before_frames
    assert rc["zombies"] == rc["grant_pins"] == rc["maptrack"] == rc["deferred_frames"] == 0
    hv.check_invariants()


def test_destroying_the_grantee_drops_its_mappings(hv: Hypervisor, make_domu: MakeDomU,
                                                   guest: HypercallInterface,
                                                   client: GrantTableClient,
                                                   dom0: HypercallInterface) -> None:
    backend = make_domu()
    ref = client.grant_access(backend.domid, 2)
    assert backend.grant_map_one(guest.domid, ref).status == GNTST_okay
    assert not client.end_foreign_access(ref)
    dom0.domctl_destroydomain(backend.domid)
    assert client.end_foreign_access(ref)
    hv.check_invariants()


def test_balloon_out_a_mapped_page_defers_the_free(hv: Hypervisor, dom0: HypercallInterface,
                                                   guest: HypercallInterface,
                                                   client: GrantTableClient) -> None:
    ref = client.grant_access(0, 4)
    m = dom0.grant_map_one(guest.domid, ref)
    frames = hv.resource_counts()["frames"]
    assert guest.decrease_reservation([4]) == 1
    assert hv.resource_counts()["frames"] == frames  # still referenced
    assert hv.resource_counts()["deferred_frames"] == 1
    hv.check_invariants()
    assert dom0.grant_unmap_one(m.handle) == 0
    assert hv.resource_counts()["frames"] == frames - 1
    hv.check_invariants()


def test_map_batch_statuses_are_zero_or_negative(dom0: HypercallInterface,
                                                 guest: HypercallInterface,
                                                 client: GrantTableClient) -> None:
    client.grant_access(0, 1)
    ops = [MapGrantRef(dom, ref, flags) for dom in (guest.domid, 0, DOMID_SELF, 2**16, -5)
           for ref in (-1, 0, 8, 511, 512, 2**32) for flags in (0, 2, 4, 6, 1, 0xFF)]
    for r in dom0.grant_map(ops):
        assert r.status <= 0
        if r.status == GNTST_okay:
            assert dom0.grant_unmap_one(r.handle) == 0


def test_flags_held_during_copy_and_dropped_after(hv: Hypervisor, dom0: HypercallInterface,
                                                  guest: HypercallInterface,
                                                  client: GrantTableClient,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    src = client.grant_access(0, 1, readonly=True)
    dst = client.grant_access(0, 2)
    guest.memory.write(1, 0, b"payload")
    seen: list[tuple[int, int]] = []
    real_frame = hv.machine.frame

    def spy(mfn: int) -> memoryview:
        seen.append((client.read_entry(src)[0], client.read_entry(dst)[0]))
        return real_frame(mfn)  # type: ignore[arg-type]

    monkeypatch.setattr(hv.machine, "frame", spy)
    d = guest.domid
    op = GntCopy(GntCopyPtr(src, d, 0), GntCopyPtr(dst, d, 100), 7,
                 GNTCOPY_source_gref | GNTCOPY_dest_gref)
    assert dom0.grant_copy([op]) == [GNTST_okay]
    monkeypatch.undo()
    assert seen  # the bytes were moved while ...
    for s_flags, d_flags in seen:  # ... the source was pinned for reading, dest for writing
        assert s_flags & (GTF_reading | GTF_writing) == GTF_reading
        assert d_flags & (GTF_reading | GTF_writing) == GTF_reading | GTF_writing
    assert client.read_entry(src)[0] == GTF_permit_access | GTF_readonly
    assert client.read_entry(dst)[0] == GTF_permit_access
    assert guest.memory.read(2, 100, 7) == b"payload"
    # a copy that fails half-way (bad dest) drops the source pin it already took
    bad = GntCopy(GntCopyPtr(src, d, 0), GntCopyPtr(9999, d, 0), 4,
                  GNTCOPY_source_gref | GNTCOPY_dest_gref)
    assert dom0.grant_copy([bad]) == [GNTST_bad_gntref]
    assert hv.resource_counts()["grant_pins"] == 0
    assert client.read_entry(src)[0] == GTF_permit_access | GTF_readonly
    hv.check_invariants()


def test_hostile_granter_rewriting_its_entry_cannot_break_pins(
        hv: Hypervisor, dom0: HypercallInterface, make_domu: MakeDomU,
        guest: HypercallInterface, client: GrantTableClient) -> None:
    other = make_domu(name="other")
    guest.memory.write(1, 0, b"page one")
    guest.memory.write(2, 0, b"page two")
    ref = client.grant_access(0, 1)
    first = dom0.grant_map_one(guest.domid, ref)
    assert first.status == GNTST_okay
    # the granter rewrites everything: another grantee, another frame, read-only, and it
    # clears the Xen-owned reading/writing bits
    client.write_entry(ref, other.domid, 2, GTF_permit_access | GTF_readonly)
    ro = dom0.grant_map_one(guest.domid, ref, readonly=True)
    rw = dom0.grant_map_one(guest.domid, ref)  # writers exist: the pinned frame is reused
    assert ro.status == rw.status == GNTST_okay
    assert bytes(ro.view[:8]) == bytes(rw.view[:8]) == b"page one"  # type: ignore[index]
    assert other.grant_map_one(guest.domid, ref, readonly=True).status == GNTST_general_error
    pins = hv.domains.get(guest.domid).grant_table.active[ref]  # type: ignore[union-attr]
    assert (pins.pin_r, pins.pin_w) == (1, 2)
    hv.check_invariants()  # every map re-set the Xen-owned bits
    client.write_entry(ref, 0xFFFF, 0xFFFFFFFF, 0)  # scribble again, clearing them
    hv.check_invariants(grant_flags=False)
    assert dom0.grant_unmap([UnmapGrantRef(h) for h in (first.handle, ro.handle, rw.handle)]) \
        == [GNTST_okay] * 3
    assert dom0.grant_unmap_one(rw.handle) == GNTST_bad_handle
    rc = hv.resource_counts()
    assert rc["grant_pins"] == rc["maptrack"] == 0
    mfn1 = guest.memory.gfn_to_mfn(1)
    assert hv.machine.refs(mfn1) == 0
    # the entry now says what the granter last wrote, and maps according to that alone
    client.write_entry(ref, other.domid, 2, GTF_permit_access)
    m = other.grant_map_one(guest.domid, ref)
    assert m.status == GNTST_okay and bytes(m.view[:8]) == b"page two"  # type: ignore[index]
    assert other.grant_unmap_one(m.handle) == GNTST_okay
    hv.check_invariants()


def test_unreachable_gntst_codes_are_documented() -> None:
    """Codes with no trigger in the simulation are named in the module docstring."""
    import hypervisor.grant_table as gtm

    doc = gtm.__doc__ or ""
    for name in ("bad_virt_addr", "no_device_space", "address_too_big", "eagain"):
        assert f"GNTST_{name}" in doc


# -- GNTTABOP_copy: the flat form, the inline path, and a differential check ---------------------


def test_flat_copy_ops_mix_with_records_and_match_them(
        hv: Hypervisor, dom0: HypercallInterface, guest: HypercallInterface,
        client: GrantTableClient) -> None:
    guest.memory.write(1, 0, b"from the guest")
    src = client.grant_access(0, 1, readonly=True)
    dst = client.grant_access(0, 2)
    d = guest.domid
    rec = GntCopy(GntCopyPtr(src, d, 0), GntCopyPtr(7, DOMID_SELF, 0), 14, GNTCOPY_source_gref)
    assert rec.flat() == (src, d, 0, 7, DOMID_SELF, 0, 14, GNTCOPY_source_gref)
    ops = [rec, (7, DOMID_SELF, 0, dst, d, 100, 14, GNTCOPY_dest_gref),
           (src, d, 0, dst, d, 100, 14, GNTCOPY_dest_gref)]  # source not a gref: SELF only
    assert dom0.grant_copy(ops) == [GNTST_okay, GNTST_okay, GNTST_permission_denied]
    assert guest.memory.read(2, 100, 14) == b"from the guest"
    assert hv.resource_counts()["grant_pins"] == 0
    assert raw_entry(guest, src)[0] == GTF_permit_access | GTF_readonly
    assert raw_entry(guest, dst)[0] == GTF_permit_access
    hv.check_invariants()


def test_malformed_copy_element_faults_the_call(dom0: HypercallInterface,
                                                guest: HypercallInterface,
                                                client: GrantTableClient) -> None:
    ref = client.grant_access(0, 1)
    good = (ref, guest.domid, 0, 7, DOMID_SELF, 0, 4, GNTCOPY_source_gref)
    for junk in [(1, 2, 3), "abc", None, (ref, guest.domid, "x", 7, DOMID_SELF, 0, 4, 1)]:
        with pytest.raises(XenError) as ei:
            dom0.grant_copy([good, junk])  # type: ignore[list-item]
        assert ei.value.errno == Errno.EFAULT
    assert dom0.grant_copy([good]) == [GNTST_okay]


def test_copy_from_a_grant_that_is_also_mapped_keeps_the_mapping_pins(
        hv: Hypervisor, dom0: HypercallInterface, make_domu: MakeDomU,
        guest: HypercallInterface, client: GrantTableClient) -> None:
    other = make_domu(name="other")
    guest.memory.write(1, 0, b"mapped page")
    ref = client.grant_access(0, 1)
    m = dom0.grant_map_one(guest.domid, ref, readonly=True)
    theirs = client.grant_access(other.domid, 2)
    t = other.grant_map_one(guest.domid, theirs)
    d = guest.domid
    ops = [(ref, d, 0, 7, DOMID_SELF, 0, 11, GNTCOPY_source_gref),  # read while mapped r/o
           (7, DOMID_SELF, 0, ref, d, 0, 1, GNTCOPY_dest_gref),  # write: now pinned r/w
           (theirs, d, 0, 7, DOMID_SELF, 0, 4, GNTCOPY_source_gref)]  # pinned by another
    assert dom0.grant_copy(ops) == [GNTST_okay, GNTST_okay, GNTST_general_error]
    assert dom0.memory.read(7, 0, 11) == b"mapped page"
    pins = hv.domains.get(d).grant_table.active[ref]  # type: ignore[union-attr]
    assert (pins.pin_r, pins.pin_w) == (1, 0)
    assert raw_entry(guest, ref)[0] & (GTF_reading | GTF_writing) == GTF_reading
    assert dom0.grant_unmap_one(m.handle) == other.grant_unmap_one(t.handle) == GNTST_okay
    assert hv.resource_counts()["grant_pins"] == 0
    hv.check_invariants()


def _reference_copy(hv: Hypervisor, caller_id: int, op: tuple[int, ...]) -> int:
    """GNTTABOP_copy of one element, the plain way: check the arguments and both
    sides, pin each grant side through the active-entry path, copy, unpin."""
    gts = hv.gnttab
    caller = hv.domains.get(caller_id)
    assert caller is not None
    s_u, s_dom, s_off, d_u, d_dom, d_off, n, flags = op
    if min(n, s_off, d_off) < 0 or s_off + n > PAGE_SIZE or d_off + n > PAGE_SIZE:
        return GNTST_bad_copy_arg
    sides = []
    for dom, is_gref in ((s_dom, flags & GNTCOPY_source_gref),
                         (d_dom, flags & GNTCOPY_dest_gref)):
        if dom != DOMID_SELF and not is_gref:
            return GNTST_permission_denied
        d = caller if dom in (DOMID_SELF, caller_id) else hv.domains.get(dom)
        if d is None or d.dying:
            return GNTST_bad_domain
        sides.append(d)
    pinned = []
    try:
        mfns = []
        for (d, u, is_gref, ro) in ((sides[0], s_u, flags & GNTCOPY_source_gref, True),
                                    (sides[1], d_u, flags & GNTCOPY_dest_gref, False)):
            if is_gref:
                mfns.append(gts._pin(caller, d, u, ro).mfn)
                pinned.append((d, u, ro))
            else:
                mfns.append(gts._own_frame(caller, u))
        data = bytes(hv.machine.frame(mfns[0])[s_off:s_off + n])
        hv.machine.frame(mfns[1])[d_off:d_off + n] = data
    except GntError as e:
        return e.status
    finally:
        for d, u, ro in reversed(pinned):
            gts._unpin(d, u, ro)
    return GNTST_okay


def _copy_world() -> tuple[Hypervisor, dict[str, int], dict[str, int]]:
    """A host where dom0 may copy to and from every kind of grant (deterministic)."""
    import random

    from hypervisor.domain import DomainConfig

    hv = Hypervisor(memory_bytes=64 << 20, dom0_pages=64)
    dom0 = hv.interface(0)

    def domu(name: str) -> HypercallInterface:
        domid = dom0.domctl_createdomain(DomainConfig(name=name, nr_pages=16, max_pages=64))
        dom0.domctl_unpausedomain(domid)
        return hv.interface(domid)

    guest, other, doomed = domu("guest"), domu("other"), domu("doomed")
    rng = random.Random(1)
    for hc, pages in ((dom0, range(8)), (guest, range(16)), (doomed, range(2))):
        for gfn in pages:
            hc.memory.write(gfn, 0, rng.randbytes(PAGE_SIZE))
    c, o, z = GrantTableClient(guest), GrantTableClient(other), GrantTableClient(doomed)
    refs = {
        "rw": c.grant_access(0, 1), "rw2": c.grant_access(0, 2),
        "ro": c.grant_access(0, 3, readonly=True),
        "other's": c.grant_access(other.domid, 4),
        "unpopulated": c.grant_access(0, 40), "never granted": 300, "beyond": 5000,
        "mapped ro": c.grant_access(0, 5), "mapped rw": c.grant_access(0, 6),
        "mapped by other": c.grant_access(other.domid, 7),
    }
    assert dom0.grant_map_one(guest.domid, refs["mapped ro"], readonly=True).status == 0
    assert dom0.grant_map_one(guest.domid, refs["mapped rw"]).status == 0
    assert other.grant_map_one(guest.domid, refs["mapped by other"]).status == 0
    c.write_entry(refs["ro"] + 100, 0, 8, 0x7)  # a junk entry: permit|readonly|bit 1
    refs["junk"] = refs["ro"] + 100
    zref = z.grant_access(0, 1)
    assert dom0.grant_map_one(doomed.domid, zref).status == 0
    dom0.domctl_destroydomain(doomed.domid)  # a zombie granter
    o.grant_access(0, 1)
    doms = {"guest": guest.domid, "other": other.domid, "zombie": doomed.domid,
            "self": DOMID_SELF, "dom0": 0, "none": 999}
    refs["zombie's"] = zref
    return hv, doms, refs


def test_copy_matches_the_plain_per_element_algorithm() -> None:
    """Random batches give the statuses, bytes, entries and pins of the reference."""
    import random

    fast, doms, refs = _copy_world()
    ref_hv, _, _ = _copy_world()
    rng = random.Random(7)
    gfns = [0, 1, 7, 63, 64, 5000]
    for _ in range(150):
        batch = []
        for _ in range(rng.randrange(1, 24)):
            flags = rng.choice([GNTCOPY_source_gref, GNTCOPY_dest_gref, 0,
                                GNTCOPY_source_gref | GNTCOPY_dest_gref, 4])
            sides = []
            for is_gref in (flags & GNTCOPY_source_gref, flags & GNTCOPY_dest_gref):
                if is_gref or rng.random() < 0.1:
                    u = rng.choice(list(refs.values()))
                    dom = doms[rng.choice(["guest"] * 6 + list(doms))]
                else:
                    u, dom = rng.choice(gfns), rng.choice([DOMID_SELF] * 8 + [0, 1])
                sides.append((u, dom, rng.choice([0] * 8 + [1, 100, 2000, 4095, 4096, -1])))
            n = rng.choice([1, 60, 1514] * 4 + [0, 2100, 4096, 4097, -2])
            batch.append((*sides[0], *sides[1], n, flags))
        got = fast.interface(0).grant_copy(batch)
        want = [_reference_copy(ref_hv, 0, op) for op in batch]
        assert got == want, batch
    for name in ("guest", "other", "dom0"):
        a = fast.domains.get(doms[name])
        b = ref_hv.domains.get(doms[name])
        assert a is not None and b is not None
        for gfn in range(16):
            ma, mb = a.p2m.get(gfn), b.p2m.get(gfn)
            assert bytes(fast.machine.frame(ma)) == bytes(ref_hv.machine.frame(mb)), (name, gfn)
        assert bytes(fast.machine.frame(a.grant_table.frames[0])) == \
            bytes(ref_hv.machine.frame(b.grant_table.frames[0]))
        assert {r: (e.pin_r, e.pin_w) for r, e in a.grant_table.active.items()} == \
            {r: (e.pin_r, e.pin_w) for r, e in b.grant_table.active.items()}
    fast.check_invariants()


def test_client_batch_grant_and_end_match_one_at_a_time(
        hv: Hypervisor, dom0: HypercallInterface, guest: HypercallInterface,
        client: GrantTableClient) -> None:
    refs = client.grant_access_many(0, [1, 2, 3], readonly=True)
    assert [raw_entry(guest, r) for r in refs] == [
        (GTF_permit_access | GTF_readonly, 0, gfn) for gfn in (1, 2, 3)]
    m = dom0.grant_map_one(guest.domid, refs[1], readonly=True)
    assert client.end_foreign_access_many(refs) == [refs[1]]  # mapped: kept
    assert [raw_entry(guest, r)[0] for r in refs] == [0, GTF_permit_access | GTF_readonly
                                                      | GTF_reading, 0]
    assert dom0.grant_unmap_one(m.handle) == GNTST_okay
    assert client.end_foreign_access_many([refs[1]]) == []
    # more pages than free refs: the table grows; a gfn that does not fit grants nothing
    free = client.free_count
    many = client.grant_access_many(0, list(range(free + 3)))
    assert len(set(many)) == free + 3 and client.free_count == 512 - 3
    with pytest.raises(ValueError):
        client.grant_access_many(0, [1, 2**32])
    assert client.free_count == 512 - 3
    assert client.end_foreign_access_many(many) == []
    hv.check_invariants()
