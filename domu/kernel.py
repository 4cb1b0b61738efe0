"""The guest kernel: boot from start_info, run the devices and the guest program.

Theory of operation
-------------------
The toolstack starts :meth:`GuestKernel.run` before unpausing the domain; its
first hypercall (``SCHEDOP_yield``) only returns once the domain runs. Then,
like a Linux PV guest:

1. read start_info (through its own hypercall interface): the xenstore page
   and port, the console page and port, the command line;
2. start the event dispatcher (vCPU 0's upcall loop) and bind the console
   port to the console frontend;
3. connect to xenstored over its ring page (``open_xenstore_ring``), and
   bring its vCPUs up or down as ``cpu/<i>/availability`` says, then on
   every change under ``cpu`` (Linux's ``drivers/xen/cpu_hotplug.c``; see
   :meth:`GuestKernel._watch_cpus`);
4. start the frontend bus: probe ``device/<type>/<id>`` and run the matching
   frontends; wait (<= :data:`DEVICE_CONNECT_TIMEOUT`) until they settle;
5. advertise ``control/feature-{poweroff,reboot,suspend}``, watch
   ``control/shutdown``, report booted, and run the guest program.

Shutdown: a ``control/shutdown`` value is acknowledged by clearing the node
in a transaction (what the toolstack waits for), the program is cancelled,
frontends are closed through the handshake (<= :data:`DEVICE_CLOSE_TIMEOUT`)
and ``SCHEDOP_shutdown`` is called with the reason. A program that returns
is a poweroff; one that raises is a crash, its traceback printed on the
console first. After ``SCHEDOP_shutdown`` the kernel idles until the domain
is destroyed: the dispatcher then returns and every guest task is cancelled.

Worked example (what the host's launcher does)::

    kernel = GuestKernel(hv.interface(domid), examples.hello.main)
    nursery.start_soon(kernel.run)
    dom0.domctl_unpausedomain(domid)
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Awaitable, Callable, Mapping

import trio

from domu.balloon import Balloon, extra_memory
from domu.evtchn import EventDispatcher, PortWaiter
from domu.frontends.bus import Frontend, FrontendBus, PageAllocator
from domu.frontends.console import ConsoleFront
from domu.gnttab import GrantTableClient
from domu.guest import Guest, GuestConsole, GuestCpu
from domu.xenstore import (
    XenStoreClient,
    XenStoreError,
    XenStoreProtocolError,
    open_xenstore_ring,
    read_or_none,
)
from hypervisor.domain import ShutdownReason
from hypervisor.hypercall import HypercallInterface
from hypervisor.vcpu import DomainDestroyed

__all__ = ["DEVICE_CLOSE_TIMEOUT", "DEVICE_CONNECT_TIMEOUT", "GuestKernel", "Program"]

_log = logging.getLogger("xensim.domu")

Program = Callable[[Guest], Awaitable[None]]

DEVICE_CONNECT_TIMEOUT = 10.0
"""Seconds boot waits for probed devices to connect (Linux waits 30 s, then warns)."""
DEVICE_CLOSE_TIMEOUT = 5.0
"""Seconds shutdown waits for devices to close through the handshake."""
CRASH_MESSAGE_TIMEOUT = 1.0
"""Seconds a crashing kernel spends printing the traceback (the ring may be full)."""

_REASONS = {
    "poweroff": ShutdownReason.POWEROFF,
    "halt": ShutdownReason.POWEROFF,
    "reboot": ShutdownReason.REBOOT,
    "suspend": ShutdownReason.SUSPEND,
    "crash": ShutdownReason.CRASH,
}


class _EventPort:
    """The xenstore ring's port: notify = EVTCHNOP_send, wait = the port's waiter."""

    def __init__(self, hc: HypercallInterface, port: int, waiter: PortWaiter) -> None:
        self.hc = hc
        self.port = port
        self.waiter = waiter

    def notify(self) -> None:
        self.hc.evtchn_send(self.port)

    async def wait(self) -> None:
        await self.waiter.wait()


class GuestKernel:
    """A PV guest's kernel.

    Args:
        hc: the guest's own hypercall interface (its only capability).
        program: ``async def main(guest)``.
        frontend_drivers: type -> frontend class, merged over the registry.
        on_booted: called once the program is about to start (the host's
            boot observer; optional).

    Attributes:
        shutdown_reason: what the kernel passed to SCHEDOP_shutdown (None before).
        bus: the frontend bus (once booted).
        console: the console frontend (once booted).
    """

    def __init__(self, hc: HypercallInterface, program: Program, *,
                 frontend_drivers: Mapping[str, type[Frontend]] | None = None,
                 on_booted: Callable[[], None] | None = None) -> None:
        self.hc = hc
        self.program = program
        self.frontend_drivers = frontend_drivers
        self.on_booted = on_booted
        self.shutdown_reason: ShutdownReason | None = None
        self.bus: FrontendBus | None = None
        self.console: ConsoleFront | None = None
        self._requested: str | None = None
        self._xs: XenStoreClient | None = None
        self._aborted = False
        self._request = trio.Event()

    def request_shutdown(self, reason: str) -> None:
        """Ask for an orderly shutdown (first request wins)."""
        if self._requested is None:
            self._requested = reason
            self._request.set()

    async def run(self) -> None:
        """Boot and run until the domain is destroyed (then return normally)."""
        try:
            await self.hc.sched_yield()  # returns once the toolstack unpaused us
            disp = EventDispatcher(self.hc)
            async with trio.open_nursery() as root:
                try:
                    await root.start(self._dispatch, disp, root.cancel_scope)
                    await self._boot(disp)
                    await trio.sleep_forever()  # shut down: wait to be destroyed
                finally:
                    self._abort_xenstore()
        except* DomainDestroyed:
            pass
        except* XenStoreProtocolError:
            if not self._aborted:
                raise

    def _abort_xenstore(self) -> None:
        """Fail every pending xenstore request (even shielded ones): nobody will answer."""
        self._aborted = True
        if self._xs is not None:
            self._xs.close(f"d{self.hc.domid} is going away")

    async def _dispatch(self, disp: EventDispatcher, cancel: trio.CancelScope, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                        ) -> None:
        await disp.run(task_status=task_status)
        self._abort_xenstore()
        cancel.cancel()  # the domain was destroyed: stop every guest task

    async def _boot(self, disp: EventDispatcher) -> None:
        hc = self.hc
        si = hc.start_info
        home = f"/local/domain/{hc.domid}"
        store_port = _EventPort(hc, si.store_evtchn, disp.waiter(si.store_evtchn))
        console = ConsoleFront(hc.memory.page(si.console_mfn),
                               lambda: hc.evtchn_send(si.console_evtchn))
        disp.bind(si.console_evtchn, console.handle_event)
        self.console = console
        async with open_xenstore_ring(hc.memory.page(si.store_mfn), store_port) as xs:
            self._xs = xs
            name = (await xs.read(f"{home}/name")).decode("utf-8", "replace")
            special = min(si.store_mfn, si.console_mfn)
            pages = PageAllocator(hc, range(0, special))
            bus = FrontendBus(xs, hc, disp, GrantTableClient(hc), pages, self.frontend_drivers)
            self.bus = bus
            async with trio.open_nursery() as nursery:
                await nursery.start(self._watch_cpus, xs, home)
                await nursery.start(bus.run)
                with trio.move_on_after(DEVICE_CONNECT_TIMEOUT):
                    await bus.wait_settled()
                for feature in ("feature-poweroff", "feature-reboot", "feature-suspend"):
                    await xs.write(f"{home}/control/{feature}", "1")
                await nursery.start(self._watch_control, xs, home)
                balloon = Balloon(hc, pages, await extra_memory(xs, home, hc))
                await nursery.start(balloon.run)
                await nursery.start(balloon.watch_target, xs, home)
                guest = Guest(hc.domid, name, si.cmd_line, GuestConsole(console), xs,
                              bus.devices, self.request_shutdown, cpu=GuestCpu(hc),
                              balloon=balloon)
                reason = await self._run_program(guest)
                with trio.move_on_after(DEVICE_CLOSE_TIMEOUT):
                    await bus.close_all()
                nursery.cancel_scope.cancel()
            self.shutdown_reason = reason
            hc.sched_shutdown(reason)

    async def _watch_cpus(self, xs: XenStoreClient, home: str, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                          ) -> None:
        """Linux ``cpu_hotplug.c``: follow ``cpu/<i>/availability`` with VCPUOP_up/_down.

        Applied once before boot goes on (so the program starts with the
        configured vCPUs online), then on every event of a watch on ``cpu``.
        Only ``online`` and ``offline`` count; a missing or garbage value
        leaves the vCPU as it is (Linux logs "unknown state" and does
        nothing). vCPU 0 is never taken down: it runs this kernel's event
        loop (and x86 Linux cannot offline CPU0 either); an ``offline`` for
        it is ignored. The keys are the toolstack's: the guest may read but
        not write them.
        """
        started = False
        async with xs.watch(f"{home}/cpu", token="cpu-hotplug") as w:
            async for _ in w:  # the first event is the registration event, at once
                await self._apply_cpu_availability(xs, home)
                if not started:
                    task_status.started()
                    started = True

    async def _apply_cpu_availability(self, xs: XenStoreClient, home: str) -> None:
        hc = self.hc
        for i in range(hc.nr_vcpus):
            try:
                raw = await read_or_none(xs, f"{home}/cpu/{i}/availability")
            except XenStoreError as exc:
                _log.info("d%d: cpu/%d/availability unreadable: %s", hc.domid, i, exc)
                continue
            if raw == b"online":
                want = True
            elif raw == b"offline":
                if i == 0:
                    continue  # vCPU 0 runs this kernel's event loop
                want = False
            else:
                if raw is not None:
                    _log.info("d%d: unknown state %r on CPU%d", hc.domid, raw, i)
                continue
            if hc.vcpu_is_up(i) != want:
                if want:
                    hc.vcpu_up(i)
                else:
                    hc.vcpu_down(i)

    async def _watch_control(self, xs: XenStoreClient, home: str, *,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                             ) -> None:
        """Linux ``shutdown_handler``: ack ``control/shutdown`` by clearing it, then act."""
        path = f"{home}/control/shutdown"
        async with xs.watch(path, token="control-shutdown") as w:
            task_status.started()
            async for _ in w:
                async def ack(tx: object) -> bytes:
                    value = await tx.read(path)  # type: ignore[attr-defined]
                    if value:
                        await tx.write(path, b"")  # type: ignore[attr-defined]
                    return value  # type: ignore[no-any-return]
                try:
                    value = await xs.transaction(ack)
                except XenStoreError:
                    continue
                reason = value.decode("ascii", "replace")
                if reason in ("poweroff", "halt", "reboot", "suspend"):
                    self.request_shutdown(reason)
                elif value:
                    _log.info("d%d: ignoring shutdown request %r", self.hc.domid, reason)

    async def _run_program(self, guest: Guest) -> ShutdownReason:
        outcome: list[str] = []
        async with trio.open_nursery() as nursery:
            async def program() -> None:
                try:
                    await self.program(guest)
                    outcome.append("poweroff")
                except DomainDestroyed:
                    raise
                except Exception:
                    outcome.append("crash")
                    await self._print_crash(traceback.format_exc())
                nursery.cancel_scope.cancel()

            async def requested() -> None:
                await self._request.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(program)
            nursery.start_soon(requested)
            if self.on_booted is not None:
                self.on_booted()
        reason = self._requested or (outcome[0] if outcome else "poweroff")
        return _REASONS[reason]

    async def _print_crash(self, text: str) -> None:
        assert self.console is not None
        with trio.move_on_after(CRASH_MESSAGE_TIMEOUT), contextlib.suppress(Exception):
            await self.console.write(f"Kernel panic - guest program crashed:\n{text}".encode())
