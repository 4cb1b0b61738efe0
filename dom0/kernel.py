"""dom0's kernel: boots the privileged domain's services in dependency order.

Theory of operation
-------------------
dom0 is domain 0; this object is its kernel. :meth:`Dom0Kernel.run` starts,
each with ``nursery.start()`` so it is ready before the next one needs it:

1. the **event dispatcher** (dom0's upcall loop, :mod:`domu.evtchn`);
2. **xenstored**: the sans-IO core (:class:`~dom0.xenstored.XenStore`) with a
   :class:`HypervisorDomainInfo` (getdomaininfo) and VIRQ_DOM_EXC bound to
   :meth:`~dom0.xenstored.XenStore.check_domains`. Its ``attach_ring`` hook
   (called by INTRODUCE) maps the guest's xenstore page through **grant ref 1**
   (``GNTTAB_RESERVED_XENSTORE``, pre-filled by the domain builder), binds the
   guest's xenstore port and serves the ring (:func:`serve_ring`) in
   xenstored's nursery; optionally it also listens on a Unix socket for
   outside tools (``xenstore_socket``);
3. dom0's own **xenstore client**: a socket-less, privileged connection to
   the core over an in-memory stream pair (same wire protocol, no fds);
4. the **console daemon** (:mod:`dom0.console.daemon`); the toolstack hands
   it each guest's console page, mapped through **grant ref 0**
   (:meth:`attach_console`);
5. the **backend bus** (:mod:`dom0.backends.bus`).

dom0 also owns its network stack's **bridges** (:meth:`Dom0Kernel.bridge`,
created on first use, e.g. ``xenbr0`` when the first vif joins it) and the
free pages of its own RAM (:attr:`Dom0Kernel.pages`, drivers' bounce
buffers). Backend drivers are built by the bus with only the hypercall
interface; they find their kernel with :meth:`Dom0Kernel.of`.

Every VIRQ_DOM_EXC also wakes :meth:`wait_dom_exc` waiters (the toolstack
uses it to see a destroyed domain finally disappear - no polling).

Worked example::

    hv = Hypervisor()
    kernel = Dom0Kernel(hv.interface(0))
    async with trio.open_nursery() as n:
        await n.start(kernel.run)
        await kernel.xs.write("/local/domain/0/data/x", b"1")
"""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio
import trio.testing

from dom0.backends.bus import Backend, BackendBus
from dom0.console.daemon import ConsoleDaemon
from dom0.native.bridge import DEFAULT_BRIDGE, Bridge
from dom0.xenstored import XenStore
from dom0.xenstored.connection import Connection
from dom0.xenstored.domain import DomainState
from dom0.xenstored.ring_server import serve_ring
from dom0.xenstored.unix_server import serve, serve_connection
from domu.evtchn import EventDispatcher, PortWaiter
from domu.frontends.bus import PageAllocator
from domu.xenstore import XenStoreClient, open_xenstore
from hypervisor.domain import XEN_DOMINF_dying, XEN_DOMINF_shutdown
from hypervisor.errno import Errno, XenError
from hypervisor.event_channel import VIRQ_CON_RING, VIRQ_DOM_EXC
from hypervisor.grant_table import GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE, GNTST_okay
from hypervisor.hypercall import HypercallInterface
from hypervisor.types import DomId, Port
from ring.xs_wire import XENSTORE_ERROR_COMM

__all__ = ["ConsoleAttachment", "Dom0Kernel", "HypervisorDomainInfo", "RingAttachment"]

_log = logging.getLogger("xensim.dom0")

RING_DETACH_TIMEOUT = 5.0
"""Seconds (trio clock) :meth:`Dom0Kernel.wait_ring_detached` callers allow."""

_KERNELS: weakref.WeakKeyDictionary[HypercallInterface, Dom0Kernel] = (
    weakref.WeakKeyDictionary())
"""dom0's hypercall interface -> its kernel (see :meth:`Dom0Kernel.of`)."""


class HypervisorDomainInfo:
    """xenstored's :class:`~dom0.xenstored.DomainInfo`, answered by getdomaininfo.

    Args:
        hc: dom0's hypercall interface (privileged).
    """

    def __init__(self, hc: HypercallInterface) -> None:
        self.hc = hc

    def state(self, domid: int) -> DomainState | None:
        """RUNNING / SHUTDOWN / DYING, or None when the domain does not exist."""
        try:
            info = self.hc.domctl_getdomaininfo(domid)
        except XenError as exc:
            if exc.errno == Errno.ESRCH:
                return None
            raise
        if info.flags & XEN_DOMINF_dying:
            return DomainState.DYING
        if info.flags & XEN_DOMINF_shutdown:
            return DomainState.SHUTDOWN
        return DomainState.RUNNING


class _Port:
    """An :class:`~dom0.xenstored.ring_server.EventPort` over one bound port."""

    def __init__(self, hc: HypercallInterface, port: Port, waiter: PortWaiter) -> None:
        self.hc = hc
        self.port = port
        self.waiter = waiter

    def notify(self) -> None:
        with contextlib.suppress(XenError):
            self.hc.evtchn_send(self.port)

    async def wait(self) -> None:
        await self.waiter.wait()


@dataclass
class RingAttachment:
    """dom0's side of one guest's xenstore ring (grant ref 1 + its port)."""

    domid: DomId
    conn: Connection
    handle: int
    port: Port
    view: memoryview
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    closed: trio.Event = field(default_factory=trio.Event)


@dataclass
class ConsoleAttachment:
    """dom0's side of one guest's primary console (grant ref 0 + its port)."""

    domid: DomId
    handle: int
    port: Port
    handler: Callable[[int], None]


class Dom0Kernel:
    """The privileged domain's kernel and its services.

    Args:
        hc: dom0's hypercall interface.
        backend_drivers: device type -> backend class, merged over the
            registry (:data:`~dom0.backends.bus.BACKEND_DRIVERS`): adds types or
            replaces one type's driver.
        xenstore_socket: also serve xenstored on this Unix socket (for
            ``xenstore-ls`` and friends), or None.
        console_limit: bytes of log kept per guest console.

    Attributes (valid once :meth:`run` reported ready):
        events: dom0's event dispatcher.
        xenstored: the XenStore core.
        xs: dom0's own privileged xenstore client.
        console: the console daemon.
        backends: the backend bus.
        bridges: name -> :class:`~dom0.native.bridge.Bridge` (see :meth:`bridge`).
        pages: dom0's free RAM pages (drivers' bounce buffers).
        stopped: set once :meth:`run` has returned (every service is down).
    """

    def __init__(self, hc: HypercallInterface, *,
                 backend_drivers: Mapping[str, type[Backend]] | None = None,
                 xenstore_socket: str | None = None) -> None:
        self.hc = hc
        self.events = EventDispatcher(hc)
        self.xenstored = XenStore(domain_info=HypervisorDomainInfo(hc), clock=trio.current_time)
        self.xenstored.attach_ring = self._attach_ring
        self.xenstore_socket = xenstore_socket
        self.backend_drivers = backend_drivers
        self.rings: dict[int, RingAttachment] = {}
        self.consoles: dict[int, ConsoleAttachment] = {}
        self.dom_exc_count = 0
        self._dom_exc = trio.Event()
        self._stop = trio.Event()
        self.stopped = trio.Event()
        self._xs_nursery: trio.Nursery | None = None
        self.xs: XenStoreClient
        self.console: ConsoleDaemon
        self.backends: BackendBus
        self.bridges: dict[str, Bridge] = {}
        self.pages = PageAllocator(hc, range(hc.current_reservation()))
        _KERNELS[hc] = self

    @classmethod
    def of(cls, hc: HypercallInterface) -> Dom0Kernel:
        """The kernel that owns dom0's hypercall interface ``hc``.

        Backend drivers get only ``hc`` from the bus; this is how they reach
        dom0-wide services (bridges, pages).

        Raises:
            KeyError: ``hc`` belongs to no kernel (a wiring bug).
        """
        return _KERNELS[hc]

    def bridge(self, name: str = DEFAULT_BRIDGE) -> Bridge:
        """dom0's bridge called ``name``, created (default MTU) on first use.

        Args:
            name: the bridge name (a vif's ``bridge`` key: toolstack-written,
                dom0-owned; never guest data).
        """
        br = self.bridges.get(name)
        if br is None:
            br = self.bridges[name] = Bridge(name)
        return br

    # -- boot ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Boot every service, report ready, and run until :meth:`stop` (or cancelled).

        :meth:`stop` shuts the services down in reverse order, so each one can
        still use the services below it (e.g. drop its xenstore watches);
        :attr:`stopped` is set once they all have.
        """
        try:
            await self._run(task_status)
        finally:
            self.stopped.set()

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as outer:
            await outer.start(self.events.run)
            await outer.start(self._run_xenstored)
            async with self._open_own_client(outer) as xs:
                self.xs = xs
                try:
                    async with trio.open_nursery() as inner:
                        await self._init_dom0_nodes()
                        self.console = ConsoleDaemon()
                        await inner.start(self.console.run)
                        con_ring = self.hc.evtchn_bind_virq(VIRQ_CON_RING)
                        self.events.bind(
                            con_ring, self.console.add_hypervisor_console(self.hc.console_read))
                        self.backends = BackendBus(self.xs, self.hc, self.events,
                                                   self.backend_drivers)
                        await inner.start(self.backends.run)
                        task_status.started()
                        await self._stop.wait()
                        inner.cancel_scope.cancel()
                finally:
                    # wake anything still waiting for a reply (e.g. a shielded
                    # UNWATCH during a cancellation): the daemon is going away
                    xs.close("dom0 is shutting down")
            outer.cancel_scope.cancel()

    def stop(self) -> None:
        """Shut dom0's services down in reverse boot order (returns at once;
        :attr:`stopped` is set when done)."""
        self._stop.set()

    async def _run_xenstored(self, *,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                             ) -> None:
        virq = self.hc.evtchn_bind_virq(VIRQ_DOM_EXC)
        self.events.bind(virq, self._on_dom_exc)
        try:
            async with trio.open_nursery() as nursery:
                self._xs_nursery = nursery
                if self.xenstore_socket is not None:
                    await nursery.start(
                        functools.partial(serve, self.xenstore_socket, xenstore=self.xenstored))
                task_status.started()
                await trio.sleep_forever()
        finally:
            self.events.unbind(virq)
            with contextlib.suppress(XenError):
                self.hc.evtchn_close(virq)

    @contextlib.asynccontextmanager
    async def _open_own_client(self, nursery: trio.Nursery):  # type: ignore[no-untyped-def]
        ours, theirs = trio.testing.memory_stream_pair()
        conn = self.xenstored.connect_socket()
        nursery.start_soon(serve_connection, self.xenstored, theirs, conn)
        async with open_xenstore(ours) as client:
            yield client

    async def _init_dom0_nodes(self) -> None:
        # what xen-init-dom0 writes at boot
        await self.xs.write("/local/domain/0/name", b"Domain-0")
        await self.xs.write("/local/domain/0/domid", b"0")

    # -- VIRQ_DOM_EXC -------------------------------------------------------------------------

    def _on_dom_exc(self, _port: int) -> None:
        self.dom_exc_count += 1
        self.xenstored.check_domains()
        ev, self._dom_exc = self._dom_exc, trio.Event()
        ev.set()

    async def wait_dom_exc(self) -> None:
        """Return after the next VIRQ_DOM_EXC (callers bound the wait)."""
        await self._dom_exc.wait()

    # -- xenstore rings -------------------------------------------------------------------------

    def _attach_ring(self, conn: Connection, mfn: int, port: int) -> None:
        """xenstored's INTRODUCE hook (sync): map grant ref 1, bind, start serving."""
        domid = DomId(conn.domid)
        res = self.hc.grant_map_one(domid, GNTTAB_RESERVED_XENSTORE)
        if res.status != GNTST_okay or res.view is None:
            _log.warning("d%d: xenstore page does not map (GNTST %d)", domid, res.status)
            self.xenstored.mark_broken(conn, XENSTORE_ERROR_COMM)
            return
        try:
            lport = self.hc.evtchn_bind_interdomain(domid, port)
        except XenError as exc:
            _log.warning("d%d: xenstore port %d does not bind: %s", domid, port, exc)
            self.hc.grant_unmap_one(res.handle)
            self.xenstored.mark_broken(conn, XENSTORE_ERROR_COMM)
            return
        waiter = PortWaiter()
        self.events.bind(lport, waiter.notify)
        att = RingAttachment(domid, conn, res.handle, lport, res.view)
        self.rings[domid] = att
        conn.on_close = att.scope.cancel
        assert self._xs_nursery is not None
        self._xs_nursery.start_soon(self._serve_ring, att, _Port(self.hc, lport, waiter))

    async def _serve_ring(self, att: RingAttachment, port: _Port) -> None:
        try:
            with att.scope:
                await serve_ring(self.xenstored, att.conn, att.view, port)
        finally:
            self.xenstored.disconnect(att.conn)
            self.events.unbind(att.port)
            with contextlib.suppress(XenError):
                self.hc.evtchn_close(att.port)
            self.hc.grant_unmap_one(att.handle)
            del att.view
            if self.rings.get(att.domid) is att:
                del self.rings[att.domid]
            att.closed.set()

    async def wait_ring_detached(self, domid: int) -> None:
        """Return once dom0 no longer maps ``domid``'s xenstore page (callers bound it)."""
        att = self.rings.get(domid)
        if att is not None:
            att.scope.cancel()
            await att.closed.wait()

    # -- consoles -----------------------------------------------------------------------------

    def attach_console(self, domid: int, name: str, remote_port: int,
                       limit: int | None = None) -> ConsoleAttachment:
        """Map ``domid``'s console page (grant ref 0), bind its port, hand both to the daemon.

        Args:
            domid: the guest (toolstack-controlled).
            name: its name (for the log).
            remote_port: the guest's unbound console port (from the builder's record).
            limit: history bytes kept (``console/limit``).

        Raises:
            XenError: the page does not map or the port does not bind (nothing
                is left attached).
        """
        res = self.hc.grant_map_one(domid, GNTTAB_RESERVED_CONSOLE)
        if res.status != GNTST_okay or res.view is None:
            raise XenError(Errno.EINVAL, f"d{domid}: console page does not map "
                                         f"(GNTST {res.status})")
        try:
            lport = self.hc.evtchn_bind_interdomain(domid, remote_port)
        except BaseException:
            self.hc.grant_unmap_one(res.handle)
            raise
        notify: Callable[[], None] = _sender(self.hc, lport)
        handler = self.console.add_domain(domid, name, res.view, notify, limit=limit)
        self.events.bind(lport, handler)
        att = ConsoleAttachment(DomId(domid), res.handle, lport, handler)
        self.consoles[domid] = att
        return att

    def detach_console(self, domid: int) -> bytes:
        """Undo :meth:`attach_console` (idempotent).

        Returns:
            The console's final log (output still queued in the ring is read
            first), or ``b""`` if it was not attached.
        """
        att = self.consoles.pop(domid, None)
        if att is None:
            return b""
        att.handler(att.port)  # drain what the guest queued before it went
        final = self.console.log(domid)
        self.console.remove_domain(domid)
        self.events.unbind(att.port)
        with contextlib.suppress(XenError):
            self.hc.evtchn_close(att.port)
        self.hc.grant_unmap_one(att.handle)
        return final


def _sender(hc: HypercallInterface, port: Port) -> Callable[[], None]:
    def notify() -> None:
        with contextlib.suppress(XenError):
            hc.evtchn_send(port)
    return notify
