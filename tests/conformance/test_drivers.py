"""The conformance suite against each driver pair that exists.

One adapter per device type; see :mod:`dom0.conformance` for the phases.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from dom0.backends.consoleback import ConsoleBack
from dom0.backends.kvback import KvBack
from dom0.backends.netback import NetBack
from dom0.conformance import PHASES, DriverAdapter, check_split_driver, corrupt_sring
from dom0.console.daemon import ConsoleError
from dom0.host import Host, SecondaryConsole
from dom0.native.disk import RamDisk
from dom0.toolstack.builder import (
    DeviceRequest,
    console_device_request,
    vbd_device_request,
    vif_device_request,
)
from dom0.toolstack.config import DiskSpec, VifSpec
from domu.frontends.blkfront import BlkFront
from domu.frontends.consolefront import SecondaryConsoleFront
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


async def console_round(front: SecondaryConsoleFront, n: int) -> None:
    """A line out on the console (guest -> dom0) must come back as input (dom0 ->
    guest): a dom0 user echoes every connected secondary console (:func:`dom0_echo`)."""
    con = front.console
    if con is None:
        raise AssertionError("console: no ring")
    line = b"ping %d\n" % n
    await con.write(line)
    with trio.fail_after(5):
        got = await con.readline()
    if got != line:
        raise AssertionError(f"console: got {got!r} back for {line!r}")


def corrupt_console(front: SecondaryConsoleFront) -> None:
    """The guest claims 2 GiB of output queued in its 2 KiB ``out`` ring."""
    assert front.ring_gfn is not None and front.port is not None
    page = front.hc.memory.page(front.ring_gfn)  # the guest's own page
    struct.pack_into("<I", page, CONSOLE_OUT_PROD, 0x7FFF0000)
    front.hc.evtchn_send(front.port)


CONSOLE = DriverAdapter(kind="console", devid=1, make_request=console_device_request,
                        exercise=console_round, corrupt_ring=corrupt_console)


async def dom0_echo(host: Host, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
    """A dom0 user of the console API: whenever a secondary console connects, attach
    to it (``dom.consoles[N]``) and type back everything it prints."""

    async def echo(con: SecondaryConsole) -> None:
        with contextlib.suppress(ConsoleError):
            async with con.attach(replay=True) as session:
                async for chunk in session:
                    await session.send(chunk)

    # the connection each backend instance was last echoed on; the instance is
    # held, so a new one cannot be mistaken for it (id() is reused after GC)
    seen: dict[int, tuple[ConsoleBack, int]] = {}
    async with host.kernel.xs.watch("/local/domain/0/backend/console") as watch, \
            trio.open_nursery() as nursery:
        task_status.started()
        async for _ in watch:
            for (kind, domid, devid), runner in list(host.kernel.backends.devices.items()):
                back = runner.instance
                if kind != "console" or not isinstance(back, ConsoleBack) or not back.connected:
                    continue
                last = seen.get(id(back))
                if last is not None and last[0] is back and last[1] == back.connections:
                    continue
                seen[id(back)] = (back, back.connections)
                con = host.domain(domid).consoles[devid]
                assert isinstance(con, SecondaryConsole)
                nursery.start_soon(echo, con)

ADAPTERS = {
    "vbd": (VBD, {"backend_drivers": {"vbd": RamBlkBack}, "frontend_drivers": {"vbd": BlkFront}}),
    "vif": (VIF, {"backend_drivers": {"vif": NetBack}, "frontend_drivers": {"vif": NetFront}}),
    "kv": (KV, {"backend_drivers": {"kv": KvBack}, "frontend_drivers": {"kv": KvFront}}),
    "echo": (ECHO, {"backend_drivers": {"console": EchoBack},
                    "frontend_drivers": {"console": EchoFront}}),
    "console": (CONSOLE, {"backend_drivers": {"console": ConsoleBack},
                          "frontend_drivers": {"console": SecondaryConsoleFront}}),
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
    async with trio.open_nursery() as nursery:
        if adapter is CONSOLE:  # the other end of a console is a dom0 user
            await nursery.start(dom0_echo, xen_host)
        report = await check_split_driver(xen_host, adapter)
        nursery.cancel_scope.cancel()
    assert report.phases == list(PHASES)
    assert report.backend_errors >= 1
    assert report.flapping_passes <= 1002
