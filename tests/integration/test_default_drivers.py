"""open_host() with no driver arguments serves every built-in device type."""

from __future__ import annotations

from pathlib import Path

from dom0.host import open_host
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
