"""Test harness for blkback: a raw (possibly hostile) vbd frontend and RAM-backed blkback.

:class:`RawBlkFront` does the frontend half of the vbd handshake by hand
(ring pages, grants, an unbound port, the xen-abi 5.3 keys) and then lets a
test put any bytes it likes into the shared ring. :class:`RamBlkBack` is
blkback serving devices registered in :data:`DISKS` (keyed by the disk's
``target``), so tests can hand it ramdisks, fault injectors and power-loss
disks; any other target is opened as an image file, as in production.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

import trio

from dom0.backends.blkback import BlkBack
from dom0.native.disk import BlockDevice
from domu.evtchn import PortWaiter
from domu.frontends.bus import Frontend
from domu.guest import Guest
from hypervisor.types import DomId
from ring.blkif import BLKIF_CODEC, BlkifAnyRequest, BlkifResponse, BlkifSegment
from ring.sring import FrontRing

XVDA = 51712
XVDB = 51728
DISKS: dict[str, BlockDevice] = {}
"""target -> device served by :class:`RamBlkBack` (tests fill and clear it)."""


class RamBlkBack(BlkBack):
    """blkback whose targets may be in-memory devices (see :data:`DISKS`)."""

    def open_device(self, params: str, readonly: bool,
                    ) -> AbstractAsyncContextManager[BlockDevice]:
        dev = DISKS.get(params)
        if dev is None:
            return super().open_device(params, readonly)

        @contextlib.asynccontextmanager
        async def held() -> AsyncIterator[BlockDevice]:
            yield dev

        return held()


class RawBlkFront(Frontend):
    """The frontend half of the vbd handshake, by hand; the ring is the test's.

    Class attributes (subclass to change):
        ring_page_order: ring pages = 2**order.
        persistent: write ``feature-persistent = 1``.
        keys: extra / overriding frontend keys (hostile handshakes).
    """

    kind = "vbd"
    ring_page_order = 0
    persistent = False
    keys: ClassVar[dict[str, str]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connected = trio.Event()
        self.sectors = 0
        self.info = 0

    async def talk_to_backend(self) -> None:
        pages, refs = [], []
        for _ in range(1 << self.ring_page_order):
            gfn, view = self.alloc_page()
            pages.append(view)
            refs.append(self.grant_page(gfn))
        self.ring: FrontRing[BlkifAnyRequest, BlkifResponse] = FrontRing.init(
            pages, BLKIF_CODEC)
        port, waiter = self.alloc_port_waiter()
        assert waiter is not None
        self.port = port
        self.waiter: PortWaiter = waiter
        keys = {"event-channel": str(port), "protocol": "x86_64-abi",
                "feature-persistent": "1" if self.persistent else "0"}
        if self.ring_page_order == 0:
            keys["ring-ref"] = str(refs[0])
        else:
            keys["ring-page-order"] = str(self.ring_page_order)
            keys.update({f"ring-ref{i}": str(r) for i, r in enumerate(refs)})
        keys.update(self.keys)
        for key, value in keys.items():
            await self.write_key(key, value)

    async def connect(self) -> None:
        self.sectors = int(await self.read_backend("sectors") or b"0")
        self.info = int(await self.read_backend("info") or b"0")
        self.connected.set()

    # -- test helpers -----------------------------------------------------------------------

    def data_page(self, *, readonly: bool = False,
                  grant_to: int | None = None) -> tuple[int, memoryview]:
        """A fresh page of guest RAM and a grant of it (to the backend by default)."""
        gfn, view = self.alloc_page()
        if grant_to is None:
            return self.grant_page(gfn, readonly), view
        ref = self.grants.grant_access(DomId(grant_to), gfn, readonly)
        self._refs.append((ref, None))
        return ref, view

    def submit(self, *reqs: BlkifAnyRequest) -> None:
        """Put requests on the ring, push, notify if the ring says so."""
        self.ring.put_requests(list(reqs))
        self.push()

    def submit_raw(self, *slots: bytes) -> None:
        """Put raw slot bytes (any layout) on the ring and push."""
        for raw in slots:
            self.ring.sring.write_slot(self.ring.req_prod_pvt, raw)
            self.ring.req_prod_pvt = (self.ring.req_prod_pvt + 1) & 0xFFFFFFFF
        self.push()

    def push(self) -> None:
        if self.ring.push_requests_and_check_notify():
            self.hc.evtchn_send(self.port)

    def kick(self) -> None:
        self.hc.evtchn_send(self.port)

    async def responses(self, n: int, timeout: float = 10.0) -> list[BlkifResponse]:
        """Wait (bounded, trio clock) for ``n`` responses; return them."""
        out: list[BlkifResponse] = []
        with trio.fail_after(timeout):
            while True:
                out += self.ring.get_responses()
                if len(out) >= n:
                    return out
                if self.ring.final_check_for_responses():
                    continue
                await self.waiter.wait()


def seg(gref: int, first: int = 0, last: int = 7) -> BlkifSegment:
    return BlkifSegment(gref, first, last)


async def wait_disk(guest: Guest, devid: int = XVDA) -> RawBlkFront:
    """Guest side: wait until the frontend of ``devid`` is connected."""
    name = f"vbd/{devid}"
    async with guest.xenstore.watch(f"device/{name}/state") as events:
        async for _ in events:
            dev = guest.devices.get(name)
            if isinstance(dev, RawBlkFront):
                break
    await dev.connected.wait()
    return dev


async def disk_guest(guest: Guest) -> None:
    """A guest program: wait for xvda, say so, idle (the test drives the ring)."""
    await wait_disk(guest)
    await guest.console.print("disk ready")
    await trio.sleep_forever()


async def idle_guest(guest: Guest) -> None:
    """A guest program that only says it is up, then idles."""
    await guest.console.print("up")
    await trio.sleep_forever()
