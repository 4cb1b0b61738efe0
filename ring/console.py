"""The PV console protocol (``io/console.h``) beyond the byte ring itself.

The console page is ``struct xencons_interface``: two raw byte streams, ``out``
(guest -> dom0, 2048 bytes) and ``in`` (dom0 -> guest, 1024 bytes); use
:class:`ring.byte_ring.ConsoleGuest` / :class:`ring.byte_ring.ConsoleDaemon`
to move bytes. This module holds the surrounding constants: the xenstore keys
of the primary console, its reserved grant reference and the daemon's limits.

The primary console (``/local/domain/<D>/console``) does **not** run the
XenBus state machine: the domain builder hands the page and port to the guest
(start_info), and the keys below are read-only to the guest. Secondary
consoles (``device/console/<n>``) do run it; see :mod:`ring.xenbus`.
"""

from __future__ import annotations

from ring.byte_ring import CONSOLE_IN, CONSOLE_OUT, XENCONS_INTERFACE_SIZE

__all__ = [
    "CONSOLE_IN",
    "CONSOLE_KEYS",
    "CONSOLE_OUT",
    "XENCONS_INTERFACE_SIZE",
]

XENCONS_IN_SIZE = CONSOLE_IN.size  # 1024
XENCONS_OUT_SIZE = CONSOLE_OUT.size  # 2048

GNTTAB_RESERVED_CONSOLE = 0
"""Grant ref the domain builder sets up for the console page (xenconsoled maps it)."""

CONSOLE_DEFAULT_LIMIT = 1048576
"""``console/limit`` libxl writes: bytes xenconsoled buffers before discarding."""

CONSOLE_TYPE_XENCONSOLED = "xenconsoled"
CONSOLE_TYPE_IOEMU = "ioemu"
CONSOLE_OUTPUT_PTY = "pty"
CONSOLE_PROTOCOL_VT100 = "vt100"

XENCONSOLED_RATE_LIMIT_EVENTS = 30
"""More events than this in one period leaves the port masked until it ends."""
XENCONSOLED_RATE_LIMIT_PERIOD_MS = 200

XL_CONSOLE_ESCAPE = 0x1D
"""Ctrl-]: detaches ``xl console``."""

# Keys under /local/domain/<D>/console (frontend dir of the primary console).
KEY_BACKEND = "backend"
KEY_BACKEND_ID = "backend-id"
KEY_LIMIT = "limit"
KEY_TYPE = "type"
KEY_OUTPUT = "output"
KEY_TTY = "tty"  # written by the daemon
KEY_PORT = "port"
KEY_RING_REF = "ring-ref"  # a frame number, not a grant ref

CONSOLE_KEYS = (
    KEY_BACKEND,
    KEY_BACKEND_ID,
    KEY_LIMIT,
    KEY_TYPE,
    KEY_OUTPUT,
    KEY_TTY,
    KEY_PORT,
    KEY_RING_REF,
)
"""Every key of the primary console's frontend directory."""
