"""Tutorial chapter 5: the xenbus handshake (docs/tutorials/05-xenbus.md).

A vbd frontend (guest, domain 1) and a null backend (dom0) walk the XenBus
states through a real xenstored core, each driven by a watch on the other
end's ``state`` key, using the state table in :mod:`ring.xenbus`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from dom0.xenstored import Connection, XenStore
from dom0.xenstored.unix_server import serve_connection
from domu.gnttab import GrantTableClient
from domu.xenstore import XenStoreClient, XenStoreTransaction, open_xenstore
from hypervisor.domain import DomainConfig
from hypervisor.hypercall import HypercallInterface
from hypervisor.hypervisor import Hypervisor
from hypervisor.types import Gfn
from ring.blkif import BLKIF_CODEC
from ring.sring import FrontRing
from ring.xenbus import Action, Transition, XenbusDevice, XenbusState, parse_state, render_handshake

FRONT = "/local/domain/1/device/vbd/51712"  # the guest's device directory
BACK = "/local/domain/0/backend/vbd/1/51712"  # dom0's backend directory
WIDTH = 46


def log(role: str, text: str) -> None:
    """Print in the frontend (left) or backend (right) column."""
    print(f"{text:<{WIDTH}} |" if role == "frontend" else f"{'':<{WIDTH}} | {text}")


@asynccontextmanager
async def connect(xs: XenStore, conn: Connection) -> AsyncIterator[XenStoreClient]:
    """A client for ``conn``, joined to the daemon by an in-memory byte pipe."""
    client_end, daemon_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, xs, daemon_end, conn)
        async with open_xenstore(client_end) as client:
            yield client
        nursery.cancel_scope.cancel()


async def write_keys(xs: XenStoreClient, role: str, path: str, keys: dict[str, str]) -> None:
    """Write ``keys`` under ``path`` in one transaction, then log them."""
    async def body(tx: XenStoreTransaction) -> None:
        for key, value in keys.items():
            await tx.write(f"{path}/{key}", value)
    await xs.transaction(body)
    for key, value in keys.items():
        log(role, f"  {key} = {value}")


async def switch_state(xs: XenStoreClient, role: str, path: str, t: Transition) -> None:
    """Make a transition's writes: its new ``state``, after all the actions."""
    for key, value in t.writes:
        log(role, f"  {key} = {value}")  # log first: the peer reacts to the write
        await xs.write(f"{path}/{key}", value)


async def read_state(xs: XenStoreClient, path: str) -> XenbusState:
    return parse_state(await xs.read(f"{path}/state"))


def describe(t: Transition) -> str:
    acts = f" [{', '.join(a.value for a in t.actions)}]" if t.actions else ""
    return f"{t.old_state.name} -> {t.new_state.name}{acts}"


class Backend:
    """A null vbd backend in dom0: publishes features, maps the ring, connects."""

    def __init__(self, xs: XenStoreClient, hc: HypercallInterface) -> None:
        self.xs, self.hc = xs, hc
        self.dev = XenbusDevice("vbd", "backend")
        self.handle = self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        async with self.xs.watch(f"{FRONT}/state") as events:
            await self.step(self.dev.probe())  # our own state reads 1
            self.dev.hotplug_connected()  # a null disk has no hotplug script
            task_status.started()
            async for _path in events:
                # Linux reads `online` when the frontend closes: 0 means unplug.
                self.dev.online = await self.xs.read(f"{BACK}/online") == b"1"
                await self.step(self.dev.frontend_changed(await read_state(self.xs, FRONT)))
                if self.dev.removed:
                    return

    async def step(self, t: Transition) -> None:
        if t.actions or t.new_state != t.old_state:
            log("backend", describe(t))
        for action in t.actions:
            if action == Action.PUBLISH_FEATURES:
                await write_keys(self.xs, "backend", BACK, {"max-ring-page-order": "0"})
            elif action == Action.MAP_RING:
                ref = int(await self.xs.read(f"{FRONT}/ring-ref"))
                evtchn = int(await self.xs.read(f"{FRONT}/event-channel"))
                self.handle = self.hc.grant_map_one(1, ref).handle
                self.port = self.hc.evtchn_bind_interdomain(1, evtchn)
                log("backend", f"  mapped ring-ref {ref}, bound port {self.port}")
            elif action == Action.CONNECT:
                await write_keys(self.xs, "backend", BACK,
                                 {"sectors": "2048", "info": "0", "sector-size": "512"})
            elif action == Action.DISCONNECT and self.port:
                self.hc.grant_unmap_one(self.handle)
                self.hc.evtchn_close(self.port)
                log("backend", "  unmapped ring, closed port")
                self.port = 0
        await switch_state(self.xs, "backend", BACK, t)


class Frontend:
    """A vbd frontend in the guest: allocates and publishes the ring, connects."""

    def __init__(self, xs: XenStoreClient, hc: HypercallInterface,
                 gnttab: GrantTableClient) -> None:
        self.xs, self.hc, self.gnttab = xs, hc, gnttab
        self.dev = XenbusDevice("vbd", "frontend")
        self.ref = self.port = 0
        self.deferred: list[int] = []  # refs still mapped by the backend

    async def run(self) -> None:
        self.dev.probe()  # nothing to do until the backend is InitWait
        async with self.xs.watch(f"{BACK}/state") as events:
            async for _path in events:
                backend_state = await read_state(self.xs, BACK)
                await self.step(self.dev.backend_changed(backend_state))
                if backend_state == XenbusState.Closed:
                    for ref in self.deferred:  # Linux retries these from a timer
                        done = self.gnttab.end_foreign_access(ref)
                        log("frontend", f"  retry end access {ref}: {done}")
                    return

    async def step(self, t: Transition) -> None:
        if t.actions or t.new_state != t.old_state:
            log("frontend", describe(t))
        for action in t.actions:
            if action == Action.TALK_TO_BACKEND:
                FrontRing.init([self.hc.memory.page(Gfn(2))], BLKIF_CODEC)
                self.ref = self.gnttab.grant_access(0, Gfn(2))
                self.port = self.hc.evtchn_alloc_unbound(remote_dom=0)
                await write_keys(self.xs, "frontend", FRONT, {
                    "ring-ref": str(self.ref), "event-channel": str(self.port),
                    "protocol": "x86_64-abi"})
            elif action == Action.CONNECT:
                sectors = int(await self.xs.read(f"{BACK}/sectors"))
                log("frontend", f"  disk ready: {sectors} sectors")
            elif action == Action.DISCONNECT:
                self.hc.evtchn_close(self.port)
                done = self.gnttab.end_foreign_access(self.ref)
                log("frontend", f"  closed port; end access {self.ref}: {done}")
                if not done:
                    self.deferred.append(self.ref)
        await switch_state(self.xs, "frontend", FRONT, t)


async def create_device(tool: XenStoreClient) -> None:
    """The toolstack's step (libxl's device add): both directories, at state 1."""
    async def body(tx: XenStoreTransaction) -> None:
        for path, perms, keys in (
            (BACK, ["n0", "r1"], {"frontend": FRONT, "frontend-id": "1", "online": "1"}),
            (FRONT, ["n1", "r0"], {"backend": BACK, "backend-id": "0",
                                    "virtual-device": "51712"}),
        ):
            await tx.mkdir(path)
            await tx.set_perms(path, perms)  # children created below inherit these
            for key, value in {**keys, "state": "1"}.items():
                await tx.write(f"{path}/{key}", value)
    await tool.transaction(body)


async def detach(tool: XenStoreClient) -> None:
    """The toolstack unplugs the disk (libxl's device remove): online = 0 and state = 5."""
    async def body(tx: XenStoreTransaction) -> None:
        await tx.write(f"{BACK}/online", "0")
        await tx.write(f"{BACK}/state", str(int(XenbusState.Closing)))
    print("toolstack: detach: backend online = 0, state = 5")
    await tool.transaction(body)


async def wait_for_state(xs: XenStoreClient, path: str, want: XenbusState) -> None:
    async with xs.watch(f"{path}/state") as events:
        async for _path in events:
            if await read_state(xs, path) == want:
                return


async def observe(xs: XenStoreClient, seen: list[str], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Record every path a watch on /local/domain reports."""
    async with xs.watch("/local/domain") as events:
        task_status.started()
        async for path in events:
            seen.append(path)


async def main() -> None:
    print("The state table's own run (ring.xenbus.render_handshake):")
    print(render_handshake("vbd"))

    hv = Hypervisor(memory_bytes=64 << 20)
    dom0 = hv.interface(0)
    guest = hv.interface(dom0.domctl_createdomain(DomainConfig(name="guest", nr_pages=16)))
    xs = XenStore(clock=trio.current_time)
    seen: list[str] = []
    async with (connect(xs, xs.connect_socket()) as tool,
                connect(xs, xs.connect_socket()) as dom0_xs,
                connect(xs, xs.introduce(guest.domid)) as guest_xs,
                trio.open_nursery() as nursery):
        await create_device(tool)
        print("\nOur drivers, through xenstored:")
        print(f"{'frontend (guest, domain 1)':<{WIDTH}} | backend (dom0)")
        await nursery.start(observe, tool, seen)
        async with trio.open_nursery() as drivers:
            await drivers.start(Backend(dom0_xs, dom0).run)
            drivers.start_soon(Frontend(guest_xs, guest, GrantTableClient(guest)).run)
            await wait_for_state(tool, FRONT, XenbusState.Connected)
            await detach(tool)
        await tool.rm(FRONT)
        await tool.rm(BACK)
        await trio.testing.wait_all_tasks_blocked()  # let the observer catch up
        nursery.cancel_scope.cancel()

    print("\nWhat a watch on /local/domain saw, in order:")
    for path in seen:
        print(f"  {path}")
    counts = hv.resource_counts()
    print(f"left over: ports={counts['ports']} grant_pins={counts['grant_pins']} "
          f"maptrack={counts['maptrack']}")


if __name__ == "__main__":
    trio.run(main)
