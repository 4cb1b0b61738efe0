"""open_host() with no driver arguments serves every built-in device type."""

from __future__ import annotations

from pathlib import Path

from dom0.host import open_host
from dom0.toolstack.builder import console_device_request
from dom0.toolstack.config import DiskSpec, GuestConfig, VifSpec


async def test_default_host_serves_disks_and_nics(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    seen: dict[str, object] = {}

    async def program(guest) -> None:  # type: ignore[no-untyped-def]
        disk = guest.disk("xvda")
        await disk.write(0, b"default drivers")
        seen["read"] = await disk.read(0, 15)
        seen["mac"] = guest.nic(0).mac

    async with open_host() as host:
        dom = await host.create(GuestConfig(
            name="dflt", kernel=program, memory=16,
            disks=[DiskSpec(vdev="xvda", target=str(image))], vifs=[VifSpec()]))
        await dom.wait()
    assert seen["read"] == b"default drivers"
    assert bytes(seen["mac"])[:3] == b"\x00\x16\x3e"  # type: ignore[arg-type]  # Xen OUI
    assert image.read_bytes()[:15] == b"default drivers"


async def test_default_host_serves_secondary_consoles() -> None:
    async def program(guest) -> None:  # type: ignore[no-untyped-def]
        await guest.consoles[1].print("on hvc1")
        await guest.consoles[1].drain()  # dom0 has read it before we power off

    async with open_host() as host:
        dom = await host.create(GuestConfig(name="hvc", kernel=program, memory=16),
                                devices=[console_device_request(1)])
        await dom.wait()
        # kept after the domain is gone, like the primary console's log
        assert dom.consoles[1].log() == b"on hvc1\n"
