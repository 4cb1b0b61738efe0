"""What a guest program gets: its own domain's view, and nothing of any other.

A guest program is an async function taking one :class:`Guest`::

    async def main(guest):
        await guest.console.print(f"hello from {guest.name} (d{guest.domid})")
        line = await guest.console.readline()        # waits for dom0 input
        await guest.xenstore.write("data/greeting", line)

Returning normally powers the domain off; raising crashes it (the traceback
goes to its console); :meth:`Guest.shutdown` asks the kernel for a
poweroff / reboot / crash from inside. A ``control/shutdown`` request from
the toolstack cancels the program.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

import trio

from domu.frontends.blkfront import BlkFront, BlkfrontDisk  # registers the vbd frontend
from domu.frontends.console import ConsoleFront
from domu.frontends.netfront import NetFront  # registers the vif frontend
from domu.netdev import NetDevice
from ring.blkif import vdev_encode

if TYPE_CHECKING:
    from domu.frontends.bus import Frontend
    from domu.xenstore import XenStoreClient
    from hypervisor.hypercall import HypercallInterface

__all__ = ["Guest", "GuestConsole", "GuestCpu"]

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

    async def readline(self) -> str:
        """The next line typed on the console, without its newline (like :func:`input`)."""
        line = await self.front.readline()
        return line.decode("utf-8", "replace").rstrip("\r\n")

    async def read(self, max_bytes: int = 4096) -> bytes:
        """Whatever input is available (waits for at least one byte)."""
        return await self.front.read(max_bytes)


class GuestCpu:
    """The guest's vCPUs, for programs that compute (``await guest.cpu.run(0.5)``).

    Args:
        hc: the domain's own hypercall interface.
    """

    def __init__(self, hc: HypercallInterface) -> None:
        self._hc = hc

    @property
    def count(self) -> int:
        """How many vCPUs the domain has."""
        return self._hc.nr_vcpus

    async def run(self, seconds: float, vcpu: int = 0) -> None:
        """Use ``seconds`` of CPU time on ``vcpu`` (returns once the scheduler ran it that long).

        Under contention (other domains computing on the same pCPUs, a cap,
        a low weight) it takes longer than ``seconds`` of wall time; the
        time shows in ``xl list``'s Time(s) column.

        Raises:
            DomainDestroyed: the domain is destroyed meanwhile.
            XenError: EINVAL for a vCPU the domain lacks.
        """
        await self._hc.compute(seconds, vcpu)


class Guest:
    """A guest program's handle on its own domain.

    Attributes:
        domid: this domain's id.
        name: its name (``/local/domain/<D>/name``).
        extra: the command line (xl.cfg ``extra`` / ``cmdline``).
        console: the primary console.
        xenstore: this domain's xenstore client (relative paths are under
            ``/local/domain/<D>``).
        devices: ``"<type>/<devid>"`` -> frontend driver instance, for the
            devices the frontend bus probed (disks and NICs as their
            drivers land).
        cpu: the domain's vCPUs (:class:`GuestCpu`; None without a
            hypercall interface, e.g. in unit tests).
    """

    def __init__(self, domid: int, name: str, extra: str, console: GuestConsole,
                 xenstore: XenStoreClient, devices: Mapping[str, Frontend],
                 request_shutdown: Callable[[str], None], *,
                 cpu: GuestCpu | None = None) -> None:
        self.cpu = cpu
        self.domid = domid
        self.name = name
        self.extra = extra
        self.console = console
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
