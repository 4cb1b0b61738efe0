"""The two error families of ``ring/``: the peer's misbehaviour and our own bugs.

* **Peer misbehaviour** is expected: the other domain controls the shared page
  and may write anything. It surfaces as :class:`PeerProtocolError` (or one of
  its subclasses) from ring *consume* operations, or as an ``error`` field on a
  decoded record. The caller turns it into an error response or a broken
  device / broken connection; it never crashes the domain. Decoders never raise.
* **Our own misuse** of an API (pushing into a full ring, answering a request
  that was never consumed, handing over a 100-byte "page") is a bug and raises
  an ordinary ``ValueError`` / ``RuntimeError`` subclass, loudly.
"""

from __future__ import annotations


class PeerProtocolError(Exception):
    """The peer domain broke the protocol; stop trusting this device/connection.

    Raised only for misbehaviour that cannot be answered request by request
    (bogus ring indices, a corrupt byte-ring index). Per-request problems are
    reported as ``error`` fields on decoded records instead.
    """


class RingOverflowError(PeerProtocolError):
    """A producer index claims more entries than the ring can hold.

    Linux blkback logs "bogus ring requests" (XSA-38) and blkfront logs
    "illegal number of responses" for this. The ring that raised it is marked
    broken and keeps raising; only this device is affected.
    """


class CorruptRingIndexError(PeerProtocolError):
    """A byte ring (console, xenstore) has ``prod - cons > size``.

    xenstored reports this to the guest as ``XENSTORE_ERROR_RINGIDX``;
    xenconsoled ignores the ring. The caller turns it into "connection broken".
    """


class RingUsageError(RuntimeError):
    """Our own code misused a ring (a bug, never caused by the peer)."""


class RingFullError(RingUsageError):
    """A request was put on a front ring with no free slot.

    Frontends must check :meth:`ring.sring.FrontRing.free_requests` first; the
    backend can never make this happen.
    """
