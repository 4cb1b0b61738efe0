"""Boot, create, console round trip, shutdown, reboot, crash, destroy (whole host)."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from dom0.host import Host
from dom0.testing import GuestFactory
from dom0.toolstack.builder import CreateAborted
from dom0.toolstack.config import Action, ConfigError, GuestConfig
from domu.guest import Guest
from hypervisor.domain import ShutdownReason

CYCLES = 50


async def idle(guest: Guest) -> None:
    await guest.console.print(f"{guest.name} up")
    await trio.sleep_forever()


async def test_boot_lists_dom0(autojump_clock: MockClock, xen_host: Host) -> None:
    rows = xen_host.list()
    assert [(r.name, r.domid) for r in rows] == [("Domain-0", 0)]
    text = xen_host.format_list()
    assert text.splitlines()[0].startswith("Name")
    assert "Domain-0                                     0" in text


async def test_create_prints_and_powers_off(
    autojump_clock: MockClock, guest_factory: GuestFactory
) -> None:
    dom = await guest_factory("examples.hello:main", name="hello", extra="x=1")
    assert await dom.wait() == ShutdownReason.POWEROFF
    log = dom.console.log()
    assert f"Hello from hello (domain {dom.domid})!".encode() in log
    assert b"extra: x=1" in log


async def test_console_round_trip(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom = await guest_factory("examples.echo:main", name="echo")
    await dom.console.wait_for("echo: ready")
    await dom.console.send(b"ping\n")
    await dom.console.wait_for("echo: ping")
    row = next(r for r in xen_host.list() if r.domid == dom.domid)
    assert row.name == "echo" and row.mem_mib == 4 and row.vcpus == 1
    await dom.console.send(b"quit\n")
    assert await dom.wait() == ShutdownReason.POWEROFF
    assert b"bye" in dom.console.log()


async def test_shutdown_via_control_node(
    autojump_clock: MockClock, guest_factory: GuestFactory
) -> None:
    dom = await guest_factory(idle)
    await dom.console.wait_for("up")
    await dom.shutdown("poweroff")
    assert dom.state == "gone"
    assert dom.shutdown_reason == ShutdownReason.POWEROFF


async def test_shutdown_timeout_destroys_unresponsive_guest(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    async def deaf(guest: Guest) -> None:
        # a guest that never acts on control/shutdown: its kernel is wedged
        await guest.xenstore.rm("control/shutdown")  # EACCES? it owns it: allowed
        await trio.sleep_forever()

    dom = await guest_factory(deaf)
    await dom.shutdown("poweroff", timeout=5)
    assert dom.state == "gone"


async def test_reboot_gets_new_domid_and_console_works(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    dom = await guest_factory("examples.echo:main", name="rb")
    await dom.console.wait_for("rb: ready")
    new = await dom.reboot()
    assert new is not None
    assert new.name == "rb" and new.domid != dom.domid
    assert dom.shutdown_reason == ShutdownReason.REBOOT
    assert xen_host.domain("rb").domid == new.domid
    await new.console.wait_for("rb: ready")
    await new.console.send("again\n")
    await new.console.wait_for("echo: again")


async def test_guest_requested_reboot(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    async def reboot_once(guest: Guest) -> None:
        if await guest.xenstore.exists("data/booted-before"):
            await guest.console.print("second life")
            await trio.sleep_forever()
        # data/ is per-domain; a new domid starts empty, so this reboots forever
        # unless on_reboot stops it: here on_reboot=destroy
        guest.shutdown("reboot")
        await trio.sleep_forever()

    dom = await guest_factory(reboot_once, on_reboot=Action.DESTROY)
    assert await dom.wait() == ShutdownReason.REBOOT
    with pytest.raises(KeyError):
        xen_host.domain(dom.name)


@pytest.mark.parametrize("action", [Action.DESTROY, Action.PRESERVE])
async def test_crash(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host, action: Action
) -> None:
    dom = await guest_factory("examples.echo:main", on_crash=action)
    await dom.console.wait_for("ready")
    await dom.console.send("crash\n")
    assert await dom.wait_shutdown() == ShutdownReason.CRASH
    if action == Action.DESTROY:
        await dom.wait()
        assert dom.state == "gone"
    else:
        await trio.testing.wait_all_tasks_blocked()
        assert dom.state == "shutdown"
        row = next(r for r in xen_host.list() if r.domid == dom.domid)
        assert row.state[3:5] == "sc"  # shut down, reason crash
        assert b"RuntimeError: asked to crash" in dom.console.log()
        await dom.destroy()
        assert dom.state == "gone"
    assert b"asked to crash" in dom.console.log()


async def test_destroy_during_boot(autojump_clock: MockClock, xen_host: Host) -> None:
    gate = trio.Event()

    async def slow(guest: Guest) -> None:
        await trio.sleep_forever()

    errors: list[BaseException] = []

    async def create() -> None:
        try:
            await xen_host.create(GuestConfig(name="slow", kernel=slow, memory=4))
        except CreateAborted as exc:
            errors.append(exc)
        gate.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(create)
        while not xen_host.toolstack.building:
            await trio.sleep(0)
        rec = next(iter(xen_host.toolstack.building))
        while rec.domid is None:
            await trio.sleep(0)
        await xen_host.toolstack.destroy(rec)
        await gate.wait()
    assert errors and rec.state == "gone"


@pytest.mark.parametrize("steps", range(0, 40, 3))
async def test_destroy_at_every_point_of_create(
    autojump_clock: MockClock, xen_host: Host, steps: int
) -> None:
    """Cancel the build after ``steps`` scheduling points: nothing may leak."""

    async def create() -> None:
        with pytest.raises(CreateAborted):
            await xen_host.create(GuestConfig(name="half", kernel=idle, memory=1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(create)
        for _ in range(steps):
            await trio.lowlevel.checkpoint()
        for rec in list(xen_host.toolstack.building):
            nursery.start_soon(xen_host.toolstack.destroy, rec)
        if not xen_host.toolstack.building:
            nursery.cancel_scope.cancel()


async def test_destroy_during_console_traffic(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    async def chatty(guest: Guest) -> None:
        i = 0
        while True:
            await guest.console.print(f"line {i}")
            i += 1

    dom = await guest_factory(chatty)
    await dom.console.wait_for("line 50")
    await dom.destroy()
    assert dom.state == "gone"
    assert b"line 50" in dom.console.log()


async def test_bad_config_is_refused(autojump_clock: MockClock, xen_host: Host) -> None:
    with pytest.raises(ConfigError):
        await xen_host.create(GuestConfig(name="bad name!", kernel="examples.hello:main"))
    with pytest.raises(ConfigError):
        await xen_host.create(GuestConfig(name="nokernel", kernel="examples.nope:main"))


async def test_duplicate_name_refused(
    autojump_clock: MockClock, guest_factory: GuestFactory
) -> None:
    await guest_factory(idle, name="twin")
    with pytest.raises(ConfigError):
        await guest_factory(idle, name="twin")


async def test_out_of_memory_unwinds(autojump_clock: MockClock, xen_host: Host) -> None:
    from hypervisor.errno import XenError

    with pytest.raises(XenError):
        await xen_host.create(GuestConfig(name="huge", kernel=idle, memory=8192))


async def test_fifty_create_destroy_cycles(autojump_clock: MockClock, xen_host: Host) -> None:
    for i in range(CYCLES):
        dom = await xen_host.create(GuestConfig(name=f"c{i}", kernel=idle, memory=1))
        await dom.console.wait_for("up")
        await dom.destroy()
    await trio.testing.wait_all_tasks_blocked()
    xen_host.check_leaks()


async def test_xenstore_socket_for_outside_tools(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dom0.host import open_host
    from domu.xenstore import open_xenstore_unix

    sock = str(tmp_path / "xs")
    async with open_host(xenstore_socket=sock) as host:
        dom = await host.create(GuestConfig(name="seen", kernel=idle, memory=1))
        async with open_xenstore_unix(sock) as xs:
            assert await xs.read(f"/local/domain/{dom.domid}/name") == b"seen"
            assert await xs.read("/local/domain/0/name") == b"Domain-0"
