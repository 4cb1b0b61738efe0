"""What a guest program gets: its own domain's view, and nothing of any other.

A guest program is an async function taking one :class:`Guest`::

    async def main(guest):
        await guest.console.print(f"hello from {guest.name} (d{guest.domid})")
        line = await guest.console.readline()        # waits for dom0 input
        await guest.xenstore.write("data/greeting", line)
        await guest.consoles[1].print("debug")       # a secondary console (hvc1)

Returning normally powers the domain off; raising crashes it (the traceback
goes to its console); :meth:`Guest.shutdown` asks the kernel for a
poweroff / reboot / crash from inside. A ``control/shutdown`` request from
the toolstack cancels the program.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

import trio

from domu.frontends.blkfront import BlkFront, BlkfrontDisk  # registers the vbd frontend
from domu.frontends.console import ConsoleFront
from domu.frontends.consolefront import SecondaryConsoleFront  # registers "console"
from domu.frontends.netfront import NetFront  # registers the vif frontend
from domu.netdev import NetDevice
from domu.xenstore import XenStoreError, read_or_none
from ring.blkif import vdev_encode

if TYPE_CHECKING:
    from domu.balloon import Balloon
    from domu.frontends.bus import Frontend
    from domu.xenstore import XenStoreClient
    from hypervisor.hypercall import HypercallInterface

__all__ = ["Guest", "GuestConsole", "GuestConsoles", "GuestCpu"]

F = TypeVar("F", bound="Frontend")


class GuestConsole:
    """The guest's primary console (``hvc0``), print-like.

    Args:
        front: the console frontend driver.
    """

    def __init__(self, front: ConsoleFront) -> None:
        self.front = front

    async def write(self, data: str | bytes) -> None:
        """Write ``data`` (str is UTF-8 encoded); waits while the ring is full."""
        await self.front.write(data.encode() if isinstance(data, str) else data)

    async def print(self, *args: Any, sep: str = " ", end: str = "\n") -> None:
        """Like :func:`print`, to the console."""
        await self.write(sep.join(str(a) for a in args) + end)

    async def drain(self) -> None:
        """Wait until dom0 has read everything written so far (``tcdrain``)."""
        await self.front.drain()

    async def readline(self) -> str:
        """The next line typed on the console, without its newline (like :func:`input`)."""
        line = await self.front.readline()
        return line.decode("utf-8", "replace").rstrip("\r\n")

    async def read(self, max_bytes: int = 4096) -> bytes:
        """Whatever input is available (waits for at least one byte)."""
        return await self.front.read(max_bytes)


class GuestConsoles(Mapping[int, GuestConsole]):
    """The guest's consoles by number (``hvc<N>``), a read-only mapping.

    ``consoles[0]`` is the primary console (the same object as
    ``guest.console``); ``consoles[N]``, N >= 1, is the secondary console the
    toolstack attached as ``device/console/<N>``
    (:class:`~domu.frontends.consolefront.SecondaryConsoleFront`), once its
    ring is set up. A console whose device was unplugged raises
    :class:`~domu.frontends.console.ConsoleClosed` when used.

    Args:
        primary: the primary console.
        devices: the frontend bus's live devices (``"<type>/<devid>"``).
        xenstore: the guest's xenstore client (for :meth:`wait`).
    """

    def __init__(self, primary: GuestConsole, devices: Mapping[str, Frontend],
                 xenstore: XenStoreClient) -> None:
        self._primary = primary
        self._devices = devices
        self._xs = xenstore

    def _front(self, n: int) -> SecondaryConsoleFront | None:
        front = self._devices.get(f"console/{n}")
        if isinstance(front, SecondaryConsoleFront) and front.console is not None:
            return front
        return None

    def __getitem__(self, n: int) -> GuestConsole:
        """Console ``n``.

        Raises:
            KeyError: no such console (or it has not been probed yet).
        """
        if n == 0:
            return self._primary
        front = self._front(n) if isinstance(n, int) and n > 0 else None
        if front is None or front.console is None:
            raise KeyError(n)
        return GuestConsole(front.console)

    def __iter__(self) -> Iterator[int]:
        ids = [int(name[8:]) for name in list(self._devices)
               if name.startswith("console/") and name[8:].isdigit()]
        yield 0
        yield from sorted(n for n in ids if n > 0 and self._front(n) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    async def wait(self, n: int) -> GuestConsole:
        """Wait until console ``n`` is Connected (e.g. after a hot-plug) and return it.

        Callers bound the wait (``trio.fail_after``).

        Raises:
            ValueError: ``n`` < 0.
        """
        if n < 0:
            raise ValueError("console numbers are >= 0")
        if n == 0:
            return self._primary
        async with self._xs.watch(f"device/console/{n}/state") as events:
            async for _ in events:
                state = await read_or_none(self._xs, f"device/console/{n}/state")
                front = self._front(n)
                if (state == b"4" and front is not None and front.console is not None
                        and not front.console.closed):
                    return GuestConsole(front.console)
        raise KeyError(n)  # pragma: no cover  (the watch never ends on its own)

    async def number(self, name: str) -> int:
        """The number of the channel called ``name`` (xl.cfg ``channel=["name=..."]``).

        Looks the name up as a guest agent does in Xen: the ``name`` key the
        toolstack wrote in each ``device/console/<N>`` directory.

        Args:
            name: the channel name (the program's choice).

        Returns:
            N, the console number (``hvc<N>``); wait for it with :meth:`wait`.

        Raises:
            KeyError: no console of this guest has that name.
        """
        try:
            entries = await self._xs.directory("device/console")
        except XenStoreError as exc:
            if exc.name != "ENOENT":
                raise
            entries = []  # no secondary console at all
        wanted = name.encode()
        for n in sorted(int(e) for e in entries if e.isdigit() and int(e) > 0):
            if await read_or_none(self._xs, f"device/console/{n}/name") == wanted:
                return n
        raise KeyError(name)

    async def named(self, name: str) -> GuestConsole:
        """The channel called ``name``, once it is connected (:meth:`number` + :meth:`wait`).

        Callers bound the wait (``trio.fail_after``).

        Raises:
            KeyError: no console of this guest has that name.
        """
        return await self.wait(await self.number(name))


class GuestCpu:
    """The guest's vCPUs, for programs that compute (``await guest.cpu.run(0.5)``).

    Args:
        hc: the domain's own hypercall interface.
    """

    def __init__(self, hc: HypercallInterface) -> None:
        self._hc = hc

    @property
    def count(self) -> int:
        """How many vCPUs the domain has (xl.cfg ``maxvcpus``), online or not."""
        return self._hc.nr_vcpus

    @property
    def online(self) -> tuple[int, ...]:
        """The vCPUs that are up now (``VCPUOP_is_up``), in order; vCPU 0 always is.

        The kernel brings vCPUs up and down as the toolstack asks
        (``xensim vcpu-set``).
        """
        hc = self._hc
        return tuple(i for i in range(hc.nr_vcpus) if hc.vcpu_is_up(i))

    async def run(self, seconds: float, vcpu: int = 0) -> None:
        """Use ``seconds`` of CPU time on ``vcpu`` (returns once the scheduler ran it that long).

        Under contention (other domains computing on the same pCPUs, a cap,
        a low weight) it takes longer than ``seconds`` of wall time; the
        time shows in ``xl list``'s Time(s) column.

        A vCPU that is offline (not in :attr:`online`) takes no new work;
        work under way when its vCPU goes offline waits, frozen, until the
        vCPU is back online.

        Raises:
            DomainDestroyed: the domain is destroyed meanwhile.
            XenError: EINVAL for a vCPU the domain lacks or that is offline.
        """
        await self._hc.compute(seconds, vcpu)


class Guest:
    """A guest program's handle on its own domain.

    Attributes:
        domid: this domain's id.
        name: its name (``/local/domain/<D>/name``).
        extra: the command line (xl.cfg ``extra`` / ``cmdline``).
        console: the primary console (``hvc0``).
        consoles: every console by number (:class:`GuestConsoles`):
            ``consoles[0]`` is :attr:`console`, ``consoles[1]`` the first
            secondary console.
        xenstore: this domain's xenstore client (relative paths are under
            ``/local/domain/<D>``).
        devices: ``"<type>/<devid>"`` -> frontend driver instance, for the
            devices the frontend bus probed (disks and NICs as their
            drivers land).
        cpu: the domain's vCPUs (:class:`GuestCpu`; None without a
            hypercall interface, e.g. in unit tests).
        balloon: the kernel's balloon driver (:class:`~domu.balloon.Balloon`:
            ``current_kb``, ``target_kb``, ``ballooned_kb``); None in unit tests.
    """

    def __init__(self, domid: int, name: str, extra: str, console: GuestConsole,
                 xenstore: XenStoreClient, devices: Mapping[str, Frontend],
                 request_shutdown: Callable[[str], None], *,
                 cpu: GuestCpu | None = None, balloon: Balloon | None = None) -> None:
        self.cpu = cpu
        self.balloon = balloon
        self.domid = domid
        self.name = name
        self.extra = extra
        self.console = console
        self.consoles = GuestConsoles(console, devices, xenstore)
        self.xenstore = xenstore
        self.devices = devices
        self._request_shutdown = request_shutdown

    def disk(self, name: str | int = "xvda") -> BlkfrontDisk:
        """The disk ``name`` (``"xvda"``, ``"xvdb"``, or a ``virtual-device`` number).

        The result has the :class:`~domu.blockdev.BlockDevice` API: ``read``,
        ``write``, ``flush``, ``discard``, ``open``, ``size``...

        Raises:
            KeyError: this guest has no such disk (or it did not probe).
            ValueError: not a disk name.
        """
        devid = name if isinstance(name, int) else vdev_encode(name)
        front = self.devices.get(f"vbd/{devid}")
        if not isinstance(front, BlkFront):
            raise KeyError(f"{self.name}: no disk {name}")
        return front.disk

    def nic(self, devid: int = 0) -> NetDevice:
        """The network interface of vif ``devid`` (``eth<devid>``).

        Raises:
            KeyError: this guest has no such vif (or it did not probe).
        """
        front = self.devices.get(f"vif/{devid}")
        if not isinstance(front, NetFront):
            raise KeyError(f"{self.name}: no vif {devid}")
        return front.netdev

    @overload
    async def open_device(self, driver: type[F], devid: int = 0, *,
                          timeout: float | None = None) -> F: ...

    @overload
    async def open_device(self, driver: str, devid: int = 0, *,
                          timeout: float | None = None) -> Frontend: ...

    async def open_device(self, driver: type[F] | str, devid: int = 0, *,
                          timeout: float | None = None) -> F | Frontend:
        """Wait until device ``<kind>/<devid>`` is Connected; return its frontend driver.

        Works for a device present at boot and for one hot-plugged later (it
        watches the device's own ``state`` key), and skips an instance that is
        closing: after a device went away, calling it again waits for the next
        one. "Connected" means the driver's ``connect`` hook has finished, so
        the driver is ready for I/O. Example::

            kv = await guest.open_device(KvFront, timeout=30)  # typed as KvFront
            disk = await guest.open_device("vbd", 51712)

        Args:
            driver: the frontend class (its ``kind`` names the device type, and
                the result is checked to be an instance), or a device type name.
            devid: the device id.
            timeout: seconds (trio clock) to wait; None waits for ever.

        Raises:
            TimeoutError: not Connected within ``timeout``.
            TypeError: the device is driven by another class than ``driver``.
        """
        kind = driver if isinstance(driver, str) else driver.kind
        name = f"{kind}/{devid}"
        with trio.move_on_after(math.inf if timeout is None else timeout):
            async with self.xenstore.watch(f"device/{name}/state") as events:
                async for _path in events:  # fires once at once, then on each change
                    dev = self.devices.get(name)
                    if dev is None or not dev.is_connected:
                        continue
                    if not isinstance(driver, str) and not isinstance(dev, driver):
                        raise TypeError(f"{name} is driven by {type(dev).__qualname__}, "
                                        f"not {driver.__qualname__}")
                    return dev
        raise TimeoutError(f"{self.name}: {name} did not connect within {timeout} s")

    def shutdown(self, reason: str = "poweroff") -> None:
        """Ask the kernel to shut this domain down (``poweroff``, ``reboot``, ``crash``).

        The program is cancelled at its next checkpoint; devices are closed
        and ``SCHEDOP_shutdown`` is called with the reason.

        Raises:
            ValueError: an unknown reason.
        """
        if reason not in ("poweroff", "halt", "reboot", "crash"):
            raise ValueError(f"unknown shutdown reason {reason!r}")
        self._request_shutdown(reason)
