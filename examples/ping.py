"""A guest that pings a peer through its vif (netfront -> netback -> bridge).

Command line (``extra=``), space-separated ``key=value``:

* ``ip=10.0.0.1``: this guest's address on vif 0 (mandatory; see
  :func:`domu.net.guest_ip` for the other place it may come from);
* ``peer=10.0.0.2``: whom to ping (without it, the guest only answers ARP
  and pings, forever);
* ``count=3``, ``timeout=1``, ``interval=1``: like ``ping -c -W -i``;
* ``stay=1``: keep answering after pinging instead of powering off.

Example (two guests on ``xenbr0``)::

    host.create(GuestConfig(name="b", kernel="examples.ping:main", extra="ip=10.0.0.2",
                            vifs=[VifSpec(mac="00:16:3e:00:00:02")]))
    host.create(GuestConfig(name="a", kernel="examples.ping:main",
                            extra="ip=10.0.0.1 peer=10.0.0.2 count=3",
                            vifs=[VifSpec(mac="00:16:3e:00:00:01")]))

Console output of ``a``::

    PING 10.0.0.2 from 10.0.0.1 (eth0 00:16:3e:00:00:01)
    64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=0.0 ms
    ...
    --- 10.0.0.2 ping statistics ---
    3 packets transmitted, 3 received, 0% packet loss
"""

from __future__ import annotations

import trio

from domu.guest import Guest
from domu.net import guest_ip, open_netstack
from domu.net.ether import format_mac


async def main(guest: Guest) -> None:
    """Answer pings on vif 0; ping ``peer`` if given; power off unless ``stay=1``."""
    opts = dict(t.split("=", 1) for t in guest.extra.split() if "=" in t)
    ip = await guest_ip(guest, 0)
    if ip is None:
        await guest.console.print("ping: no ip= on the command line")
        return
    nic = guest.nic(0)
    async with open_netstack(nic, ip) as stack:
        await nic.wait_carrier()
        peer = opts.get("peer")
        if peer is None:
            await guest.console.print(f"{ip} up on {nic.name} {format_mac(nic.mac)}")
            await trio.sleep_forever()
        await guest.console.print(f"PING {peer} from {ip} ({nic.name} {format_mac(nic.mac)})")
        stats = await stack.ping(peer, count=int(opts.get("count", "3")),
                                 timeout=float(opts.get("timeout", "1")),
                                 interval=float(opts.get("interval", "1")))
        for r in stats.replies:
            await guest.console.print(f"{r.size} bytes from {peer}: icmp_seq={r.seq} "
                                      f"ttl={r.ttl} time={r.rtt * 1000:.1f} ms")
        await guest.console.print(f"--- {peer} ping statistics ---")
        await guest.console.print(stats.summary())
        if opts.get("stay") == "1":
            await trio.sleep_forever()
