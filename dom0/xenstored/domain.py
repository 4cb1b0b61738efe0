"""What xenstored knows about domains, and how it learns about them.

xenstored hears of a domain through ``INTRODUCE(domid, mfn, port)`` from the
toolstack, forgets it on ``RELEASE``, and - when the hypervisor raises
``VIRQ_DOM_EXC`` - asks which introduced domains have shut down or died
(:meth:`XenStore.check_domains`). The question is answered by a
:class:`DomainInfo` provider; the lead wires the real one to the
hypervisor's ``getdomaininfo``. :class:`StaticDomainInfo` is a simple,
test-driven stand-in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Domain", "DomainInfo", "DomainState", "StaticDomainInfo"]


class DomainState(enum.Enum):
    """A domain as the hypervisor reports it."""

    RUNNING = "running"
    SHUTDOWN = "shutdown"  # shut down or crashed, not yet destroyed
    DYING = "dying"


class DomainInfo(Protocol):
    """The hypervisor's answer to "what state is domain D in?"."""

    def state(self, domid: int) -> DomainState | None:
        """Return the domain's state, or None if no such domain exists."""
        ...


class StaticDomainInfo:
    """A :class:`DomainInfo` driven by tests or a standalone daemon.

    Args:
        default_exists: domains not set explicitly exist and run (True), or
            do not exist (False).
    """

    def __init__(self, default_exists: bool = True) -> None:
        self.default_exists = default_exists
        self.states: dict[int, DomainState | None] = {}

    def set(self, domid: int, state: DomainState | None) -> None:
        """Record ``domid``'s state (None: destroyed)."""
        self.states[domid] = state

    def state(self, domid: int) -> DomainState | None:
        """See :class:`DomainInfo`."""
        if domid in self.states:
            return self.states[domid]
        return DomainState.RUNNING if self.default_exists else None


@dataclass(eq=False)
class Domain:
    """xenstored's record of one domain.

    Attributes:
        domid: the domain id.
        generation: store generation when this record was created; permission
            entries on nodes written earlier do not apply to it.
        introduced: INTRODUCE has been done (it has a connection).
        conn: its ring connection once introduced.
        mfn, port: the ring frame and event channel from INTRODUCE.
        shutdown_reported: @releaseDomain already fired for its shutdown.
    """

    domid: int
    generation: int
    introduced: bool = False
    conn: Connection | None = None
    mfn: int = 0
    port: int = 0
    shutdown_reported: bool = False
