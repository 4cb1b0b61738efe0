"""Hot-plug: ``Toolstack.attach_device`` / ``detach_device`` and the DomainHandle verbs.

The echo driver pair (tests/integration/drivers.py, "console" kind, devid 1)
stands in for any device type: the toolstack code is the same for all.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from dom0.backends.bus import Backend
from dom0.host import Host
from dom0.testing import GuestFactory
from dom0.toolstack.builder import DeviceRequest
from dom0.toolstack.config import ConfigError, DiskSpec
from domu.guest import Guest
from ring.errors import PeerProtocolError
from tests.integration.drivers import EchoBack, EchoFront

ECHO = DeviceRequest("console", 1)


class RefusingBack(Backend):
    """A backend whose hotplug step fails (like an image that cannot be opened)."""

    kind = "vbd"

    async def probe(self) -> None:
        await self.write_key("hotplug-error", "no such image")
        await self.write_key("hotplug-status", "error")
        raise PeerProtocolError("cannot open the image")


@pytest.fixture
def xen_host_options() -> dict[str, Any]:
    return {"backend_drivers": {"console": EchoBack, "vbd": RefusingBack},
            "frontend_drivers": {"console": EchoFront}}


async def hotplug_echoer(guest: Guest) -> None:
    """Wait for console/1 to be hot-plugged, echo through it, then idle."""
    await guest.console.print("waiting")
    async with guest.xenstore.watch("device/console/1/state") as events:
        async for _ in events:
            dev = guest.devices.get("console/1")
            if isinstance(dev, EchoFront) and getattr(dev, "ring", None) is not None:
                break
    assert await dev.echo(b"hello hotplug") == b"hello hotplug"
    await guest.console.print("echo ok")
    await trio.sleep_forever()


async def _paths_exist(host: Host, domid: int, req: DeviceRequest) -> list[bool]:
    out = []
    for path in (req.backend_path(domid), req.frontend_path(domid),
                 f"/libxl/{domid}/device/{req.kind}/{req.devid}"):
        try:
            await host.kernel.xs.read(path)
            out.append(True)
        except Exception:
            out.append(False)
    return out


async def test_attach_then_detach(autojump_clock: MockClock, guest_factory: GuestFactory,
                                  xen_host: Host) -> None:
    dom = await guest_factory(hotplug_echoer)
    await dom.console.wait_for("waiting")
    await dom.attach_device(ECHO)
    assert ECHO in dom.record.devices and ECHO in dom.record.devices_written
    await dom.console.wait_for("echo ok")
    back = xen_host.kernel.backends.instance("console", dom.domid, 1)
    assert back is not None and back.workers_started == 1
    assert await _paths_exist(xen_host, dom.domid, ECHO) == [True, True, True]

    await dom.detach_device("console", 1)
    assert xen_host.kernel.backends.devices == {}
    assert back.workers_stopped == 1
    assert await _paths_exist(xen_host, dom.domid, ECHO) == [False, False, False]
    assert dom.record.devices == [] and dom.record.devices_written == []
    await dom.destroy()


async def test_attach_detach_attach_again(autojump_clock: MockClock,
                                          guest_factory: GuestFactory,
                                          xen_host: Host) -> None:
    dom = await guest_factory(hotplug_echoer)
    for _ in range(3):
        await dom.attach_device(ECHO)
        await trio.testing.wait_all_tasks_blocked()
        back = xen_host.kernel.backends.instance("console", dom.domid, 1)
        assert back is not None
        await dom.detach_device("console", 1)
        assert xen_host.kernel.backends.devices == {}


async def test_destroy_removes_hotplugged_device(autojump_clock: MockClock,
                                                 guest_factory: GuestFactory,
                                                 xen_host: Host) -> None:
    dom = await guest_factory(hotplug_echoer)
    await dom.attach_device(ECHO)
    await dom.console.wait_for("echo ok")
    domid = dom.domid
    await dom.destroy()
    assert xen_host.kernel.backends.devices == {}
    assert await _paths_exist(xen_host, domid, ECHO) == [False, False, False]


async def test_attach_refusals(autojump_clock: MockClock, guest_factory: GuestFactory,
                               xen_host: Host) -> None:
    dom = await guest_factory(hotplug_echoer)
    with pytest.raises(ConfigError, match="no backend driver"):
        await dom.attach_device(DeviceRequest("nodriver", 0))
    await dom.attach_device(ECHO)
    with pytest.raises(ConfigError, match="already exists"):
        await dom.attach_device(DeviceRequest("console", 1))
    with pytest.raises(KeyError):
        await dom.detach_device("console", 2)
    with pytest.raises(ConfigError, match="access"):
        await dom.attach_disk(DiskSpec(vdev="xvdb", target="/nonexistent", access="rx"))
    with pytest.raises(ConfigError, match="vdev"):
        await dom.attach_disk(DiskSpec(vdev="floppy0", target="/nonexistent"))
    assert dom.record.devices == [ECHO]
    await dom.destroy()
    with pytest.raises(ConfigError, match="gone"):
        await dom.attach_device(DeviceRequest("console", 3))


async def test_failed_backend_leaves_nothing(autojump_clock: MockClock,
                                             guest_factory: GuestFactory,
                                             xen_host: Host) -> None:
    dom = await guest_factory(hotplug_echoer)
    with pytest.raises(ConfigError, match="no such image"):
        await dom.attach_disk(DiskSpec(vdev="xvdb", target="/nonexistent.img"))
    await trio.testing.wait_all_tasks_blocked()
    req = DeviceRequest("vbd", 51728)
    assert await _paths_exist(xen_host, dom.domid, req) == [False, False, False]
    assert dom.record.devices == []
    assert xen_host.kernel.backends.devices == {}
    await dom.destroy()


async def test_detach_disk_by_name_and_number(autojump_clock: MockClock,
                                              guest_factory: GuestFactory,
                                              xen_host: Host) -> None:
    dom = await guest_factory(hotplug_echoer)
    with pytest.raises(KeyError):
        await dom.detach_disk("xvdc")
    with pytest.raises(KeyError):
        await dom.detach_disk(51744)
    with pytest.raises(ConfigError):
        await dom.detach_disk("nonsense")
    await dom.destroy()


async def test_forced_detach_skips_the_handshake(autojump_clock: MockClock,
                                                 guest_factory: GuestFactory,
                                                 xen_host: Host) -> None:
    dom = await guest_factory(hotplug_echoer)
    await dom.attach_device(ECHO)
    await dom.console.wait_for("echo ok")
    t0 = trio.current_time()
    await dom.detach_device("console", 1, force=True)
    assert xen_host.kernel.backends.devices == {}
    assert dom.record.devices == []
    assert trio.current_time() - t0 < 1
    await dom.destroy()


async def test_detach_of_unresponsive_guest_times_out_then_force(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    dom = await guest_factory(hotplug_echoer)
    await dom.attach_device(ECHO)
    await dom.console.wait_for("echo ok")
    # the guest's frontend cannot answer the close: dom0 takes its state node
    fpath = ECHO.frontend_path(dom.domid)
    await xen_host.kernel.xs.set_perms(f"{fpath}/state", ["n0", f"r{dom.domid}"])
    with pytest.raises(TimeoutError):
        await dom.detach_device("console", 1)
    assert ECHO in dom.record.devices
    await dom.detach_device("console", 1, force=True)
    assert dom.record.devices == []
    assert xen_host.kernel.backends.devices == {}
    await dom.destroy()
