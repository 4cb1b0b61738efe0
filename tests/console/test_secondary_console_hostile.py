"""Secondary consoles against hostile peers: a bad guest or a bad backend breaks only
its own console; every other console (its own primary, its other secondaries, other
guests') keeps being served, and nothing a guest does grows dom0's memory without bound.

Each test ends with the ``xen_host`` leak check.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from dom0.backends.consoleback import MAX_LIMIT, ConsoleBack, parse_limit
from dom0.console.daemon import ConsoleBroken, ConsoleGone
from dom0.host import DomainHandle, Host, SecondaryConsole
from dom0.testing import GuestFactory
from dom0.toolstack.builder import DeviceRequest, console_device_request
from domu.frontends.console import ConsoleBroken as FrontBroken
from domu.frontends.console import ConsoleClosed
from domu.frontends.consolefront import SecondaryConsoleFront
from domu.guest import Guest

_U32 = struct.Struct("<I")
IN_CONS, IN_PROD, OUT_CONS, OUT_PROD = 3072, 3076, 3080, 3084
TWO_CONSOLES = [console_device_request(1), console_device_request(2)]


def secondary(dom: DomainHandle, n: int) -> SecondaryConsole:
    con = dom.consoles[n]
    assert isinstance(con, SecondaryConsole)
    return con


def backend(host: Host, dom: DomainHandle, n: int) -> ConsoleBack:
    back = host.kernel.backends.instance("console", dom.domid, n)
    assert isinstance(back, ConsoleBack)
    return back


async def backend_state(host: Host, dom: DomainHandle, n: int) -> bytes:
    return await host.kernel.xs.read(f"/local/domain/0/backend/console/{dom.domid}/{n}/state")


async def wait_backend_closing(host: Host, dom: DomainHandle, n: int) -> None:
    path = f"/local/domain/0/backend/console/{dom.domid}/{n}/state"
    with trio.fail_after(10):
        async with host.kernel.xs.watch(path) as events:
            async for _ in events:
                if await host.kernel.xs.read(path) in (b"5", b"6"):
                    return


async def ticker(guest: Guest, only: int | None = None) -> None:
    """Prints a numbered line on every console it has (or on console ``only``), forever."""
    n = 0
    while True:
        for i in list(guest.consoles) if only is None else [only]:
            with contextlib.suppress(KeyError, ConsoleClosed):
                await guest.consoles[i].print(f"tick {i} {n}")
        n += 1
        await trio.sleep(0.05)


async def still_served(con: SecondaryConsole | Any, n: int) -> None:
    """Wait for two more ticks on ``con`` (console ``n``)."""
    log = con.log()
    last = int(log.rsplit(b"tick %d " % n, 1)[1].split(b"\n")[0]) if b"tick" in log else 0
    await con.wait_for(f"tick {n} {last + 2}\n")


# -- the backend against a hostile guest ------------------------------------------------------


async def test_corrupt_out_indices_break_only_that_console(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    async def vandal(guest: Guest) -> None:
        await guest.consoles[1].print("about to scribble")
        await guest.consoles[1].drain()  # dom0 has it
        front = guest.devices["console/1"]
        assert isinstance(front, SecondaryConsoleFront) and front.ring_gfn is not None
        assert front.port is not None
        page = front.hc.memory.page(front.ring_gfn)
        _U32.pack_into(page, OUT_PROD, 0x7FFF0000)  # "2 GiB queued in a 2 KiB ring"
        for _ in range(50):  # and an event storm on top
            front.hc.evtchn_send(front.port)
            await trio.sleep(0)
        await ticker(guest)

    bad = await guest_factory(vandal, name="vandal", devices=TWO_CONSOLES)
    good = await guest_factory(ticker, name="good", devices=[console_device_request(1)])
    await wait_backend_closing(xen_host, bad, 1)
    back = backend(xen_host, bad, 1)
    assert back.errors == 1 and not back.connected
    assert back.broken_reason is not None and "out ring" in back.broken_reason
    log = secondary(bad, 1).log()
    assert log.startswith(b"about to scribble\n") and b"console disabled" in log
    # everyone else is served: the vandal's console 2 and primary, the other guest
    await still_served(secondary(bad, 2), 2)
    await still_served(bad.console, 0)
    await still_served(secondary(good, 1), 1)
    assert backend(xen_host, bad, 2).errors == 0
    with pytest.raises(ConsoleGone):
        await secondary(bad, 1).send("nobody is listening")


async def test_corrupt_in_cons_breaks_that_console_on_input(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    async def vandal(guest: Guest) -> None:
        front = guest.devices["console/1"]
        assert isinstance(front, SecondaryConsoleFront) and front.ring_gfn is not None
        page = front.hc.memory.page(front.ring_gfn)
        prod = _U32.unpack_from(page, IN_PROD)[0]
        _U32.pack_into(page, IN_CONS, (prod - 4000) & 0xFFFFFFFF)
        await guest.console.print("scribbled")
        await ticker(guest)

    bad = await guest_factory(vandal, devices=TWO_CONSOLES)
    await bad.console.wait_for("scribbled")
    with pytest.raises(ConsoleBroken):
        await secondary(bad, 1).send("hello")
    await wait_backend_closing(xen_host, bad, 1)
    back = backend(xen_host, bad, 1)
    assert back.errors == 1 and "in ring" in (back.broken_reason or "")
    await secondary(bad, 2).send("still fine\n")
    await still_served(secondary(bad, 2), 2)


class BogusKeysFront(SecondaryConsoleFront):
    """Publishes a proper ring, then overwrites one key of console 1 with junk."""

    bogus: tuple[str, str] = ("ring-ref", "junk")

    async def talk_to_backend(self) -> None:
        await super().talk_to_backend()
        if self.dev.devid == 1:
            key, value = self.bogus
            await self.write_key(key, value)


BOGUS_KEYS = [("ring-ref", "junk"), ("ring-ref", "4000"), ("ring-ref", "99999999999"),
              ("port", "-1"), ("port", "4095"), ("port", "")]


@pytest.mark.parametrize(
    "xen_host_options",
    [{"frontend_drivers": {"console": type("Front", (BogusKeysFront,), {"bogus": b})}}
     for b in BOGUS_KEYS],
    ids=[f"{k}={v!r}" for k, v in BOGUS_KEYS])
async def test_bogus_ring_keys_fail_only_that_device(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    dom = await guest_factory(ticker, devices=TWO_CONSOLES)
    await wait_backend_closing(xen_host, dom, 1)
    back = backend(xen_host, dom, 1)
    assert back.errors == 1 and back.workers_started == 0 and not back.connected
    assert secondary(dom, 1).log() == b""
    await still_served(secondary(dom, 2), 2)
    await still_served(dom.console, 0)


async def test_flood_is_bounded_and_others_stay_prompt(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    """A guest printing 256 KiB on a console whose limit is 4 KiB: dom0 keeps the newest
    4 KiB, a slow session keeps its bounded queue, the flooder is rate-limited and
    the other guest's console answers at once."""
    flood = b"".join(b"%07d\n" % i for i in range(32 * 1024))  # 256 KiB of numbered lines
    small = DeviceRequest("console", 1, backend=dict(console_device_request(1).backend),
                          frontend={**console_device_request(1).frontend, "limit": "4096"})

    async def flooder(guest: Guest) -> None:
        await guest.consoles[1].write(flood)
        await guest.console.print("flood done")
        await trio.sleep_forever()

    good = await guest_factory(ticker, name="good", devices=[console_device_request(1)])
    await still_served(secondary(good, 1), 1)
    bad = await guest_factory(flooder, name="flooder", devices=[small])
    con = secondary(bad, 1)
    with trio.fail_after(0.5):  # prompt while the flood is in progress
        await still_served(secondary(good, 1), 1)
    async with con.attach(replay=False) as session:
        await bad.console.wait_for("flood done", timeout=60)
        assert session.queued <= 64 * 1024 and session.dropped > 0
    back = backend(xen_host, bad, 1)
    assert back.limit == 4096
    log = con.log()
    assert len(log) == 4096 and log == flood[-4096:]
    stats = con.stats()
    assert stats is not None and stats.bytes_out == len(flood)
    assert stats.log_discarded == len(flood) - 4096 and stats.rate_limited > 0


def test_limit_from_the_guest_owned_dir_is_clamped() -> None:
    assert parse_limit(b"4096") == 4096
    assert parse_limit(b"99999999999") == MAX_LIMIT
    assert parse_limit(b"0") == 1
    assert parse_limit(None) == parse_limit(b"junk") == parse_limit(b"-5") == MAX_LIMIT


async def test_huge_limit_is_clamped(autojump_clock: MockClock, guest_factory: GuestFactory,
                                     xen_host: Host) -> None:
    huge = DeviceRequest("console", 1, backend=dict(console_device_request(1).backend),
                         frontend={**console_device_request(1).frontend, "limit": "4294967295"})
    dom = await guest_factory(ticker, devices=[huge])
    await still_served(secondary(dom, 1), 1)
    assert backend(xen_host, dom, 1).limit == MAX_LIMIT


# -- the frontend against a hostile backend ---------------------------------------------------


class ScribblingBack(ConsoleBack):
    """Console 1's backend claims 2 GiB of input in the guest's 1 KiB ``in`` ring."""

    async def connect(self) -> None:
        await super().connect()
        if self.dev.devid == 1:
            assert self._page is not None
            _U32.pack_into(self._page, IN_PROD, 0x80000000)
            self.hc.evtchn_send(self.port)


class SilentBack(ConsoleBack):
    """Console 1's backend maps the ring and connects, but never reads it."""

    def _on_event(self, port: int) -> None:
        if self.dev.devid != 1:
            super()._on_event(port)


@pytest.mark.parametrize("xen_host_options", [{"backend_drivers": {"console": ScribblingBack}}])
async def test_frontend_survives_corrupt_input_indices(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    outcome: list[str] = []

    async def reader(guest: Guest) -> None:
        hvc1 = guest.consoles[1]
        try:
            await hvc1.read()
        except FrontBroken as exc:
            outcome.append(str(exc))
        try:
            await hvc1.print("x")
        except FrontBroken as exc:
            outcome.append(str(exc))
        await guest.console.print("survived")
        await ticker(guest)

    dom = await guest_factory(reader, devices=TWO_CONSOLES)
    await dom.console.wait_for("survived")
    assert len(outcome) == 2 and all("corrupt" in text for text in outcome)
    await still_served(secondary(dom, 2), 2)
    await still_served(dom.console, 0)


@pytest.mark.parametrize("xen_host_options", [{"backend_drivers": {"console": SilentBack}}])
async def test_frontend_writer_waits_bounded_for_a_silent_backend(
        autojump_clock: MockClock, guest_factory: GuestFactory, xen_host: Host) -> None:
    outcome: list[str] = []

    async def writer(guest: Guest) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker, guest, 2)
            try:
                await guest.consoles[1].write(b"x" * 10_000)  # 2 KiB fit, then it waits
            except ConsoleClosed as exc:
                outcome.append(type(exc).__name__)
            await guest.console.print("writer released")

    dom = await guest_factory(writer, devices=TWO_CONSOLES)
    await still_served(secondary(dom, 2), 2)
    await still_served(secondary(dom, 2), 2)  # console 1's writer is still parked
    kernel = xen_host.guest_kernels[dom.domid]
    assert kernel.bus is not None
    dev = kernel.bus.devices["console/1"]
    assert isinstance(dev, SecondaryConsoleFront) and dev.console is not None
    assert dev.console.bytes_written == 2048 and outcome == []  # the ring, not a byte more
    await dom.detach_console(1)
    await dom.console.wait_for("writer released")
    assert outcome == ["ConsoleClosed"]
    await still_served(secondary(dom, 2), 2)
