"""pytest plugin: a booted xensim host per test, guest factories, and a leak check.

Enable it with ``pytest_plugins = ["dom0.testing"]`` in a ``conftest.py`` (or,
once registered, through the ``pytest11`` entry point). Tests run under
pytest-trio (``trio_mode = true``)::

    async def test_hello(guest_factory, xen_host):
        dom = await guest_factory("examples.hello:main")
        assert await dom.wait() == ShutdownReason.POWEROFF
        assert b"Hello" in dom.console.log()

Fixtures:

* ``xen_host`` - a :class:`~dom0.host.Host` booted for this test. After the
  test every guest is destroyed and every resource count (frames, ports,
  grant pins, maptrack entries, xenstore nodes / watches / connections,
  console and backend instances, trio tasks, open files) must be back at
  its value right after boot; otherwise the test fails with a readable diff.
  Mark a test ``@pytest.mark.xen_no_leak_check`` to skip the check.
* ``guest_factory`` - ``await guest_factory(program, name=..., **config)``
  or ``await guest_factory(config=GuestConfig(...), devices=[...])``; returns
  a :class:`~dom0.host.DomainHandle` once the guest has booted. Guests get
  ``memory=4`` MiB unless told otherwise (fast to build).
* ``xen_host_options`` - override to pass options to :func:`open_host`.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from dom0.host import DomainHandle, Host, diff_counts, open_host
from dom0.toolstack.builder import DeviceRequest
from dom0.toolstack.config import GuestConfig

__all__ = ["DEFAULT_GUEST_MEMORY_MIB", "GuestFactory"]

DEFAULT_GUEST_MEMORY_MIB = 4
LEAK_CHECK_TIMEOUT = 60.0
"""Seconds (trio clock) the post-test teardown may take before the check fails."""

GuestFactory = Callable[..., Awaitable[DomainHandle]]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "xen_no_leak_check: skip the xensim resource leak check for this test")


@pytest.fixture
def xen_host_options() -> dict[str, Any]:
    """Keyword arguments for :func:`~dom0.host.open_host` (override in a conftest)."""
    return {}


@pytest.fixture
async def xen_host(request: pytest.FixtureRequest,
                   xen_host_options: dict[str, Any]) -> AsyncIterator[Host]:
    """A booted host; destroys every guest and checks for leaks afterwards."""
    async with open_host(check_leaks=False, **xen_host_options) as host:
        yield host
        with trio.move_on_after(LEAK_CHECK_TIMEOUT) as scope:
            await host.toolstack.destroy_all()
            await trio.testing.wait_all_tasks_blocked()
        if scope.cancelled_caught:
            pytest.fail("xensim: destroying the guests after the test timed out")
        if request.node.get_closest_marker("xen_no_leak_check") is None:
            host.hv.check_invariants()
            diff = diff_counts(host.baseline, host.resource_counts())
            if diff:
                pytest.fail("xensim leak check: resources not back at baseline after the "
                            "test:\n" + diff, pytrace=False)


@pytest.fixture
def guest_factory(xen_host: Host) -> GuestFactory:
    """Create guests on ``xen_host`` from a program or a full config."""
    names = itertools.count(1)

    async def make(program: str | Callable[..., Awaitable[None]] | None = None, *,
                   config: GuestConfig | None = None, name: str | None = None,
                   devices: list[DeviceRequest] | None = None,
                   **fields: Any) -> DomainHandle:
        if config is None:
            fields.setdefault("memory", DEFAULT_GUEST_MEMORY_MIB)
            config = GuestConfig(name=name or f"guest{next(names)}",
                                 kernel=program or "examples.hello:main", **fields)
        return await xen_host.create(config, devices=devices)

    return make
