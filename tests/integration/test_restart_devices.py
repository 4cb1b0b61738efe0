"""Devices across the domain's life: a backend that fails at create fails the
create; a restart keeps hot-plugged devices and generated MACs (libxl restarts
from the domain's stored config, not the original file).

Real clock on purpose: these open real image files in worker threads."""

from __future__ import annotations

from pathlib import Path

import pytest

from dom0.host import open_host
from dom0.toolstack.config import ConfigError, DiskSpec, GuestConfig, VifSpec


async def test_create_fails_when_a_backend_cannot_open_its_image(tmp_path: Path) -> None:
    async with open_host() as host:
        config = GuestConfig(name="nodisk", kernel="examples.echo:main", memory=8,
                             disks=[DiskSpec(vdev="xvda", target=str(tmp_path / "missing.img"))])
        with pytest.raises(ConfigError, match=r"missing\.img"):
            await host.create(config)
        assert [row.name for row in host.list()] == ["Domain-0"]
    # leaving open_host checked that the failed create left nothing behind


async def test_restart_keeps_hot_plugged_disks_and_generated_macs(tmp_path: Path) -> None:
    boot_disk, extra_disk = tmp_path / "a.img", tmp_path / "b.img"
    boot_disk.write_bytes(bytes(1 << 20))
    extra_disk.write_bytes(bytes(1 << 20))
    async with open_host() as host:
        dom = await host.create(GuestConfig(
            name="keeper", kernel="examples.echo:main", memory=16,
            disks=[DiskSpec(vdev="xvda", target=str(boot_disk))], vifs=[VifSpec()]))
        await dom.console.wait_for("keeper: ready")
        devid = await dom.attach_disk(DiskSpec(vdev="xvdb", target=str(extra_disk)))
        xs = host.kernel.xs
        mac = await xs.read(f"/local/domain/{dom.domid}/device/vif/0/mac")

        new = await dom.reboot()
        assert new is not None and new.domid != dom.domid
        await new.console.wait_for("keeper: ready")
        base = f"/local/domain/0/backend/vbd/{new.domid}"
        assert sorted(await xs.directory(base)) == sorted([str(51712), str(devid)])
        assert await xs.read(f"/local/domain/{new.domid}/device/vif/0/mac") == mac
        await new.destroy()
