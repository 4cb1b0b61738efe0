"""Tutorial chapter 7: testing a driver (docs/tutorials/07-testing.md).

The ``test_*`` functions are real pytest tests (tests/tutorials/test_ch07.py
runs them with xensim's pytest plugin). ``main()`` shows what the shared
conformance suite and its leak check say about a correct ``kv`` driver and
about one that forgets to unmap a grant.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import trio
from trio.testing import MockClock

from dom0.backends.bus import parse_number
from dom0.backends.kvback import KvBack
from dom0.conformance import DriverAdapter, check_split_driver, corrupt_sring
from dom0.host import Host, LeakError, open_host
from dom0.testing import GuestFactory
from dom0.toolstack.builder import DeviceRequest
from domu.frontends.kvfront import KvDeviceError, KvFront, open_kv
from domu.guest import Guest
from ring.kvstore import (
    KV_CODEC,
    KV_OP_PUT,
    KV_RSP_ERROR,
    KV_RSP_OKAY,
    KV_SLOT_SIZE,
    KvRequest,
    KvResponse,
    kv_back_ring,
)
from ring.msgring import MsgpackCodec

KV_DEVICE = [DeviceRequest("kv", 0)]


async def test_put_then_get(autojump_clock: MockClock, guest_factory: GuestFactory) -> None:
    async def program(guest: Guest) -> None:
        kv = await open_kv(guest)
        await kv.put("answer", b"42")
        await guest.console.print(f"got {await kv.get('answer')!r}")

    dom = await guest_factory(program, devices=KV_DEVICE)
    await dom.wait()
    assert b"got b'42'" in dom.console.log()


async def test_garbage_requests_get_error_responses(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    answers = []

    async def hostile(guest: Guest) -> None:
        front = await open_kv(guest)
        await front.stop_worker()  # from here on, this guest drives the ring by hand
        ring = front.ring
        for raw in (b"\xc1" * KV_SLOT_SIZE,  # not a message: its length prefix is 3 GB
                    MsgpackCodec(KV_SLOT_SIZE).encode_request([7, KV_OP_PUT, "k" * 40, b""]),
                    KV_CODEC.encode_request(KvRequest(8, KV_OP_PUT, "k", b"v"))):
            ring.sring.write_slot(ring.req_prod_pvt, raw)
            ring.req_prod_pvt += 1
        if ring.push_requests_and_check_notify():
            front.hc.evtchn_send(front.port)
        while len(answers) < 3:
            await front.waiter.wait()
            answers.extend(ring.get_responses())
        await guest.console.print("answered")
        await trio.sleep_forever()

    dom = await guest_factory(hostile, devices=KV_DEVICE)
    await dom.console.wait_for("answered")
    assert [(r.id, r.status) for r in answers] == [
        (0, KV_RSP_ERROR), (7, KV_RSP_ERROR), (8, KV_RSP_OKAY)]
    back = xen_host.kernel.backends.instance("kv", dom.domid, 0)
    assert back is not None and back.bad_requests == 2 and back.errors == 0
    state = await xen_host.kernel.xs.read(f"/local/domain/0/backend/kv/{dom.domid}/0/state")
    assert state == b"4"  # a bad request is answered, not fatal


async def test_bogus_indices_break_only_that_device(
    autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host
) -> None:
    async def worker(guest: Guest) -> None:
        kv = await open_kv(guest)
        for n in range(1_000_000):
            await kv.put("n", b"%d" % n)
            await guest.console.print(f"served {n}")
            await trio.sleep(0.01)

    async def vandal(guest: Guest) -> None:
        corrupt_sring(await open_kv(guest))  # req_prod far beyond the ring, then notify
        await trio.sleep_forever()

    good = await guest_factory(worker, devices=KV_DEVICE)
    bad = await guest_factory(vandal, devices=KV_DEVICE)
    await good.console.wait_for("served 100")
    back = xen_host.kernel.backends.instance("kv", bad.domid, 0)
    assert back is not None and back.errors == 1 and back.workers_stopped == 1
    state = await xen_host.kernel.xs.read(f"/local/domain/0/backend/kv/{bad.domid}/0/state")
    assert state in (b"5", b"6")  # Closing, then Closed: this device only
    await good.console.wait_for("served 200")


class LyingKvBack(KvBack):
    """A hostile backend: answers every request with an id that was never sent."""

    def _answer(self, req: KvRequest) -> KvResponse:
        rsp = super()._answer(req)
        return KvResponse(rsp.id + 1000, rsp.status, rsp.value)


class TestLyingBackend:
    @pytest.fixture
    def xen_host_options(self) -> dict[str, Any]:
        return {"backend_drivers": {"kv": LyingKvBack}}  # merged: vbd, vif... keep theirs

    async def test_the_guest_survives_a_lying_backend(
        self, autojump_clock: MockClock, guest_factory: GuestFactory
    ) -> None:
        async def program(guest: Guest) -> None:
            kv = await open_kv(guest)
            try:
                await kv.get("colour")
            except KvDeviceError as exc:
                await guest.console.print(f"survived: {exc}")

        dom = await guest_factory(program, devices=KV_DEVICE)
        await dom.wait()
        assert b"survived: kv/0: device closed" in dom.console.log()


async def kv_round(front: KvFront, n: int) -> None:
    """One round of the conformance load: write a key, read it back."""
    await front.put(f"key{n % 8}", b"value %d" % n)
    if await front.get(f"key{n % 8}") != b"value %d" % n:
        raise AssertionError("kv: read back something else")


KV = DriverAdapter(kind="kv", make_request=lambda devid: DeviceRequest("kv", devid),
                   exercise=kv_round, corrupt_ring=corrupt_sring)


async def test_kv_conforms(autojump_clock: MockClock, xen_host: Host) -> None:
    report = await check_split_driver(xen_host, KV)
    assert report.backend_errors == 1


class LeakyKvBack(KvBack):
    """A buggy backend: maps the ring with the raw hypercall, so nobody unmaps it."""

    leaked: ClassVar[list[tuple[Any, int]]] = []

    async def map_ring(self) -> None:
        ref = parse_number(await self.read_frontend("ring-ref"), "ring-ref")
        remote_port = parse_number(await self.read_frontend("event-channel"), "event-channel")
        mapping = self.hc.grant_map_one(self.dev.frontend_id, ref)  # BUG: not self.map_grant
        assert mapping.view is not None
        self.leaked.append((self.hc, mapping.handle))
        self.ring = kv_back_ring([mapping.view])
        self.port, self.waiter = self.bind_port_waiter(remote_port)


async def main() -> None:
    async with open_host() as host:
        report = await check_split_driver(host, KV, flaps=100)  # default 1000: slower
        print(f"kv driver: passed {', '.join(report.phases)}")
        print(f"  the hostile ring cost its backend {report.backend_errors} error; 100 state "
              f"flaps cost at most 102 bus passes: {report.flapping_passes <= 102}")

    async with open_host(backend_drivers={"kv": LeakyKvBack}) as host:
        try:
            await check_split_driver(host, KV)
        except LeakError as exc:
            print(f"\nleaky kv driver: {exc}")
        for hc, handle in LeakyKvBack.leaked:  # clean up after the bug, or the host
            hc.grant_unmap_one(handle)         # could never free the guest's page
        LeakyKvBack.leaked.clear()
    print("host shut down; nothing leaked")


if __name__ == "__main__":
    trio.run(main)
