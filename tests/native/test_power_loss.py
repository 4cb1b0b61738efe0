"""PowerLossDisk: the crash-consistency model, checked with hypothesis.

The oracle is computed from what the *test* observed (when each write
returned, when each flush was called), not from the model's internals:

* a write is *must-be-durable* if it returned before some flush that was then
  acknowledged was called;
* after a power loss each sector holds the value of the newest must-be-durable
  write covering it (zeros if none) or the value of some write that was not
  must-be-durable - never anything else; with ``persist_probability=0`` it
  holds exactly the former.
"""

from __future__ import annotations

import errno
import itertools
import random
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from dom0.native.disk import BlockIOError, PowerLossDisk

SECTOR = 512
SECTORS = 16


@dataclass
class Write:
    sector: int
    count: int
    value: int  # every byte of the write; 0 for a discard
    done: int = -1  # observation order when writev returned


@dataclass
class Flush:
    called: int = -1
    acked: int = -1


write_op = st.tuples(st.just("w"), st.integers(0, SECTORS - 1), st.integers(1, 4))
discard_op = st.tuples(st.just("d"), st.integers(0, SECTORS - 1), st.integers(1, 4))
flush_op = st.tuples(st.just("f"), st.just(0), st.just(0))
batches = st.lists(
    st.lists(st.one_of(write_op, write_op, discard_op, flush_op), min_size=1, max_size=5),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(
    plan=batches,
    seed=st.integers(0, 2**32 - 1),
    persist=st.sampled_from([0.0, 0.5, 1.0]),
)
async def test_power_loss_keeps_every_write_covered_by_an_acked_flush(
    plan: list[list[tuple[str, int, int]]], seed: int, persist: float
) -> None:
    dev = PowerLossDisk(SECTORS * SECTOR)
    clock = itertools.count()
    writes: list[Write] = []
    flushes: list[Flush] = []
    value = itertools.count(1)

    async def do_write(w: Write) -> None:
        if w.value:
            await dev.write(w.sector * SECTOR, bytes([w.value]) * (w.count * SECTOR))
        else:
            await dev.discard(w.sector * SECTOR, w.count * SECTOR)
        w.done = next(clock)

    async def do_flush(f: Flush) -> None:
        f.called = next(clock)
        await dev.flush()
        f.acked = next(clock)

    for batch in plan:  # ops in a batch run concurrently; batches one after another
        async with trio.open_nursery() as nursery:
            for kind, sector, count in batch:
                if kind == "f":
                    f = Flush()
                    flushes.append(f)
                    nursery.start_soon(do_flush, f)
                else:
                    count = min(count, SECTORS - sector)
                    w = Write(sector, count, next(value) if kind == "w" else 0)
                    writes.append(w)
                    nursery.start_soon(do_write, w)

    # Before the crash, reads see the newest completed write of each sector.
    def newest(sector: int, candidates: list[Write]) -> Write | None:
        covering = [w for w in candidates if w.sector <= sector < w.sector + w.count]
        return max(covering, key=lambda w: w.done, default=None)

    live = dev.snapshot()
    for s in range(SECTORS):
        w = newest(s, writes)
        assert live[s * SECTOR : (s + 1) * SECTOR] == bytes([w.value if w else 0]) * SECTOR

    last_flush_call = max((f.called for f in flushes if f.acked >= 0), default=-1)
    durable = [w for w in writes if w.done < last_flush_call]
    volatile = [w for w in writes if w.done >= last_flush_call]

    dev.power_loss(random.Random(seed), persist_probability=persist)

    after = dev.snapshot()
    assert after == dev.durable_image()
    for s in range(SECTORS):
        sector = after[s * SECTOR : (s + 1) * SECTOR]
        assert len(set(sector)) == 1, "a sector is never torn"
        base = newest(s, durable)
        allowed = {base.value if base else 0}
        if persist:
            allowed |= {w.value for w in volatile if w.sector <= s < w.sector + w.count}
        assert sector[0] in allowed, (s, sector[0], allowed)
    assert dev.volatile_writes == 0


async def test_flush_covers_only_writes_completed_before_it_was_called() -> None:
    dev = PowerLossDisk(4 * SECTOR)
    await dev.write(0, b"\x01" * SECTOR)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dev.flush)  # called first ...
        nursery.start_soon(dev.write, SECTOR, b"\x02" * SECTOR)  # ... concurrent write
    assert dev.volatile_writes == 1
    dev.power_loss(random.Random(0), persist_probability=0.0)
    assert dev.snapshot()[:SECTOR] == b"\x01" * SECTOR
    assert dev.snapshot()[SECTOR : 2 * SECTOR] == bytes(SECTOR)


async def test_unflushed_writes_can_be_lost_and_reordered() -> None:
    dev = PowerLossDisk(2 * SECTOR)
    await dev.write(0, b"\x01" * SECTOR)
    await dev.write(0, b"\x02" * SECTOR)
    seen = set()
    for seed in range(64):
        trial = PowerLossDisk(2 * SECTOR)
        await trial.write(0, b"\x01" * SECTOR)
        await trial.write(0, b"\x02" * SECTOR)
        trial.power_loss(random.Random(seed), persist_probability=1.0)
        seen.add(trial.snapshot()[0])
    assert seen == {1, 2}  # the older write can land last


async def test_writes_and_flushes_in_flight_at_power_loss_fail() -> None:
    dev = PowerLossDisk(2 * SECTOR)
    errors: list[int] = []

    async def write() -> None:
        try:
            await dev.write(0, b"\x07" * SECTOR)
        except BlockIOError as exc:
            errors.append(exc.errno)

    async def flush() -> None:
        try:
            await dev.flush()
        except BlockIOError as exc:
            errors.append(exc.errno)

    dev.pause()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        nursery.start_soon(flush)
        await trio.testing.wait_all_tasks_blocked()  # both are in flight
        dev.power_loss(random.Random(1), persist_probability=0.0)
        dev.resume()
    assert errors == [errno.EIO, errno.EIO]
    assert dev.snapshot() == bytes(2 * SECTOR)
    await dev.write(0, b"\x08" * SECTOR)  # the device works after power comes back
    await dev.flush()
    assert dev.durable_image()[:SECTOR] == b"\x08" * SECTOR


@pytest.mark.parametrize("persist", [0.0, 1.0])
async def test_acked_flush_then_power_loss(persist: float) -> None:
    dev = PowerLossDisk(8 * SECTOR)
    await dev.write(0, b"\x03" * (8 * SECTOR))
    await dev.flush()
    await dev.discard(2 * SECTOR, 2 * SECTOR)
    dev.power_loss(random.Random(2), persist_probability=persist)
    expected = b"\x03" * (8 * SECTOR)
    if persist:
        expected = expected[: 2 * SECTOR] + bytes(2 * SECTOR) + expected[4 * SECTOR :]
    assert dev.snapshot() == expected
