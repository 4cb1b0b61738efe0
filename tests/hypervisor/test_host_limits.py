"""dom0-facing details a toolstack relies on: dom0's port space, the flags of a
shut-down domain, start_info's page count."""

from __future__ import annotations

import pytest

from hypervisor.domain import (
    DomainConfig,
    ShutdownReason,
    XEN_DOMINF_blocked,
    XEN_DOMINF_running,
    XEN_DOMINF_shutdown,
)
from hypervisor.errno import Errno, XenError
from hypervisor.event_channel import EVTCHN_2L_NR_CHANNELS
from hypervisor.hypercall import HypercallInterface
from hypervisor.hypervisor import Hypervisor

from .conftest import MakeDomU


def test_dom0_gets_the_whole_2_level_port_space(
    dom0: HypercallInterface, make_domu: MakeDomU
) -> None:
    """dom0 binds two ports per guest; a guest's 1023-port default would cap a
    host at ~510 guests."""
    g = make_domu()
    ports = [dom0.evtchn_alloc_unbound(remote_dom=g.domid) for _ in range(2000)]
    assert max(ports) > 1023
    assert len(set(ports)) == 2000


def test_guest_keeps_the_1023_default(make_domu: MakeDomU) -> None:
    g = make_domu()
    got = 0
    with pytest.raises(XenError) as exc:
        while True:
            g.evtchn_alloc_unbound(remote_dom=0)
            got += 1
    assert exc.value.errno == Errno.ENOSPC
    assert got == 1023
    assert EVTCHN_2L_NR_CHANNELS == 4096


def test_shut_down_domain_is_neither_running_nor_blocked(
    hv: Hypervisor, dom0: HypercallInterface, make_domu: MakeDomU
) -> None:
    g = make_domu()
    g.sched_shutdown(ShutdownReason.POWEROFF)
    flags = dom0.domctl_getdomaininfo(g.domid).flags
    assert flags & XEN_DOMINF_shutdown
    assert not flags & (XEN_DOMINF_blocked | XEN_DOMINF_running)


def test_start_info_counts_pages_populated_after_create(
    hv: Hypervisor, dom0: HypercallInterface
) -> None:
    domid = dom0.domctl_createdomain(DomainConfig(name="late", max_pages=64, nr_pages=0))
    hv.memory_ops.populate(hv.domains.get(domid), range(16), 0)
    dom0.domctl_setstartinfo(domid, store_evtchn=1)
    assert hv.domains.get(domid).start_info.nr_pages == 16
