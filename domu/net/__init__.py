"""The guest network helper: Ethernet, ARP, IPv4 and ICMP echo, small and correct.

Two layers:

* **sans-IO codecs** (:mod:`.ether`, :mod:`.arp`, :mod:`.ipv4`, :mod:`.icmp`):
  pure ``encode_*`` / ``decode_*`` functions over ``bytes``. Decoders never
  raise on what arrives from the wire: they return ``None`` for anything
  malformed (bad length, bad checksum, wrong type).
* **an async loop** (:mod:`.stack`): :class:`~.stack.NetStack` reads frames
  from a :class:`~domu.netdev.NetDevice`, answers ARP and ICMP echo for its
  own address, keeps a bounded ARP cache and lets the program
  :meth:`~.stack.NetStack.ping`.

Where the guest's IP comes from: :func:`~.stack.guest_ip` looks at the
guest's command line (``guest.extra``: ``ip=10.0.0.1`` for vif 0,
``ip<N>=...`` for vif N), then at an ``ip`` key in the guest's own
``device/vif/<N>`` directory. The toolstack keeps the xl.cfg ``vif ip=``
setting in its config but does not write it to the frontend directory, so
the command line is the reliable channel (demos pass it there).
"""

from __future__ import annotations

from .stack import NetStack, PingReply, PingStats, guest_ip, open_netstack

__all__ = ["NetStack", "PingReply", "PingStats", "guest_ip", "open_netstack"]
