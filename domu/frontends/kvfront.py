"""kvfront: the guest's frontend for the tutorial's key-value device (type ``kv``).

Theory of operation
-------------------
The frontend bus (:mod:`domu.frontends.bus`) probes ``device/kv/<n>`` and
runs the handshake; this driver fills in the hooks:

* :meth:`KvFront.talk_to_backend` allocates one page, initialises the ring on
  it (``SHARED_RING_INIT``), grants it to the backend, allocates an unbound
  port and publishes ``ring-ref`` and ``event-channel`` in one transaction
  (the bus writes ``state = 3`` after it returns);
* :meth:`KvFront.connect` starts the completion worker.

Guest programs call :meth:`KvFront.get`, :meth:`KvFront.put` and
:meth:`KvFront.delete`. Each call takes a ring slot (a semaphore sized to the
ring, so a full ring makes callers wait instead of failing), puts its request
with a fresh id, pushes, notifies only if the ring says so, and waits for the
worker to complete it. The worker consumes responses and checks each one
(XSA-376/391/396): a malformed response, or an id that is not in flight, is
a :class:`~ring.errors.PeerProtocolError` -- the base class then takes the
device to Closing and :meth:`KvFront.disconnect` fails every waiting call with
:class:`KvDeviceError`. The guest itself never crashes.

Worked example (a guest program)::

    async def main(guest):
        kv = await open_kv(guest)              # waits for device kv/0 to connect
        await kv.put("colour", b"blue")
        assert await kv.get("colour") == b"blue"
        assert await kv.delete("colour")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from domu.frontends.bus import Frontend, register_frontend
from domu.guest import Guest
from ring.errors import PeerProtocolError, RingFullError
from ring.kvstore import (
    KV_OP_DELETE,
    KV_OP_GET,
    KV_OP_PUT,
    KV_OPS,
    KV_RSP_ERROR,
    KV_RSP_FULL,
    KV_RSP_NOT_FOUND,
    KV_RSP_OKAY,
    KvRequest,
    KvResponse,
    kv_front_ring,
)

__all__ = ["KvDeviceError", "KvError", "KvFront", "KvFull", "open_kv"]

_U32 = 0xFFFFFFFF


class KvError(Exception):
    """A ``kv`` call failed."""


class KvDeviceError(KvError):
    """The device is closed or broken: the call was not (or not surely) done."""


class KvFull(KvError):
    """The store is full (the backend's ``max-entries``)."""


@dataclass
class _Pending:
    """One request in flight (Linux's ``shadow`` entry)."""

    op: int
    done: trio.Event = field(default_factory=trio.Event)
    response: KvResponse | None = None
    error: KvError | None = None


@register_frontend
class KvFront(Frontend):
    """The ``kv`` frontend: an async dict API over one ring.

    Attributes:
        completed: responses consumed.
    """

    kind = "kv"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.completed = 0
        self._failure: KvDeviceError | None = KvDeviceError("device not connected yet")
        self._inflight: dict[int, _Pending] = {}
        self._next_id = 0

    async def talk_to_backend(self) -> None:
        gfn, page = self.alloc_page()
        self.ring = kv_front_ring([page])
        ref = self.grant_page(gfn)
        self.port, self.waiter = self.alloc_port_waiter()
        await self.write_keys({"ring-ref": str(ref), "event-channel": str(self.port)})

    async def connect(self) -> None:
        self._slots = trio.Semaphore(self.ring.size)
        self._failure = None
        self.start_worker(self._complete)

    async def disconnect(self) -> None:
        self._fail_all(KvDeviceError(f"{self.dev.kind}/{self.dev.devid}: device closed"))
        await super().disconnect()

    # -- the API guest programs use ---------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None if absent.

        Raises:
            ValueError: ``key`` is not 1..32 UTF-8 bytes (caller's bug).
            KvDeviceError: the device closed or broke.
            KvError: the backend answered KV_RSP_ERROR.
        """
        rsp = await self._call(KV_OP_GET, key)
        return rsp.value if rsp.status == KV_RSP_OKAY else None

    async def put(self, key: str, value: bytes) -> None:
        """Set ``key`` to ``value``.

        Raises:
            ValueError: a bad key, or a value over 64 bytes (caller's bug).
            KvFull: the store is full.
            KvDeviceError: the device closed or broke.
            KvError: the backend answered KV_RSP_ERROR.
        """
        rsp = await self._call(KV_OP_PUT, key, value)
        if rsp.status == KV_RSP_FULL:
            raise KvFull(f"no room for {key!r}")

    async def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it was there.

        Raises:
            ValueError: a bad key (caller's bug).
            KvDeviceError: the device closed or broke.
            KvError: the backend answered KV_RSP_ERROR.
        """
        rsp = await self._call(KV_OP_DELETE, key)
        return rsp.status == KV_RSP_OKAY

    # -- the machinery -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _call(self, op: int, key: str, value: bytes | None = None) -> KvResponse:
        self._check_open()
        await self._slots.acquire()  # a free ring slot: waits while the ring is full
        try:
            self._check_open()
            rid = self._new_id()
            self.ring.put_request(KvRequest(rid, op, key, value))  # validates: ValueError
        except RingFullError:  # only a backend answering more than we asked gets here
            self._slots.release()
            raise KvDeviceError(f"{self.dev.kind}/{self.dev.devid}: device broken") from None
        except BaseException:
            self._slots.release()
            raise
        pending = self._inflight[rid] = _Pending(op)  # the worker releases the slot
        if self.ring.push_requests_and_check_notify():
            self.hc.evtchn_send(self.port)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.response is not None
        if pending.response.status == KV_RSP_ERROR:
            raise KvError(f"{KV_OPS[op]} {key!r}: the backend answered KV_RSP_ERROR")
        return pending.response

    def _new_id(self) -> int:
        rid = self._next_id
        while rid in self._inflight:  # at most ring.size ids are ever in flight
            rid = (rid + 1) & _U32
        self._next_id = (rid + 1) & _U32
        return rid

    async def _complete(self) -> None:
        """The worker: consume responses, check each, wake its caller."""
        ring = self.ring
        try:
            while True:
                for rsp in ring.get_responses():  # raises on an impossible rsp_prod
                    pending = self._inflight.get(rsp.id)
                    if rsp.error is not None:
                        raise PeerProtocolError(f"bad response: {rsp.error}")
                    if pending is None:
                        raise PeerProtocolError(f"response id {rsp.id} is not in flight")
                    if rsp.status not in _EXPECTED[pending.op]:
                        raise PeerProtocolError(f"status {rsp.status} for op {pending.op}")
                    del self._inflight[rsp.id]
                    self._slots.release()
                    pending.response = rsp
                    pending.done.set()
                    self.completed += 1
                if not ring.final_check_for_responses():
                    await self.waiter.wait()
        except PeerProtocolError:  # no new call may start; disconnect fails the rest
            self._failure = KvDeviceError(f"{self.dev.kind}/{self.dev.devid}: device broken")
            raise

    def _fail_all(self, exc: KvDeviceError) -> None:
        self._failure = exc
        for pending in self._inflight.values():
            pending.error = exc
            pending.done.set()
            self._slots.release()  # wakes callers waiting for a slot: they see the failure
        self._inflight.clear()


_EXPECTED = {
    KV_OP_GET: {KV_RSP_OKAY, KV_RSP_NOT_FOUND, KV_RSP_ERROR},
    KV_OP_PUT: {KV_RSP_OKAY, KV_RSP_FULL, KV_RSP_ERROR},
    KV_OP_DELETE: {KV_RSP_OKAY, KV_RSP_NOT_FOUND, KV_RSP_ERROR},
}
"""The statuses a correct backend may answer each op with (anything else: broken)."""


async def open_kv(guest: Guest, devid: int = 0, *, timeout: float | None = None) -> KvFront:
    """Wait until the guest's ``kv/<devid>`` device is Connected; return its driver.

    Works for devices present at boot and for devices hot-plugged later; the
    same as ``await guest.open_device(KvFront, devid, timeout=timeout)``.

    Args:
        guest: the program's :class:`~domu.guest.Guest`.
        devid: the device id.
        timeout: seconds to wait (None: for ever).

    Raises:
        TimeoutError: not Connected within ``timeout``.
    """
    return await guest.open_device(KvFront, devid, timeout=timeout)
