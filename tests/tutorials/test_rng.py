"""The request/response layer (domu.frontends.rpc / dom0.backends.rpc), through chapter 6's rng."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import pytest
import trio
from trio.testing import MockClock

from dom0.backends.bus import Backend, parse_number
from dom0.conformance import DriverAdapter, check_split_driver, corrupt_sring
from dom0.host import Host
from dom0.testing import GuestFactory
from dom0.toolstack.builder import DeviceRequest
from domu.frontends.rpc import RpcClosed, RpcError
from domu.guest import Guest
from examples.tutorial.rng import RNG_MAX_BYTES, RngBack, RngFront
from hypervisor.domain import ShutdownReason
from ring.msgring import RPC_ERROR, RPC_OK, MsgpackCodec, RpcCodec, RpcRequest, rpc_back_ring

RNG0 = [DeviceRequest("rng", 0)]


async def test_getrandom_and_a_refused_request(autojump_clock: MockClock,
                                               guest_factory: GuestFactory) -> None:
    async def program(guest: Guest) -> None:
        rng = await guest.open_device(RngFront, timeout=10)
        a, b = await rng.getrandom(32), await rng.getrandom(32)
        await guest.console.print(f"{len(a)} {len(b)} {a != b} max {rng.max_bytes}")
        try:
            await rng.getrandom(RNG_MAX_BYTES + 1)
        except RpcError as exc:
            await guest.console.print(f"refused: {exc}")
        await guest.console.print(f"still {len(await rng.getrandom(RNG_MAX_BYTES))}")

    dom = await guest_factory(program, devices=RNG0)
    await dom.wait()
    log = dom.console.log()
    assert b"32 32 True max 64" in log
    assert b"refused: ask for 0..64 bytes" in log
    assert b"still 64" in log


async def test_more_callers_than_slots_all_complete(autojump_clock: MockClock,
                                                    guest_factory: GuestFactory) -> None:
    async def program(guest: Guest) -> None:
        rng = await guest.open_device(RngFront, timeout=10)
        got: list[int] = []

        async def one(n: int) -> None:
            got.append(len(await rng.getrandom(n % 60)))

        async with trio.open_nursery() as nursery:
            for n in range(100):  # 16 slots
                nursery.start_soon(one, n)
        await guest.console.print(f"done {len(got)} {sum(got)} calls {rng.calls}")

    dom = await guest_factory(program, devices=RNG0)
    await dom.wait()
    assert b"done 100 2550 calls 100" in dom.console.log()


async def test_garbage_requests_get_error_answers(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    answers = []
    slots = MsgpackCodec(128)

    async def hostile(guest: Guest) -> None:
        front = await guest.open_device(RngFront, timeout=10)
        await front.stop_worker()  # from here on, this guest drives the ring by hand
        ring = front.ring
        for raw in (b"\xc1" * 128,                                    # not a message
                    slots.encode_request([7]),                        # wrong shape
                    slots.encode_request([8, "lots"]),                # refused by answer()
                    RpcCodec().encode_request(RpcRequest(9, 5))):     # valid
            ring.sring.write_slot(ring.req_prod_pvt, raw)
            ring.req_prod_pvt += 1
        if ring.push_requests_and_check_notify():
            front.hc.evtchn_send(front.port)
        while len(answers) < 4:
            await front.waiter.wait()
            answers.extend(ring.get_responses())
        await guest.console.print("answered")
        await trio.sleep_forever()

    dom = await guest_factory(hostile, devices=RNG0)
    await dom.console.wait_for("answered")
    assert [(r.id, r.status) for r in answers] == [
        (0, RPC_ERROR), (0, RPC_ERROR), (8, RPC_ERROR), (9, RPC_OK)]
    assert answers[2].body == "ask for 0..64 bytes" and len(answers[3].body) == 5
    back = xen_host.kernel.backends.instance("rng", dom.domid, 0)
    assert isinstance(back, RngBack)
    assert (back.bad_requests, back.refused, back.errors) == (2, 1, 0)
    state = await xen_host.kernel.xs.read(f"/local/domain/0/backend/rng/{dom.domid}/0/state")
    assert state == b"4"  # bad requests are answered, not fatal
    await dom.destroy()


class BuggyRngBack(RngBack):
    async def answer(self, request: Any) -> bytes:
        if request == 13:
            raise ZeroDivisionError("unlucky")
        if request == 14:
            return {"not": "bytes", "but": "x" * 200}  # type: ignore[return-value]
        return await super().answer(request)


class TestBuggyAnswer:
    @pytest.fixture
    def xen_host_options(self) -> dict[str, Any]:
        return {"backend_drivers": {"rng": BuggyRngBack}}

    async def test_a_bug_in_answer_fails_that_request_only(
        self, autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        async def program(guest: Guest) -> None:
            rng = await guest.open_device(RngFront, timeout=10)
            for n in (13, 14):
                try:
                    await rng.getrandom(n)
                except RpcError as exc:
                    await guest.console.print(f"{n}: {exc}")
            await guest.console.print(f"then {len(await rng.getrandom(3))}")

        dom = await guest_factory(program, devices=RNG0)
        await dom.wait()
        log = dom.console.log()
        assert b"13: backend error" in log and b"14: answer does not fit" in log
        assert b"then 3" in log
        assert any(r.levelno == logging.ERROR and "driver bug" in r.getMessage()
                   for r in caplog.records)


class ScriptedRngBack(Backend):
    """A hostile rng backend: writes raw response slots chosen by ``mode``."""

    kind = "rng"
    mode: ClassVar[str] = ""

    async def probe(self) -> None:
        await self.write_key("max-bytes", "64")

    async def map_ring(self) -> None:
        ref = parse_number(await self.read_frontend("ring-ref"), "ring-ref")
        port = parse_number(await self.read_frontend("event-channel"), "event-channel")
        self.ring = rpc_back_ring([self.map_grant(ref)])
        self.port, self.waiter = self.bind_port_waiter(port)

    async def connect(self) -> None:
        self.start_worker(self._serve)

    def responses(self, req: RpcRequest) -> list[Any]:
        rid, n = req.id, req.body
        return {
            "wrong-length": [[rid, RPC_OK, b"x" * (n + 1)]],
            "unknown-id": [[rid + 1000, RPC_OK, b"x" * n]],
            "duplicate": [[rid, RPC_OK, b"x" * n], [rid, RPC_OK, b"x" * n]],
            "negative-id": [[-1, RPC_OK, b"x" * n]],
            "bad-status": [[rid, 7, b"x" * n]],
            "long-reason": [[rid, RPC_ERROR, "why" * 30]],
        }[self.mode]

    async def _serve(self) -> None:
        ring, slots = self.ring, MsgpackCodec(128)
        while True:
            for req in ring.get_requests():
                for value in self.responses(req):
                    ring.sring.write_slot(ring.rsp_prod_pvt, slots.encode_response(value))
                    ring.rsp_prod_pvt = (ring.rsp_prod_pvt + 1) & 0xFFFFFFFF
            ring.push_responses()
            self.hc.evtchn_send(self.port)
            if not ring.final_check_for_requests():
                await self.waiter.wait()


@pytest.fixture
def xen_host_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    return getattr(request, "param", {})


def with_backend(cls: type[Backend]) -> Any:
    return pytest.mark.parametrize("xen_host_options", [{"backend_drivers": {"rng": cls}}],
                                   indirect=True, ids=[cls.__name__])


@pytest.mark.parametrize("xen_host_options", [
    {"backend_drivers": {"rng": type(f"Scripted_{mode}", (ScriptedRngBack,), {"mode": mode})}}
    for mode in ("wrong-length", "unknown-id", "duplicate", "negative-id", "bad-status",
                 "long-reason")
], indirect=True, ids=lambda o: o["backend_drivers"]["rng"].mode)
async def test_a_lying_backend_closes_the_device_not_the_guest(
    autojump_clock: MockClock, guest_factory: GuestFactory,
    xen_host_options: dict[str, Any],
) -> None:
    async def program(guest: Guest) -> None:
        rng = await guest.open_device(RngFront, timeout=10)
        try:
            for _ in range(2):
                await guest.console.print(f"got {len(await rng.getrandom(8))}")
        except RpcClosed as exc:
            await guest.console.print(f"survived: {exc}")

    dom = await guest_factory(program, devices=RNG0)
    reason = await dom.wait()
    assert reason == ShutdownReason.POWEROFF, dom.console.log().decode()  # never harmed
    log = dom.console.log()
    assert b"survived: rng/0: " in log, log
    # no lie gets an answer through; a duplicate makes the ring publish more
    # responses than requests, which the frontend refuses before reading any
    assert log.count(b"got 8") == 0


class SlowRngBack(RngBack):
    async def answer(self, request: Any) -> bytes:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover


@with_backend(SlowRngBack)
async def test_a_call_waiting_at_detach_fails_cleanly(
    autojump_clock: MockClock, guest_factory: GuestFactory,
) -> None:
    async def program(guest: Guest) -> None:
        rng = await guest.open_device(RngFront, timeout=10)
        await guest.console.print("calling")
        try:
            await rng.getrandom(4)
        except RpcClosed as exc:
            await guest.console.print(f"closed: {exc}")

    dom = await guest_factory(program)
    await dom.attach_device(RNG0[0])
    await dom.console.wait_for("calling")
    await dom.detach_device("rng", 0)
    await dom.console.wait_for("closed: rng/0: device closed")


class BigSlotsRngFront(RngFront):
    slot_size = 256


@pytest.mark.parametrize("xen_host_options", [{"frontend_drivers": {"rng": BigSlotsRngFront}}],
                         indirect=True)
async def test_a_wrong_slot_size_is_the_guests_fault(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host,
) -> None:
    async def program(guest: Guest) -> None:
        with pytest.raises(TimeoutError):
            await guest.open_device("rng", timeout=5)
        await guest.console.print("gave up")
        await trio.sleep_forever()

    dom = await guest_factory(program, devices=RNG0)
    await dom.console.wait_for("gave up")
    back = xen_host.kernel.backends.instance("rng", dom.domid, 0)
    assert back is not None and back.errors == 1
    assert "slot-size 256, expected 128" in str(back.last_error)
    await dom.destroy()


async def rng_round(front: RngFront, n: int) -> None:
    """One round of the conformance load."""
    want = n % (RNG_MAX_BYTES + 1)
    if len(await front.getrandom(want)) != want:
        raise AssertionError("rng: wrong length")


RNG = DriverAdapter(kind="rng", make_request=lambda devid: DeviceRequest("rng", devid),
                    exercise=rng_round, corrupt_ring=corrupt_sring)


async def test_rng_conforms(autojump_clock: MockClock, xen_host: Host) -> None:
    report = await check_split_driver(xen_host, RNG)
    assert report.backend_errors == 1
