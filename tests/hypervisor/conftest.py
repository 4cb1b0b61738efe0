"""Fixtures for hypervisor tests: a small host with dom0 and helpers for domUs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hypervisor.domain import DomainConfig
from hypervisor.hypercall import HypercallInterface
from hypervisor.hypervisor import Hypervisor

MACHINE_BYTES = 64 << 20

MakeDomU = Callable[..., HypercallInterface]


@pytest.fixture
def hv() -> Hypervisor:
    """A 64 MiB host with dom0 (64 pages)."""
    return Hypervisor(memory_bytes=MACHINE_BYTES, dom0_pages=64)


@pytest.fixture
def dom0(hv: Hypervisor) -> HypercallInterface:
    """Dom0's hypercall interface."""
    return hv.interface(0)


@pytest.fixture
def make_domu(hv: Hypervisor, dom0: HypercallInterface) -> MakeDomU:
    """Create (and by default unpause) a domU; returns its interface."""

    def make(name: str = "guest", nr_pages: int = 16, max_pages: int = 64,
             unpause: bool = True, **kw: object) -> HypercallInterface:
        domid = dom0.domctl_createdomain(
            DomainConfig(name=name, nr_pages=nr_pages, max_pages=max_pages, **kw))  # type: ignore[arg-type]
        if unpause:
            dom0.domctl_unpausedomain(domid)
        return hv.interface(domid)

    return make
