"""``python -m bench blk``: a guest's disk through blkfront -> blkback -> image file vs native I/O.

(a) Sequential: the guest writes 256 MiB (``--quick``: 16 MiB) in 1 MiB
    ``disk.write`` calls (a few in flight, like a page-cache writeback), then
    ``disk.flush()``; then reads it back in 1 MiB ``disk.read`` calls. Each 1 MiB
    call is one indirect request of 256 segments (``max_indirect_segments``
    raised to 256, as with ``xen_blkfront.max_indirect_segments=256``); data
    crosses in persistent-granted pages that blkback hands to ``preadv``/``pwritev``.
    Native: ``os.pwrite`` 1 MiB at a time + ``os.fsync``, then ``os.pread``, on
    a file in the same temporary directory, in the same run.
(b) Random 4 KiB reads over the same image (32 in flight in the guest) vs
    native ``os.pread`` of the same offsets.

Both sides run ROUNDS (4) times on fresh files, alternating which goes first
(the first writer of a fresh file pays for page-cache pages the machine has
not backed yet); times are summed over the rounds.

Figures: MiB/s and IOPS for both, ``ratio`` = guest / native for each;
headline ``ratio`` = sequential (write + read time). Targets: sequential >= 0.9,
random 4 KiB >= 0.5.

(c) The floor under (b), measured in the same run, to say what any trio design
    of this path can reach: ``floor_trio_us`` is 32 tasks each awaiting its
    4 KiB read from one server task that answers them in batches with
    ``preadv(RWF_NOWAIT)`` + one copy (no ring, grants or event channels: the
    least a guest program with 32 awaiting tasks costs); ``floor_ring_us`` is
    one blkif request through a shared ring and event channels with a null
    backend and no tasks (``bench/ring.py``'s loop). Their sum is
    ``random_floor_us``; ``random_best_ratio`` = native time / that floor.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from typing import Any

import trio

from bench import ring as ring_bench
from bench._report import Report
from dom0.backends.blkback import BlkBack
from dom0.host import open_host
from dom0.toolstack.config import DiskSpec, GuestConfig
from domu.frontends.blkfront import BlkFront
from domu.guest import Guest

MIB = 1 << 20
CHUNK = MIB
DEPTH = 4  # 1 MiB writes/reads in flight
RANDOM_DEPTH = 32
TARGET_SEQ = 0.9
TARGET_RANDOM = 0.5
ROUNDS = 4  # native and guest alternate which goes first


class BenchBlkFront(BlkFront):
    """blkfront with 1 MiB requests (Linux: ``max_indirect_segments=256``)."""

    max_indirect_segments = 256


def _native(path: str, size: int, offsets: list[int]) -> dict[str, float]:
    buf = os.urandom(CHUNK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        t0 = time.perf_counter()
        for off in range(0, size, CHUNK):
            os.pwrite(fd, buf, off)
        os.fsync(fd)
        t1 = time.perf_counter()
        for off in range(0, size, CHUNK):
            os.pread(fd, CHUNK, off)
        t2 = time.perf_counter()
        for off in offsets:
            os.pread(fd, 4096, off)
        t3 = time.perf_counter()
    finally:
        os.close(fd)
    return {"write": t1 - t0, "read": t2 - t1, "random": t3 - t2}


async def _guest(path: str, size: int, offsets: list[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    buf = os.urandom(CHUNK)

    async def program(guest: Guest) -> None:
        disk = guest.disk("xvda")

        async def writer(k: int) -> None:
            for off in range(k * CHUNK, size, DEPTH * CHUNK):
                await disk.write(off, buf)

        async def reader(k: int) -> None:
            for off in range(k * CHUNK, size, DEPTH * CHUNK):
                await disk.read(off, CHUNK)

        async def rnd(k: int) -> None:
            for off in offsets[k::RANDOM_DEPTH]:
                await disk.read(off, 4096)

        t0 = time.perf_counter()
        async with trio.open_nursery() as n:
            for k in range(DEPTH):
                n.start_soon(writer, k)
        await disk.flush()
        t1 = time.perf_counter()
        async with trio.open_nursery() as n:
            for k in range(DEPTH):
                n.start_soon(reader, k)
        t2 = time.perf_counter()
        async with trio.open_nursery() as n:
            for k in range(RANDOM_DEPTH):
                n.start_soon(rnd, k)
        t3 = time.perf_counter()
        out.update(write=t1 - t0, read=t2 - t1, random=t3 - t2)

    async with open_host(backend_drivers={"vbd": BlkBack},
                         frontend_drivers={"vbd": BenchBlkFront}) as host:
        cfg = GuestConfig(name="blkbench", kernel=program, memory=128,
                          disks=[DiskSpec(vdev="xvda", target=path)])
        dom = await host.create(cfg)
        await dom.wait()
    if len(out) != 3:
        raise RuntimeError("the benchmark guest did not finish:\n"
                           + dom.console.log().decode(errors="replace"))
    return out


async def _trio_floor(fd: int, offsets: list[int]) -> float:
    """Seconds per request: RANDOM_DEPTH tasks awaiting reads a batch server does."""
    queue: list[list[Any]] = []  # [offset, event, data]
    kick = trio.Event()

    async def server() -> None:
        nonlocal kick
        buf = bytearray(4096)
        while True:
            await kick.wait()
            kick = trio.Event()
            batch = queue[:]
            queue.clear()
            for req in batch:
                try:
                    os.preadv(fd, [buf], req[0], os.RWF_NOWAIT)
                except BlockingIOError:
                    os.preadv(fd, [buf], req[0])
                req[2] = bytes(buf)
                req[1].set()

    async def client(k: int) -> None:
        for off in offsets[k::RANDOM_DEPTH]:
            req = [off, trio.Event(), None]
            queue.append(req)
            kick.set()
            await req[1].wait()

    async with trio.open_nursery() as n:
        n.start_soon(server)
        t0 = time.perf_counter()
        async with trio.open_nursery() as clients:
            for k in range(RANDOM_DEPTH):
                clients.start_soon(client, k)
        elapsed = time.perf_counter() - t0
        n.cancel_scope.cancel()
    return elapsed / len(offsets)


def _floor(path: str, offsets: list[int], quick: bool) -> dict[str, float]:
    fd = os.open(path, os.O_RDONLY)
    try:
        trio_s = trio.run(_trio_floor, fd, offsets)
    finally:
        os.close(fd)
    done, _notifies, elapsed = trio.run(ring_bench.ring_run, 0.2 if quick else 1.0)
    return {"trio": trio_s, "ring": elapsed / done}


def run(quick: bool = False) -> Report:
    """Measure guest vs native block I/O on the same filesystem (see the module doc)."""
    size = (16 if quick else 256) * MIB
    nrand = 2000 if quick else 20000
    rng = random.Random(1)
    offsets = [rng.randrange(size // 4096) * 4096 for _ in range(nrand)]
    native = dict.fromkeys(("write", "read", "random"), 0.0)
    guest = dict(native)
    with tempfile.TemporaryDirectory(prefix="xensim-blk-") as tmp:
        for r in range(ROUNDS):
            # Fresh files each round, and the order alternates: whichever side
            # runs first on a fresh file pays for page-cache pages the machine
            # has not backed yet, so neither side may always go first.
            npath = os.path.join(tmp, f"native{r}.img")
            gpath = os.path.join(tmp, f"guest{r}.img")
            with open(gpath, "wb") as f:
                f.truncate(size)
            if r % 2:
                g_times = trio.run(_guest, gpath, size, offsets)
                n_times = _native(npath, size, offsets)
            else:
                n_times = _native(npath, size, offsets)
                g_times = trio.run(_guest, gpath, size, offsets)
            for key in native:
                native[key] += n_times[key]
                guest[key] += g_times[key]
            os.unlink(npath)
            if r < ROUNDS - 1:
                os.unlink(gpath)
        floor = _floor(gpath, offsets, quick)
    nrand *= ROUNDS  # totals over the rounds from here on
    mib = size * ROUNDS / MIB
    floor_s = floor["trio"] + floor["ring"]

    def mbps(t: float) -> float:
        return mib / t

    seq_ratio = (native["write"] + native["read"]) / (guest["write"] + guest["read"])
    rnd_ratio = native["random"] / guest["random"]
    rows: list[list[Any]] = [
        ["seq write 1 MiB + flush", mbps(guest["write"]), mbps(native["write"]),
         native["write"] / guest["write"]],
        ["seq read 1 MiB", mbps(guest["read"]), mbps(native["read"]),
         native["read"] / guest["read"]],
        ["random read 4 KiB (IOPS)", nrand / guest["random"], nrand / native["random"],
         rnd_ratio],
        ["  floor for that (IOPS)", 1 / floor_s, nrand / native["random"],
         native["random"] / nrand / floor_s],
    ]
    figures: dict[str, Any] = {
        "ratio": round(seq_ratio, 3),
        "baseline": "native os.pwrite/pread+fsync on the same filesystem",
        "size_mib": size / MIB,
        "rounds": ROUNDS,
        "seq_write_mibps": round(mbps(guest["write"]), 1),
        "seq_read_mibps": round(mbps(guest["read"]), 1),
        "native_write_mibps": round(mbps(native["write"]), 1),
        "native_read_mibps": round(mbps(native["read"]), 1),
        "seq_write_ratio": round(native["write"] / guest["write"], 3),
        "seq_read_ratio": round(native["read"] / guest["read"], 3),
        "random_iops": round(nrand / guest["random"]),
        "native_random_iops": round(nrand / native["random"]),
        "random_ratio": round(rnd_ratio, 3),
        "random_us": round(guest["random"] / nrand * 1e6, 2),
        "native_random_us": round(native["random"] / nrand * 1e6, 2),
        "floor_trio_us": round(floor["trio"] * 1e6, 2),
        "floor_ring_us": round(floor["ring"] * 1e6, 2),
        "random_floor_us": round(floor_s * 1e6, 2),
        "random_best_ratio": round(native["random"] / nrand / floor_s, 3),
        "target_seq_ratio": TARGET_SEQ,
        "target_random_ratio": TARGET_RANDOM,
    }
    return Report(
        title=f"Guest disk via blkfront/blkback vs native file I/O, {size // MIB} MiB "
              f"x {ROUNDS} rounds (ratio = native time / guest time)",
        columns=["workload", "guest", "native", "ratio"],
        rows=rows,
        figures=figures,
        notes=[f"MiB/s for sequential rows, IOPS for random; {DEPTH} x 1 MiB in flight, "
               f"{RANDOM_DEPTH} x 4 KiB in flight in the guest; native is one thread.",
               f"Targets: sequential >= {TARGET_SEQ}, random 4 KiB >= {TARGET_RANDOM}.",
               f"Random floor = {RANDOM_DEPTH} trio tasks awaiting a batching reader "
               f"({floor['trio'] * 1e6:.2f} us/request) + one request through ring and "
               f"event channels with a null backend ({floor['ring'] * 1e6:.2f} us): "
               f"{floor_s * 1e6:.2f} us vs native {native['random'] / nrand * 1e6:.2f} us."],
    )
