"""``python -m bench ring``: blkif requests through a shared ring vs trio channels.

A frontend in a guest keeps 32 blkif requests in flight through a one-page
shared ring (granted by the guest, grant-mapped by dom0) to a null backend in
dom0, which answers each one OKAY. Notifications go through the hypervisor's
event channels and each side's upcall dispatcher, and only when the ring's
hold-off indices ask for them. Both ends use the batch calls of
``ring.sring``: the frontend encodes as many requests as there are free slots
straight into the page, the backend copies every pending request out in one
go, decodes and validates the copy, and answers them all
(``make_responses``: OKAY, or an error response for a malformed request).

The backend's wait policy. After answering a batch the backend yields the CPU
once and looks again, as blkback's ring worker does. When it then finds the
ring empty, it busy-polls: it yields for one more scheduler pass
(``IDLE_POLLS``) and looks again, and only then re-arms ``req_event``
(``final_check_for_requests``) and sleeps on its event channel. This is the
idea of Linux's busy polling (``net.core.busy_poll``, blk-mq I/O polling):
look again before paying for an interrupt, here bounded to one pass. It
matters because trio runs the tasks that became runnable together in a
random order: half the time the backend looks before the
frontend's interrupt handler has refilled the ring, and without the extra
pass it would re-arm, sleep, and need a notification and two more task
switches (dom0's upcall, then the backend) to wake up. The run also measures
a backend that re-arms at once (``idle_polls=0``) and reports its ratio, so
the effect of the policy is visible. xensim's blkback does not busy-poll: the
same change there made no measurable difference to ``python -m bench blk``
(random 4 KiB reads 68-69k IOPS either way), so it stays in this null backend.

Baseline, in the same run: the same request records through a pair of
``trio`` memory channels (requests one way, responses the other) between two
tasks, also 32 in flight.

The paths run in alternating rounds (5 x 0.4 s each) so that a change in
machine load cannot favour one of them; figures are totals over the rounds.

Figures: requests/s for both, ``ratio`` = ring / channels (and each round's
ratio), and notifications per request (both directions) at saturation, for
the polling backend; the same two figures for the re-arm-at-once backend.
Targets: ratio >= 5 and <= 0.05 notifications per request.
"""

from __future__ import annotations

import time

import trio

from bench._report import Report
from domu.evtchn import EventDispatcher
from domu.gnttab import GrantTableClient
from hypervisor.domain import DomainConfig
from hypervisor.hypervisor import Hypervisor
from ring.blkif import (
    BLKIF_CODEC,
    BLKIF_OP_READ,
    BLKIF_RSP_OKAY,
    BlkifRequest,
    BlkifSegment,
    make_response,
    make_responses,
)
from ring.sring import BackRing, FrontRing

DEPTH = 32
IDLE_POLLS = 1
"""Scheduler passes the null backend busy-polls an empty ring before it sleeps."""


def _requests(n: int) -> list[BlkifRequest]:
    seg = (BlkifSegment(gref=8, first_sect=0, last_sect=7),)
    return [BlkifRequest(BLKIF_OP_READ, 0, i, i * 8, seg) for i in range(n)]


async def ring_run(seconds: float, idle_polls: int = IDLE_POLLS) -> tuple[int, int, float]:
    """Returns (requests completed, notifications sent, elapsed seconds).

    ``idle_polls``: how many more scheduler passes the backend yields for and
    looks again after finding the ring empty, before it re-arms ``req_event``
    and sleeps on its event channel (0: re-arm at once).
    """
    hv = Hypervisor(memory_bytes=64 << 20)
    dom0 = hv.interface(0)
    domid = dom0.domctl_createdomain(DomainConfig(name="bench", max_pages=64, nr_pages=16))
    guest = hv.interface(domid)
    gnt = GrantTableClient(guest)
    ref = gnt.grant_access(0, 4)
    mapping = dom0.grant_map_one(domid, ref)
    assert mapping.view is not None
    gport = guest.evtchn_alloc_unbound(remote_dom=0)
    bport = dom0.evtchn_bind_interdomain(domid, gport)
    dom0.domctl_unpausedomain(domid)

    front = FrontRing.init([guest.memory.page(4)], BLKIF_CODEC)
    back = BackRing.attach([mapping.view], BLKIF_CODEC)
    gdisp, bdisp = EventDispatcher(guest), EventDispatcher(dom0)
    bwait = bdisp.waiter(bport)
    reqs = _requests(DEPTH)
    notifies = 0
    done = 0

    def refill(free: list[BlkifRequest]) -> None:
        nonlocal notifies
        front.put_requests_batch(free)
        if front.push_requests_and_check_notify():
            notifies += 1
            guest.evtchn_send(gport)

    def blkif_interrupt(_port: int) -> None:
        # Linux blkfront: responses are consumed in the interrupt handler,
        # which then re-arms and re-checks; freed slots are refilled at once
        # (the guest always has more I/O queued: saturation).
        nonlocal done
        while True:
            rsps = front.get_responses_batch()
            if rsps:
                done += len(rsps)
                refill([reqs[r.id] for r in rsps])
            if not front.final_check_for_responses():
                return

    async def backend() -> None:
        # Linux blkback's kthread: drain, respond, yield the CPU
        # (cond_resched), then final-check before sleeping; but first, busy-poll
        # for ``idle_polls`` more passes (see the module docstring).
        nonlocal notifies
        polls = 0
        while True:
            got = back.get_requests_batch()
            if got:
                polls = 0
                back.put_responses_batch(make_responses(got, BLKIF_RSP_OKAY))
                if back.push_responses_and_check_notify():
                    notifies += 1
                    dom0.evtchn_send(bport)
                await trio.lowlevel.checkpoint()
                continue
            if polls < idle_polls:
                polls += 1
                await trio.lowlevel.checkpoint()
                continue
            polls = 0
            if not back.final_check_for_requests():
                await bwait.wait()

    gdisp.bind(gport, blkif_interrupt)
    async with trio.open_nursery() as n:
        await n.start(gdisp.run)
        await n.start(bdisp.run)
        n.start_soon(backend)
        t0 = time.perf_counter()
        refill(list(reqs))
        await trio.sleep(seconds)
        elapsed = time.perf_counter() - t0
        completed = done
        n.cancel_scope.cancel()
    dom0.grant_unmap_one(mapping.handle)
    dom0.domctl_destroydomain(domid)
    return completed, notifies, elapsed


async def _channel_run(seconds: float) -> tuple[int, float]:
    """Returns (requests completed, elapsed seconds)."""
    req_send, req_recv = trio.open_memory_channel[BlkifRequest](DEPTH)
    rsp_send, rsp_recv = trio.open_memory_channel[object](DEPTH)
    reqs = _requests(DEPTH)
    done = 0

    async def backend() -> None:
        async for r in req_recv:
            await rsp_send.send(make_response(r, BLKIF_RSP_OKAY))

    async def frontend() -> None:
        nonlocal done
        for r in reqs:
            await req_send.send(r)
        async for rsp in rsp_recv:
            done += 1
            await req_send.send(reqs[rsp.id])  # type: ignore[attr-defined]

    async with trio.open_nursery() as n:
        n.start_soon(backend)
        t0 = time.perf_counter()
        with trio.move_on_after(seconds):
            await frontend()
        elapsed = time.perf_counter() - t0
        n.cancel_scope.cancel()
    return done, elapsed


def run(quick: bool = False) -> Report:
    """Measure the paths in alternating rounds (5 x 0.4 s each, or 3 x 0.1 s with ``quick``).

    Alternating short rounds keeps a change in machine load from landing on
    one path only; the figures are totals over all rounds, and the notes
    also give each round's ratio.
    """
    rounds, seconds = (3, 0.1) if quick else (5, 0.4)
    ring_done = notifies = chan_done = rearm_done = rearm_notifies = 0
    ring_s = chan_s = rearm_s = 0.0
    per_round: list[float] = []
    for _ in range(rounds):
        r_done, r_notifies, r_s = trio.run(ring_run, seconds)
        c_done, c_s = trio.run(_channel_run, seconds)
        a_done, a_notifies, a_s = trio.run(ring_run, seconds, 0)
        ring_done, notifies, ring_s = ring_done + r_done, notifies + r_notifies, ring_s + r_s
        chan_done, chan_s = chan_done + c_done, chan_s + c_s
        rearm_done, rearm_notifies = rearm_done + a_done, rearm_notifies + a_notifies
        rearm_s += a_s
        per_round.append((r_done / r_s) / (c_done / c_s) if r_done and c_done else 0.0)
    ring_rate = ring_done / ring_s
    chan_rate = chan_done / chan_s
    rearm_rate = rearm_done / rearm_s
    per_req = notifies / ring_done if ring_done else float("inf")
    rearm_per_req = rearm_notifies / rearm_done if rearm_done else float("inf")
    ratio = ring_rate / chan_rate
    rearm_ratio = rearm_rate / chan_rate
    return Report(
        title=f"blkif requests at queue depth {DEPTH}: shared ring + event channels "
              "vs trio memory channels (same run)",
        columns=["path", "requests", "seconds", "requests/s", "notifications/request"],
        rows=[
            ["ring + evtchn", ring_done, ring_s, ring_rate, per_req],
            ["trio channels", chan_done, chan_s, chan_rate, "-"],
            ["ring, re-arm at once", rearm_done, rearm_s, rearm_rate, rearm_per_req],
        ],
        notes=[f"ratio (ring / channels) = {ratio:.2f}  (target >= 5); per round: "
               + ", ".join(f"{r:.2f}" for r in per_round),
               f"notifications per request = {per_req:.4f}  (target <= 0.05)",
               f"backend polls {IDLE_POLLS} more pass(es) before re-arming; one that "
               f"re-arms at once: ratio {rearm_ratio:.2f}, {rearm_per_req:.4f} "
               "notifications/request"],
        figures={
            "baseline": "trio memory channels, same requests, same depth",
            "ratio": ratio,
            "ring_requests_per_s": ring_rate,
            "channel_requests_per_s": chan_rate,
            "notifications_per_request": per_req,
            "depth": DEPTH,
            "idle_polls": IDLE_POLLS,
            "round_ratios": per_round,
            "rearm_at_once_ratio": rearm_ratio,
            "rearm_at_once_notifications_per_request": rearm_per_req,
        },
    )
