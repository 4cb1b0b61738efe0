"""dom0's xenstored: the XenStore daemon (Xen's ``tools/xenstored``, its wire protocol).

The core (:class:`XenStore`) is sans-IO and synchronous; transports are thin
async adapters around it: :func:`serve` (Unix socket for dom0 tools).
"""

from __future__ import annotations

from .conflict import ConflictCredit
from .connection import Connection, Watch
from .core import XenStore
from .domain import Domain, DomainInfo, DomainState, StaticDomainInfo
from .errors import XsErr
from .quota import Quotas

__all__ = [
    "ConflictCredit",
    "Connection",
    "Domain",
    "DomainInfo",
    "DomainState",
    "Quotas",
    "StaticDomainInfo",
    "Watch",
    "XenStore",
    "XsErr",
]
