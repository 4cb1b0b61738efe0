"""Bridge.transmit_many: a batch is the same frames switched one by one, plus
one owner notification per egress port (what netback relies on)."""

from __future__ import annotations

import random

from dom0.native.bridge import Bridge, BridgePort

BCAST = b"\xff" * 6


def mac(k: int) -> bytes:
    return bytes([0x00, 0x16, 0x3E, 0, 0, k])


def frames(rng: random.Random, n: int) -> list[bytes]:
    """A mix of valid unicast/broadcast/multicast frames and invalid ones."""
    out = []
    for _ in range(n):
        dst = rng.choice([BCAST, b"\x01\x00\x5e\x00\x00\x01", mac(1), mac(2), mac(3), mac(9)])
        src = rng.choice([mac(1), mac(2), mac(4), mac(5), mac(6), b"\x01" * 6, bytes(6)])
        size = rng.choice([60, 60, 1514, 10, 1519, 1518])
        tag = b"\x81\x00" if rng.random() < 0.1 else b"\x08\x00"
        body = dst + src + tag
        out.append(body + bytes([rng.randrange(256)]) * max(0, size - len(body)))
    return out


def bridge(kicks: list[str], clock: list[float]) -> tuple[Bridge, list[BridgePort]]:
    br = Bridge(clock=lambda: clock[0], fdb_max=3, ageing_time=10)
    ports = [br.add_port(f"vif{k}.0", notify=lambda k=k: kicks.append(f"vif{k}.0"),
                         max_frames=12, max_bytes=8 * 1514) for k in (1, 2, 3)]
    return br, ports


def drain(port: BridgePort) -> list[bytes]:
    out = []
    while port.peek_nowait() is not None:
        out.append(port.receive_nowait())
    return out


def test_a_batch_switches_like_frames_one_by_one() -> None:
    rng = random.Random(11)
    k1: list[str] = []
    k2: list[str] = []
    t = [0.0]
    one, p1 = bridge(k1, t)
    many, p2 = bridge(k2, t)
    for _ in range(30):
        t[0] += rng.choice([0.0, 1.0, 6.0])
        src = rng.randrange(3)
        batch = frames(rng, rng.randrange(0, 30))
        for f in batch:
            one.transmit(f"vif{src + 1}.0", f)
        many.transmit_many(f"vif{src + 1}.0", batch)
        assert one.fdb() == many.fdb()
        assert one.stats == many.stats
        assert [p.stats for p in p1] == [p.stats for p in p2]
        assert [p.queued_bytes for p in p1] == [p.queued_bytes for p in p2]
        # each port that got frames was told once for the batch
        got = [p.name for p in p2 if p.queued_frames]
        assert sorted(k2) == sorted(set(k2)) and set(k2) <= set(got)
        assert set(k2) == {p.name for p, q in zip(p2, p1) if q.name in k1}
        k1.clear()
        k2.clear()
        if rng.random() < 0.5:
            for a, b in zip(p1, p2):
                assert drain(a) == drain(b)
    # the mix exercised every path: drops, floods, filtering, a full FDB, full queues
    s = many.stats
    assert s.dropped and s.floods and s.filtered and s.fdb_full
    assert any(p.stats.tx_dropped for p in p2)


def test_notify_once_per_batch_and_only_when_something_was_queued() -> None:
    kicks: list[str] = []
    br, (p1, p2, p3) = bridge(kicks, [0.0])
    br.transmit_many("vif1.0", [mac(9) + mac(1) + b"\x08\x00" + bytes(46)] * 5)  # flooded
    assert sorted(kicks) == ["vif2.0", "vif3.0"] and p2.queued_frames == p3.queued_frames == 5
    kicks.clear()
    br.transmit_many("vif2.0", [mac(1) + mac(2) + b"\x08\x00" + bytes(46)] * 3)  # learned
    assert kicks == ["vif1.0"]
    kicks.clear()
    br.transmit_many("vif1.0", [b"short"] * 3)  # all invalid
    br.transmit_many("vif1.0", [])
    assert kicks == [] and p1.stats.rx_dropped == 3


def test_peek_many_and_take_keep_the_queue_and_its_bytes_consistent() -> None:
    import pytest

    br, (_p1, p2, _p3) = bridge([], [0.0])
    fs = [mac(9) + mac(1) + b"\x08\x00" + bytes([k]) * (46 + k) for k in range(6)]
    br.transmit_many("vif1.0", fs)
    assert p2.peek_many(4) == fs[:4] and p2.peek_many(100) == fs and p2.peek_many(-1) == []
    assert p2.queued_frames == 6  # peeking takes nothing
    assert p2.take(2) == fs[:2]
    assert p2.queued_frames == 4 and p2.queued_bytes == sum(map(len, fs[2:]))
    with pytest.raises(ValueError):
        p2.take(5)
    assert p2.take(4) == fs[2:] and p2.queued_bytes == 0 and p2.take(0) == []
