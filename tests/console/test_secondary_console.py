"""Secondary PV consoles end to end: consoleback, the frontend, dom0's and the guest's API.

Every test uses the ``xen_host`` fixture, whose teardown is the leak check
(frames, ports, grants, xenstore nodes and watches, backend instances, tasks).
"""

from __future__ import annotations

import trio
from trio.testing import MockClock

from dom0.backends.consoleback import ConsoleBack
from dom0.host import Host, SecondaryConsole
from dom0.testing import GuestFactory
from dom0.toolstack.builder import console_device_request
from dom0.toolstack.config import ChannelSpec
from domu.frontends.console import ConsoleClosed
from domu.frontends.consolefront import SecondaryConsoleFront
from domu.guest import Guest


async def test_output_and_input_on_console_1(autojump_clock: MockClock,
                                            guest_factory: GuestFactory,
                                            xen_host: Host) -> None:
    seen: list[str] = []

    async def program(guest: Guest) -> None:
        hvc1 = guest.consoles[1]
        await hvc1.print("hello on hvc1")
        await guest.console.print("hello on hvc0")
        seen.append(await hvc1.readline())
        await hvc1.print(f"got {seen[0]}")
        await trio.sleep_forever()

    dom = await guest_factory(program, devices=[console_device_request(1)])
    con = dom.consoles[1]
    assert isinstance(con, SecondaryConsole)
    await con.wait_for("hello on hvc1\n")
    await dom.console.wait_for("hello on hvc0")
    assert b"hvc1" not in dom.console.log() and b"hvc0" not in con.log()
    await con.send("typed on console 1\n")
    await con.wait_for("got typed on console 1\n")
    assert seen == ["typed on console 1"]
    assert list(dom.consoles) == [0, 1] and dom.consoles[0] is dom.console
    stats = con.stats()
    assert stats is not None and stats.bytes_in == 19 and not stats.broken
    # the xenstore layout (xen-abi 8.2): grant ref + port, both ends Connected
    xs, d = xen_host.kernel.xs, dom.domid
    front, back = f"/local/domain/{d}/device/console/1", f"/local/domain/0/backend/console/{d}/1"
    assert await xs.read(f"{front}/state") == b"4" and await xs.read(f"{back}/state") == b"4"
    assert await xs.read(f"{front}/type") == b"ioemu"
    assert await xs.read(f"{back}/protocol") == b"vt100"
    guest_front = xen_host.guest_kernels[d].bus
    assert guest_front is not None
    dev = guest_front.devices["console/1"]
    assert isinstance(dev, SecondaryConsoleFront)
    assert await xs.read(f"{front}/ring-ref") == str(dev.ring_ref).encode()
    assert await xs.read(f"{front}/port") == str(dev.port).encode()
    # the primary console's node is left alone: state 1, no backend instance
    assert await xs.read(f"/local/domain/0/backend/console/{d}/0/state") == b"1"
    assert xen_host.kernel.backends.instance("console", d, 0) is None


async def test_hot_plug_and_unplug(autojump_clock: MockClock, guest_factory: GuestFactory,
                                   xen_host: Host) -> None:
    outcome: list[str] = []

    async def program(guest: Guest) -> None:
        await guest.console.print("waiting")
        hvc = await guest.consoles.wait(2)
        await hvc.print("hvc2 up")
        try:
            await hvc.readline()  # blocks until the unplug closes the console
        except ConsoleClosed as exc:
            outcome.append(type(exc).__name__)
        await guest.console.print("unplugged")
        await trio.sleep_forever()

    dom = await guest_factory(program)
    await dom.console.wait_for("waiting")
    assert await dom.attach_console(2) == 2
    con = dom.consoles[2]
    await con.wait_for("hvc2 up")
    back = xen_host.kernel.backends.instance("console", dom.domid, 2)
    assert isinstance(back, ConsoleBack) and back.workers_started == 1
    await dom.detach_console(2)
    await dom.console.wait_for("unplugged")
    assert outcome == ["ConsoleClosed"]
    assert back.workers_stopped == 1 and back.removed
    assert xen_host.kernel.backends.devices == {}
    assert con.log() == b"hvc2 up\n"  # kept by the handle after the unplug
    assert list(dom.consoles) == [0]
    # and again: a new pair of instances
    assert await dom.attach_console() == 1


async def test_console_0_is_refused(guest_factory: GuestFactory) -> None:
    import pytest

    from dom0.toolstack.builder import DeviceRequest
    from dom0.toolstack.config import ConfigError

    dom = await guest_factory()
    with pytest.raises(ConfigError, match="primary console"):
        await dom.attach_device(DeviceRequest("console", 0))
    with pytest.raises(ConfigError):
        console_device_request(0)


async def test_a_guest_finds_its_channels_by_name(autojump_clock: MockClock,
                                                  guest_factory: GuestFactory) -> None:
    """Channels (xl.cfg ``channel=``) are found by the ``name`` key the toolstack
    wrote, as a guest agent finds its channel in Xen; an unknown name is a KeyError."""
    found: list[int] = []
    missing: list[str] = []

    async def program(guest: Guest) -> None:
        found.append(await guest.consoles.number("org.example.agent.0"))
        found.append(await guest.consoles.number("org.example.log"))
        with trio.fail_after(5):
            log = await guest.consoles.named("org.example.log")
        await log.print("on the log channel")
        try:
            await guest.consoles.number("org.example.nosuch")
        except KeyError as exc:
            missing.append(str(exc.args[0]))
        await log.print("done")
        await trio.sleep_forever()

    dom = await guest_factory(program, channels=[
        ChannelSpec(name="org.example.agent.0", connection="pty"),
        ChannelSpec(name="org.example.log", connection="pty")])
    await dom.consoles[2].wait_for("on the log channel\ndone\n")
    assert found == [1, 2] and missing == ["org.example.nosuch"]
    assert b"on the log channel" not in dom.consoles[1].log()


async def test_a_guest_without_channels_has_no_names(guest_factory: GuestFactory) -> None:
    errors: list[BaseException] = []

    async def program(guest: Guest) -> None:
        try:
            await guest.consoles.number("org.example.agent.0")
        except KeyError as exc:
            errors.append(exc)
        await guest.console.print("looked")
        await trio.sleep_forever()

    dom = await guest_factory(program)
    await dom.console.wait_for("looked")
    assert len(errors) == 1
