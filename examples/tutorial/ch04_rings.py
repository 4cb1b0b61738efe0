"""Tutorial chapter 4: a request/response ring by hand (docs/tutorials/04-rings.md).

A guest frontend and a dom0 "null" backend share one blkif ring page; we
print the shared and private indices after every step.
"""

from __future__ import annotations

import trio

from domu.gnttab import GrantTableClient
from hypervisor.domain import DomainConfig
from hypervisor.hypercall import HypercallInterface
from hypervisor.hypervisor import Hypervisor
from hypervisor.types import Gfn
from ring.blkif import (
    BLKIF_CODEC,
    BLKIF_OP_READ,
    BLKIF_RSP_OKAY,
    BlkifRequest,
    BlkifResponse,
    BlkifSegment,
    make_response,
)
from ring.errors import RingOverflowError
from ring.sring import BackRing, FrontRing

Front = FrontRing[BlkifRequest, BlkifResponse]
Back = BackRing[BlkifRequest, BlkifResponse]
RING_GFN = Gfn(2)  # the guest page holding the ring


def connect_ring(dom0: HypercallInterface, guest: HypercallInterface,
                 gnttab: GrantTableClient, gfn: Gfn) -> tuple[Front, Back]:
    """Frontend: init + grant page ``gfn``. Backend: map the grant and attach."""
    front: Front = FrontRing.init([guest.memory.page(gfn)], BLKIF_CODEC)
    ref = gnttab.grant_access(0, gfn)
    mapping = dom0.grant_map_one(guest.domid, ref)
    assert mapping.view is not None
    back: Back = BackRing.attach([mapping.view], BLKIF_CODEC)
    return front, back


def header() -> None:
    print(f"{'':<30}{'shared page':-^37} | {'front private':-^21} | {'back private':-^21}")
    print(f"{'step':<30}req_prod req_event rsp_prod rsp_event"
          " | req_prod_pvt rsp_cons | req_cons rsp_prod_pvt")


def show(step: str, front: Front, back: Back) -> None:
    s = front.sring  # the shared page (both ends see the same bytes)
    print(f"{step:<30}{s.req_prod:>8} {s.req_event:>9} {s.rsp_prod:>8} {s.rsp_event:>9}"
          f" | {front.req_prod_pvt:>12} {front.rsp_cons:>8}"
          f" | {back.req_cons:>8} {back.rsp_prod_pvt:>12}")


def read_request(req_id: int) -> BlkifRequest:
    """A one-sector read into (pretend) grant 100; the null backend ignores it."""
    return BlkifRequest(BLKIF_OP_READ, handle=0, id=req_id, sector_number=req_id,
                        segments=(BlkifSegment(100, 0, 0),))


async def main() -> None:
    hv = Hypervisor(memory_bytes=64 << 20)
    dom0 = hv.interface(0)
    domid = dom0.domctl_createdomain(DomainConfig(name="guest", max_pages=64, nr_pages=16))
    guest = hv.interface(domid)
    gnttab = GrantTableClient(guest)
    front, back = connect_ring(dom0, guest, gnttab, RING_GFN)
    print(f"blkif ring: {front.size} slots of {BLKIF_CODEC.slot_size} bytes")
    header()
    show("front: init", front, back)

    # 1. Requests are private until pushed.
    front.put_request(read_request(1))
    front.put_request(read_request(2))
    show("front: put #1, #2", front, back)
    notify = front.push_requests_and_check_notify()
    show(f"front: push -> notify={notify}", front, back)

    # 2. The null backend answers every request with OKAY.
    reqs = back.get_requests()
    show(f"back: got {len(reqs)} requests", front, back)
    back.put_responses(make_response(r, BLKIF_RSP_OKAY) for r in reqs)
    notify = back.push_responses_and_check_notify()
    show(f"back: push -> notify={notify}", front, back)
    more = back.final_check_for_requests()
    show(f"back: final_check -> {more}", front, back)

    rsps = front.get_responses()
    print(f"    front: got responses (id, status) {[(r.id, r.status) for r in rsps]}")
    more = front.final_check_for_responses()
    show(f"front: final_check -> {more}", front, back)

    # 3. Hold-off: only the first push after the backend re-armed notifies.
    front.put_request(read_request(3))
    notify = front.push_requests_and_check_notify()
    show(f"front: push #3 -> notify={notify}", front, back)
    front.put_request(read_request(4))
    notify = front.push_requests_and_check_notify()
    show(f"front: push #4 -> notify={notify}", front, back)

    # 4. The race final_check closes: #5 is pushed after the backend drained
    #    the ring but before it re-armed req_event, so nobody notifies.
    reqs = back.get_requests()
    back.put_responses(make_response(r, BLKIF_RSP_OKAY) for r in reqs)
    notify = back.push_responses_and_check_notify()
    show(f"back: got {len(reqs)}, notify={notify}", front, back)
    front.put_request(read_request(5))
    notify = front.push_requests_and_check_notify()
    show(f"front: push #5 -> notify={notify}", front, back)
    more = back.final_check_for_requests()
    show(f"back: final_check -> {more}", front, back)
    reqs = back.get_requests()
    back.put_responses(make_response(r, BLKIF_RSP_OKAY) for r in reqs)
    notify = back.push_responses_and_check_notify()
    show(f"back: got {len(reqs)}, notify={notify}", front, back)
    more = back.final_check_for_requests()
    show(f"back: final_check -> {more}", front, back)
    rsps = front.get_responses()
    show(f"front: got {len(rsps)} responses", front, back)

    # 5. A hostile frontend: req_prod far ahead. Only this ring stops.
    front2, back2 = connect_ring(dom0, guest, gnttab, Gfn(3))
    req_prod = int.from_bytes(guest.memory.read(RING_GFN, 0, 4), "little")  # header offset 0
    guest.memory.write(RING_GFN, 0, (req_prod + 1000).to_bytes(4, "little"))
    show("hostile: req_prod += 1000", front, back)
    for attempt in (1, 2):
        try:
            back.get_requests()
        except RingOverflowError as exc:
            print(f"    back (attempt {attempt}): RingOverflowError: {exc}")
    front2.put_request(read_request(1))
    front2.push_requests_and_check_notify()
    print(f"    second ring still served: {len(back2.get_requests())} request(s)")


if __name__ == "__main__":
    trio.run(main)
