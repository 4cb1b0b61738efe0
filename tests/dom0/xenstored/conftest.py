"""Fixtures: a xenstored on a Unix socket in a short temporary directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio

from dom0.xenstored import XenStore
from dom0.xenstored.unix_server import serve


@dataclass
class Server:
    path: str
    xs: XenStore


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[Server]:
    # AF_UNIX paths are limited to 108 bytes: keep it short.
    d = tempfile.mkdtemp(prefix="xs", dir="/tmp")
    path = os.path.join(d, "socket")
    xs = await nursery.start(serve, path)
    yield Server(path, xs)
    nursery.cancel_scope.cancel()
    shutil.rmtree(d, ignore_errors=True)
