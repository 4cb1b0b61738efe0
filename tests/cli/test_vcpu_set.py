"""``xensim vcpu-set``: its argument check, the host's op, and the CLI against a real host."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from trio.testing import MockClock, wait_all_tasks_blocked

from dom0.host import open_host
from dom0.toolstack.config import GuestConfig
from dom0.toolstack.hostd import HostDaemon, OpError
from dom0.toolstack.verbs import parse_vcpu_count
from tests.cli.conftest import Daemon, running_daemon

THREE_MAX = ('name = "{name}"\nkernel = "examples.ticker:main"\nmemory = 8\nvcpus = 1\n'
             'maxvcpus = 3\n')


def test_parse_vcpu_count() -> None:
    assert parse_vcpu_count("0") == 0  # the host refuses it, with libxl's reason
    assert parse_vcpu_count("3") == 3
    assert parse_vcpu_count(str(2**31 - 1)) == 2**31 - 1
    for bad in ("", "x", "-1", "1x", " 1", "+1", "1.0", "\u00b2", str(2**31)):
        with pytest.raises(ValueError, match="expected a number"):
            parse_vcpu_count(bad)


async def test_op_vcpu_set_changes_the_online_vcpus_or_nothing(
        autojump_clock: MockClock) -> None:
    async with open_host(nr_pcpus=2) as host:
        dom = await host.create(GuestConfig(name="op", kernel="examples.ticker:main",
                                            memory=4, vcpus=1, maxvcpus=4))
        daemon = HostDaemon(host)
        await wait_all_tasks_blocked()
        assert dom.online_vcpus == 1
        result = await daemon.op_vcpu_set({"domain": "op", "vcpus": 2})
        assert result == {"domid": dom.domid, "vcpus": 2, "max_vcpus": 4}
        await wait_all_tasks_blocked()
        assert dom.online_vcpus == 2
        # more than online and than the host's 2 pCPUs: xl's overcommit check
        with pytest.raises(OpError, match=r"overcommitting! You have 2 physical CPUs and "
                                          r"want 3 vCPUs! Aborting, use --ignore-host"):
            await daemon.op_vcpu_set({"domain": "op", "vcpus": 3})
        for bad, message in (({"vcpus": 0}, "vcpu-set: requested 0 vCPUs: at least 1"),
                             ({"vcpus": 5, "ignore_host": True},
                              "vcpu-set: requested 5 vCPUs, however maxvcpus is 4"),
                             ({"vcpus": "2"}, "argument 'vcpus' has the wrong type"),
                             ({"vcpus": True}, "argument 'vcpus' must be an integer"),
                             ({}, "missing argument 'vcpus'"),
                             ({"vcpus": 2, "ignore_host": "yes"}, "argument 'ignore_host'")):
            with pytest.raises(OpError, match=message) as info:
                await daemon.op_vcpu_set({"domain": "op", **bad})
            assert info.value.code == "EINVAL"
        with pytest.raises(OpError, match="not possible on Domain-0"):
            await daemon.op_vcpu_set({"domain": "Domain-0", "vcpus": 1})
        with pytest.raises(OpError, match="domain 'nosuch' does not exist"):
            await daemon.op_vcpu_set({"domain": "nosuch", "vcpus": 1})
        await wait_all_tasks_blocked()
        assert dom.online_vcpus == 2  # refused requests changed nothing
        await daemon.op_vcpu_set({"domain": str(dom.domid), "vcpus": 4, "ignore_host": True})
        await wait_all_tasks_blocked()
        assert dom.online_vcpus == 4
        await dom.destroy()


# -- the CLI against a real host -----------------------------------------------------------------


@pytest.fixture(scope="module")
def host2() -> Iterator[Daemon]:
    """``xensim host --pcpus 2`` for this module."""
    with running_daemon("--pcpus", "2", prefix="xv") as dmn:
        yield dmn


def _online(host: Daemon, domain: str) -> tuple[str, list[str]]:
    """``list``'s VCPUs column and ``vcpu-list``'s State column (``--p`` when offline)."""
    r = host.xensim("list", domain)
    assert r.returncode == 0, r.stderr
    vcpus = r.stdout.splitlines()[1].split()[3]
    r = host.xensim("vcpu-list", domain)
    assert r.returncode == 0, r.stderr
    return vcpus, [line.split()[4] for line in r.stdout.splitlines()[1:]]


def _wait_online(host: Daemon, domain: str, want: str) -> list[str]:
    for _ in range(100):  # the guest kernel follows on its own
        vcpus, states = _online(host, domain)
        if vcpus == want:
            return states
    raise AssertionError(f"{domain} never had {want} vCPUs online")


def test_vcpu_set_end_to_end(host2: Daemon) -> None:
    r = host2.xensim("create", "-q", str(host2.cfg("vs1", THREE_MAX.format(name="vs1"))))
    assert r.returncode == 0, r.stderr
    states = _wait_online(host2, "vs1", "1")
    assert states[1:] == ["--p", "--p"]  # offline vCPUs, the xl way
    r = host2.xensim("vcpu-set", "vs1", "2")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    states = _wait_online(host2, "vs1", "2")
    assert states[1] != "--p" and states[2] == "--p"
    r = host2.xensim("vcpu-set", "vs1", "3")  # 3 > 2 online and > 2 pCPUs
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == ("xensim: vcpu-set: you are overcommitting! You have 2 physical CPUs "
                        "and want 3 vCPUs! Aborting, use --ignore-host to continue\n")
    assert host2.xensim("vcpu-set", "-i", "vs1", "3").returncode == 0
    assert "--p" not in _wait_online(host2, "vs1", "3")
    for args, stderr in ((["vs1", "0"], "xensim: vcpu-set: requested 0 vCPUs: at least 1 must "
                                        "stay online\n"),
                         (["-i", "vs1", "4"], "xensim: vcpu-set: requested 4 vCPUs, however "
                                              "maxvcpus is 3\n"),
                         (["vs1", "x"], "xensim: vcpu-set: invalid vCPU count 'x' (expected a "
                                        "number)\n"),
                         (["nosuch", "1"], "xensim: domain 'nosuch' does not exist\n")):
        r = host2.xensim("vcpu-set", *args)
        assert (r.returncode, r.stdout, r.stderr) == (1, "", stderr), args
    assert host2.xensim("vcpu-set", "vs1").returncode == 2  # usage
    assert host2.xensim("vcpu-set", "vs1", "1").returncode == 0
    assert _wait_online(host2, "vs1", "1")[1:] == ["--p", "--p"]
    r = host2.xensim("vcpu-set", "--help")
    assert r.returncode == 0 and "--ignore-host" in r.stdout and "exit status" in r.stdout
    assert host2.xensim("destroy", "vs1").returncode == 0
