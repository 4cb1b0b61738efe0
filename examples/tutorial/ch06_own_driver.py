"""Tutorial chapter 6: your own split driver (docs/tutorials/06-own-driver.md).

A key-value device, ``kv``: its protocol (:mod:`ring.kvstore`), its backend
in dom0 (:mod:`dom0.backends.kvback`) and its frontend in the guest
(:mod:`domu.frontends.kvfront`). A guest boots without it; dom0 hot-plugs
it into the running guest, the guest program uses it, dom0 unplugs it again.
"""

from __future__ import annotations

import trio

import dom0.backends.kvback  # noqa: F401  (importing registers the backend for "kv")
from dom0.host import open_host
from dom0.toolstack.builder import DeviceRequest
from dom0.toolstack.config import GuestConfig
from domu.frontends.kvfront import KvDeviceError, KvFront, KvFull  # ... and the frontend
from domu.guest import Guest
from domu.xenstore import XenStoreClient


async def app(guest: Guest) -> None:
    """The guest program: waits for its kv device, uses it, notices it going away."""
    await guest.console.print("app: waiting for kv/0")
    kv = await guest.open_device(KvFront, 0, timeout=30)  # boot or hot-plug: waits
    await guest.console.print("app: kv/0 connected")
    await kv.put("colour", b"blue")
    await kv.put("shape", b"round")
    await guest.console.print(f"app: colour = {await kv.get('colour')!r}")
    await guest.console.print(f"app: delete shape -> {await kv.delete('shape')}")
    await guest.console.print(f"app: shape = {await kv.get('shape')!r}")
    try:
        for i in range(10):
            await kv.put(f"item{i}", b"x")
    except KvFull as exc:
        await guest.console.print(f"app: {exc} (max-entries is 4)")
    await guest.console.print("app: done; still using it")
    try:
        while True:
            await kv.get("colour")
            await trio.sleep(0.01)
    except KvDeviceError as exc:
        await guest.console.print(f"app: {exc}")


async def show_dir(xs: XenStoreClient, path: str, keys: tuple[str, ...]) -> None:
    """Print some keys of one xenstore directory."""
    print(path)
    for key in keys:
        print(f"  {key} = {(await xs.read(f'{path}/{key}')).decode()}")


async def main() -> None:
    async with open_host() as host:
        dom = await host.create(GuestConfig(name="app", kernel=app, memory=4))
        await dom.console.wait_for("waiting for kv/0")

        request = DeviceRequest("kv", 0, backend={"max-entries": "4"})
        await dom.attach_device(request)  # like `xl block-attach`, for any device type
        await dom.console.wait_for("still using it")
        print(dom.console.log().decode(), end="")

        xs = host.kernel.xs
        print("\nthe device in xenstore:")
        await show_dir(xs, request.backend_path(dom.domid),
                       ("frontend-id", "online", "max-entries", "max-key-length",
                        "max-value-length", "state"))
        await show_dir(xs, request.frontend_path(dom.domid),
                       ("backend-id", "ring-ref", "event-channel", "state"))

        back = host.kernel.backends.instance("kv", dom.domid, 0)
        front = host.guest_kernels[dom.domid].bus.devices["kv/0"]  # peeking, for the tutorial
        await dom.detach_device("kv", 0)
        await dom.console.wait_for("device closed")
        print("\nafter detach_device:")
        print(dom.console.log().decode().splitlines()[-1])
        print(f"backend: {back.bad_requests} bad requests, "
              f"worker started {back.workers_started} / stopped {back.workers_stopped}")
        print(f"frontend: worker started {front.workers_started} / "
              f"stopped {front.workers_stopped}, grants still mapped {front.pending_grants}")
        print(f"kv devices in dom0 now: {sorted(k for k in host.kernel.backends.devices)}")
        await dom.shutdown()
    print("host shut down; nothing leaked")


if __name__ == "__main__":
    trio.run(main)
