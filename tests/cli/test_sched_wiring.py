"""Issue #9 wiring: the scheduler runs in every host; configs reach it; guests compute."""

from __future__ import annotations

import pytest
from trio.testing import MockClock

from dom0.host import open_host
from dom0.toolstack.config import Action, ConfigError, GuestConfig
from hypervisor.domain import ShutdownReason


async def test_guest_cpu_time_shows_in_list(autojump_clock: MockClock) -> None:
    async with open_host() as host:
        dom = await host.create(GuestConfig(name="crunch", kernel="examples.cruncher:main",
                                            memory=4, extra="0.3",
                                            on_poweroff=Action.PRESERVE))
        assert await dom.wait_shutdown() == ShutdownReason.POWEROFF
        row = next(r for r in host.list() if r.name == "crunch")
        assert row.time == pytest.approx(0.3, abs=0.01)
        assert row.state == "---s--"
        assert "crunch: used 0.30 s of CPU" in dom.console.log().decode()
        await dom.destroy()


async def test_weight_cap_and_cpus_reach_the_scheduler(autojump_clock: MockClock) -> None:
    async with open_host(nr_pcpus=4) as host:
        dom = await host.create(GuestConfig(name="t", kernel="examples.ticker:main", memory=4,
                                            vcpus=2, cpu_weight=512, cap=50, cpus="1-2"))
        hc = host.kernel.hc
        params = hc.domctl_scheduler_op(dom.domid)
        assert (params.weight, params.cap) == (512, 50)
        assert hc.domctl_getvcpuaffinity(dom.domid, 0) == frozenset({1, 2})
        assert hc.sysctl_physinfo().nr_cpus == 4
        await dom.destroy()
        per_vcpu = await host.create(GuestConfig(name="p", kernel="examples.ticker:main",
                                                 memory=4, vcpus=2, cpus=["0", "3"]))
        assert hc.domctl_getvcpuaffinity(per_vcpu.domid, 0) == frozenset({0})
        assert hc.domctl_getvcpuaffinity(per_vcpu.domid, 1) == frozenset({3})
        await per_vcpu.destroy()


async def test_weights_share_a_contended_pcpu(autojump_clock: MockClock) -> None:
    async with open_host(nr_pcpus=1) as host:
        heavy = await host.create(GuestConfig(name="heavy", kernel="examples.cruncher:main",
                                              memory=4, extra="1.0", cpu_weight=768,
                                              on_poweroff=Action.PRESERVE))
        light = await host.create(GuestConfig(name="light", kernel="examples.cruncher:main",
                                              memory=4, extra="1.0", cpu_weight=256,
                                              on_poweroff=Action.PRESERVE))
        await heavy.wait_shutdown()
        times = {r.name: r.time for r in host.list()}
        assert times["heavy"] == pytest.approx(1.0, abs=0.01)
        assert times["light"] < 0.6  # about a third of the pCPU while both ran
        await light.wait_shutdown()
        await heavy.destroy()
        await light.destroy()


async def test_a_cpulist_naming_a_missing_pcpu_is_a_config_error(
        autojump_clock: MockClock) -> None:
    async with open_host(nr_pcpus=2) as host:
        with pytest.raises(ConfigError):
            await host.create(GuestConfig(name="x", kernel="examples.ticker:main", memory=4,
                                          cpus="5"))


async def test_rr_scheduler_option(autojump_clock: MockClock) -> None:
    async with open_host(scheduler="rr") as host:
        assert host.kernel.hc.sysctl_physinfo().scheduler == "rr"
