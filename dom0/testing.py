"""pytest plugin: a booted xensim host per test, guest factories, and a leak check.

Installing xensim registers it (the ``pytest11`` entry point ``xensim``); in a
checkout without installing, add ``pytest_plugins = ["dom0.testing"]`` to a
``conftest.py``. The fixtures are async, so tests run under pytest-trio in
trio mode; put this in your project's ``pyproject.toml``::

    [tool.pytest.ini_options]
    trio_mode = true

(or ``trio_mode = true`` under ``[pytest]`` in ``pytest.ini``). Without it a
test that uses the fixtures fails at once with a message saying so. Then::

    async def test_hello(guest_factory, xen_host):
        dom = await guest_factory("examples.hello:main")
        assert await dom.wait() == ShutdownReason.POWEROFF
        assert b"Hello" in dom.console.log()

Fixtures:

* ``xen_host`` - a :class:`~dom0.host.Host` booted for this test. After the
  test every guest is destroyed and every resource count (frames, ports,
  grant pins, maptrack entries, xenstore nodes / watches / connections,
  console and backend instances, trio tasks, open files) must be back at
  its value right after boot; otherwise the test fails with
  "xensim leak check: ..." and a readable diff. Mark a test
  ``@pytest.mark.xen_no_leak_check`` to skip the check.
* ``guest_factory`` - ``await guest_factory(program, name=..., **config)``
  or ``await guest_factory(config=GuestConfig(...), devices=[...])``; returns
  a :class:`~dom0.host.DomainHandle` once the guest has booted. Guests get
  ``memory=4`` MiB unless told otherwise (fast to build).
* ``xen_host_options`` - override to pass keyword arguments to
  :func:`~dom0.host.open_host`, e.g. ``{"backend_drivers": {"kv": HostileKvBack}}``:
  driver mappings are merged over the registered drivers.
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

ASYNC_FIXTURES = frozenset({"xen_host", "guest_factory"})

TRIO_MODE_HELP = """\
xensim: this test uses the xen_host / guest_factory fixtures, which are async and
need pytest-trio in trio mode, but trio mode is off for this project.
Add to your pyproject.toml:

    [tool.pytest.ini_options]
    trio_mode = true

(or, in pytest.ini:  [pytest]  then  trio_mode = true), and install pytest-trio
(`pip install pytest-trio`, or xensim's `[test]` extra)."""

GuestFactory = Callable[..., Awaitable[DomainHandle]]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "xen_no_leak_check: skip the xensim resource leak check for this test")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a test that needs trio mode, with a message that says how to turn it on."""
    if ASYNC_FIXTURES.isdisjoint(getattr(item, "fixturenames", ())):
        return
    if item.get_closest_marker("trio") is None:  # pytest-trio marks tests in trio mode
        pytest.fail(TRIO_MODE_HELP, pytrace=False)


@pytest.fixture
def xen_host_options() -> dict[str, Any]:
    """Keyword arguments for :func:`~dom0.host.open_host` (override in a conftest)."""
    return {}


@pytest.fixture
async def xen_host(request: pytest.FixtureRequest,
                   xen_host_options: dict[str, Any]) -> AsyncIterator[Host]:
    """A booted host; destroys every guest and checks for leaks afterwards."""
    problem = ""
    async with open_host(check_leaks=False, **xen_host_options) as host:
        yield host
        with trio.move_on_after(LEAK_CHECK_TIMEOUT) as scope:
            await host.toolstack.destroy_all()
            await trio.testing.wait_all_tasks_blocked()
        if scope.cancelled_caught:
            problem = "xensim: destroying the guests after the test timed out"
        elif request.node.get_closest_marker("xen_no_leak_check") is None:
            host.hv.check_invariants()
            diff = diff_counts(host.baseline, host.resource_counts())
            if diff:
                problem = ("xensim leak check: resources not back at baseline after the "
                           "test:\n" + diff)
    if problem:  # raised after the host shut down cleanly: the report names it alone
        pytest.fail(problem, pytrace=False)


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
