"""GuestConfig validation: every bad value is refused with a message that says
what was expected; good configs get xl's defaults."""

from __future__ import annotations

import pytest

from dom0.toolstack.config import (
    Action,
    ChannelSpec,
    ConfigError,
    DiskSpec,
    GuestConfig,
    VifSpec,
)


def good(**kw: object) -> GuestConfig:
    base: dict[str, object] = {"name": "web", "kernel": "examples.hello:main"}
    base.update(kw)
    return GuestConfig(**base)  # type: ignore[arg-type]


def test_defaults_are_xls() -> None:
    c = good()
    c.validate()
    assert (c.memory, c.max_memory, c.vcpus, c.max_vcpus) == (32, 32, 1, 1)
    assert (c.cpu_weight, c.cap) == (256, 0)
    assert (c.on_poweroff, c.on_reboot, c.on_crash) == (
        Action.DESTROY, Action.RESTART, Action.DESTROY)


def test_actions_given_as_strings_become_actions() -> None:
    c = good(on_crash="preserve")
    c.validate()
    assert c.on_crash is Action.PRESERVE


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"name": ""}, "name"),
        ({"name": "a b"}, "name"),
        ({"kernel": ""}, "kernel"),
        ({"kernel": "no-colon"}, "module:function"),
        ({"memory": 0}, "memory 0: expected"),
        ({"memory": 64, "maxmem": 32}, "maxmem"),
        ({"vcpus": 0}, "vcpus"),
        ({"vcpus": 2, "maxvcpus": 1}, "maxvcpus"),
        ({"cpu_weight": 0}, "cpu_weight"),
        ({"cap": 101}, "cap 101: expected 0..100"),
        ({"on_reboot": "explode"}, "on_reboot 'explode': expected one of destroy"),
        ({"disks": [DiskSpec(vdev="")]}, "vdev is mandatory"),
        ({"disks": [DiskSpec(vdev="xvda"), DiskSpec(vdev="xvda")]}, "given twice"),
        ({"disks": [DiskSpec(vdev="xvda", access="w")]}, "expected rw or ro"),
        ({"vifs": [VifSpec(mac="00:16:3e:zz:00:01")]}, "expected XX:XX"),
        ({"vifs": [VifSpec(mac="01:16:3e:00:00:01")]}, "multicast"),
        ({"vifs": [VifSpec(mtu=10)]}, "mtu"),
        ({"vifs": [VifSpec(), VifSpec(devid=0)]}, "devid 0 given twice"),
        ({"max_grant_frames": 0}, "max_grant_frames"),
        ({"channels": [ChannelSpec("", "pty")]}, "channel name '': must not be empty"),
        ({"channels": [ChannelSpec("a", "serial")]}, "unknown channel connection 'serial'"),
        ({"channels": [ChannelSpec("a", "socket")]}, "'socket' requires path"),
        ({"channels": [ChannelSpec("a", "socket", "run/a")]}, "must be absolute"),
        ({"channels": [ChannelSpec("a", "pty", "/run/a")]}, "only used with connection=socket"),
        ({"channels": [ChannelSpec("a", "socket", "/run/a"),
                       ChannelSpec("b", "socket", "/run/a")]}, "'/run/a' given twice"),
        ({"channels": [ChannelSpec("a", "pty", backend="1")]}, "dom0 only"),
    ],
)
def test_bad_values_are_refused_with_what_was_expected(kw: dict[str, object],
                                                       message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        good(**kw).validate()


def test_cap_scales_with_vcpus() -> None:
    good(vcpus=4, cap=400).validate()


def test_readonly_disk() -> None:
    assert DiskSpec(vdev="xvda", access="ro").readonly
    assert not DiskSpec(vdev="xvda").readonly


def test_channels_default_to_none_and_may_share_names() -> None:
    assert good().channels == []
    # libxl does not insist on unique names; sockets must differ (one listener each)
    good(channels=[ChannelSpec("a", "pty"), ChannelSpec("a", "socket", "/run/a.sock")]
         ).validate()
