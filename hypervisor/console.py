"""The hypervisor's own console: a bounded byte ring (Xen's ``conring``).

``CONSOLEIO_write`` appends; ``CONSOLEIO_read`` (privileged) returns what is
still held. When the ring is full the oldest bytes are dropped, so a guest
writing forever costs a bounded amount of memory. Writes from a domU are
accepted (as a Xen debug build does) and prefixed ``(dN) `` per line so they
cannot impersonate Xen's own messages.
"""

from __future__ import annotations

DEFAULT_CONRING_SIZE = 16384


class HypervisorConsole:
    """A bounded log of console output.

    Args:
        size: bytes kept (chosen by whoever builds the hypervisor).
    """

    def __init__(self, size: int = DEFAULT_CONRING_SIZE) -> None:
        self.size = size
        self._buf = bytearray()
        self.dropped = 0
        self._at_line_start: dict[int, bool] = {}

    def write(self, domid: int, data: bytes, privileged: bool) -> None:
        """Append ``data`` written by ``domid`` (guest-controlled bytes)."""
        if not privileged:
            prefix = f"(d{domid}) ".encode()
            parts = []
            start = self._at_line_start.get(domid, True)
            for line in data.splitlines(keepends=True):
                parts.append(prefix + line if start else line)
                start = line.endswith(b"\n")
            self._at_line_start[domid] = start
            data = b"".join(parts)
        self._buf += data
        excess = len(self._buf) - self.size
        if excess > 0:
            del self._buf[:excess]
            self.dropped += excess

    def read(self) -> bytes:
        """Everything still held in the ring."""
        return bytes(self._buf)
