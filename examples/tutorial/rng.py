"""A random-number device, type ``rng``, on the request/response layer (chapter 6).

The short way to write a split driver: :class:`~domu.frontends.rpc.RpcFront`
and :class:`~dom0.backends.rpc.RpcBack` run the ring, the ids, the in-flight
table and every check of the peer; this file is only what is particular to
the device. The request is the number of bytes wanted, the answer those bytes.

XenStore keys: frontend ``ring-ref``, ``event-channel``, ``slot-size``
(written by :class:`RpcFront`); backend ``max-bytes`` -- Values: decimal;
Notes: published at probe, the most one request may ask for.

Importing this module registers both halves.
"""

from __future__ import annotations

import os
from typing import Any

from dom0.backends.bus import register_backend
from dom0.backends.rpc import RequestRefused, RpcBack
from domu.frontends.bus import parse_number, register_frontend
from domu.frontends.rpc import RpcFront

__all__ = ["RNG_MAX_BYTES", "RngBack", "RngFront"]

RNG_MAX_BYTES = 64
"""The most one request may ask for: 64 bytes of msgpack bin fit a 128-byte slot."""


@register_backend
class RngBack(RpcBack):
    """dom0's half: answers ``n`` with ``n`` random bytes."""

    kind = "rng"

    async def probe(self) -> None:
        await self.write_key("max-bytes", str(RNG_MAX_BYTES))

    async def answer(self, request: Any) -> bytes:
        if type(request) is not int or not 0 <= request <= RNG_MAX_BYTES:
            raise RequestRefused(f"ask for 0..{RNG_MAX_BYTES} bytes")
        return os.urandom(request)


@register_frontend
class RngFront(RpcFront):
    """The guest's half: ``await rng.getrandom(n)``."""

    kind = "rng"

    async def connect(self) -> None:
        self.max_bytes = parse_number(await self.read_backend("max-bytes"), "max-bytes")
        await super().connect()

    async def getrandom(self, n: int) -> bytes:
        """``n`` random bytes from dom0.

        Raises:
            RpcError: the backend refused (``n`` above ``max_bytes``).
            RpcClosed: the device closed or broke.
        """
        return await self.call(n)

    def check_answer(self, request: Any, answer: Any) -> bytes:
        if type(answer) is not bytes or len(answer) != request:
            raise ValueError(f"asked for {request} bytes")
        return answer
