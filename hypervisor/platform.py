"""The physical platform: devices that raise physical IRQs (PIRQs).

Real hardware interrupts belong to dom0: it binds a PIRQ to an event channel
with ``EVTCHNOP_bind_pirq`` (a domU is refused with EPERM by the hypercall
table) and the hypervisor turns each interrupt into a "set pending" on that
port. An interrupt nobody bound is counted and dropped. (Xen's PIRQ EOI /
masking protocol, ``PHYSDEVOP_eoi``, is not modelled: every raise is an edge.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_NR_PIRQS = 256


@dataclass
class PhysicalDevice:
    """A simulated physical device wired to one PIRQ."""

    name: str
    pirq: int
    _platform: Platform
    raised: int = 0

    def raise_irq(self) -> bool:
        """Assert this device's interrupt; True if some domain had it bound."""
        self.raised += 1
        return self._platform.raise_irq(self.pirq)


class Platform:
    """Physical devices and their interrupt lines.

    Args:
        deliver: hypervisor callback ``deliver(pirq) -> bool`` (bound or not).
        nr_pirqs: number of PIRQ lines.
    """

    def __init__(self, deliver: Callable[[int], bool], nr_pirqs: int = DEFAULT_NR_PIRQS) -> None:
        self._deliver = deliver
        self.nr_pirqs = nr_pirqs
        self.devices: dict[str, PhysicalDevice] = {}
        self.dropped = 0

    def add_device(self, name: str, pirq: int | None = None) -> PhysicalDevice:
        """Plug in a device (host/test setup).

        Args:
            name: unique device name.
            pirq: its line; the lowest unused one if None.

        Raises:
            ValueError: duplicate name, line in use or out of range.
        """
        if name in self.devices:
            raise ValueError(f"device {name!r} exists")
        used = {d.pirq for d in self.devices.values()}
        if pirq is None:
            pirq = next(p for p in range(self.nr_pirqs) if p not in used)
        if not 0 <= pirq < self.nr_pirqs or pirq in used:
            raise ValueError(f"pirq {pirq} unavailable")
        dev = PhysicalDevice(name, pirq, self)
        self.devices[name] = dev
        return dev

    def raise_irq(self, pirq: int) -> bool:
        """Deliver an interrupt on line ``pirq``; count it dropped if unbound."""
        if self._deliver(pirq):
            return True
        self.dropped += 1
        return False
