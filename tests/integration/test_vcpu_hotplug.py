"""vCPU hot-plug end to end: the toolstack writes ``cpu/<i>/availability``, the guest
kernel follows it with VCPUOP_up/_down, and the hypervisor's online count follows."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from dom0.host import DomainHandle, Host
from dom0.testing import GuestFactory
from domu.guest import Guest, GuestCpu
from domu.xenstore import XenStoreError
from hypervisor.errno import Errno, XenError
from hypervisor.hypercall import HYPERVISOR_vcpu_op, VCPUOP_down, VCPUOP_is_up, VCPUOP_up
from hypervisor.sched import RunState


async def boot(guest_factory: GuestFactory, **fields: object) -> tuple[DomainHandle, Guest]:
    """A guest that idles, and its program's Guest handle."""
    box: list[Guest] = []

    async def idle(guest: Guest) -> None:
        box.append(guest)
        await trio.sleep_forever()

    dom = await guest_factory(idle, **fields)
    await wait_all_tasks_blocked()
    return dom, box[0]


def vcpu_states(host: Host, domid: int) -> list[bool]:
    """Per vCPU: online as ``xl vcpu-list`` shows it (its runstate is not OFFLINE)."""
    return [v.runstate != RunState.OFFLINE for v in host.kernel.hc.sysctl_vcpu_list(domid)]


def cpu(guest: Guest) -> GuestCpu:
    assert guest.cpu is not None
    return guest.cpu


async def test_vcpu_set_up_to_maxvcpus_and_back(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, guest = await boot(guest_factory, vcpus=1, maxvcpus=3)
    # at boot the kernel took down the vCPUs the config wants offline
    assert dom.online_vcpus == 1 and cpu(guest).online == (0,) and cpu(guest).count == 3
    assert vcpu_states(xen_host, dom.domid) == [True, False, False]
    row = next(r for r in xen_host.list() if r.domid == dom.domid)
    assert row.vcpus == 1  # xl list's VCPUs column

    await dom.set_vcpus(3)
    await wait_all_tasks_blocked()
    assert dom.online_vcpus == 3 and cpu(guest).online == (0, 1, 2)
    assert vcpu_states(xen_host, dom.domid) == [True, True, True]
    await cpu(guest).run(0.1, vcpu=2)  # a vCPU brought up takes work

    await dom.set_vcpus(1)
    await wait_all_tasks_blocked()
    assert dom.online_vcpus == 1 and cpu(guest).online == (0,)
    assert vcpu_states(xen_host, dom.domid) == [True, False, False]
    with pytest.raises(XenError) as ei:
        await cpu(guest).run(0.1, vcpu=2)
    assert ei.value.errno == Errno.EINVAL


async def test_work_on_a_vcpu_taken_offline_waits_for_it(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, guest = await boot(guest_factory, vcpus=2)
    done: list[float] = []

    async def job() -> None:
        await cpu(guest).run(1.0, vcpu=1)
        done.append(trio.current_time())

    async with trio.open_nursery() as n:
        n.start_soon(job)
        await trio.sleep(0.5)
        await dom.set_vcpus(1)
        await trio.sleep(5.0)
        assert not done and dom.online_vcpus == 1
        t = trio.current_time()
        await dom.set_vcpus(2)
        await trio.sleep(1.0)
    assert done and done[0] == pytest.approx(t + 0.5, abs=0.05)


@pytest.mark.parametrize("n", [0, 4, -1, 100])
async def test_a_bad_count_is_refused_and_changes_nothing(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host, n: int
) -> None:
    dom, guest = await boot(guest_factory, vcpus=2, maxvcpus=3)
    path = f"/local/domain/{dom.domid}/cpu"
    xs = xen_host.toolstack.xs
    before = [await xs.read(f"{path}/{i}/availability") for i in range(3)]
    with pytest.raises(ValueError, match=r"at least 1|maxvcpus is 3"):
        await dom.set_vcpus(n)
    await wait_all_tasks_blocked()
    assert [await xs.read(f"{path}/{i}/availability") for i in range(3)] == before
    assert dom.online_vcpus == 2 and cpu(guest).online == (0, 1)


async def test_garbage_availability_is_ignored_and_vcpu0_stays_up(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom, guest = await boot(guest_factory, vcpus=3)
    path = f"/local/domain/{dom.domid}/cpu"
    xs = xen_host.toolstack.xs  # dom0 may write them; a confused toolstack did
    await xs.write(f"{path}/1/availability", "maybe")
    await xs.write(f"{path}/0/availability", "offline")
    await xs.write(f"{path}/2/availability", "offline\0junk")
    await xs.write(f"{path}/7/availability", "online")  # a vCPU the domain lacks
    await wait_all_tasks_blocked()
    assert cpu(guest).online == (0, 1, 2) and dom.online_vcpus == 3
    await xs.write(f"{path}/2/availability", "offline")  # a good value still works
    await wait_all_tasks_blocked()
    assert cpu(guest).online == (0, 1)


async def test_a_hostile_guest_cannot_set_its_own_vcpus_or_hurt_others(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    errors: list[str] = []
    box: list[Guest] = []

    async def hostile(guest: Guest) -> None:
        box.append(guest)
        for key in ("cpu/1/availability", "cpu/5/availability", "cpu/0/availability"):
            try:
                await guest.xenstore.write(key, "online")
            except XenStoreError as exc:
                errors.append(exc.name)
        await trio.sleep_forever()

    victim, vguest = await boot(guest_factory, vcpus=1, maxvcpus=2)
    evil = await guest_factory(hostile, vcpus=1, maxvcpus=2)
    await wait_all_tasks_blocked()
    assert errors == ["EACCES"] * 3  # the toolstack owns cpu/: read-only to the guest
    assert evil.online_vcpus == 1
    # raw VCPUOP calls with junk: errors, never a crash; its own vCPUs only
    hc = xen_host.hv.interface(evil.domid)
    for cmd, arg, want in ((VCPUOP_up, 2, -Errno.ENOENT), (VCPUOP_down, -1, -Errno.ENOENT),
                           (VCPUOP_is_up, "1", -Errno.EINVAL), (VCPUOP_up, None, -Errno.EINVAL),
                           (9, 0, -Errno.ENOSYS)):
        assert hc.call_c(HYPERVISOR_vcpu_op, cmd, arg) == want
    assert hc.call_c(HYPERVISOR_vcpu_op, VCPUOP_up, 1) == 0  # its own: allowed, as in Xen
    assert evil.online_vcpus == 2
    # nobody else noticed
    assert victim.online_vcpus == 1 and cpu(vguest).online == (0,)
    await victim.set_vcpus(2)
    await wait_all_tasks_blocked()
    assert victim.online_vcpus == 2
    assert box and cpu(box[0]).online == (0, 1)
