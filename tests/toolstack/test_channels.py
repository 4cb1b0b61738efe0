"""xl.cfg channels in the domain builder: libxl's console keys, create, restart.

The xenstore layout is checked against what libxl's
``libxl__init_console_from_channel`` + ``libxl__device_console_add`` write for
channel ``i``: console device ``i + 1``, its name in both directories, the
backend's ``connection`` (and ``path``), the frontend's ``output``. These
tests use ``connection=pty`` channels (no sockets, so the autojump clock);
``tests/console/test_channel_socket.py`` covers sockets with the real clock.
"""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from dom0.host import Host, SecondaryConsole
from dom0.testing import GuestFactory
from dom0.toolstack.builder import channel_device_request, console_device_request
from dom0.toolstack.config import ChannelSpec, ConfigError, GuestConfig
from dom0.toolstack.xlcfg import loads_config
from domu.guest import Guest

PTY = ChannelSpec(name="org.example.debug.0", connection="pty")
SOCKET = ChannelSpec(name="org.qemu.guest_agent.0", connection="socket", path="/run/qga.sock")


def test_channel_request_keys_are_libxls() -> None:
    req = channel_device_request(1, PTY)
    assert (req.kind, req.devid) == ("console", 1)
    assert dict(req.backend) == {"protocol": "vt100", "name": "org.example.debug.0",
                                 "connection": "pty"}
    assert dict(req.frontend) == {"limit": "1048576", "type": "ioemu", "output": "pty",
                                  "tty": "", "protocol": "vt100",
                                  "name": "org.example.debug.0"}
    req = channel_device_request(3, SOCKET)
    assert dict(req.backend) == {"protocol": "vt100", "name": "org.qemu.guest_agent.0",
                                 "connection": "socket", "path": "/run/qga.sock"}
    assert req.frontend["output"] == "chardev:libxl-channel3"
    assert req.frontend["name"] == "org.qemu.guest_agent.0"


@pytest.mark.parametrize(("devid", "channel", "message"), [
    (0, PTY, "numbered from 1"),
    (1, ChannelSpec(name="a", connection="socket"), "requires path"),
    (1, ChannelSpec(name="a", connection="socket", path="rel.sock"), "absolute"),
])
def test_bad_channel_requests(devid: int, channel: ChannelSpec, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        channel_device_request(devid, channel)


async def test_channels_become_consoles_from_1(autojump_clock: MockClock,
                                              guest_factory: GuestFactory,
                                              xen_host: Host) -> None:
    async def program(guest: Guest) -> None:
        for n in (1, 2):
            await (await guest.consoles.wait(n)).print(f"on hvc{n}")
        await trio.sleep_forever()

    two = [PTY, ChannelSpec(name="org.example.config.1", connection="pty")]
    dom = await guest_factory(program, channels=two)
    assert list(dom.consoles) == [0, 1, 2]
    for n, channel in ((1, two[0]), (2, two[1])):
        con = dom.consoles[n]
        assert isinstance(con, SecondaryConsole)
        assert (con.name, con.connection, con.path) == (channel.name, "pty", None)
        await con.wait_for(f"on hvc{n}\n")
    xs, d = xen_host.kernel.xs, dom.domid
    back, front = f"/local/domain/0/backend/console/{d}/2", f"/local/domain/{d}/device/console/2"
    assert sorted(await xs.directory(back)) == sorted(
        ["frontend", "frontend-id", "online", "state", "protocol", "name", "connection"])
    assert {k: await xs.read(f"{back}/{k}") for k in ("name", "connection", "state")} == {
        "name": b"org.example.config.1", "connection": b"pty", "state": b"4"}
    assert {k: await xs.read(f"{front}/{k}") for k in
            ("name", "output", "type", "tty", "limit", "backend-id", "state")} == {
        "name": b"org.example.config.1", "output": b"pty", "type": b"ioemu", "tty": b"",
        "limit": b"1048576", "backend-id": b"0", "state": b"4"}
    assert await xs.read(f"/libxl/{d}/device/console/2/backend") == back.encode()
    # the primary console stays the builder's, untouched
    assert await xs.read(f"/local/domain/{d}/console/type") == b"xenconsoled"


async def test_a_console_device_may_not_take_a_channels_number(guest_factory: GuestFactory,
                                                               xen_host: Host) -> None:
    with pytest.raises(ConfigError, match="console/1 given twice"):
        await guest_factory(channels=[PTY], devices=[console_device_request(1)])
    # the next free number is fine
    dom = await guest_factory(channels=[PTY], devices=[console_device_request(2)])
    assert list(dom.consoles) == [0, 1, 2]


async def test_an_xl_cfg_with_channels_creates_the_devices(autojump_clock: MockClock,
                                                          xen_host: Host) -> None:
    config, warnings = loads_config(
        'name = "chan"\nkernel = "examples.echo:main"\nmemory = 4\n'
        "channel = [ 'name=org.example.a.0, connection=pty',\n"
        "            'connection=pty, name=org.example.b.0' ]\n", "chan.cfg")
    assert warnings == []
    dom = await xen_host.create(config)
    assert [dom.consoles[n].name for n in (1, 2)] == [  # type: ignore[union-attr]
        "org.example.a.0", "org.example.b.0"]
    await dom.console.wait_for("chan: ready")
    for n in (1, 2):
        back = xen_host.kernel.backends.instance("console", dom.domid, n)
        assert back is not None and back.connected


async def test_restart_keeps_the_channels(autojump_clock: MockClock, xen_host: Host) -> None:
    dom = await xen_host.create(GuestConfig(name="keeper", kernel="examples.echo:main",
                                            memory=4, channels=[PTY]))
    await dom.console.wait_for("keeper: ready")
    new = await dom.reboot()
    assert new is not None and new.domid != dom.domid
    await new.console.wait_for("keeper: ready")
    con = new.consoles[1]
    assert isinstance(con, SecondaryConsole) and con.name == PTY.name
    assert list(new.consoles) == [0, 1]  # once: from the record, not config + record
    back = xen_host.kernel.backends.instance("console", new.domid, 1)
    assert back is not None and back.connected
    await new.destroy()
