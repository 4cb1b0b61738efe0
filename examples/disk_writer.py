"""A guest that writes a message to its first disk, reads it back and powers off.

Config (``examples/configs/disk.cfg``)::

    kernel = "examples.disk_writer:main"
    disk = [ 'format=raw, vdev=xvda, access=rw, target=/path/to/image' ]

``extra`` (optional) is the text to write; by default a line naming the guest.
"""

from __future__ import annotations

import errno

from domu.guest import Guest


async def main(guest: Guest) -> None:
    """Write at offset 0 of ``xvda``, flush, read back, report on the console."""
    disk = guest.disk("xvda")
    text = guest.extra or f"written by {guest.name} (domain {guest.domid})"
    data = text.encode() + b"\n"
    await disk.write(0, data)
    try:
        await disk.flush()
    except OSError as exc:  # a backend without flush support
        if exc.errno != errno.EOPNOTSUPP:
            raise
    back = await disk.read(0, len(data))
    verdict = "read back OK" if back == data else f"read back {back!r} (MISMATCH)"
    size = getattr(disk, "size", None)
    where = f" of a {size}-byte disk" if isinstance(size, int) else ""
    await guest.console.print(f"{guest.name}: wrote {len(data)} bytes to xvda at offset 0"
                              f"{where}; {verdict}")
    if back != data:
        raise RuntimeError("disk read-back mismatch")
