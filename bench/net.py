"""``python -m bench net``: guest-to-guest bulk frames through the split network driver.

Guest ``a`` sends 1500-byte-payload Ethernet frames (1514 bytes on the wire)
to guest ``b``: a's netfront tx ring -> netback (grant copy out of a) ->
dom0's bridge ``xenbr0`` -> netback (grant copy into b's posted rx buffers)
-> b's netfront rx ring -> b's program. Notifications go through the
hypervisor's event channels, only when the rings' hold-off indices ask.

Baseline, in the same run: the same frames through a pair of ``trio``
memory channels (a bounded one carrying the frames, the receiver reading
them), i.e. the cheapest way two tasks can hand each other ``bytes``.

The two paths run in alternating rounds (4 x 5,000 frames each) so that a
change in machine load cannot favour one of them, after one short untimed
warm-up round of each (the process's first frames pay one-off costs that a
long-running host does not); figures are totals over the timed rounds.

Figures: frames/s and Gbit/s of payload for both, ``ratio`` = split driver /
channels. Target: ratio >= 0.5.
"""

from __future__ import annotations

import time

import trio

from bench._report import Report
from dom0.host import open_host
from dom0.toolstack.config import GuestConfig, VifSpec
from domu.guest import Guest
from domu.netdev import NetDevice

PAYLOAD = 1500
ETHERTYPE = b"\x88\xb5"  # IEEE local experimental


def _frames(dst: bytes, src: bytes, n: int) -> list[bytes]:
    return [dst + src + ETHERTYPE + bytes([i & 0xFF]) * PAYLOAD for i in range(n)]


async def _split_driver(n: int) -> tuple[int, float]:
    """(frames received, seconds) for ``n`` frames guest a -> guest b."""
    nics: dict[str, NetDevice] = {}

    def prog(name: str):
        async def main(guest: Guest) -> None:
            nics[name] = guest.nic(0)
            await trio.sleep_forever()
        return main

    async with open_host(check_leaks=False) as host:
        for i, name in enumerate("ab"):
            await host.create(GuestConfig(name=name, kernel=prog(name), memory=8,
                                          vifs=[VifSpec(mac=f"00:16:3e:0b:00:0{i + 1}")]))
        a, b = nics["a"], nics["b"]
        await a.wait_carrier()
        await b.wait_carrier()
        frames = _frames(b.mac, a.mac, n)
        got = 0

        async def reader() -> None:
            nonlocal got
            while got < n:
                await b.receive()
                got += 1

        start = time.perf_counter()
        with trio.move_on_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                for f in frames:
                    await a.send(f)
        elapsed = time.perf_counter() - start
        await host.toolstack.destroy_all()
    return got, elapsed


async def _channels(n: int) -> tuple[int, float]:
    frames = _frames(b"\x02" * 6, b"\x04" * 6, n)
    send, recv = trio.open_memory_channel[bytes](256)
    got = 0

    async def reader() -> None:
        nonlocal got
        async with recv:
            async for _ in recv:
                got += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        async with send:
            for f in frames:
                await send.send(f)
    return got, time.perf_counter() - start


def run(quick: bool = False) -> Report:
    """Measure both paths in alternating rounds (4 x 5,000 frames each; ``quick``: 2 x 1,000).

    Alternating keeps a change in machine load from landing on one path
    only; the figures are totals over the rounds.
    """
    rounds, per_round = (2, 1_000) if quick else (4, 5_000)
    n = rounds * per_round
    sd_n = ch_n = 0
    sd_t = ch_t = 0.0
    round_ratios: list[float] = []
    trio.run(_split_driver, per_round // 5)  # untimed warm-up of both paths: the
    trio.run(_channels, per_round // 5)  # process's first frames pay one-off costs
    for _ in range(rounds):
        r_sd_n, r_sd_t = trio.run(_split_driver, per_round)
        r_ch_n, r_ch_t = trio.run(_channels, per_round)
        sd_n, sd_t, ch_n, ch_t = sd_n + r_sd_n, sd_t + r_sd_t, ch_n + r_ch_n, ch_t + r_ch_t
        round_ratios.append((r_sd_n / r_sd_t) / (r_ch_n / r_ch_t))
    sd_fps, ch_fps = sd_n / sd_t, ch_n / ch_t
    bits = PAYLOAD * 8 / 1e9
    ratio = sd_fps / ch_fps
    rows = [
        ["netfront-netback-bridge-netback-netfront", sd_n, sd_fps, sd_fps * bits],
        ["trio memory channel pair", ch_n, ch_fps, ch_fps * bits],
    ]
    return Report(
        title=f"guest-to-guest bulk transfer, {PAYLOAD}-byte payload frames "
              "(split network driver vs trio memory channels)",
        columns=["path", "frames", "frames/s", "Gbit/s payload"],
        rows=rows,
        figures={"frames": n, "split_frames_per_s": sd_fps, "channel_frames_per_s": ch_fps,
                 "split_gbit_s": sd_fps * bits, "channel_gbit_s": ch_fps * bits,
                 "delivered": sd_n, "ratio": ratio, "round_ratios": round_ratios,
                 "baseline": "trio memory channel pair, same frames"},
        notes=[f"ratio (split / channels) = {ratio:.3f}; target >= 0.5; per round: "
               + ", ".join(f"{r:.3f}" for r in round_ratios)],
    )
