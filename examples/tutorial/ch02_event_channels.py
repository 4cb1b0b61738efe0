"""Tutorial chapter 2: event channels (docs/tutorials/02-event-channels.md).

A guest allocates an unbound port for dom0, dom0 binds it, and the two
notify each other; along the way we print the bits the hypervisor sets in
each domain's shared_info page.
"""

from __future__ import annotations

import struct

import trio
import trio.testing

from domu.evtchn import EventDispatcher
from hypervisor.domain import DomainConfig
from hypervisor.event_channel import STATE_NAMES, VIRQ_DOM_EXC
from hypervisor.hypercall import HypercallInterface
from hypervisor.hypervisor import Hypervisor

# Where the 2-level ABI keeps its bits in shared_info (x86_64; Xen's public/xen.h).
PENDING_OFFSET = 2048  # evtchn_pending[64]: one bit per port
MASK_OFFSET = 2560  # evtchn_mask[64]: one bit per port
UPCALL_PENDING = 0  # vcpu_info[0].evtchn_upcall_pending (u8)
PENDING_SEL = 8  # vcpu_info[0].evtchn_pending_sel (u64): one bit per pending word


def show(who: str, hc: HypercallInterface) -> None:
    """Print word 0 of the pending and mask bitmaps and vCPU 0's vcpu_info."""
    si = hc.shared_info
    (pending,) = struct.unpack_from("<Q", si, PENDING_OFFSET)
    (mask,) = struct.unpack_from("<Q", si, MASK_OFFSET)
    (sel,) = struct.unpack_from("<Q", si, PENDING_SEL)
    print(f"    {who}: pending[0]={pending:04b} mask[0]={mask:04b} "
          f"upcall_pending={si[UPCALL_PENDING]} pending_sel={sel:b}")


async def let_guest_run() -> None:
    """Let every other task (here: the guest's vCPU) run until all are idle."""
    await trio.testing.wait_all_tasks_blocked()


async def main() -> None:
    hv = Hypervisor(memory_bytes=64 << 20)
    dom0 = hv.interface(0)
    domid = dom0.domctl_createdomain(DomainConfig(name="guest", max_pages=64, nr_pages=16))
    guest = hv.interface(domid)
    print(f"created domain {domid}")
    # dom0 already uses a port, as a booted dom0 would (xenstored binds this VIRQ).
    print(f"dom0: bind_virq(VIRQ_DOM_EXC) -> port {dom0.evtchn_bind_virq(VIRQ_DOM_EXC)}")

    # 1. The guest (a frontend) offers a port that only dom0 may bind.
    guest_port = guest.evtchn_alloc_unbound(remote_dom=0)
    print(f"guest: alloc_unbound(remote_dom=0) -> port {guest_port}, "
          f"state {STATE_NAMES[guest.evtchn_status(guest_port).status]}")

    # 2. dom0 (the backend) binds it: a new port in dom0, linked to the guest's.
    dom0_port = dom0.evtchn_bind_interdomain(domid, guest_port)
    print(f"dom0: bind_interdomain({domid}, {guest_port}) -> port {dom0_port}")
    show("dom0 ", dom0)
    show("guest", guest)

    # 3. The guest's kernel binds a handler and runs its vCPU's idle loop.
    def on_event(port: int) -> None:
        print(f"    guest handler: event on port {port}")

    dispatcher = EventDispatcher(guest)
    dispatcher.bind(guest_port, on_event)
    dom0.domctl_unpausedomain(domid)  # new domains start paused
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)

        print("dom0: send (twice, before the guest runs)")
        dom0.evtchn_send(dom0_port)
        dom0.evtchn_send(dom0_port)
        show("guest", guest)
        await let_guest_run()
        show("guest", guest)

        # 4. Masked: the pending bit is set, but the vCPU is not told.
        print("guest: mask the port; dom0: send")
        dispatcher.mask(guest_port)
        dom0.evtchn_send(dom0_port)
        show("guest", guest)
        await let_guest_run()
        print("    (no handler ran: the edge was lost)")

        # 5. Unmasking finds the pending bit and asks Xen to re-raise it.
        print("guest: unmask the port")
        dispatcher.unmask(guest_port)
        show("guest", guest)
        await let_guest_run()
        show("guest", guest)

        nursery.cancel_scope.cancel()
    stats = hv.statistics()[domid]
    print(f"guest events: delivered={stats['evtchn.deliver']} "
          f"coalesced={stats['evtchn.coalesced']}")


if __name__ == "__main__":
    trio.run(main)
