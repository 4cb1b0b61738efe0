"""``xensim vcpu-pin``: its argument checks, the host's op, and the CLI against a real host."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from trio.testing import MockClock

from dom0.host import open_host
from dom0.toolstack.config import GuestConfig
from dom0.toolstack.hostd import HostDaemon, OpError, _vcpu_pin_plan
from dom0.toolstack.verbs import parse_vcpu_arg
from tests.cli.conftest import CLI, REPO, Daemon, running_daemon

TWO_VCPUS = 'name = "{name}"\nkernel = "examples.ticker:main"\nmemory = 8\nvcpus = 2\n'

# -- the VCPU argument (CLI side) ----------------------------------------------------------------


def test_parse_vcpu_arg() -> None:
    assert parse_vcpu_arg("all") == "all"
    assert parse_vcpu_arg("0") == 0
    assert parse_vcpu_arg("12") == 12
    assert parse_vcpu_arg(str(2**32 - 1)) == 2**32 - 1
    # xl's strtol would take " 1", "+1" and "1x" as 1; xensim wants the number alone
    for bad in ("", "x", "-1", "1x", " 1", "+1", "ALL", "\u00b2", "1.0", str(2**32)):
        with pytest.raises(ValueError, match="expected a vCPU number or 'all'"):
            parse_vcpu_arg(bad)


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


# -- the CLI against a 4-pCPU host ---------------------------------------------------------------


@pytest.fixture(scope="module")
def host4() -> Iterator[Daemon]:
    """``xensim host --pcpus 4`` for this module (CPU lists want more than the default 2)."""
    with running_daemon("--pcpus", "4", prefix="xp") as dmn:
        yield dmn


def _create(host: Daemon, name: str) -> None:
    r = host.xensim("create", "-q", str(host.cfg(name, TWO_VCPUS.format(name=name))))
    assert r.returncode == 0, r.stderr


def _affinities(host: Daemon, domain: str) -> list[str]:
    """``hard / soft`` of each of the domain's vCPUs, as ``vcpu-list`` prints them."""
    r = host.xensim("vcpu-list", domain)
    assert r.returncode == 0, r.stderr
    return [" ".join(line.split()[-3:]) for line in r.stdout.splitlines()[1:]]


def _pin(host: Daemon, *args: str) -> None:
    r = host.xensim("vcpu-pin", *args)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), args


def test_pin_one_vcpu(host4: Daemon) -> None:
    _create(host4, "pin1")
    assert _affinities(host4, "pin1") == ["all / all", "all / all"]
    _pin(host4, "pin1", "1", "2")
    assert _affinities(host4, "pin1") == ["all / all", "2 / all"]
    _pin(host4, "pin1", "0", "0,2-3")
    assert _affinities(host4, "pin1") == ["0,2-3 / all", "2 / all"]
    _pin(host4, "-i", "pin1", "0", "all")  # no xl.conf global masks: accepted, no effect
    assert _affinities(host4, "pin1") == ["all / all", "2 / all"]
    assert host4.xensim("destroy", "pin1").returncode == 0


def test_pin_all_vcpus_with_an_exclusion(host4: Daemon) -> None:
    _create(host4, "pin2")
    _pin(host4, "pin2", "all", "all,^1")
    assert _affinities(host4, "pin2") == ["0,2-3 / all"] * 2
    _pin(host4, "pin2", "all", "1-3,^2")
    assert _affinities(host4, "pin2") == ["1,3 / all"] * 2
    assert host4.xensim("destroy", "pin2").returncode == 0


def test_dash_leaves_hard_affinity_and_soft_takes_only_dash_or_all(host4: Daemon) -> None:
    _create(host4, "pin3")
    _pin(host4, "pin3", "all", "3")
    _pin(host4, "pin3", "0", "-", "all")  # soft 'all' is what xensim always has
    _pin(host4, "pin3", "1", "1", "-")
    _pin(host4, "pin3", "0", "2", "all")
    _pin(host4, "--force", "pin3", "0", "-")  # there is never a guest override to undo
    assert _affinities(host4, "pin3") == ["2 / all", "1 / all"]
    for soft in ("0-3", "1", "^1", "none"):
        r = host4.xensim("vcpu-pin", "pin3", "0", "-", soft)
        assert (r.returncode, r.stdout) == (1, ""), soft
        assert r.stderr == ("xensim: vcpu-pin: soft affinity is not simulated (vcpu-list "
                            f"always shows 'all'): give '-' or 'all' for it, not '{soft}'\n")
    for args in (["0", "-"], ["0", "-", "-"]):  # as libxl: nothing asked for
        r = host4.xensim("vcpu-pin", "pin3", *args)
        assert (r.returncode, r.stderr) == (1, "xensim: vcpu-pin: nothing to change: the hard "
                                            "affinity is '-' and no soft affinity is given\n")
    r = host4.xensim("vcpu-pin", "-f", "pin3", "all", "1")
    assert (r.returncode, r.stderr) == (1, "xensim: vcpu-pin: --force and 'all' as VCPU "
                                        "not allowed\n")
    assert _affinities(host4, "pin3") == ["2 / all", "1 / all"]
    assert host4.xensim("destroy", "pin3").returncode == 0


def test_domain_0_can_be_pinned(host4: Daemon) -> None:
    _pin(host4, "Domain-0", "0", "3")
    assert _affinities(host4, "Domain-0") == ["3 / all"]
    _pin(host4, "0", "all", "all")
    assert _affinities(host4, "Domain-0") == ["all / all"]


@pytest.fixture(scope="module")
def pin4(host4: Daemon) -> Iterator[Daemon]:
    """``host4`` running ``pin4``: two vCPUs, both pinned to pCPUs 1-2."""
    _create(host4, "pin4")
    _pin(host4, "pin4", "all", "1-2")
    yield host4
    assert host4.xensim("destroy", "pin4").returncode == 0


@pytest.mark.parametrize(("args", "stderr"), [
    (["nosuch", "0", "1"], "xensim: domain 'nosuch' does not exist"),
    (["pin4", "2", "1"], "xensim: vcpu-pin: pin4 has no vCPU 2 (it has 2: 0-1)"),
    (["pin4", "x", "1"], "xensim: vcpu-pin: invalid VCPU 'x' (expected a vCPU number or 'all')"),
    (["pin4", "-1", "1"],
     "xensim: vcpu-pin: invalid VCPU '-1' (expected a vCPU number or 'all')"),
    (["pin4", "0", "4"],
     "xensim: vcpu-pin: CPULIST `4': cpu 4 does not exist (the host has 4: 0-3)"),
    (["pin4", "all", "0-7"],
     "xensim: vcpu-pin: CPULIST `0-7': cpu 7 does not exist (the host has 4: 0-3)"),
    (["pin4", "0", "one"], "xensim: vcpu-pin: CPULIST `one': invalid pcpu range `one' "
                           "(expected N, N-M, all, nodes:..., each optionally with ^)"),
    (["pin4", "0", "3-1"], "xensim: vcpu-pin: CPULIST `3-1': invalid pcpu range `3-1' "
                           "(expected N, N-M, all, nodes:..., each optionally with ^)"),
    (["pin4", "0", "^all"], "xensim: vcpu-pin: CPULIST `^all': can't combine \"^\" and \"all\""),
    (["pin4", "all", "^0"], "xensim: vcpu-pin: CPULIST `^0' leaves no pCPU to run on"),
])
def test_errors_exit_1_and_change_nothing(pin4: Daemon, args: list[str], stderr: str) -> None:
    r = pin4.xensim("vcpu-pin", *args)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", stderr + "\n")
    assert _affinities(pin4, "pin4") == ["1-2 / all"] * 2


def test_usage_errors_exit_2(host4: Daemon) -> None:
    for args in ([], ["Domain-0"], ["Domain-0", "0"], ["Domain-0", "0", "1", "all", "more"],
                 ["--bogus", "Domain-0", "0", "1"]):
        r = host4.xensim("vcpu-pin", *args)
        assert r.returncode == 2, args
        assert "usage:" in r.stderr, args
    assert _affinities(host4, "Domain-0") == ["all / all"]


def test_vcpu_pin_needs_a_host(short_dir: Path) -> None:
    env = {**os.environ, "XENSIM_CONTROL": str(short_dir / "nothing")}
    r = subprocess.run([*CLI, "vcpu-pin", "d", "0", "1"], cwd=REPO, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "no xensim host is running" in r.stderr
