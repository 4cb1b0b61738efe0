"""Identifier types and reserved values shared by the whole hypervisor core.

The numbers are Xen's (``xen/include/public/xen.h``); distinct ``NewType``s keep
a domain id from being passed where a port or a frame number is expected.
"""

from __future__ import annotations

from typing import NewType

DomId = NewType("DomId", int)
"""A domain id (``domid_t``, u16). Real domains are 0..0x7FEF."""
Port = NewType("Port", int)
"""An event-channel port (``evtchn_port_t``, u32)."""
GrantRef = NewType("GrantRef", int)
"""A grant reference (``grant_ref_t``, u32): an index into a grant table."""
GrantHandle = NewType("GrantHandle", int)
"""A grant mapping handle (``grant_handle_t``, u32): an index into maptrack."""
Gfn = NewType("Gfn", int)
"""A guest frame number: a page in one domain's pseudo-physical space."""
Mfn = NewType("Mfn", int)
"""A machine frame number: a page of the simulated host's machine memory."""

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

DOMID_FIRST_RESERVED = DomId(0x7FF0)
DOMID_SELF = DomId(0x7FF0)
DOMID_IO = DomId(0x7FF1)
DOMID_XEN = DomId(0x7FF2)
DOMID_COW = DomId(0x7FF3)
DOMID_INVALID = DomId(0x7FF4)
DOMID_IDLE = DomId(0x7FFF)
DOMID_MASK = 0x7FFF

INVALID_MFN = Mfn(0xFFFFFFFF)
"""Sentinel stored in a p2m slot that holds no frame."""

XEN_LEGACY_MAX_VCPUS = 32
"""vCPUs that have a ``vcpu_info`` slot inside ``shared_info``."""
