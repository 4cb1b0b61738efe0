"""Fixtures for the native-driver tests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

IMAGE_SIZE = 1 << 20


@pytest.fixture
def image_bytes() -> bytes:
    """Deterministic pseudo-random contents for a 1 MiB image."""
    return random.Random(1234).randbytes(IMAGE_SIZE)


@pytest.fixture
def image(tmp_path: Path, image_bytes: bytes) -> Path:
    """A 1 MiB raw image file holding :func:`image_bytes`."""
    path = tmp_path / "disk.img"
    path.write_bytes(image_bytes)
    return path
