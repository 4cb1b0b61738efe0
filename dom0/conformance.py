"""The shared conformance suite every split-driver pair should pass.

Theory of operation
-------------------
:func:`check_split_driver` takes a booted :class:`~dom0.host.Host` (the
``xen_host`` fixture) and a small :class:`DriverAdapter` describing one
device type, and runs the driver pair through the phases every Xen driver
must survive. It creates two guests, each running a *load program* that waits
for its device, drives I/O on it round after round (the adapter's
``exercise``) and, when the device goes away or breaks, waits for the next
one:

``handshake``
    hot-plug the victim's device: both ends reach Connected (4), the backend
    started exactly one ring worker, and the load makes progress.
``teardown-under-load``
    detach the device while the load runs: the detach completes, every ring
    worker stopped, and the counts are back at the baseline.
``reconnect``
    attach the device again (a new backend and frontend instance): Connected
    again, the load resumes; detach; baseline.
``hostile-ring``
    the victim's guest makes its own ring hostile (the adapter's
    ``corrupt_ring``: bogus indices) and notifies: that device leaves
    Connected, the backend counted the error, the bystander guest's device is
    still served; detach; baseline.
``state-flapping``
    the victim's guest rewrites its frontend ``state`` ``flaps`` times
    (1..6 in a cycle, then junk): the backend's passes stay bounded by the
    number of writes, the ring worker started at most once per CONNECT the
    state table issued and every start is matched by a stop; the bystander
    is still served; detach; baseline.

The *baseline* is the host's :meth:`~dom0.host.Host.resource_counts` taken
with both guests running, the bystander's device connected and its load
paused, and the victim's load waiting for a device. After every phase the
same snapshot must come back (:class:`~dom0.host.LeakError` with the diff
otherwise). At the end the bystander's device is detached too and the counts
must equal the snapshot taken before any device existed.

The load program and the harness share a Python object (a :class:`_Load`):
that is test plumbing, like a debugger attached to both domains -- drivers
themselves still share only pages, grants, ports and xenstore.

Worked example (a test module; the ``kv`` pair)::

    KV = DriverAdapter(kind="kv", make_request=lambda devid: DeviceRequest("kv", devid),
                       exercise=kv_round, corrupt_ring=corrupt_sring)

    async def test_kv_conforms(autojump_clock, xen_host):
        report = await check_split_driver(xen_host, KV)
        assert report.phases == list(PHASES)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

from dom0.host import DomainHandle, Host, LeakError, diff_counts
from dom0.toolstack.builder import DeviceRequest
from dom0.toolstack.config import GuestConfig
from domu.frontends.bus import Frontend
from domu.guest import Guest
from domu.xenstore import XenStoreClient, XenStoreError
from ring.sring import FrontRing
from ring.xenbus import Action

__all__ = [
    "PHASES",
    "ConformanceError",
    "ConformanceReport",
    "DriverAdapter",
    "check_split_driver",
    "corrupt_sring",
]

PHASES = ("handshake", "teardown-under-load", "reconnect", "hostile-ring", "state-flapping")
PHASE_TIMEOUT = 60.0
"""Seconds (trio clock) any one wait of the suite may take."""
PROGRESS_ROUNDS = 3
"""Rounds of I/O that count as "the load makes progress"."""
ROUND_INTERVAL = 0.01
"""Seconds (trio clock) a load sleeps between rounds: without it a busy load would
never let every task block, so no timeout could fire under ``autojump_clock``."""


class ConformanceError(AssertionError):
    """The driver pair failed a phase; the message names the phase and what was seen."""


@dataclass(frozen=True)
class DriverAdapter:
    """What the suite needs to know about one device type.

    Args:
        kind: the device type (``"kv"``, ``"vbd"``...); a backend and a
            frontend must be registered for it on the host.
        make_request: devid -> the :class:`DeviceRequest` that hot-plugs one.
        exercise: one round of I/O, run *inside the guest*:
            ``await exercise(frontend, n)`` with the guest's frontend
            instance and the round number; raises if an answer is wrong.
            It must hold no resources between rounds (no open file, no
            request left in flight, nothing cached from the device): the
            suite compares resource counts while the load is paused between
            two rounds, so anything held then reads as a leak.
        corrupt_ring: run inside the guest: make the frontend's own ring
            hostile (bogus producer index) and notify the backend.
            :func:`corrupt_sring` does it for a frontend that keeps its
            :class:`~ring.sring.FrontRing` in an attribute named ``ring`` and
            its event-channel port in one named ``port`` (as ``KvFront``
            does); write your own for other names or several rings.
        devid: the device id to use (the bystander uses ``devid + 1``).
        guest_memory: MiB per guest.
    """

    kind: str
    make_request: Callable[[int], DeviceRequest]
    exercise: Callable[[Any, int], Awaitable[None]]
    corrupt_ring: Callable[[Any], None]
    devid: int = 0
    guest_memory: int = 4


@dataclass
class ConformanceReport:
    """What :func:`check_split_driver` saw (for assertions and curiosity).

    Attributes:
        phases: the phases passed, in order.
        rounds: guest name -> I/O rounds completed.
        io_failures: guest name -> exceptions the load saw (expected only
            around detaches and the hostile phases of the victim).
        backend_errors: errors the victim's backend counted in hostile-ring.
        flapping_passes: backend bus passes during state-flapping.
    """

    phases: list[str] = field(default_factory=list)
    rounds: dict[str, int] = field(default_factory=dict)
    io_failures: dict[str, list[str]] = field(default_factory=dict)
    backend_errors: int = 0
    flapping_passes: int = 0


def corrupt_sring(front: Any) -> None:
    """A ``corrupt_ring`` for frontends with exactly these two attributes:
    ``front.ring`` (a :class:`~ring.sring.FrontRing`) and ``front.port`` (its
    event-channel port). Publishes a ``req_prod`` far beyond anything the
    backend consumed (XSA-38's "bogus ring requests") and notifies.

    Raises:
        AttributeError: ``front`` has no ``ring`` or ``port`` attribute.
    """
    ring: FrontRing[Any, Any] = front.ring
    ring.sring.req_prod = ring.req_prod_pvt + 0x10000
    front.hc.evtchn_send(front.port)


class _Load:
    """A guest's load program plus the harness's handle on it."""

    def __init__(self, adapter: DriverAdapter, devid: int) -> None:
        self.adapter = adapter
        self.name = f"{adapter.kind}/{devid}"
        self.devid = devid
        self.rounds = 0
        self.failures: list[str] = []
        self.state = "starting"  # waiting | running | paused
        self._changed = trio.Event()
        self._paused = False
        self._resume = trio.Event()
        self._commands_send, self._commands = trio.open_memory_channel[
            tuple[Callable[[Guest], Awaitable[None]], trio.Event]](0)

    def _set(self, state: str) -> None:
        self.state = state
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, cond: Callable[[], bool]) -> None:
        """Wait until ``cond()`` holds (checked after every change of the load)."""
        while not cond():
            await self._changed.wait()

    async def progress(self, rounds: int = PROGRESS_ROUNDS) -> None:
        target = self.rounds + rounds
        await self.wait_for(lambda: self.rounds >= target)

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Park the load between rounds (or while it waits for a device)."""
        self._paused = True
        self._resume = trio.Event()
        await self.wait_for(lambda: self.state in ("paused", "waiting"))
        try:
            yield
        finally:
            self._paused = False
            self._resume.set()

    async def in_guest(self, fn: Callable[[Guest], Awaitable[None]]) -> None:
        """Run ``fn(guest)`` inside the guest program and wait for it."""
        done = trio.Event()
        await self._commands_send.send((fn, done))
        await done.wait()

    async def program(self, guest: Guest) -> None:
        """The guest program: serve harness commands and run the load."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_commands, guest)
            await self._run(guest)

    async def _serve_commands(self, guest: Guest) -> None:
        async for fn, done in self._commands:
            await fn(guest)
            done.set()

    async def _run(self, guest: Guest) -> None:
        failed: object = None
        while True:
            self._set("waiting")
            front = await _wait_connected(guest, self.adapter.kind, self.devid, failed)
            self._set("running")
            try:
                while True:
                    if self._paused:
                        self._set("paused")
                        await self._resume.wait()
                        self._set("running")
                    await self.adapter.exercise(front, self.rounds)
                    self.rounds += 1
                    self._set("running")
                    await trio.sleep(ROUND_INTERVAL)  # lets timeouts fire (autojump_clock)
            except Exception as exc:  # the device went away or broke: wait for the next
                self.failures.append(f"{type(exc).__name__}: {exc}")
                failed = front


async def _wait_connected(guest: Guest, kind: str, devid: int, not_this: object) -> Frontend:
    """The guest's frontend ``kind/devid`` once Connected, other than ``not_this``."""
    while True:
        front = await guest.open_device(kind, devid)
        if front is not not_this:
            return front
        await trio.sleep(ROUND_INTERVAL)  # the failed one has not left Connected yet


async def _wait_states(xs: XenStoreClient, paths: list[str], ok: Callable[[bytes], bool],
                       ) -> None:
    """Wait until every ``<path>/state`` satisfies ``ok`` (absent reads as b"")."""
    async def one(path: str) -> None:
        async with xs.watch(f"{path}/state") as events:
            async for _ in events:
                try:
                    value = await xs.read(f"{path}/state")
                except XenStoreError:
                    value = b""
                if ok(value):
                    return
    async with trio.open_nursery() as nursery:
        for path in paths:
            nursery.start_soon(one, path)


class _Suite:
    def __init__(self, host: Host, adapter: DriverAdapter, flaps: int) -> None:
        self.host = host
        self.adapter = adapter
        self.flaps = flaps
        self.report = ConformanceReport()
        self.xs = host.kernel.xs
        self.bus = host.kernel.backends

    def fail(self, phase: str, what: str) -> ConformanceError:
        return ConformanceError(f"{self.adapter.kind}: {phase}: {what}")

    async def settle(self) -> dict[str, int]:
        await trio.testing.wait_all_tasks_blocked()
        return self.host.resource_counts()

    async def check_baseline(self, phase: str, baseline: dict[str, int], victim: _Load,
                             bystander: _Load) -> None:
        await victim.wait_for(lambda: victim.state == "waiting")
        async with bystander.paused():
            diff = diff_counts(baseline, await self.settle())
        if diff:
            raise LeakError(f"{self.adapter.kind}: after {phase}, resources are not back at "
                            f"the baseline:\n{diff}")

    def paths(self, dom: DomainHandle, devid: int) -> tuple[str, str]:
        req = self.adapter.make_request(devid)
        return req.backend_path(dom.domid), req.frontend_path(dom.domid)

    async def attach(self, phase: str, dom: DomainHandle, load: _Load) -> None:
        await dom.attach_device(self.adapter.make_request(load.devid))
        back, front = self.paths(dom, load.devid)
        with trio.move_on_after(PHASE_TIMEOUT) as scope:
            await _wait_states(self.xs, [back, front], lambda v: v == b"4")
            await load.progress()
        if scope.cancelled_caught:
            raise self.fail(phase, f"{load.name} in {dom.name} did not connect and make "
                                   f"progress (rounds {load.rounds}, {load.failures[-3:]})")

    async def detach(self, phase: str, dom: DomainHandle, load: _Load, *,
                     force: bool = False) -> None:
        kind, devid = self.adapter.kind, load.devid
        runner = self.bus.devices.get((kind, dom.domid, devid))
        with trio.move_on_after(PHASE_TIMEOUT) as scope:
            await dom.detach_device(kind, devid, force=force)
        if scope.cancelled_caught:
            raise self.fail(phase, f"detaching {load.name} did not complete")
        if (kind, dom.domid, devid) in self.bus.devices:
            raise self.fail(phase, "the backend instance outlived the detach")
        if runner is not None:
            inst = runner.instance
            if inst.workers_started != inst.workers_stopped:
                raise self.fail(phase, f"backend workers started {inst.workers_started}, "
                                       f"stopped {inst.workers_stopped}")

    def backend_runner(self, phase: str, dom: DomainHandle, devid: int) -> Any:
        runner = self.bus.devices.get((self.adapter.kind, dom.domid, devid))
        if runner is None:
            raise self.fail(phase, "no backend instance for the device")
        return runner

    async def run(self) -> ConformanceReport:
        a = self.adapter
        victim_load, bystander_load = _Load(a, a.devid), _Load(a, a.devid + 1)
        host, report = self.host, self.report
        victim = await host.create(GuestConfig(name=f"{a.kind}-victim", memory=a.guest_memory,
                                               kernel=victim_load.program))
        bystander = await host.create(GuestConfig(
            name=f"{a.kind}-bystander", memory=a.guest_memory, kernel=bystander_load.program))
        await victim_load.wait_for(lambda: victim_load.state == "waiting")
        await bystander_load.wait_for(lambda: bystander_load.state == "waiting")
        no_devices = await self.settle()
        await self.attach("setup", bystander, bystander_load)
        await bystander_load.wait_for(lambda: bystander_load.state == "running")
        async with bystander_load.paused():
            baseline = await self.settle()

        # handshake
        phase = "handshake"
        await self.attach(phase, victim, victim_load)
        runner = self.backend_runner(phase, victim, a.devid)
        if runner.instance.workers_started != 1:
            raise self.fail(phase, f"{runner.instance.workers_started} ring workers started")
        report.phases.append(phase)

        # teardown under load
        phase = "teardown-under-load"
        if victim_load.state != "running":
            raise self.fail(phase, f"the victim's load is {victim_load.state}")
        await self.detach(phase, victim, victim_load)
        await self.check_baseline(phase, baseline, victim_load, bystander_load)
        report.phases.append(phase)

        # reconnect: a new pair of instances, the load resumes
        phase = "reconnect"
        await self.attach(phase, victim, victim_load)
        await self.detach(phase, victim, victim_load)
        await self.check_baseline(phase, baseline, victim_load, bystander_load)
        report.phases.append(phase)

        # hostile ring
        phase = "hostile-ring"
        await self.attach(phase, victim, victim_load)
        runner = self.backend_runner(phase, victim, a.devid)
        back, _front = self.paths(victim, a.devid)

        async def corrupt(guest: Guest) -> None:
            a.corrupt_ring(guest.devices[victim_load.name])

        async with victim_load.paused():
            await victim_load.in_guest(corrupt)
            with trio.move_on_after(PHASE_TIMEOUT) as scope:
                await _wait_states(self.xs, [back], lambda v: v in (b"5", b"6"))
            if scope.cancelled_caught:
                raise self.fail(phase, "the backend stayed Connected on a hostile ring")
        report.backend_errors = runner.instance.errors
        if runner.instance.errors < 1:
            raise self.fail(phase, "the backend did not count the error")
        await bystander_load.progress()
        await self.detach(phase, victim, victim_load)
        await self.check_baseline(phase, baseline, victim_load, bystander_load)
        report.phases.append(phase)

        # state flapping
        phase = "state-flapping"
        await self.attach(phase, victim, victim_load)
        runner = self.backend_runner(phase, victim, a.devid)
        passes_before = runner.passes
        flaps = self.flaps

        async def flap(guest: Guest) -> None:
            path = f"device/{victim_load.name}/state"
            for i in range(flaps):
                await guest.xenstore.write(path, str(1 + i % 6))
            await guest.xenstore.write(path, "junk\x01")

        await victim_load.in_guest(flap)
        async with victim_load.paused(), bystander_load.paused():
            await self.settle()  # every watch event of the flapping has been handled
        inst, machine = runner.instance, runner.machine
        report.flapping_passes = runner.passes - passes_before
        if report.flapping_passes > flaps + 2:
            raise self.fail(phase, f"{report.flapping_passes} passes for {flaps} writes")
        connects = sum(Action.CONNECT in t.actions for t in machine.history)
        if not 1 <= inst.workers_started <= connects:  # a failed MAP_RING skips CONNECT's hook
            raise self.fail(phase, f"{inst.workers_started} worker starts for {connects} "
                                   "CONNECTs")
        running = 1 if inst._worker is not None else 0
        if inst.workers_started != inst.workers_stopped + running:
            raise self.fail(phase, f"workers started {inst.workers_started}, stopped "
                                   f"{inst.workers_stopped}, running {running}")
        await bystander_load.progress()
        await self.detach(phase, victim, victim_load, force=True)
        await self.check_baseline(phase, baseline, victim_load, bystander_load)
        report.phases.append(phase)

        # the bystander's device goes too: back to the host without devices
        await self.detach("cleanup", bystander, bystander_load)
        await bystander_load.wait_for(lambda: bystander_load.state == "waiting")
        diff = diff_counts(no_devices, await self.settle())
        if diff:
            raise LeakError(f"{a.kind}: with every device detached, resources are not back "
                            f"at the baseline:\n{diff}")
        for load in (victim_load, bystander_load):
            report.rounds[load.name] = load.rounds
            report.io_failures[load.name] = list(load.failures)
        if bystander_load.failures[:-1]:  # only the final detach may fail its I/O
            raise self.fail("bystander", f"I/O failed: {bystander_load.failures}")
        await victim.destroy()
        await bystander.destroy()
        return report


async def check_split_driver(host: Host, adapter: DriverAdapter, *,
                             flaps: int = 1000) -> ConformanceReport:
    """Run one driver pair through every phase of the suite (see the module doc).

    Use from a pytest-trio test with the ``xen_host`` fixture (and, for
    speed, ``autojump_clock``); the host must have the adapter's backend and
    frontend registered.

    Args:
        host: a booted host with no guests (test-controlled).
        adapter: the device description.
        flaps: frontend state rewrites in the state-flapping phase.

    Returns:
        What was seen; every phase passed.

    Raises:
        ConformanceError: a phase failed (the message says which and why).
        LeakError: resources were not back at the baseline after a phase.
        ConfigError: no driver registered for ``adapter.kind``.
    """
    return await _Suite(host, adapter, flaps).run()

