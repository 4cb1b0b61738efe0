"""The CI guard: a skipped interop test must fail when interop is required."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


def test_skipped_interop_fails_when_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(
        (Path(__file__).parent / "conftest.py").read_text()
    )
    pytester.makeini("[pytest]\nmarkers =\n    interop: x\n")
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.interop
        def test_needs_tool():
            pytest.skip("tool missing")
        def test_plain_skip():
            pytest.skip("fine")
        """
    )
    monkeypatch.setenv("XENSIM_REQUIRE_INTEROP", "1")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1, skipped=1)
    monkeypatch.delenv("XENSIM_REQUIRE_INTEROP")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(skipped=2)
