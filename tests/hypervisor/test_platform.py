"""The physical platform: devices raise PIRQs that reach dom0 through bind_pirq."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from domu.evtchn import EventDispatcher
from hypervisor.errno import Errno, XenError
from hypervisor.event_channel import ECS_FREE, ECS_PIRQ
from hypervisor.hypercall import HypercallInterface
from hypervisor.hypervisor import Hypervisor

from .conftest import MakeDomU


def errno_of(fn, *args) -> Errno:  # type: ignore[no-untyped-def]
    with pytest.raises(XenError) as ei:
        fn(*args)
    return ei.value.errno


def pending(hc: HypercallInterface, port: int) -> bool:
    return bool(hc.shared_info.cast("Q")[256 + port // 64] >> (port % 64) & 1)


async def test_device_irq_reaches_dom0_handler(hv: Hypervisor, dom0: HypercallInterface) -> None:
    nic = hv.platform.add_device("nic0")
    port = dom0.evtchn_bind_pirq(nic.pirq)
    st = dom0.evtchn_status(port)
    assert (st.status, st.pirq) == (ECS_PIRQ, nic.pirq)
    disp = EventDispatcher(dom0)
    irqs = disp.waiter(port)
    async with trio.open_nursery() as n:
        await n.start(disp.run)
        assert nic.raise_irq() is True
        await irqs.wait()
        assert irqs.events == 1
        for _ in range(3):  # raised before dom0 runs: one edge (coalesced)
            nic.raise_irq()
        await irqs.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert irqs.events == 2 and nic.raised == 4
        n.cancel_scope.cancel()
    assert hv.statistics()[0]["evtchn.deliver"] >= 2
    hv.check_invariants()


def test_domu_cannot_bind_a_pirq(hv: Hypervisor, dom0: HypercallInterface,
                                 make_domu: MakeDomU) -> None:
    g = make_domu()
    disk = hv.platform.add_device("disk0")
    ports = hv.resource_counts()["ports"]
    for pirq in (disk.pirq, 200, 10_000, -1):  # bound, unused, out of range: all EPERM
        assert errno_of(g.evtchn_bind_pirq, pirq) == Errno.EPERM
    assert hv.resource_counts()["ports"] == ports
    assert not disk.raise_irq()  # nothing got bound


def test_unbound_pirq_raise_is_harmless(hv: Hypervisor, dom0: HypercallInterface,
                                        make_domu: MakeDomU) -> None:
    g = make_domu()
    dev = hv.platform.add_device("usb", pirq=9)
    before = hv.resource_counts()
    for _ in range(100):
        assert dev.raise_irq() is False
    assert hv.platform.dropped == 100 and dev.raised == 100
    assert hv.resource_counts() == before
    assert not any(hc.shared_info.cast("Q")[256 + w] for hc in (g,) for w in range(64))
    hv.check_invariants()


def test_bind_pirq_errors_and_rebind(hv: Hypervisor, dom0: HypercallInterface) -> None:
    dev = hv.platform.add_device("disk0")
    p = dom0.evtchn_bind_pirq(dev.pirq)
    assert errno_of(dom0.evtchn_bind_pirq, dev.pirq) == Errno.EEXIST
    for bad in (hv.platform.nr_pirqs, -1, 2**32, 2**64):
        assert errno_of(dom0.evtchn_bind_pirq, bad) == Errno.EINVAL
    assert errno_of(dom0.evtchn_send, p) == Errno.EINVAL  # cannot send on a PIRQ port
    assert errno_of(dom0.evtchn_bind_vcpu, p, 1) == Errno.ENOENT  # dom0 has one vCPU
    dom0.evtchn_bind_vcpu(p, 0)
    dom0.evtchn_close(p)
    assert dom0.evtchn_status(p).status == ECS_FREE
    assert dev.raise_irq() is False
    q = dom0.evtchn_bind_pirq(dev.pirq)  # the line can be bound again
    assert q == p and dev.raise_irq() and pending(dom0, q)
    hv.check_invariants()


def test_add_device_rules(hv: Hypervisor) -> None:
    a = hv.platform.add_device("a")
    b = hv.platform.add_device("b")
    assert (a.pirq, b.pirq) == (0, 1)
    assert hv.platform.add_device("c", pirq=200).pirq == 200
    for name, pirq in (("a", None), ("d", 1), ("e", hv.platform.nr_pirqs), ("f", -1)):
        with pytest.raises(ValueError):
            hv.platform.add_device(name, pirq)


def test_pirq_lines_are_configurable() -> None:
    hv = Hypervisor(memory_bytes=16 << 20, dom0_pages=8, nr_pirqs=4)
    dom0 = hv.interface(0)
    assert errno_of(dom0.evtchn_bind_pirq, 4) == Errno.EINVAL
    assert dom0.evtchn_bind_pirq(3) == 1
