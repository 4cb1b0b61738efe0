"""dom0 console service (xenconsoled); see :mod:`dom0.console.daemon`."""

from dom0.console.daemon import (
    DEFAULT_LOG_SIZE,
    DEFAULT_SESSION_QUEUE_BYTES,
    HYPERVISOR_CONSOLE_DOMID,
    ConsoleBroken,
    ConsoleDaemon,
    ConsoleError,
    ConsoleGone,
    ConsoleSession,
    ConsoleStats,
)

__all__ = [
    "DEFAULT_LOG_SIZE",
    "DEFAULT_SESSION_QUEUE_BYTES",
    "HYPERVISOR_CONSOLE_DOMID",
    "ConsoleBroken",
    "ConsoleDaemon",
    "ConsoleError",
    "ConsoleGone",
    "ConsoleSession",
    "ConsoleStats",
]
