"""What a guest is made of: the toolstack's domain configuration.

One dataclass per thing xl.cfg describes (``man xl.cfg``): the guest as a
whole (:class:`GuestConfig`), each disk (:class:`DiskSpec`, xl-disk-
configuration), each network interface (:class:`VifSpec`,
xl-network-configuration) and each channel (:class:`ChannelSpec`, xl.cfg's
``channel=``). The xl.cfg parser produces these; the domain builder consumes
them; Python users build them directly::

    GuestConfig(name="web", kernel="examples.hello:main", memory=64,
                disks=[DiskSpec(vdev="xvda", target="/tmp/web.img")],
                vifs=[VifSpec(bridge="xenbr0")],
                channels=[ChannelSpec(name="org.example.agent.0", connection="socket",
                                      path="/run/web-agent.sock")])

Defaults are xl's. :meth:`GuestConfig.validate` raises :class:`ConfigError`
with a message that says what was expected; it never lets a bad value reach
the hypervisor.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

XEN_OUI = "00:16:3e"
UNIX_PATH_MAX = 107
"""Longest Unix socket path in bytes (``sizeof(sun_path)`` is 108 on Linux, NUL included)."""
CHANNEL_CONNECTIONS = ("pty", "socket")
"""xl.cfg ``channel`` ``connection=`` values (libxl_channel_connection)."""


class ConfigError(ValueError):
    """A configuration value is wrong. ``str()`` says what was expected."""


class Action(enum.StrEnum):
    """What the toolstack does when a guest shuts down (xl.cfg ``on_*``)."""

    DESTROY = "destroy"
    RESTART = "restart"
    RENAME_RESTART = "rename-restart"
    PRESERVE = "preserve"
    COREDUMP_DESTROY = "coredump-destroy"
    COREDUMP_RESTART = "coredump-restart"
    SOFT_RESET = "soft-reset"


@dataclass
class DiskSpec:
    """One ``disk=`` entry (xl-disk-configuration).

    Args:
        vdev: the guest's device name (``xvda``, ``hdc``, ``sda1``, ``d0p1``
            or a raw number); mandatory.
        target: image path (or empty for an empty CD-ROM).
        format: only ``raw`` is served by xensim's blkback.
        access: ``rw`` or ``ro``.
        devtype: ``disk`` or ``cdrom``.
        backend: backend domain name (xensim: only dom0).
        backendtype: ``phy``, ``qdisk`` or ``standalone`` (recorded).
        script: hotplug script name (recorded).
        discard: whether discard is offered to the guest.
        direct_io_safe: recorded (xl flag).
        trusted: advisory to the frontend.
        specification: ``xen`` (``virtio`` is not simulated).
    """

    vdev: str
    target: str = ""
    format: str = "raw"
    access: str = "rw"
    devtype: str = "disk"
    backend: str = "0"
    backendtype: str = "phy"
    script: str = "block"
    discard: bool = True
    direct_io_safe: bool = False
    trusted: bool = True
    specification: str = "xen"

    @property
    def readonly(self) -> bool:
        """True for ``access=ro``."""
        return self.access == "ro"


_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


@dataclass
class VifSpec:
    """One ``vif=`` entry (xl-network-configuration).

    Args:
        mac: ``XX:XX:XX:XX:XX:XX``; ``None`` means a random MAC in Xen's
            OUI 00:16:3e, chosen when the device is created.
        bridge: the dom0 bridge to join.
        ip: informational (used by the demo's network helper).
        vifname: backend interface name; default ``vif<domid>.<devid>``.
        devid: device id; default the position in the list.
        mtu: link MTU.
        rate: ``RATE/s[@INTERVAL]`` as given (recorded).
        script: hotplug script name (recorded).
        backend: backend domain name (xensim: only dom0).
        trusted: advisory to the frontend.
        type, model, gatewaydev: recorded for completeness (HVM/route only).
    """

    mac: str | None = None
    bridge: str = "xenbr0"
    ip: str | None = None
    vifname: str | None = None
    devid: int | None = None
    mtu: int = 1500
    rate: str | None = None
    script: str = "vif-bridge"
    backend: str = "0"
    trusted: bool = True
    type: str = "vif"
    model: str | None = None
    gatewaydev: str | None = None

    def validate(self) -> None:
        """Raises: ConfigError: a malformed MAC, devid or MTU."""
        if self.mac is not None and not _MAC_RE.match(self.mac):
            raise ConfigError(f"vif mac {self.mac!r}: expected XX:XX:XX:XX:XX:XX (hex)")
        if self.mac is not None and int(self.mac[:2], 16) & 1:
            raise ConfigError(f"vif mac {self.mac!r}: a multicast address cannot be a NIC's")
        if self.devid is not None and not 0 <= self.devid < 2**31:
            raise ConfigError(f"vif devid {self.devid}: expected 0..2^31-1")
        if not 68 <= self.mtu <= 65535:
            raise ConfigError(f"vif mtu {self.mtu}: expected 68..65535")


_CHANNEL_FORBIDDEN = frozenset(',="')


def _channel_text_problem(value: str) -> str | None:
    """Why ``value`` cannot be a CHANNEL_SPEC value (None if it can)."""
    if not value:
        return "must not be empty"
    if value != value.strip():
        return "must not start or end with whitespace (xl strips it)"
    if _CHANNEL_FORBIDDEN & set(value):
        return "must not contain ',', '=' or '\"' (xl.cfg(5))"
    if not value.isprintable():
        return "must be printable (no control characters)"
    return None


@dataclass
class ChannelSpec:
    """One ``channel=`` entry: a named secondary PV console (xl.cfg(5), ``xen-pv-channel(7)``).

    libxl turns the channel at index ``i`` of the list into console device
    ``i + 1`` (``device/console/<i+1>``, ``hvc<i+1>`` in the guest), served by
    a device model (in xensim: :mod:`dom0.backends.consoleback`).

    Args:
        name: the well-known name guest software looks the channel up by
            (e.g. ``org.qemu.guest_agent.0``); mandatory. 1..64 printable
            ASCII characters, without ``,``, ``=`` or ``"``.
        connection: ``pty`` (dom0 reaches it as ``dom.consoles[N]``) or
            ``socket`` (dom0 listens on the Unix socket ``path`` and proxies
            bytes between one connected client and the channel).
        path: the socket's absolute path, for ``socket`` only (at most
            :data:`UNIX_PATH_MAX` bytes). Who controls it: the user who wrote
            the config; dom0 creates the socket there.
        backend: backend domain (xensim: only dom0, ``0`` or ``Domain-0``).
    """

    name: str
    connection: str
    path: str | None = None
    backend: str = "0"

    def validate(self) -> None:
        """Raises: ConfigError: a bad name, connection, path or backend (the message
        starts with ``channel`` and names the channel)."""
        problem = _channel_text_problem(self.name)
        if problem is None and (len(self.name) > 64 or not self.name.isascii()):
            problem = "must be 1..64 ASCII characters"
        if problem is not None:
            raise ConfigError(f"channel name {self.name!r}: {problem}")
        if self.connection not in CHANNEL_CONNECTIONS:
            raise ConfigError(f"channel {self.name}: unknown channel connection "
                              f"'{self.connection}' (expected pty or socket)")
        if self.backend not in ("0", "Domain-0"):
            raise ConfigError(f"channel {self.name}: backend {self.backend!r}: xensim serves "
                              "channels from dom0 only (0 or Domain-0)")
        if self.connection == "pty":
            if self.path is not None:
                raise ConfigError(f"channel {self.name}: path= is only used with "
                                  "connection=socket")
            return
        if self.path is None:
            raise ConfigError(f"channel {self.name}: channel connection 'socket' requires "
                              "path=..")
        problem = _channel_text_problem(self.path)
        if problem is None and not self.path.startswith("/"):
            problem = "must be absolute (dom0 creates the socket; its cwd is not yours)"
        if problem is None and len(self.path.encode("utf-8", "surrogateescape")) > UNIX_PATH_MAX:
            problem = f"is longer than a Unix socket path may be ({UNIX_PATH_MAX} bytes)"
        if problem is not None:
            raise ConfigError(f"channel {self.name}: path {self.path!r} {problem}")


@dataclass
class GuestConfig:
    """A guest domain, as ``xl create`` would build it.

    Args:
        name: unique on the host (mandatory).
        kernel: the guest program: ``"module:function"`` naming an async
            function ``main(guest)``, or the function itself.
        memory: initial RAM in MiB.
        maxmem: maximum RAM in MiB (default ``memory``).
        vcpus: vCPUs online at boot.
        maxvcpus: vCPUs that exist (default ``vcpus``).
        cpus: hard affinity CPULIST (``"0-3,^1"``), or one per vCPU; ``None``
            means no pinning.
        cpu_weight: credit scheduler weight, 1..65535.
        cap: percent of one pCPU, 0 = uncapped.
        extra: string passed to the guest program (``guest.extra``).
        cmdline: full command line (xl semantics: overrides ``extra``).
        on_poweroff, on_reboot, on_crash, on_watchdog: shutdown actions.
        disks, vifs: devices attached at create time.
        channels: named secondary consoles; channel ``i`` becomes
            ``device/console/<i+1>``.
        uuid: ``/vm/<uuid>``; random when ``None``.
        max_event_channels, max_grant_frames, max_maptrack_frames: limits.
    """

    name: str
    kernel: str | Callable[..., Any] = ""
    memory: int = 32
    maxmem: int | None = None
    vcpus: int = 1
    maxvcpus: int | None = None
    cpus: str | list[str] | None = None
    cpu_weight: int = 256
    cap: int = 0
    extra: str = ""
    cmdline: str | None = None
    on_poweroff: Action = Action.DESTROY
    on_reboot: Action = Action.RESTART
    on_crash: Action = Action.DESTROY
    on_watchdog: Action = Action.DESTROY
    disks: list[DiskSpec] = field(default_factory=list)
    vifs: list[VifSpec] = field(default_factory=list)
    channels: list[ChannelSpec] = field(default_factory=list)
    uuid: str | None = None
    max_event_channels: int = 1023
    max_grant_frames: int = 64
    max_maptrack_frames: int = 1024

    @property
    def max_memory(self) -> int:
        """maxmem, defaulting to memory (MiB)."""
        return self.maxmem if self.maxmem is not None else self.memory

    @property
    def max_vcpus(self) -> int:
        """maxvcpus, defaulting to vcpus."""
        return self.maxvcpus if self.maxvcpus is not None else self.vcpus

    def validate(self) -> None:
        """Check every field; raise :class:`ConfigError` naming the first bad one."""
        if not self.name or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", self.name):
            raise ConfigError(
                f"name {self.name!r}: expected 1-64 characters of letters, digits, '_.-'")
        if not self.kernel:
            raise ConfigError("kernel: expected \"module:function\" naming the guest program")
        if isinstance(self.kernel, str) and not re.fullmatch(
                r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", self.kernel):
            raise ConfigError(f"kernel {self.kernel!r}: expected \"module:function\"")
        if not 1 <= self.memory <= 1 << 20:
            raise ConfigError(f"memory {self.memory}: expected 1..1048576 (MiB)")
        if self.max_memory < self.memory:
            raise ConfigError(f"maxmem {self.maxmem}: must be >= memory ({self.memory})")
        if not 1 <= self.vcpus <= 128:
            raise ConfigError(f"vcpus {self.vcpus}: expected 1..128")
        if not self.vcpus <= self.max_vcpus <= 128:
            raise ConfigError(f"maxvcpus {self.maxvcpus}: expected vcpus..128")
        if not 1 <= self.cpu_weight <= 65535:
            raise ConfigError(f"cpu_weight {self.cpu_weight}: expected 1..65535")
        if not 0 <= self.cap <= 100 * self.max_vcpus:
            raise ConfigError(f"cap {self.cap}: expected 0..{100 * self.max_vcpus} "
                              "(percent of one CPU, 0 = uncapped)")
        for key in ("on_poweroff", "on_reboot", "on_crash", "on_watchdog"):
            value = getattr(self, key)
            try:
                setattr(self, key, Action(value))
            except ValueError:
                choices = ", ".join(a.value for a in Action)
                raise ConfigError(f"{key} {value!r}: expected one of {choices}") from None
        seen_vdev: set[str] = set()
        for d in self.disks:
            if not d.vdev:
                raise ConfigError("disk: vdev is mandatory")
            if d.vdev in seen_vdev:
                raise ConfigError(f"disk vdev {d.vdev!r} given twice")
            seen_vdev.add(d.vdev)
            if d.access not in ("rw", "ro"):
                raise ConfigError(f"disk {d.vdev} access {d.access!r}: expected rw or ro")
        devids: set[int] = set()
        for i, v in enumerate(self.vifs):
            v.validate()
            devid = v.devid if v.devid is not None else i
            if devid in devids:
                raise ConfigError(f"vif devid {devid} given twice")
            devids.add(devid)
        paths: set[str] = set()
        for c in self.channels:
            c.validate()
            if c.path is not None:
                if c.path in paths:
                    raise ConfigError(f"channel path {c.path!r} given twice (one socket "
                                      "serves one channel)")
                paths.add(c.path)
        for key in ("max_event_channels", "max_grant_frames", "max_maptrack_frames"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} {getattr(self, key)}: expected a positive number")
