"""A scriptable (and, when asked, hostile) vbd backend for blkfront tests.

It speaks blkif straight from :mod:`ring` (a BackRing over the mapped ring
pages) and serves a :class:`~dom0.native.disk.RamDisk`. Each device's
behaviour comes from :data:`CONFIGS` (devid -> :class:`BackConfig`), which a
test fills before creating the guest; live instances land in :data:`INSTANCES`.

``BackConfig.script(back, req, rsp)`` sees every request with the response
the backend would send and returns the responses to put on the ring instead
(``None``: send ``rsp``; ``[]``: hold the request forever). Responses are
written raw, so a script can answer twice, invent ids or change operations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dom0.backends.bus import Backend
from dom0.native.disk import RamDisk
from hypervisor.grant_table import GNTST_okay
from ring.blkif import (
    BLKIF_CODEC,
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
    BlkifResponse,
    decode_indirect_segments,
    error_response,
    make_response,
)
from ring.errors import PeerProtocolError
from ring.sring import BackRing

Script = Callable[["ScriptBack", Any, BlkifResponse], "list[BlkifResponse] | None"]


@dataclass
class BackConfig:
    """How one scripted backend behaves (the test's choice)."""

    size: int = 1 << 20
    initial: bytes | None = None
    probe_keys: dict[str, str] = field(default_factory=dict)
    persistent: bool = True
    keep_mapped: bool = False  # non-persistent, yet never unmap data pages
    info: int = 0
    sector_size: int = 512
    script: Script | None = None


CONFIGS: dict[int, BackConfig] = {}
INSTANCES: dict[int, ScriptBack] = {}


def raw_put(ring: BackRing[Any, BlkifResponse], rsp: BlkifResponse) -> None:
    """Write a response slot and advance rsp_prod_pvt with no sanity check."""
    ring.sring.write_slot(ring.rsp_prod_pvt, BLKIF_CODEC.encode_response(rsp))
    ring.rsp_prod_pvt = (ring.rsp_prod_pvt + 1) & 0xFFFFFFFF


class ScriptBack(Backend):
    """Backend half of the test pair."""

    kind = "vbd"

    async def probe(self) -> None:
        self.cfg = CONFIGS.get(self.dev.devid) or BackConfig()
        self.disk = RamDisk(self.cfg.size, initial=self.cfg.initial,
                            sector_size=self.cfg.sector_size)
        self.ops: list[tuple[int, int]] = []  # (operation or inner op, nr_segments)
        self.indirect = 0
        self.maps: dict[int, int] = {}  # gref -> times mapped
        self.rw_map_of_write_ok = False
        self.max_outstanding = 0
        self.front_keys: dict[str, bytes | None] = {}
        self._persist: dict[int, memoryview] = {}
        for key, value in self.cfg.probe_keys.items():
            await self.write_key(key, value)
        INSTANCES[self.dev.devid] = self

    async def hotplug_done(self) -> bool:
        return True

    async def map_ring(self) -> None:
        for key in ("ring-ref", "ring-page-order", "ring-ref0", "ring-ref1", "ring-ref2",
                    "ring-ref3", "event-channel", "protocol", "feature-persistent"):
            self.front_keys[key] = await self.read_frontend(key)
        if self.front_keys["protocol"] != b"x86_64-abi":
            raise PeerProtocolError("unknown protocol")
        order_raw = self.front_keys["ring-page-order"]
        if order_raw is None:
            refs = [int(self.front_keys["ring-ref"] or b"x")]
        else:
            refs = [int((await self.read_frontend(f"ring-ref{i}")) or b"x")
                    for i in range(1 << int(order_raw))]
        self.ring = BackRing.attach([self.map_grant(r) for r in refs], BLKIF_CODEC)
        port = int(self.front_keys["event-channel"] or b"x")
        self.port, self.waiter = self.bind_port_waiter(port)
        self.persistent = self.cfg.persistent and self.front_keys["feature-persistent"] == b"1"

    async def connect(self) -> None:
        await self.write_key("sectors", str(self.cfg.size // 512))
        await self.write_key("info", str(self.cfg.info))
        await self.write_key("sector-size", str(self.cfg.sector_size))
        await self.write_key("feature-persistent", "1" if self.cfg.persistent else "0")
        self.start_worker(self._serve)

    # -- serving --------------------------------------------------------------------------

    def _map(self, gref: int, readonly: bool) -> tuple[memoryview, int | None]:
        if self.persistent:
            view = self._persist.get(gref)
            if view is None:
                view = self.map_grant(gref)
                self._persist[gref] = view
                self.maps[gref] = self.maps.get(gref, 0) + 1
            return view, None
        self.maps[gref] = self.maps.get(gref, 0) + 1
        if self.cfg.keep_mapped:
            return self.map_grant(gref, readonly), None
        res = self.hc.grant_map_one(self.dev.frontend_id, gref, readonly)
        if res.status != GNTST_okay or res.view is None:
            raise PeerProtocolError(f"gref {gref}: {res.status}")
        return res.view, res.handle

    async def _do(self, req: Any) -> BlkifResponse:
        if req.error is not None:
            return error_response(req)
        op = req.operation
        if op in (BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER):
            self.ops.append((op, 0))
            await self.disk.flush()
            return make_response(req, BLKIF_RSP_OKAY)
        if op == BLKIF_OP_DISCARD:
            self.ops.append((op, req.nr_sectors))
            await self.disk.discard(req.sector_number * 512, req.nr_sectors * 512)
            return make_response(req, BLKIF_RSP_OKAY)
        handles: list[int] = []
        try:
            if op == BLKIF_OP_INDIRECT:
                self.indirect += 1
                op = req.indirect_op
                pages = []
                for g in req.indirect_grefs:
                    view, h = self._map(g, True)
                    pages.append(view)
                    if h is not None:
                        handles.append(h)
                segs, err = decode_indirect_segments(pages, req.nr_segments, 4096)
                if err:
                    return make_response(req, BLKIF_RSP_ERROR)
            else:
                segs = req.segments
            self.ops.append((op, len(segs)))
            views = []
            for seg in segs:
                if op == BLKIF_OP_WRITE and not self.persistent and not self.rw_map_of_write_ok:
                    probe = self.hc.grant_map_one(self.dev.frontend_id, seg.gref, False)
                    if probe.status == GNTST_okay:
                        self.rw_map_of_write_ok = True
                        self.hc.grant_unmap_one(probe.handle)
                view, h = self._map(seg.gref, op == BLKIF_OP_WRITE)
                if h is not None:
                    handles.append(h)
                views.append(view[seg.first_sect * 512 : (seg.last_sect + 1) * 512])
            if op == BLKIF_OP_READ:
                await self.disk.readv(req.sector_number * 512, views)
            else:
                await self.disk.writev(req.sector_number * 512, views)
            return make_response(req, BLKIF_RSP_OKAY)
        except OSError:
            return make_response(req, BLKIF_RSP_ERROR)
        finally:
            for h in handles:
                self.hc.grant_unmap_one(h)

    async def _serve(self) -> None:
        ring, waiter = self.ring, self.waiter
        while True:
            reqs = ring.get_requests()
            out = (ring.sring.req_prod - ring.rsp_prod_pvt) & 0xFFFFFFFF
            self.max_outstanding = max(self.max_outstanding, out)
            for req in reqs:
                rsp = await self._do(req)
                script = self.cfg.script
                rsps = script(self, req, rsp) if script is not None else None
                for r in [rsp] if rsps is None else rsps:
                    raw_put(ring, r)
            if ring.push_responses_and_check_notify() or reqs:
                self.hc.evtchn_send(self.port)
            if ring.final_check_for_requests():
                continue
            await waiter.wait()
