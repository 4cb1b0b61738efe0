"""The driver-writing API: reserved names, buggy drivers, open_device, merged registries."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
from trio.testing import MockClock

import dom0.backends.kvback  # noqa: F401  (registers kv)
from dom0.backends.bus import BACKEND_DRIVERS, Backend
from dom0.backends.kvback import KvBack
from dom0.host import Host, open_host
from dom0.testing import GuestFactory
from dom0.toolstack.builder import ConfigError, DeviceRequest
from domu.frontends.bus import FRONTEND_DRIVERS, Frontend
from domu.frontends.kvfront import KvDeviceError, KvFront, open_kv
from domu.guest import Guest

KV0 = DeviceRequest("kv", 0)


# -- names a driver may and may not use ------------------------------------------------------


@pytest.mark.parametrize("name", ["read_key", "write_keys", "grant_page", "alloc_port",
                                  "start_worker", "release_resources_now", "is_connected"])
def test_redefining_a_frontend_helper_is_refused(name: str) -> None:
    if name == "release_resources_now":  # not a helper: allowed
        type("Fine", (Frontend,), {name: lambda self: None})
        return
    with pytest.raises(TypeError, match=rf"Bad\.{name}: '{name}' is a helper of Frontend.*"
                                        r"Reserved: .*read_key"):
        type("Bad", (Frontend,), {name: lambda self: None})


@pytest.mark.parametrize("name", ["read_key", "write_key", "map_grant", "bind_port_waiter",
                                  "stop_worker", "errors"])
def test_redefining_a_backend_helper_is_refused(name: str) -> None:
    with pytest.raises(TypeError, match=rf"'{name}' is a helper of Backend"):
        type("Bad", (Backend,), {name: lambda self: None})


def test_a_hook_with_the_wrong_shape_is_refused() -> None:
    with pytest.raises(TypeError, match=r"'connect' is a Frontend hook the bus calls as "
                                        r"connect\(\) with no arguments"):
        class NetLike(Frontend):
            async def connect(self, address: str) -> None: ...

    with pytest.raises(TypeError, match=r"'probe' is a Backend hook; the bus awaits it: "
                                        r"define it as 'async def probe\(self\)'"):
        class SyncProbe(Backend):
            def probe(self) -> None: ...  # type: ignore[override]


def test_register_needs_a_kind() -> None:
    from dom0.backends.bus import register_backend

    with pytest.raises(ValueError, match="set kind to the device type name"):
        register_backend(type("NoKind", (Backend,), {}))


class ReadingKvFront(KvFront):
    """A frontend whose API has natural names the base class once used itself."""

    async def read(self, key: str) -> bytes | None:  # was Frontend.read: now free
        return await self.get(key)

    async def write(self, key: str, value: bytes) -> None:
        await self.put(key, value)

    def grant(self, who: str) -> str:
        return f"granted to {who}"


async def test_natural_api_names_do_not_break_the_bus(autojump_clock: MockClock,
                                                      guest_factory: GuestFactory) -> None:
    async def program(guest: Guest) -> None:
        kv = await guest.open_device(ReadingKvFront, timeout=10)
        await kv.write("k", b"v")
        await guest.console.print(f"read {await kv.read('k')!r}, {kv.grant('you')}")

    dom = await guest_factory(program, devices=[KV0])
    await dom.wait()
    assert b"read b'v', granted to you" in dom.console.log()


@pytest.fixture
def xen_host_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    return getattr(request, "param", {"frontend_drivers": {"kv": ReadingKvFront}})


# -- a buggy driver hurts only its own device --------------------------------------------------


class CrashingConnectFront(KvFront):
    async def connect(self) -> None:
        if self.dev.devid == 0:
            raise RuntimeError("bug in connect")
        await super().connect()


class CrashingWorkerBack(KvBack):
    async def _serve(self) -> None:
        if self.dev.devid == 0:
            await self.waiter.wait()
            raise ZeroDivisionError("bug in the worker")
        await super()._serve()


class CrashingMapBack(KvBack):
    async def map_ring(self) -> None:
        await super().map_ring()
        if self.dev.devid == 0:
            raise KeyError("bug in map_ring")


class CrashingInitBack(KvBack):
    def __init__(self, *args: Any) -> None:
        raise AttributeError("bug in __init__")


async def kv_user(guest: Guest) -> None:
    """Uses kv/0 and kv/1, whichever it has; reports each."""
    async def use(devid: int) -> None:
        try:
            kv = await open_kv(guest, devid, timeout=5)
            await kv.put("a", b"1")
            await guest.console.print(f"kv/{devid} served {await kv.get('a')!r}")
        except (KvDeviceError, TimeoutError) as exc:
            await guest.console.print(f"kv/{devid} failed: {type(exc).__name__}")

    async with trio.open_nursery() as nursery:
        for devid in (0, 1):
            nursery.start_soon(use, devid)
    await trio.sleep_forever()


def driver_bug_logged(caplog: pytest.LogCaptureFixture) -> bool:
    return any(r.levelno == logging.ERROR and "driver bug" in r.getMessage()
               and r.exc_info is not None for r in caplog.records)


@pytest.mark.parametrize("xen_host_options", [
    {"frontend_drivers": {"kv": CrashingConnectFront}}], indirect=True)
async def test_a_crashing_frontend_hook_closes_only_its_device(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dom = await guest_factory(kv_user, devices=[KV0, DeviceRequest("kv", 1)])
    await dom.console.wait_for("kv/1 served b'1'")  # the same guest's other device works
    await dom.console.wait_for("kv/0 failed: TimeoutError")  # this one never connected
    front = xen_host.guest_kernels[dom.domid].bus.devices["kv/0"]
    assert isinstance(front.last_error, RuntimeError) and front.errors == 1
    state = await xen_host.kernel.xs.read(f"/local/domain/{dom.domid}/device/kv/0/state")
    assert state in (b"5", b"6")  # Closing, then Closed
    assert driver_bug_logged(caplog)
    assert dom.state == "running"  # the guest kernel lives on
    await dom.destroy()


@pytest.mark.parametrize("xen_host_options", [
    {"backend_drivers": {"kv": CrashingWorkerBack}},
    {"backend_drivers": {"kv": CrashingMapBack}},
], indirect=True, ids=["worker", "map_ring"])
async def test_a_crashing_backend_closes_only_its_device(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dom = await guest_factory(kv_user, devices=[KV0, DeviceRequest("kv", 1)])
    await dom.console.wait_for("kv/0 failed")
    await dom.console.wait_for("kv/1 served b'1'")  # dom0 serves the other device
    back = xen_host.kernel.backends.instance("kv", dom.domid, 0)
    assert back is not None and back.errors == 1
    assert isinstance(back.last_error, ZeroDivisionError | KeyError)
    state = await xen_host.kernel.xs.read(f"/local/domain/0/backend/kv/{dom.domid}/0/state")
    assert state in (b"5", b"6")
    assert driver_bug_logged(caplog)
    await dom.detach_device("kv", 0)  # the broken device still detaches cleanly
    assert back.workers_started == back.workers_stopped
    await dom.destroy()


@pytest.mark.parametrize("xen_host_options", [
    {"backend_drivers": {"kv": CrashingInitBack}}], indirect=True)
async def test_a_backend_that_cannot_be_built_fails_the_attach(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dom = await guest_factory(kv_user)
    with pytest.raises(ConfigError, match="the backend failed"):
        await dom.attach_device(KV0)
    assert xen_host.kernel.backends.devices == {}
    assert driver_bug_logged(caplog)
    await dom.destroy()


# -- open_device -------------------------------------------------------------------------------


async def test_open_device_waits_for_hotplug_and_for_the_next_device(
    autojump_clock: MockClock, guest_factory: GuestFactory,
) -> None:
    seen: list[object] = []

    async def program(guest: Guest) -> None:
        for _ in range(2):
            kv = await guest.open_device(KvFront, timeout=60)
            seen.append(kv)
            await guest.console.print(f"connected {len(seen)}")
            try:
                while True:
                    await kv.get("x")
                    await trio.sleep(0.01)
            except KvDeviceError:
                pass
        with pytest.raises(TimeoutError, match="did not connect within 1"):
            await guest.open_device("kv", 0, timeout=1)
        with pytest.raises(TypeError, match="driven by ReadingKvFront, not Nope"):
            await guest.open_device(type("Nope", (Frontend,), {"kind": "kv"}), 1)
        await guest.console.print("done")

    dom = await guest_factory(program)
    for n in (1, 2):
        await dom.attach_device(KV0)
        await dom.console.wait_for(f"connected {n}")
        await dom.detach_device("kv", 0)
    await dom.attach_device(DeviceRequest("kv", 1))
    await dom.console.wait_for("done")
    assert len(seen) == 2 and seen[0] is not seen[1]
    await dom.destroy()


# -- registries --------------------------------------------------------------------------------


async def test_driver_options_are_merged_over_the_registry() -> None:
    async with open_host(backend_drivers={"kv": CrashingMapBack}) as host:
        drivers = host.kernel.backends.drivers
        assert drivers["kv"] is CrashingMapBack
        assert drivers["vbd"] is BACKEND_DRIVERS["vbd"] and "vif" in drivers
    assert "vbd" in FRONTEND_DRIVERS


class OldNamesKvBack(KvBack):
    """A driver written against the old helper names still works, with a warning."""

    async def probe(self) -> None:
        await self.write("max-key-length", "32")
        await self.publish({"max-value-length": "64"})
        assert await self.read("max-key-length") == b"32"


@pytest.mark.parametrize("xen_host_options", [{"backend_drivers": {"kv": OldNamesKvBack}}],
                         indirect=True)
async def test_old_helper_names_are_deprecated_aliases(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
) -> None:
    dom = await guest_factory(kv_user)
    with pytest.deprecated_call(match="is deprecated: use") as seen:
        await dom.attach_device(KV0)
        await dom.console.wait_for("kv/0 served b'1'")
    assert {str(w.message).split("(")[0] for w in seen} >= {
        "Backend.write", "Backend.publish", "Backend.read"}
    await dom.destroy()
