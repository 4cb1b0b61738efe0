"""The conformance suite against each driver pair that exists.

One adapter per device type; see :mod:`dom0.conformance` for the phases.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from trio.testing import MockClock

from dom0.backends.kvback import KvBack
from dom0.conformance import PHASES, DriverAdapter, check_split_driver, corrupt_sring
from dom0.host import Host
from dom0.toolstack.builder import DeviceRequest
from domu.frontends.kvfront import KvFront
from tests.integration.drivers import EchoBack, EchoFront

CONSOLE_OUT_PROD = 3084  # xencons_interface.out_prod


async def kv_round(front: KvFront, n: int) -> None:
    key, value = f"key{n % 8}", b"value %d" % n
    await front.put(key, value)
    got = await front.get(key)
    if got != value:
        raise AssertionError(f"kv: read back {got!r}, wrote {value!r}")


KV = DriverAdapter(kind="kv", make_request=lambda devid: DeviceRequest(
    "kv", devid, backend={"max-entries": "16"}), exercise=kv_round, corrupt_ring=corrupt_sring)


async def echo_round(front: EchoFront, n: int) -> None:
    data = b"ping %d" % n
    got = await front.echo(data)
    if got != data:
        raise AssertionError(f"echo: got {got!r} for {data!r}")


def corrupt_echo(front: EchoFront) -> None:
    page = front.ring.output._page  # the guest scribbles on its own page
    struct.pack_into("<I", page, CONSOLE_OUT_PROD, 0x7FFF0000)
    front.hc.evtchn_send(front.port)


ECHO = DriverAdapter(kind="console", devid=1, make_request=lambda devid: DeviceRequest(
    "console", devid), exercise=echo_round, corrupt_ring=corrupt_echo)

ADAPTERS = {
    "kv": (KV, {"backend_drivers": {"kv": KvBack}, "frontend_drivers": {"kv": KvFront}}),
    "echo": (ECHO, {"backend_drivers": {"console": EchoBack},
                    "frontend_drivers": {"console": EchoFront}}),
}


@pytest.fixture(params=sorted(ADAPTERS))
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def xen_host_options(driver: str) -> dict[str, Any]:
    return dict(ADAPTERS[driver][1])


async def test_driver_pair_conforms(autojump_clock: MockClock, xen_host: Host,
                                    driver: str) -> None:
    adapter = ADAPTERS[driver][0]
    report = await check_split_driver(xen_host, adapter)
    assert report.phases == list(PHASES)
    assert report.backend_errors >= 1
    assert report.flapping_passes <= 1002
