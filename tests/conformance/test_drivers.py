"""The conformance suite against each driver pair that exists.

One adapter per device type; see :mod:`dom0.conformance` for the phases.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from trio.testing import MockClock

from dom0.backends.kvback import KvBack
from dom0.backends.netback import NetBack
from dom0.conformance import PHASES, DriverAdapter, check_split_driver, corrupt_sring
from dom0.host import Host
from dom0.native.disk import RamDisk
from dom0.toolstack.builder import DeviceRequest, vbd_device_request, vif_device_request
from dom0.toolstack.config import DiskSpec, VifSpec
from domu.frontends.blkfront import BlkFront
from domu.frontends.kvfront import KvFront
from domu.frontends.netfront import NetFront
from tests.blk.rawfront import DISKS, RamBlkBack
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

def vbd_request(devid: int) -> DeviceRequest:
    """A 1 MiB in-memory disk (RamBlkBack serves ``ram:`` targets from DISKS):
    real image files would put worker threads under the autojump clock."""
    target = f"ram:conformance:{devid}"
    DISKS[target] = RamDisk(1 << 20)
    return vbd_device_request(DiskSpec(vdev=str(devid), target=target))


async def vbd_round(front: BlkFront, n: int) -> None:
    offset, data = 512 * (n % 64), bytes([n % 251]) * 512
    await front.disk.write(offset, data)
    got = await front.disk.read(offset, 512)
    if got != data:
        raise AssertionError(f"vbd: read back {got[:8]!r}..., wrote {data[:8]!r}...")


VBD = DriverAdapter(kind="vbd", devid=51712, make_request=vbd_request, exercise=vbd_round,
                    corrupt_ring=corrupt_sring, guest_memory=8)


def vif_request(devid: int) -> DeviceRequest:
    mac = f"00:16:3e:c0:00:{devid:02x}"
    return vif_device_request(VifSpec(mac=mac), devid, lambda: mac)


async def vif_round(front: NetFront, n: int) -> None:
    """One broadcast frame out through netback onto the bridge; its tx
    response must come back (tx_packets counts completed sends)."""
    nic = front.netdev
    before = nic.stats.tx_packets
    frame = b"\xff" * 6 + nic.mac + b"\x88\xb5" + b"conformance %d" % n
    await nic.send(frame.ljust(60, b"\0"))
    if nic.stats.tx_packets != before + 1:
        raise AssertionError(f"vif: tx_packets {nic.stats.tx_packets}, expected {before + 1}")


def corrupt_vif(front: NetFront) -> None:
    tx = front._tx
    assert tx is not None
    tx.sring.req_prod = tx.req_prod_pvt + 0x10000  # XSA-38: bogus ring requests
    front.hc.evtchn_send(front._port)


VIF = DriverAdapter(kind="vif", make_request=vif_request, exercise=vif_round,
                    corrupt_ring=corrupt_vif, guest_memory=8)

ADAPTERS = {
    "vbd": (VBD, {"backend_drivers": {"vbd": RamBlkBack}, "frontend_drivers": {"vbd": BlkFront}}),
    "vif": (VIF, {"backend_drivers": {"vif": NetBack}, "frontend_drivers": {"vif": NetFront}}),
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
