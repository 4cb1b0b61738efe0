"""dom0's backend ("rear") drivers and the bus that runs them (see :mod:`.bus`)."""

from __future__ import annotations

from .bus import BACKEND_DRIVERS, Backend, BackendBus, BackendDevice, register_backend

__all__ = ["BACKEND_DRIVERS", "Backend", "BackendBus", "BackendDevice", "register_backend"]
