"""The hypercall table: Xen's numbers, ENOSYS, the privilege matrix, errno, statistics.

A guest reaches the hypervisor only through :func:`hypervisor.hypercall.dispatch`;
these tests drive it the way a hostile guest would (unknown numbers, junk
argument lists, targets passed by keyword) and check that an unprivileged
caller learns nothing about which domains exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hypervisor import hypercall as hc_mod
from hypervisor.domain import DomainConfig, ShutdownReason
from hypervisor.errno import Errno, XenError
from hypervisor.event_channel import EVTCHNOP_alloc_unbound, EVTCHNOP_send, EVTCHNOP_status
from hypervisor.hypercall import (
    HypercallInterface,
    HYPERVISOR_console_io,
    HYPERVISOR_domctl,
    HYPERVISOR_event_channel_op,
    HYPERVISOR_grant_table_op,
    HYPERVISOR_memory_op,
    HYPERVISOR_sched_op,
    Priv,
)
from hypervisor.hypervisor import Hypervisor
from hypervisor.memory_op import XENMEM_current_reservation

from .conftest import MakeDomU

NOBODY = 999  # a domid that does not exist


def errno_of(fn: Callable[[], Any]) -> XenError:
    with pytest.raises(XenError) as ei:
        fn()
    return ei.value


def test_table_uses_xens_numbers_and_names_who_may_call(hv: Hypervisor) -> None:
    assert (HYPERVISOR_memory_op, HYPERVISOR_console_io, HYPERVISOR_grant_table_op,
            HYPERVISOR_sched_op, HYPERVISOR_event_channel_op, HYPERVISOR_domctl) == \
        (12, 18, 20, 29, 32, 36)
    assert (hc_mod.HYPERVISOR_mmu_update, hc_mod.HYPERVISOR_xen_version,
            hc_mod.HYPERVISOR_sysctl) == (1, 17, 35)
    families = {e.name.split(".")[0]: e.number for e in hv.table.values()}
    assert families == {"mmu_update": 1, "memory_op": 12, "set_timer_op": 15, "xen_version": 17,
                        "console_io": 18, "grant_table_op": 20, "vcpu_op": 24,
                        "sched_op": 29, "event_channel_op": 32, "sysctl": 35, "domctl": 36}
    for (number, cmd), e in hv.table.items():
        assert (e.number, e.cmd) == (number, cmd)
        assert isinstance(e.priv, Priv)
        if e.priv is Priv.SELF_OR_PRIV:
            assert e.target is not None and e.target_name in ("dom", "domid")
    # spot-check sub-command numbers against the public headers
    names = {e.name: (e.number, e.cmd) for e in hv.table.values()}
    assert names["event_channel_op.send"] == (32, 4)
    assert names["event_channel_op.alloc_unbound"] == (32, 6)
    assert names["grant_table_op.copy"] == (20, 5)
    assert names["memory_op.populate_physmap"] == (12, 6)
    assert names["sched_op.remote_shutdown"] == (29, 4)
    assert names["domctl.getdomaininfo"] == (36, 5)
    assert names["domctl.setvcpuaffinity"] == (36, 9)
    assert names["domctl.scheduler_op"] == (36, 16)
    assert names["domctl.getvcpuaffinity"] == (36, 25)
    assert names["sysctl.physinfo"] == (35, 3)
    assert names["sysctl.getcpuinfo"] == (35, 8)
    assert names["set_timer_op.set"] == (15, 0)
    assert (names["vcpu_op.up"], names["vcpu_op.down"], names["vcpu_op.is_up"]) == \
        ((24, 1), (24, 2), (24, 3))
    # who may call what
    priv = {e.name: e.priv for e in hv.table.values()}
    assert all(p is Priv.PRIV for n, p in priv.items() if n.startswith(("domctl.", "sysctl.")))
    assert priv["event_channel_op.bind_pirq"] is Priv.PRIV
    assert priv["console_io.read"] is Priv.PRIV and priv["console_io.write"] is Priv.ANY
    assert priv["event_channel_op.send"] is Priv.ANY
    assert priv["event_channel_op.status"] is Priv.SELF_OR_PRIV
    assert priv["memory_op.populate_physmap"] is Priv.SELF_OR_PRIV
    assert priv["set_timer_op.set"] is Priv.ANY  # acts on the caller's own vCPUs only
    assert priv["vcpu_op.down"] is Priv.ANY  # likewise


@pytest.mark.parametrize("number", [0, 2, 13, 21, 33, 37, 64, -1, 2**32, 2**64])
def test_unknown_hypercall_is_enosys(dom0: HypercallInterface, make_domu: MakeDomU,
                                     number: int) -> None:
    g = make_domu()
    for hc in (dom0, g):
        assert errno_of(lambda hc=hc: hc.call(number, 0)).errno == Errno.ENOSYS
        assert hc.call_c(number, 0) == -Errno.ENOSYS == -38


@pytest.mark.parametrize("number", [1, 12, 15, 17, 18, 20, 24, 29, 32, 35, 36])
def test_unknown_subcommand_is_enosys(dom0: HypercallInterface, make_domu: MakeDomU,
                                      number: int) -> None:
    g = make_domu()
    for hc in (dom0, g):
        for cmd in (99, 0x7FFF, -1, 2**40):
            assert hc.call_c(number, cmd) == -Errno.ENOSYS
    assert g.call_c(number, [1]) == -Errno.ENOSYS  # junk (unhashable) cmd: still ENOSYS


# -- the privilege matrix -----------------------------------------------------------------------
# Each row: (table name, call(hc, target_domid)). The victim is a domU; callers are dom0,
# the victim itself and another domU. Expected: ANY/SELF_OR_PRIV -> dom0 and self succeed,
# the other domU gets EPERM; PRIV -> only dom0 succeeds.

Call = Callable[[HypercallInterface, int], Any]
MATRIX: list[tuple[str, Call]] = [
    ("mmu_update.map_foreign", lambda hc, t: hc.map_foreign(t, gfn=0)),
    ("memory_op.current_reservation", lambda hc, t: hc.current_reservation(t)),
    ("memory_op.maximum_reservation", lambda hc, t: hc.maximum_reservation(t)),
    ("memory_op.populate_physmap", lambda hc, t: hc.populate_physmap([40], domid=t)),
    ("memory_op.increase_reservation", lambda hc, t: hc.increase_reservation(1, domid=t)),
    ("memory_op.decrease_reservation", lambda hc, t: hc.decrease_reservation([3], domid=t)),
    ("console_io.read", lambda hc, t: hc.console_read()),
    ("grant_table_op.query_size", lambda hc, t: hc.grant_query_size(t)),
    ("grant_table_op.setup_table", lambda hc, t: hc.grant_setup_table(2, t)),
    ("sched_op.remote_shutdown",
     lambda hc, t: hc.sched_remote_shutdown(t, ShutdownReason.POWEROFF)),
    ("event_channel_op.alloc_unbound", lambda hc, t: hc.evtchn_alloc_unbound(0, dom=t)),
    ("event_channel_op.status", lambda hc, t: hc.evtchn_status(1, t)),
    ("event_channel_op.reset", lambda hc, t: hc.evtchn_reset(t)),
    ("event_channel_op.bind_pirq", lambda hc, t: hc.evtchn_bind_pirq(7)),
    ("sysctl.getdomaininfolist", lambda hc, t: hc.sysctl_getdomaininfolist(t)),
    ("sysctl.physinfo", lambda hc, t: hc.sysctl_physinfo()),
    ("sysctl.getcpuinfo", lambda hc, t: hc.sysctl_getcpuinfo()),
    ("sysctl.vcpu_list", lambda hc, t: hc.sysctl_vcpu_list(t)),
    ("domctl.scheduler_op", lambda hc, t: hc.domctl_scheduler_op(t)),
    ("domctl.setvcpuaffinity", lambda hc, t: hc.domctl_setvcpuaffinity(t, 0, "1")),
    ("domctl.getvcpuaffinity", lambda hc, t: hc.domctl_getvcpuaffinity(t, 0)),
    ("domctl.createdomain", lambda hc, t: hc.domctl_createdomain(DomainConfig())),
    ("domctl.destroydomain", lambda hc, t: hc.domctl_destroydomain(t)),
    ("domctl.pausedomain", lambda hc, t: hc.domctl_pausedomain(t)),
    ("domctl.unpausedomain", lambda hc, t: hc.domctl_unpausedomain(t)),
    ("domctl.getdomaininfo", lambda hc, t: hc.domctl_getdomaininfo(t)),
    ("domctl.max_mem", lambda hc, t: hc.domctl_max_mem(t, 1024)),
    ("domctl.resumedomain", lambda hc, t: hc.domctl_resumedomain(t)),
    ("domctl.setstartinfo", lambda hc, t: hc.domctl_setstartinfo(t, store_evtchn=1)),
]


def test_matrix_covers_every_restricted_call(hv: Hypervisor) -> None:
    restricted = {e.name for e in hv.table.values() if e.priv is not Priv.ANY}
    assert restricted == {name for name, _ in MATRIX if hv_priv(hv, name) is not Priv.ANY}
    assert restricted <= {name for name, _ in MATRIX}


def hv_priv(hv: Hypervisor, name: str) -> Priv:
    (entry,) = [e for e in hv.table.values() if e.name == name]
    return entry.priv


@pytest.mark.parametrize(("name", "call"), MATRIX, ids=[n for n, _ in MATRIX])
def test_privilege_matrix(hv: Hypervisor, dom0: HypercallInterface, make_domu: MakeDomU,
                          name: str, call: Call) -> None:
    priv = hv_priv(hv, name)
    results: dict[str, int] = {}
    for who in ("other", "self", "dom0"):  # dom0 last: its call may shut the victim down
        victim = make_domu(name="victim", unpause=(name != "domctl.unpausedomain"))
        other = make_domu(name="other")
        caller = {"dom0": dom0, "self": victim, "other": other}[who]
        if name == "domctl.resumedomain":
            victim.sched_shutdown(ShutdownReason.SUSPEND)
        try:
            call(caller, victim.domid)
            results[who] = 0
        except XenError as e:
            results[who] = e.retval
        for d in (victim, other):
            if d.domid in hv.domains:
                dom0.domctl_destroydomain(d.domid)
    want_self = -Errno.EPERM if priv is Priv.PRIV else 0
    assert results == {"dom0": 0, "self": want_self, "other": -Errno.EPERM}
    hv.check_invariants()


@pytest.mark.parametrize(("name", "call"), MATRIX, ids=[n for n, _ in MATRIX])
def test_eperm_does_not_leak_existence(hv: Hypervisor, make_domu: MakeDomU,
                                       name: str, call: Call) -> None:
    """An unprivileged caller sees the same EPERM for an existing and a missing target."""
    victim, other = make_domu(name="victim"), make_domu(name="other")
    before = hv.statistics().get(other.domid, {}).copy()
    a = errno_of(lambda: call(other, victim.domid))
    b = errno_of(lambda: call(other, NOBODY))
    assert (a.errno, str(a)) == (b.errno, str(b)) == (Errno.EPERM, str(a))
    after = hv.statistics()[other.domid]
    assert after.get("hypercall.eperm", 0) == before.get("hypercall.eperm", 0) + 2
    assert {k: v for k, v in after.items() if k != "hypercall.eperm"} == \
        {k: v for k, v in before.items() if k != "hypercall.eperm"}
    hv.check_invariants()


def test_dom0_gets_esrch_for_a_missing_domain(dom0: HypercallInterface) -> None:
    for fn in (lambda: dom0.domctl_getdomaininfo(NOBODY),
               lambda: dom0.evtchn_status(1, NOBODY),
               lambda: dom0.current_reservation(NOBODY),
               lambda: dom0.evtchn_alloc_unbound(0, dom=NOBODY)):
        assert errno_of(fn).errno == Errno.ESRCH


def test_target_passed_by_keyword_is_checked_too(hv: Hypervisor, make_domu: MakeDomU) -> None:
    victim, other = make_domu(), make_domu()
    ports = hv.resource_counts()["ports"]
    for target in (victim.domid, NOBODY):
        e = errno_of(lambda t=target: other.call(HYPERVISOR_event_channel_op,
                                                 EVTCHNOP_alloc_unbound, dom=t, remote_dom=0))
        assert e.errno == Errno.EPERM
        e = errno_of(lambda t=target: other.call(HYPERVISOR_memory_op,
                                                 XENMEM_current_reservation, domid=t))
        assert e.errno == Errno.EPERM
    assert hv.resource_counts()["ports"] == ports
    # by keyword for oneself is fine
    assert other.call(HYPERVISOR_event_channel_op, EVTCHNOP_alloc_unbound,
                      dom=other.domid, remote_dom=0) == 1


def test_bad_argument_lists_are_efault_not_crashes(make_domu: MakeDomU) -> None:
    g = make_domu()
    assert g.call_c(HYPERVISOR_event_channel_op, EVTCHNOP_send) == -Errno.EFAULT
    assert g.call_c(HYPERVISOR_event_channel_op, EVTCHNOP_send, 1, 2, 3) == -Errno.EFAULT
    assert g.call_c(HYPERVISOR_event_channel_op, EVTCHNOP_send, bogus=1) == -Errno.EFAULT
    assert g.call_c(HYPERVISOR_event_channel_op, EVTCHNOP_status) == -Errno.EFAULT


def test_errors_are_xen_errno_converted_in_one_place(dom0: HypercallInterface,
                                                     make_domu: MakeDomU) -> None:
    g = make_domu()
    e = errno_of(lambda: g.evtchn_send(77))
    assert isinstance(e.errno, Errno) and e.errno == Errno.EINVAL and e.retval == -22
    assert g.call_c(HYPERVISOR_event_channel_op, EVTCHNOP_send, 77) == -22
    assert dom0.call_c(HYPERVISOR_event_channel_op, EVTCHNOP_status, NOBODY, 1) == -3  # ESRCH
    assert g.call_c(HYPERVISOR_domctl, 5, 0) == -1  # EPERM
    # success values pass through unchanged
    assert g.call_c(HYPERVISOR_event_channel_op, EVTCHNOP_alloc_unbound, g.domid, 0) == 1


def test_statistics_count_per_domain_per_operation(hv: Hypervisor, dom0: HypercallInterface,
                                                   make_domu: MakeDomU) -> None:
    a, b = make_domu(), make_domu()
    pa = a.evtchn_alloc_unbound(b.domid)
    pb = b.evtchn_bind_interdomain(a.domid, pa)  # delivers once to b (starts pending)
    for _ in range(3):
        a.evtchn_send(pa)  # coalesce with the pending bit
    b.call_c(HYPERVISOR_event_channel_op, 99)
    b.call_c(HYPERVISOR_domctl, 5, a.domid)
    stats = hv.statistics()
    assert stats[a.domid] == {"event_channel_op.alloc_unbound": 1, "event_channel_op.send": 3}
    assert stats[b.domid] == {"event_channel_op.bind_interdomain": 1, "evtchn.deliver": 1,
                              "evtchn.coalesced": 3, "hypercall.enosys": 1,
                              "hypercall.eperm": 1}
    struct_words = b.shared_info.cast("Q")
    struct_words[256] = 0  # b consumes the event
    a.evtchn_send(pa)
    assert hv.statistics()[b.domid]["evtchn.deliver"] == 2
    assert pb == 1
    dom0.domctl_destroydomain(b.domid)
    assert b.domid not in hv.statistics()  # a freed domain's counters go with it
    assert hv.statistics()[0]["domctl.destroydomain"] == 1
