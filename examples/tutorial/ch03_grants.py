"""Tutorial chapter 3: grant tables (docs/tutorials/03-grants.md).

A guest shares one of its pages with dom0 through a v1 grant entry; dom0
maps it, and later copies through grants with GNTTABOP_copy.
"""

from __future__ import annotations

import trio

from domu.gnttab import GrantTableClient
from hypervisor import grant_table as gt
from hypervisor.domain import DomainConfig
from hypervisor.grant_table import GntCopy, GntCopyPtr
from hypervisor.hypercall import HypercallInterface
from hypervisor.hypervisor import Hypervisor
from hypervisor.types import Gfn

GNTST_NAMES = {v: k for k, v in vars(gt).items() if k.startswith("GNTST_")}
FLAG_NAMES = [(gt.GTF_readonly, "readonly"), (gt.GTF_reading, "reading"),
              (gt.GTF_writing, "writing")]


def show_entry(guest: HypercallInterface, ref: int) -> None:
    """Print grant entry ``ref`` straight from the guest's grant-table frame."""
    (mfn,) = guest.grant_setup_table(1).frames  # frame 0 of the guest's own table
    raw = bytes(guest.memory.frame(mfn)[ref * 8 : ref * 8 + 8])
    flags = int.from_bytes(raw[0:2], "little")
    names = ["permit_access" if flags & gt.GTF_type_mask == gt.GTF_permit_access else "invalid"]
    names += [name for bit, name in FLAG_NAMES if flags & bit]
    print(f"    entry {ref}: {raw.hex(' ')}  flags={flags:#06x} ({'|'.join(names)})")


async def main() -> None:
    hv = Hypervisor(memory_bytes=64 << 20)
    dom0 = hv.interface(0)
    domid = dom0.domctl_createdomain(DomainConfig(name="guest", max_pages=64, nr_pages=16))
    guest = hv.interface(domid)

    # 1. The guest writes into its page 5 and grants dom0 access to it.
    gnttab = GrantTableClient(guest)
    guest.memory.write(Gfn(5), 0, b"hello from the guest")
    ref = gnttab.grant_access(0, Gfn(5))
    print(f"guest: grant_access(domid=0, gfn=5) -> ref {ref}")
    show_entry(guest, ref)

    # 2. dom0 maps (domid, ref) and reads the guest's bytes.
    m = dom0.grant_map_one(domid, ref)
    assert m.view is not None
    print(f"dom0: map ref {ref} -> status {GNTST_NAMES[m.status]}, handle {m.handle}")
    print(f"dom0: reads {bytes(m.view[:20])!r}")
    show_entry(guest, ref)

    # 3. While it is mapped the guest cannot take the page back.
    print(f"guest: end_foreign_access({ref}) -> {gnttab.end_foreign_access(ref)}")

    # 4. dom0 unmaps (and drops its view); now the guest can end access.
    print(f"dom0: unmap handle {m.handle} -> {GNTST_NAMES[dom0.grant_unmap_one(m.handle)]}")
    del m
    show_entry(guest, ref)
    print(f"guest: end_foreign_access({ref}) -> {gnttab.end_foreign_access(ref)}")
    show_entry(guest, ref)

    # 5. Grant copy: the hypervisor copies, nobody maps. dom0 uses its own page 100.
    ref = gnttab.grant_access(0, Gfn(5))
    dom0.memory.write(Gfn(100), 0, b"reply from dom0")
    statuses = dom0.grant_copy([
        # guest page -> dom0 page: the source is a grant ref, the dest dom0's own gfn
        GntCopy(GntCopyPtr(ref, domid), GntCopyPtr(100, offset=64), 20,
                gt.GNTCOPY_source_gref),
        # dom0 page -> guest page, at offset 32
        GntCopy(GntCopyPtr(100), GntCopyPtr(ref, domid, offset=32), 15,
                gt.GNTCOPY_dest_gref),
        # 200 bytes at offset 4000 would run off the end of the page
        GntCopy(GntCopyPtr(100), GntCopyPtr(ref, domid, offset=4000), 200,
                gt.GNTCOPY_dest_gref),
    ])
    print(f"dom0: grant_copy x3 -> {[GNTST_NAMES[s] for s in statuses]}")
    print(f"dom0: its page now has {dom0.memory.read(Gfn(100), 64, 20)!r}")
    print(f"guest: its page now has {guest.memory.read(Gfn(5), 32, 15)!r}")
    show_entry(guest, ref)
    print(f"guest: end_foreign_access({ref}) -> {gnttab.end_foreign_access(ref)}")
    hv.check_invariants()


if __name__ == "__main__":
    trio.run(main)
