"""dom0's native drivers: the parts of dom0 that do real I/O.

* :mod:`.disk` - block devices (raw image files, ramdisks) that blkback calls,
  plus fault-injection and power-loss test doubles.
* :mod:`.bridge` - the learning Ethernet switch (``xenbr0``) netback attaches
  vifs to, with pcap capture (:mod:`.pcap`).
"""

from __future__ import annotations

from .bridge import Bridge, BridgePort, BridgeStats, PortStats
from .disk import (
    BlockDevice,
    BlockIOError,
    DiskStats,
    FaultRule,
    FaultyDevice,
    ImageFile,
    PowerLossDisk,
    RamDisk,
    open_image,
)
from .pcap import PcapWriter, open_pcap

__all__ = [
    "BlockDevice",
    "BlockIOError",
    "Bridge",
    "BridgePort",
    "BridgeStats",
    "DiskStats",
    "FaultRule",
    "FaultyDevice",
    "ImageFile",
    "PcapWriter",
    "PortStats",
    "PowerLossDisk",
    "RamDisk",
    "open_image",
    "open_pcap",
]
