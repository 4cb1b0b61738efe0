"""Hostile guests: dom0 stays healthy and every other guest keeps being served."""

from __future__ import annotations

import struct
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from dom0.host import DomainHandle, Host
from dom0.testing import GuestFactory
from dom0.toolstack.builder import DeviceRequest
from domu.guest import Guest
from domu.xenstore import XenStoreError
from tests.integration.drivers import DRIVERS, EchoFront

ECHO_DEVICE = [DeviceRequest("console", 1)]


@pytest.fixture
def xen_host_options() -> dict[str, Any]:
    return dict(DRIVERS)


async def echoer(guest: Guest) -> None:
    dev = guest.devices["console/1"]
    assert isinstance(dev, EchoFront)
    await guest.console.print("echoer up")
    n = 0
    while True:
        assert await dev.echo(b"ping %d" % n) == b"ping %d" % n
        n += 1
        if n % 10 == 0:
            await guest.console.print(f"echoed {n}")
        await trio.sleep(0.01)


async def bystander(guest_factory: GuestFactory) -> DomainHandle:
    dom = await guest_factory(echoer, name="bystander", devices=ECHO_DEVICE)
    await dom.console.wait_for("echoed 10")
    return dom


async def assert_still_served(dom: DomainHandle) -> None:
    log = dom.console.log()
    done = int(log.rsplit(b"echoed ", 1)[1].split(b"\n")[0])
    await dom.console.wait_for(f"echoed {done + 20}")


async def test_device_handshake_and_clean_teardown(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom = await bystander(guest_factory)
    back = xen_host.kernel.backends.instance("console", dom.domid, 1)
    assert back is not None and back.workers_started == 1
    await dom.shutdown()
    assert dom.state == "gone" and back.workers_stopped == 1
    assert xen_host.kernel.backends.devices == {}


async def test_destroy_with_device_forces_it(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom = await bystander(guest_factory)
    await dom.destroy()
    assert xen_host.kernel.backends.devices == {}


async def test_corrupt_console_indices(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    other = await bystander(guest_factory)

    async def corrupt(guest: Guest) -> None:
        await guest.console.print("about to corrupt")
        front = guest.console.front
        page = front._ring.output._page  # the guest scribbles on its own page
        struct.pack_into("<I", page, 3084, 0x7FFF0000)  # out_prod far beyond out_cons
        front._notify()  # and tells dom0
        await trio.sleep_forever()

    dom = await guest_factory(corrupt)
    await trio.testing.wait_all_tasks_blocked()
    stats = xen_host.kernel.console.stats(dom.domid)
    assert stats.broken
    await assert_still_served(other)
    await dom.destroy()


async def test_console_flood_does_not_starve_others(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    other = await bystander(guest_factory)

    async def flood(guest: Guest) -> None:
        chunk = b"F" * 2000
        while True:
            await guest.console.write(chunk)

    dom = await guest_factory(flood)
    await assert_still_served(other)
    assert len(dom.console.log()) <= 1 << 20
    await dom.destroy()


async def test_guest_cannot_write_trusted_console_keys(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    results: dict[str, str] = {}

    async def meddle(guest: Guest) -> None:
        for key in (
            "console/ring-ref",
            "console/port",
            "console/limit",
            "console/type",
            "console/backend",
            "name",
            "domid",
            "memory/target",
            "vm",
            "cpu/0/availability",
        ):
            try:
                await guest.xenstore.write(key, "666")
                results[key] = "written"
            except XenStoreError as exc:
                results[key] = exc.name
        for key in ("data/mine", "control/feature-poweroff", "error", "attr/x"):
            await guest.xenstore.write(key, "ok")
            results[key] = "written"
        try:
            await guest.xenstore.write("/local/domain/0/backend/console/x", "1")
            results["backend"] = "written"
        except XenStoreError as exc:
            results["backend"] = exc.name
        await guest.console.print("meddled")
        await trio.sleep_forever()

    other = await bystander(guest_factory)
    dom = await guest_factory(meddle)
    await dom.console.wait_for("meddled")
    trusted = [
        k for k in results if k.startswith(("console", "name", "domid", "memory", "vm", "cpu"))
    ]
    assert {results[k] for k in trusted} == {"EACCES"}, results
    assert results["backend"] == "EACCES"
    assert results["data/mine"] == "written"
    ring_ref = await xen_host.kernel.xs.read(f"/local/domain/{dom.domid}/console/ring-ref")
    assert ring_ref != b"666"
    await assert_still_served(other)
    await dom.shutdown()
    assert dom.state == "gone"


async def test_frontend_state_flapping_is_bounded(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    other = await bystander(guest_factory)
    flaps = 3000

    async def flapper(guest: Guest) -> None:
        path = "device/console/1/state"
        for i in range(flaps):
            await guest.xenstore.write(path, str(1 + i % 6))
        await guest.xenstore.write(path, "junk\x01")
        await guest.console.print("flapped")
        await trio.sleep_forever()

    dom = await guest_factory(flapper, devices=ECHO_DEVICE)
    await dom.console.wait_for("flapped", timeout=60)
    await trio.testing.wait_all_tasks_blocked()
    back = xen_host.kernel.backends.instance("console", dom.domid, 1)
    runner = xen_host.kernel.backends.devices.get(("console", dom.domid, 1))
    if back is not None:
        assert back.workers_started == back.workers_stopped + (1 if back._worker else 0)
        assert runner is not None and runner.passes <= flaps + 2
    await assert_still_served(other)
    await dom.destroy()
    assert ("console", dom.domid, 1) not in xen_host.kernel.backends.devices


async def test_bad_ring_ref_breaks_only_that_device(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    other = await bystander(guest_factory)

    async def liar(guest: Guest) -> None:
        # rewrite the published ring-ref to a grant that does not exist, then
        # restart the handshake: the backend's map fails -> that device closes
        await guest.xenstore.write("device/console/1/ring-ref", "99999")
        await guest.xenstore.write("device/console/1/state", "1")
        back = (await guest.xenstore.read("device/console/1/backend")).decode()
        async with guest.xenstore.watch(f"{back}/state") as events:
            async for _ in events:  # wait until the backend dropped the old ring
                if await guest.xenstore.read(f"{back}/state") == b"2":
                    break
        await guest.xenstore.write("device/console/1/state", "3")
        await guest.console.print("lied")
        await trio.sleep_forever()

    dom = await guest_factory(liar, devices=ECHO_DEVICE)
    await dom.console.wait_for("lied")
    await trio.testing.wait_all_tasks_blocked()
    state = await xen_host.kernel.xs.read(f"/local/domain/0/backend/console/{dom.domid}/1/state")
    assert state in (b"5", b"6")
    back = xen_host.kernel.backends.instance("console", dom.domid, 1)
    assert back is None or back.errors >= 1
    await assert_still_served(other)
