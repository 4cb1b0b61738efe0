"""Suite-wide test configuration.

Interop tests (marked ``interop``) skip with a reason when gcc, Xen's headers
or Xen's tools are missing, so the suite runs on any laptop. CI sets
``XENSIM_REQUIRE_INTEROP=1``; there a skipped interop test is a failure, so a
missing install step can never hide behind a skip.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

REQUIRE_INTEROP = os.environ.get("XENSIM_REQUIRE_INTEROP") == "1"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if REQUIRE_INTEROP and report.skipped and item.get_closest_marker("interop"):
        report.outcome = "failed"
        report.longrepr = (
            f"interop test skipped but XENSIM_REQUIRE_INTEROP=1: {report.longrepr}"
        )
    return report
