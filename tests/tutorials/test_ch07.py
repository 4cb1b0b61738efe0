"""Chapter 7's tests are real tests: run them from the example they are taught in."""

from __future__ import annotations

from examples.tutorial.ch07_testing import (  # noqa: F401  (pytest collects them here)
    TestLyingBackend,
    test_bogus_indices_break_only_that_device,
    test_garbage_requests_get_error_responses,
    test_kv_conforms,
    test_put_then_get,
)
