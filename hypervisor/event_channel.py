"""Event channels, 2-level ABI (xen/common/event_channel.c + event_2l.c).

Theory of operation
-------------------
Each domain has a table of ports (:class:`EvtchnTable`). Port 0 is reserved
and never handed out; new ports come lowest-free-first up to the domain's
``max_port`` (default 1023, libxl's ``max_event_channels``), beyond which
allocation fails with ENOSPC. A port is in one of the states of
``EVTCHNSTAT_*``: free (closed), unbound (waiting for one named remote
domain), interdomain (linked to exactly one peer port, symmetrically),
virq, ipi or pirq.

Delivery is pure shared memory. The pending and mask bitmaps and every
vCPU's ``vcpu_info`` live in the domain's ``shared_info`` machine frame at
Xen's x86_64 offsets (pending words @2048, mask words @2560, 64 x u64 each;
``evtchn_pending_sel`` @8 of each 64-byte ``vcpu_info``). "Set pending"
(:meth:`EventChannels.set_pending`) is Xen's ``evtchn_2l_set_pending``:

1. set pending bit *p*; if it was already set, stop (notifications coalesce);
2. if mask bit *p* is clear, set selector bit ``p // 64`` of the notified
   vCPU; on a 0 -> 1 change mark the vCPU event-pending (upcall_pending = 1)
   and kick it;
3. if the port is masked nothing else happens: the edge is lost, and only
   ``unmask`` (or the guest's own scan) picks it up later;
4. finally wake any vCPU polling that port (masked or not).

Worked example (dom A port 5 <-> dom B port 7)::

    a.send(5)   -> B.pending[0] |= 1<<7; B.mask clear, so B.v0.pending_sel |= 1,
                   B.v0.upcall_pending = 1, B's blocked task wakes
    a.send(5)   -> B.pending bit 7 already set: coalesced, nothing else
    B clears pending bit 7 and handles port 7 once.

Handlers are synchronous, so each operation is atomic with respect to every
other trio task. All inputs named "guest-controlled" below are hostile: any
port number 0..2**32-1 must produce an errno, never an exception.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hypervisor.errno import Errno, XenError
from hypervisor.types import DOMID_SELF, DomId, Port

if TYPE_CHECKING:
    from hypervisor.domain import Domain

# EVTCHNOP_* sub-commands (event_channel.h)
EVTCHNOP_bind_interdomain = 0
EVTCHNOP_bind_virq = 1
EVTCHNOP_bind_pirq = 2
EVTCHNOP_close = 3
EVTCHNOP_send = 4
EVTCHNOP_status = 5
EVTCHNOP_alloc_unbound = 6
EVTCHNOP_bind_ipi = 7
EVTCHNOP_bind_vcpu = 8
EVTCHNOP_unmask = 9
EVTCHNOP_reset = 10

# EVTCHNSTAT_* (also our internal state numbers)
ECS_FREE = 0
ECS_UNBOUND = 1
ECS_INTERDOMAIN = 2
ECS_PIRQ = 3
ECS_VIRQ = 4
ECS_IPI = 5
STATE_NAMES = {0: "closed", 1: "unbound", 2: "interdomain", 3: "pirq", 4: "virq", 5: "ipi"}

EVTCHN_2L_NR_CHANNELS = 4096
DEFAULT_MAX_PORT = 1023
BIND_PIRQ__WILL_SHARE = 1

# VIRQs (xen.h)
VIRQ_TIMER = 0
VIRQ_DEBUG = 1
VIRQ_CONSOLE = 2
VIRQ_DOM_EXC = 3
VIRQ_TBUF = 4
VIRQ_DEBUGGER = 6
VIRQ_XENOPROF = 7
VIRQ_CON_RING = 8
VIRQ_PCPU_STATE = 9
VIRQ_MEM_EVENT = 10
VIRQ_ARGO = 11
VIRQ_ENOMEM = 12
VIRQ_XENPMU = 13
VIRQ_ARCH_0 = 16
NR_VIRQS = 24
_PER_VCPU_VIRQS = frozenset({VIRQ_TIMER, VIRQ_DEBUG, VIRQ_XENOPROF, VIRQ_XENPMU})

# shared_info layout, in u64 word indices of the frame cast to 'Q'
SHARED_INFO_PENDING_OFFSET = 2048
SHARED_INFO_MASK_OFFSET = 2560
PENDING_WORD = SHARED_INFO_PENDING_OFFSET // 8
MASK_WORD = SHARED_INFO_MASK_OFFSET // 8
NR_EVTCHN_WORDS = 64

EVTCHN_STATUS = struct.Struct("<H2xIII8s")
assert EVTCHN_STATUS.size == 24  # struct evtchn_status


def virq_is_global(virq: int) -> bool:
    """True for VIRQs bound once per domain on vCPU 0 (xen.h "G")."""
    return virq not in _PER_VCPU_VIRQS


class Channel:
    """One port's hypervisor-private state (``struct evtchn``)."""

    __slots__ = ("notify_vcpu", "peer", "peer_port", "pirq", "remote_dom", "state", "virq")

    def __init__(self, state: int) -> None:
        self.state = state
        self.notify_vcpu = 0
        self.remote_dom: DomId = DomId(0)  # unbound: who may bind
        self.peer: Domain | None = None  # interdomain: the peer domain
        self.peer_port: int = 0
        self.virq = 0
        self.pirq = 0


@dataclass(frozen=True)
class EvtchnStatus:
    """Result of ``EVTCHNOP_status`` (``struct evtchn_status``)."""

    dom: DomId
    port: Port
    status: int
    vcpu: int
    remote_dom: DomId | None = None
    remote_port: Port | None = None
    pirq: int | None = None
    virq: int | None = None

    def pack(self) -> bytes:
        """The 24-byte C struct (x86_64)."""
        if self.status == ECS_UNBOUND:
            u = struct.pack("<H6x", self.remote_dom or 0)
        elif self.status == ECS_INTERDOMAIN:
            u = struct.pack("<H2xI", self.remote_dom or 0, self.remote_port or 0)
        elif self.status in (ECS_PIRQ, ECS_VIRQ):
            u = struct.pack("<I4x", self.pirq if self.status == ECS_PIRQ else self.virq)
        else:
            u = bytes(8)
        return EVTCHN_STATUS.pack(self.dom, self.port, self.status, self.vcpu, u)


class EvtchnTable:
    """A domain's ports and its view of the shared_info bitmaps.

    Args:
        shared_info: the domain's shared_info frame (hypervisor view).
        max_port: highest usable port (toolstack-chosen, <= 4095).
    """

    def __init__(self, shared_info: memoryview, max_port: int = DEFAULT_MAX_PORT) -> None:
        if not 0 < max_port < EVTCHN_2L_NR_CHANNELS:
            raise ValueError("max_port must be in 1..4095 for the 2-level ABI")
        self.max_port = max_port
        self.words = shared_info.cast("Q")
        self.chans: dict[int, Channel] = {}
        self.pirq_to_port: dict[int, int] = {}
        self._free: list[int] = []
        self._next = 1  # port 0 is reserved forever

    def get(self, port: int) -> Channel | None:
        """The channel on ``port`` (None when free or out of range)."""
        return self.chans.get(port)

    def is_valid(self, port: int) -> bool:
        """``port_is_valid``: within this domain's port space."""
        return 0 <= port <= self.max_port

    def is_pending(self, port: int) -> bool:
        """Whether ``port``'s pending bit is set."""
        return bool(self.words[PENDING_WORD + (port >> 6)] >> (port & 63) & 1)

    def is_masked(self, port: int) -> bool:
        """Whether ``port``'s mask bit is set."""
        return bool(self.words[MASK_WORD + (port >> 6)] >> (port & 63) & 1)

    def alloc(self, state: int) -> tuple[int, Channel]:
        """``get_free_port``: the lowest free port, now in ``state``.

        Raises:
            XenError: ENOSPC when every port up to ``max_port`` is in use.
        """
        if self._free:
            port = heapq.heappop(self._free)
        elif self._next <= self.max_port:
            port = self._next
            self._next += 1
        else:
            raise XenError(Errno.ENOSPC, "no free event channel port")
        chan = Channel(state)
        self.chans[port] = chan
        return port, chan

    def release(self, port: int) -> None:
        """Return ``port`` to the free pool and clear its pending bit."""
        del self.chans[port]
        self.words[PENDING_WORD + (port >> 6)] &= ~(1 << (port & 63)) & 0xFFFFFFFFFFFFFFFF
        heapq.heappush(self._free, port)

    def in_use(self) -> int:
        """Ports currently allocated."""
        return len(self.chans)


class EventChannels:
    """The event-channel operations of the whole host.

    Every delivery is counted in the target domain's statistics table
    (``Domain.stats``, see :mod:`hypervisor.stats`) as ``evtchn.deliver`` or
    ``evtchn.coalesced``.

    Args:
        lookup: domid -> live :class:`Domain` (or None); includes zombies.
        hook: observability hook ``hook(domid, what)``; no longer needed for
            deliveries (they count in place, on the hot path) and kept for
            callers that pass it.
    """

    def __init__(self, lookup: Callable[[int], Domain | None],
                 hook: Callable[[int, str], None] | None = None) -> None:
        self._lookup = lookup
        self._hook = hook

    # -- delivery ------------------------------------------------------------------------

    def set_pending(self, d: Domain, port: int, vcpu_id: int) -> None:
        """Xen's 2-level "set pending" (module docstring steps 1-4)."""
        words = d.evtchn.words
        w = port >> 6
        bit = 1 << (port & 63)
        pi = PENDING_WORD + w
        pw = words[pi]
        if pw & bit:
            d.stats["evtchn.coalesced"] += 1
            return
        words[pi] = pw | bit
        d.stats["evtchn.deliver"] += 1
        if not words[MASK_WORD + w] & bit:
            v = d.vcpus[vcpu_id]
            si = (vcpu_id << 3) + 1
            sel = words[si]
            wb = 1 << w
            if not sel & wb:
                words[si] = sel | wb
                v.mark_events_pending()
        if d.pollers:
            for v in d.vcpus:
                pp = v.poll_ports
                if pp is not None and port in pp:
                    v.kick()

    def send_global_virq(self, d: Domain, virq: int) -> None:
        """Raise a global VIRQ in ``d`` if ``d`` bound it (else it is dropped)."""
        port = d.vcpus[0].virq_to_port.get(virq)
        if port:
            self.set_pending(d, port, d.evtchn.chans[port].notify_vcpu)

    def send_vcpu_virq(self, d: Domain, vcpu_id: int, virq: int) -> None:
        """Raise a per-vCPU VIRQ on one vCPU of ``d`` if bound there."""
        port = d.vcpus[vcpu_id].virq_to_port.get(virq)
        if port:
            self.set_pending(d, port, vcpu_id)

    def send_pirq(self, d: Domain, pirq: int) -> bool:
        """Deliver physical IRQ ``pirq`` to ``d``; False if it is not bound."""
        port = d.evtchn.pirq_to_port.get(pirq)
        if not port:
            return False
        self.set_pending(d, port, d.evtchn.chans[port].notify_vcpu)
        return True

    # -- helpers ---------------------------------------------------------------------------

    def _domain(self, caller: Domain, dom: int) -> Domain:
        if dom == DOMID_SELF or dom == caller.domid:
            return caller
        d = self._lookup(dom)
        if d is None:
            raise XenError(Errno.ESRCH, f"no domain {dom}")
        return d

    @staticmethod
    def _vcpu_ok(d: Domain, vcpu: int) -> None:
        if not 0 <= vcpu < len(d.vcpus):
            raise XenError(Errno.ENOENT, f"no vcpu {vcpu}")

    # -- operations (caller = the calling domain; args guest-controlled) -------------------

    def alloc_unbound(self, caller: Domain, dom: int, remote_dom: int) -> Port:
        """``EVTCHNOP_alloc_unbound``: a port in ``dom`` that ``remote_dom`` may bind.

        Args:
            caller: calling domain (privilege already checked by the table).
            dom: domain to allocate in (DOMID_SELF allowed).
            remote_dom: who may bind it (DOMID_SELF = caller); not checked
                for existence, as in Xen.

        Returns:
            The new port.

        Raises:
            XenError: ESRCH no such ``dom``; EINVAL ``dom`` dying; ENOSPC.
        """
        d = self._domain(caller, dom)
        if d.dying:
            raise XenError(Errno.EINVAL, "domain is dying")
        if remote_dom == DOMID_SELF:
            remote_dom = caller.domid
        port, chan = d.evtchn.alloc(ECS_UNBOUND)
        chan.remote_dom = DomId(remote_dom & 0xFFFF)
        return Port(port)

    def bind_interdomain(self, caller: Domain, remote_dom: int, remote_port: int) -> Port:
        """``EVTCHNOP_bind_interdomain``: connect to an unbound port reserved for us.

        The new local port always starts pending (covers sends lost while
        the remote end was unbound).

        Args:
            caller: calling domain.
            remote_dom: the remote domain (DOMID_SELF = loopback).
            remote_port: its unbound port, reserved for ``caller``.

        Returns:
            The new local port.

        Raises:
            XenError: ESRCH no remote domain; ENOSPC no local port; EINVAL
                remote port invalid, not unbound or not reserved for caller.
        """
        rd = self._domain(caller, remote_dom)
        if caller.dying:
            raise XenError(Errno.EINVAL, "domain is dying")
        lport, lchan = caller.evtchn.alloc(ECS_INTERDOMAIN)
        rchan = rd.evtchn.get(remote_port) if rd.evtchn.is_valid(remote_port) else None
        if (rchan is None or rchan.state != ECS_UNBOUND or rchan.remote_dom != caller.domid
                or (rd is caller and remote_port == lport)):
            caller.evtchn.release(lport)
            raise XenError(Errno.EINVAL, "remote port is not unbound for this domain")
        lchan.peer, lchan.peer_port = rd, remote_port
        rchan.state = ECS_INTERDOMAIN
        rchan.peer, rchan.peer_port = caller, lport
        self.set_pending(caller, lport, lchan.notify_vcpu)
        return Port(lport)

    def bind_virq(self, caller: Domain, virq: int, vcpu: int) -> Port:
        """``EVTCHNOP_bind_virq``.

        Raises:
            XenError: EINVAL bad virq or a global virq not on vCPU 0; ENOENT
                no such vCPU; EEXIST already bound there; ENOSPC.
        """
        if not 0 <= virq < NR_VIRQS:
            raise XenError(Errno.EINVAL, f"bad virq {virq}")
        if virq_is_global(virq) and vcpu != 0:
            raise XenError(Errno.EINVAL, "global virqs bind on vcpu 0")
        self._vcpu_ok(caller, vcpu)
        v = caller.vcpus[vcpu]
        if v.virq_to_port.get(virq):
            raise XenError(Errno.EEXIST, f"virq {virq} already bound")
        port, chan = caller.evtchn.alloc(ECS_VIRQ)
        chan.virq = virq
        chan.notify_vcpu = vcpu
        v.virq_to_port[virq] = port
        return Port(port)

    def bind_ipi(self, caller: Domain, vcpu: int) -> Port:
        """``EVTCHNOP_bind_ipi``: a port that notifies ``vcpu`` of the caller.

        Raises:
            XenError: ENOENT no such vCPU; ENOSPC.
        """
        self._vcpu_ok(caller, vcpu)
        port, chan = caller.evtchn.alloc(ECS_IPI)
        chan.notify_vcpu = vcpu
        return Port(port)

    def bind_pirq(self, caller: Domain, pirq: int, flags: int, nr_pirqs: int) -> Port:
        """``EVTCHNOP_bind_pirq`` (privileged: the table refuses domUs with EPERM).

        Raises:
            XenError: EINVAL pirq out of range; EEXIST already bound; ENOSPC.
        """
        if not 0 <= pirq < nr_pirqs:
            raise XenError(Errno.EINVAL, f"bad pirq {pirq}")
        if pirq in caller.evtchn.pirq_to_port:
            raise XenError(Errno.EEXIST, f"pirq {pirq} already bound")
        port, chan = caller.evtchn.alloc(ECS_PIRQ)
        chan.pirq = pirq
        caller.evtchn.pirq_to_port[pirq] = port
        return Port(port)

    def close(self, caller: Domain, port: int) -> None:
        """``EVTCHNOP_close`` on the caller's own port.

        Raises:
            XenError: EINVAL invalid, free or reserved (0) port.
        """
        self._close(caller, port)

    def _close(self, d: Domain, port: int) -> None:
        chan = d.evtchn.get(port)
        if chan is None:
            raise XenError(Errno.EINVAL, f"port {port} not in use")
        state = chan.state
        if state == ECS_VIRQ:
            for v in d.vcpus:
                if v.virq_to_port.get(chan.virq) == port:
                    del v.virq_to_port[chan.virq]
        elif state == ECS_PIRQ:
            del d.evtchn.pirq_to_port[chan.pirq]
        elif state == ECS_INTERDOMAIN:
            peer = chan.peer
            assert peer is not None
            pchan = peer.evtchn.chans[chan.peer_port]
            pchan.state = ECS_UNBOUND
            pchan.remote_dom = d.domid
            pchan.peer = None
            pchan.peer_port = 0
        chan.peer = None
        d.evtchn.release(port)

    def send(self, caller: Domain, port: int) -> None:
        """``EVTCHNOP_send``: notify the other end (or self for an IPI).

        Sends on an unbound port are silently dropped (return 0).

        Raises:
            XenError: EINVAL for a free/invalid port or a virq/pirq port.
        """
        chan = caller.evtchn.chans.get(port)
        if chan is None:
            raise XenError(Errno.EINVAL, f"port {port} not in use")
        state = chan.state
        if state == ECS_INTERDOMAIN:
            peer = chan.peer
            pport = chan.peer_port
            self.set_pending(peer, pport, peer.evtchn.chans[pport].notify_vcpu)  # type: ignore[union-attr]
        elif state == ECS_IPI:
            self.set_pending(caller, port, chan.notify_vcpu)
        elif state != ECS_UNBOUND:
            raise XenError(Errno.EINVAL, f"cannot send on a {STATE_NAMES[state]} port")

    def status(self, caller: Domain, dom: int, port: int) -> EvtchnStatus:
        """``EVTCHNOP_status`` (privilege for another ``dom`` checked by the table).

        Raises:
            XenError: ESRCH no such domain; EINVAL port out of range.
        """
        d = self._domain(caller, dom)
        if not d.evtchn.is_valid(port):
            raise XenError(Errno.EINVAL, f"bad port {port}")
        chan = d.evtchn.get(port)
        if chan is None:
            return EvtchnStatus(d.domid, Port(port), ECS_FREE, 0)
        s = chan.state
        base = {"dom": d.domid, "port": Port(port), "status": s, "vcpu": chan.notify_vcpu}
        if s == ECS_UNBOUND:
            return EvtchnStatus(**base, remote_dom=chan.remote_dom)
        if s == ECS_INTERDOMAIN:
            assert chan.peer is not None
            return EvtchnStatus(**base, remote_dom=chan.peer.domid,
                                remote_port=Port(chan.peer_port))
        if s == ECS_PIRQ:
            return EvtchnStatus(**base, pirq=chan.pirq)
        if s == ECS_VIRQ:
            return EvtchnStatus(**base, virq=chan.virq)
        return EvtchnStatus(**base)

    def unmask(self, caller: Domain, port: int) -> None:
        """``EVTCHNOP_unmask``: clear the mask bit; re-raise if pending.

        Raises:
            XenError: EINVAL port out of range.
        """
        t = caller.evtchn
        if not t.is_valid(port):
            raise XenError(Errno.EINVAL, f"bad port {port}")
        words = t.words
        w = port >> 6
        bit = 1 << (port & 63)
        mw = words[MASK_WORD + w]
        if not mw & bit:
            return
        words[MASK_WORD + w] = mw & ~bit
        if words[PENDING_WORD + w] & bit:
            chan = t.get(port)
            vcpu_id = chan.notify_vcpu if chan is not None else 0
            si = (vcpu_id << 3) + 1
            sel = words[si]
            if not sel & (1 << w):
                words[si] = sel | (1 << w)
                caller.vcpus[vcpu_id].mark_events_pending()

    def bind_vcpu(self, caller: Domain, port: int, vcpu: int) -> None:
        """``EVTCHNOP_bind_vcpu``: change which vCPU a port notifies.

        Raises:
            XenError: ENOENT no such vCPU; EINVAL bad/free port, IPI or
                per-vCPU VIRQ.
        """
        self._vcpu_ok(caller, vcpu)
        chan = caller.evtchn.get(port)
        if chan is None:
            raise XenError(Errno.EINVAL, f"port {port} not in use")
        if chan.state in (ECS_UNBOUND, ECS_INTERDOMAIN, ECS_PIRQ) or (
                chan.state == ECS_VIRQ and virq_is_global(chan.virq)):
            chan.notify_vcpu = vcpu
        else:
            raise XenError(Errno.EINVAL, f"cannot move a {STATE_NAMES[chan.state]} port")

    def reset(self, caller: Domain, dom: int) -> None:
        """``EVTCHNOP_reset``: close every port of ``dom``.

        Raises:
            XenError: ESRCH no such domain.
        """
        self.close_all(self._domain(caller, dom))

    def close_all(self, d: Domain) -> None:
        """Close every port of ``d`` (reset, and domain destruction)."""
        for port in sorted(d.evtchn.chans):
            self._close(d, port)
