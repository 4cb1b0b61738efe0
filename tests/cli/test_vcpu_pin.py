"""``xensim vcpu-pin``: the host's op and its checks."""

from __future__ import annotations

import pytest
from trio.testing import MockClock

from dom0.host import open_host
from dom0.toolstack.config import GuestConfig
from dom0.toolstack.hostd import HostDaemon, OpError, _vcpu_pin_plan

# -- the request, checked by the host (pure) -----------------------------------------------------


def _plan(**args: object) -> tuple[list[int], list[int] | None]:
    return _vcpu_pin_plan(args, "g", [0, 1], 4)


def test_vcpu_pin_plan_accepts() -> None:
    assert _plan(vcpu=0, hard="1") == ([0], [1])
    assert _plan(vcpu="all", hard="0-3,^1") == ([0, 1], [0, 2, 3])
    assert _plan(vcpu=1, hard="all", soft="all") == ([1], [0, 1, 2, 3])
    assert _plan(vcpu=1, hard="nodes:0,^0") == ([1], [1, 2, 3])
    assert _plan(vcpu=1, hard=None, soft="all") == ([1], None)  # hard '-': left alone
    assert _plan(vcpu=0, hard=None, force=True) == ([0], None)  # only undoes an override


@pytest.mark.parametrize(("args", "message"), [
    ({"vcpu": 2, "hard": "1"}, "vcpu-pin: g has no vCPU 2 (it has 2: 0-1)"),
    ({"vcpu": -1, "hard": "1"}, "vcpu-pin: the VCPU is a vCPU number or 'all'"),
    ({"vcpu": "1", "hard": "1"}, "vcpu-pin: the VCPU is a vCPU number or 'all'"),
    ({"vcpu": True, "hard": "1"}, "vcpu-pin: the VCPU is a vCPU number or 'all'"),
    ({"hard": "1"}, "vcpu-pin: the VCPU is a vCPU number or 'all'"),
    ({"vcpu": 0, "hard": "4"}, "vcpu-pin: CPULIST `4': cpu 4 does not exist "
                               "(the host has 4: 0-3)"),
    ({"vcpu": 0, "hard": "0-x"}, "vcpu-pin: CPULIST `0-x': invalid pcpu range `0-x' "
                                 "(expected N, N-M, all, nodes:..., each optionally with ^)"),
    ({"vcpu": 0, "hard": "^all"}, "vcpu-pin: CPULIST `^all': can't combine \"^\" and \"all\""),
    ({"vcpu": 0, "hard": "^1"}, "vcpu-pin: CPULIST `^1' leaves no pCPU to run on"),
    ({"vcpu": 0, "hard": ""}, "vcpu-pin: CPULIST `' leaves no pCPU to run on"),
    ({"vcpu": 0, "hard": "1", "soft": "0-1"},
     "vcpu-pin: soft affinity is not simulated (vcpu-list always shows 'all'): "
     "give '-' or 'all' for it, not '0-1'"),
    ({"vcpu": 0, "hard": None}, "vcpu-pin: nothing to change: the hard affinity is '-' "
                                "and no soft affinity is given"),
    ({"vcpu": "all", "hard": "1", "force": True},
     "vcpu-pin: --force and 'all' as VCPU not allowed"),
    ({"vcpu": 0, "hard": 1}, "argument 'hard' has the wrong type"),
    ({"vcpu": 0, "hard": "1", "soft": 1}, "argument 'soft' has the wrong type"),
    ({"vcpu": 0, "hard": "1", "force": "yes"}, "argument 'force' has the wrong type"),
])
def test_vcpu_pin_plan_refuses(args: dict[str, object], message: str) -> None:
    with pytest.raises(OpError) as info:
        _vcpu_pin_plan(args, "g", [0, 1], 4)
    assert (info.value.code, str(info.value)) == ("EINVAL", message)


async def test_op_vcpu_pin_sets_the_hypervisors_affinity_or_nothing(
        autojump_clock: MockClock) -> None:
    async with open_host(nr_pcpus=4) as host:
        dom = await host.create(GuestConfig(name="op", kernel="examples.ticker:main",
                                            memory=4, vcpus=2))
        hc = host.kernel.hc
        daemon = HostDaemon(host)

        def hard() -> list[frozenset[int]]:
            return [hc.domctl_getvcpuaffinity(dom.domid, v) for v in (0, 1)]

        result = await daemon.op_vcpu_pin({"domain": "op", "vcpu": "all", "hard": "2-3"})
        assert result == {"domid": dom.domid, "vcpus": [0, 1], "hard": [2, 3]}
        assert hard() == [frozenset({2, 3})] * 2
        await daemon.op_vcpu_pin({"domain": str(dom.domid), "vcpu": 1, "hard": "0"})
        assert hard() == [frozenset({2, 3}), frozenset({0})]
        for bad in ({"vcpu": "all", "hard": "0,7"}, {"vcpu": 5, "hard": "0"},
                    {"vcpu": 0, "hard": "1", "soft": "1"}):
            with pytest.raises(OpError):
                await daemon.op_vcpu_pin({"domain": "op", **bad})
        with pytest.raises(OpError, match="domain 'nosuch' does not exist"):
            await daemon.op_vcpu_pin({"domain": "nosuch", "vcpu": 0, "hard": "0"})
        assert hard() == [frozenset({2, 3}), frozenset({0})]
        await daemon.op_vcpu_pin({"domain": "Domain-0", "vcpu": 0, "hard": "3"})
        assert hc.domctl_getvcpuaffinity(0, 0) == frozenset({3})
        await dom.destroy()
