"""The CLI verbs. Each registers itself with :func:`dom0.toolstack.cli.verb`.

Most verbs are ``xl``'s, talking to a running ``xensim host`` over its
control socket (:mod:`dom0.toolstack.client`); ``host`` runs that daemon;
``run`` and ``demo`` boot a private host in-process; ``xenstored`` runs a
standalone xenstored. Exit codes (see docs/cli.md): 0 success, 1 failure
(host not running, unknown domain, bad config, the operation failed), 2
usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import Any

from dom0.toolstack.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, verb
from dom0.toolstack.paths import default_xenstored_socket

CONTROL_HELP = ("control socket of the running host (default: $XENSIM_CONTROL, else "
                "<runtime dir>/control)")
EXIT_HELP = ("exit status: 0 success; 1 failure (host not running, unknown domain, bad "
             "config, operation failed; the message on stderr says which); 2 usage error")


def _err(message: str) -> None:
    print(f"xensim: {message}", file=sys.stderr)


# -- plumbing shared by the host-talking verbs --------------------------------------------------


def _control_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control", metavar="PATH", default=None, help=CONTROL_HELP)
    p.epilog = EXIT_HELP


def _with_args(*adders: Callable[[argparse.ArgumentParser], None]
               ) -> Callable[[argparse.ArgumentParser], None]:
    def add(p: argparse.ArgumentParser) -> None:
        for a in adders:
            a(p)
        _control_arg(p)
    return add


def _remote(fn: Callable[[Any, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Connect, run ``fn(client, args)``, turn errors into messages and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        from dom0.toolstack.client import HostNotRunning, RemoteError, connect

        try:
            with connect(args.control) as client:
                return fn(client, args)
        except HostNotRunning as exc:
            _err(str(exc))
        except RemoteError as exc:
            _err(str(exc))
        except BrokenPipeError:
            _err("the xensim host closed the connection")
        return EXIT_FAILED

    run.__doc__ = fn.__doc__
    return run


def _ask(op: str, body: dict[str, Any], args: argparse.Namespace) -> int:
    """Send one request to the host daemon and print nothing: status 0 once it
    is done, errors as :func:`_remote` reports them."""

    def go(client: Any, _args: argparse.Namespace) -> int:
        client.request(op, body)
        return EXIT_OK

    return _remote(go)(args)


def _domain(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN", help="domain name or id")


# -- host ---------------------------------------------------------------------------------------


def _host_args(p: argparse.ArgumentParser) -> None:
    from dom0.toolstack.client import default_control_path, default_xenstore_path

    p.add_argument("--control", metavar="PATH", default=default_control_path(),
                   help="control socket for the CLI (default: $XENSIM_CONTROL, else "
                   "%(default)s)")
    p.add_argument("--xenstore", metavar="PATH", default=default_xenstore_path(),
                   help="xenstored socket for Xen's tools, e.g. XENSTORED_PATH=PATH "
                   "xenstore-ls / (default: $XENSIM_XENSTORE, else %(default)s)")
    p.add_argument("--no-xenstore", action="store_true", help="do not serve the xenstore socket")
    p.add_argument("--pcpus", type=int, default=2, metavar="N", help="physical CPUs (default 2)")
    p.add_argument("--sched", choices=("credit", "rr"), default="credit",
                   help="hypervisor scheduler (Xen's sched=; default credit)")
    p.add_argument("--memory", type=int, default=4096, metavar="MIB",
                   help="machine memory in MiB (default 4096)")
    p.add_argument("-v", "--verbose", action="store_true", help="log toolstack events")
    p.epilog = ("Runs until SIGINT/SIGTERM, which destroys every guest and removes both "
                "sockets. A stale socket is replaced; a live one is refused (exit 1).")


@verb("host", "run a simulated Xen host in the foreground, controlled by the other verbs",
      _host_args)
def host(args: argparse.Namespace) -> int:
    """Run the host daemon until SIGINT/SIGTERM."""
    import logging

    import trio

    from dom0.toolstack.hostd import run_host

    if args.pcpus < 1:
        _err("--pcpus must be at least 1")
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    return trio.run(lambda: run_host(
        args.control, None if args.no_xenstore else args.xenstore, nr_pcpus=args.pcpus,
        scheduler=args.sched, memory_mib=args.memory))


# -- create / list / lifecycle ------------------------------------------------------------------


def _create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CFG", help="xl.cfg file")
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                   help="extra settings, overriding the file (xl style: 'memory=64' "
                   "'vcpus=2', or several in one argument separated by ';')")
    p.add_argument("-c", dest="console", action="store_true",
                   help="attach to the console after creating (Ctrl-] detaches)")
    p.add_argument("-q", dest="quiet", action="store_true", help="no 'Parsing config' line")
    _control_arg(p)


@verb("create", "create a domain from an xl.cfg file (xl create)", _create_args)
def create(args: argparse.Namespace) -> int:
    """Parse the config locally (file:line errors), then create it on the host."""
    from dom0.toolstack.config import ConfigError
    from dom0.toolstack.xlcfg import dumps_config, load_config

    extra = "\n".join(args.settings) if args.settings else None
    if not args.quiet:
        print(f"Parsing config from {args.config}", file=sys.stderr)
    try:
        config, warnings = load_config(args.config, extra)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILED
    for w in warnings:
        print(w, file=sys.stderr)
    request = {"config": dumps_config(config), "filename": args.config}

    def go(client: Any, a: argparse.Namespace) -> int:
        if not a.console:
            result = client.request("create", request)
            print(f"xensim: created {result['name']} as domain {result['domid']}",
                  file=sys.stderr)
            return EXIT_OK
        return _console_session(client, "create", {**request, "console": True})

    return _remote(go)(args)


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("domains", nargs="*", metavar="DOMAIN", help="only these domains")
    _control_arg(p)


@verb("list", "list domains in xl's format (Name ID Mem VCPUs State Time(s))", _list_args)
@_remote
def list_(client: Any, args: argparse.Namespace) -> int:
    """``xl list``."""
    from dom0.toolstack.formats import format_list

    print(format_list(client.request("list", {"domains": args.domains})))
    return EXIT_OK


@verb("destroy", "destroy a domain immediately (xl destroy)", _with_args(_domain))
@_remote
def destroy(client: Any, args: argparse.Namespace) -> int:
    """``xl destroy DOMAIN``."""
    client.request("destroy", {"domain": args.domain})
    return EXIT_OK


def _shutdown_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN", nargs="?", help="domain name or id")
    p.add_argument("-a", "--all", action="store_true", help="every guest")
    p.add_argument("-w", "--wait", action="store_true",
                   help="wait until the domain(s) have shut down (and been cleaned up)")
    _control_arg(p)


@verb("shutdown", "ask a domain to power off through control/shutdown (xl shutdown)",
      _shutdown_args)
def shutdown(args: argparse.Namespace) -> int:
    """``xl shutdown [-a] [-w] DOMAIN``."""
    if args.all == (args.domain is not None):
        _err("shutdown: give a DOMAIN or -a (not both)")
        return EXIT_USAGE

    return _ask("shutdown", {"domain": args.domain, "all": args.all, "wait": args.wait}, args)


def _reboot_args(p: argparse.ArgumentParser) -> None:
    _domain(p)
    p.add_argument("-w", "--wait", action="store_true",
                   help="wait until the new domain (new domid) is running")


@verb("reboot", "ask a domain to reboot; it comes back with a new domid (xl reboot)",
      _with_args(_reboot_args))
@_remote
def reboot(client: Any, args: argparse.Namespace) -> int:
    """``xl reboot [-w] DOMAIN``."""
    result = client.request("reboot", {"domain": args.domain, "wait": args.wait})
    if args.wait and result.get("new_domid") is not None:
        print(f"xensim: rebooted as domain {result['new_domid']}", file=sys.stderr)
    return EXIT_OK


@verb("pause", "pause a domain (xl pause)", _with_args(_domain))
@_remote
def pause(client: Any, args: argparse.Namespace) -> int:
    """``xl pause DOMAIN``."""
    client.request("pause", {"domain": args.domain})
    return EXIT_OK


@verb("unpause", "unpause a domain (xl unpause)", _with_args(_domain))
@_remote
def unpause(client: Any, args: argparse.Namespace) -> int:
    """``xl unpause DOMAIN``."""
    client.request("unpause", {"domain": args.domain})
    return EXIT_OK


# -- console ------------------------------------------------------------------------------------


def _console_session(client: Any, op: str, request: dict[str, Any]) -> int:
    from dom0.toolstack.client import run_console

    def on_event(event: dict[str, Any]) -> None:
        created = event.get("created")
        if created:
            print(f"xensim: created {created['name']} as domain {created['domid']}",
                  file=sys.stderr)

    result = run_console(client, op, request, sys.stdin.fileno(), sys.stdout.buffer,
                         on_event)
    message = result.get("message") if isinstance(result, dict) else None
    if message:  # a secondary console that went away under the session
        _err(str(message))
        # unplugged or its domain gone: the session simply ended, as the primary
        # console's does when the domain goes; a ring the guest corrupted is an error
        if result.get("reason") == "broken":
            return EXIT_FAILED
    return EXIT_OK


def _console_args(p: argparse.ArgumentParser) -> None:
    _domain(p)
    p.add_argument("-n", dest="num", type=int, default=0, metavar="NUM",
                   help="console number: 0 the primary console (default), N >= 1 "
                   "secondary console N (channel N-1 of the xl.cfg channel= list)")
    p.add_argument("-t", dest="type", choices=("pv", "serial"), default="pv",
                   help="console type: pv (the default; xensim guests have no serial)")


@verb("console", "attach to a domain's console; Ctrl-] detaches (xl console)",
      _with_args(_console_args))
def console(args: argparse.Namespace) -> int:
    """``xl console [-t pv] [-n NUM] DOMAIN``: output to stdout, stdin to the guest."""
    if args.type == "serial":
        _err("console -t serial: xensim guests have no emulated serial console; "
             "use -t pv (the default)")
        return EXIT_FAILED
    if args.num < 0:
        _err(f"console -n {args.num}: the console number must be 0 or more")
        return EXIT_USAGE

    def go(client: Any, a: argparse.Namespace) -> int:
        request: dict[str, Any] = {"domain": a.domain}
        if a.num:
            request["num"] = a.num
        return _console_session(client, "console", request)

    return _remote(go)(args)


# -- memory, info -------------------------------------------------------------------------------

_MEM_RE = re.compile(r"^(\d+)([bBkKmMgGtT]?)$")
_MEM_SHIFT = {"b": -10, "k": 0, "m": 10, "g": 20, "t": 30}


def parse_memory_kib(text: str) -> int:
    """``xl mem-set`` units: a number, KiB by default, suffix ``b k m g t``.

    Raises:
        ValueError: not ``<digits>[bkmgt]``.
    """
    m = _MEM_RE.match(text.strip())
    if not m:
        raise ValueError(f"invalid memory size {text!r} (expected e.g. 65536, 64m, 1g)")
    shift = _MEM_SHIFT[(m.group(2) or "k").lower()]
    n = int(m.group(1))
    return n << shift if shift >= 0 else n >> -shift


def _mem_args(p: argparse.ArgumentParser) -> None:
    _domain(p)
    p.add_argument("mem", metavar="MEM", help="new target: KiB, or with a b/k/m/g/t suffix")


@verb("mem-set", "set a domain's balloon target (memory/target) (xl mem-set)",
      _with_args(_mem_args))
def mem_set(args: argparse.Namespace) -> int:
    """``xl mem-set DOMAIN MEM``."""
    try:
        kib = parse_memory_kib(args.mem)
    except ValueError as exc:
        _err(str(exc))
        return EXIT_USAGE

    return _ask("mem-set", {"domain": args.domain, "kib": kib}, args)


@verb("info", "show the host's properties in xl info's format", _control_arg)
@_remote
def info(client: Any, args: argparse.Namespace) -> int:
    """``xl info``."""
    from dom0.toolstack.formats import format_info

    print(format_info(client.request("info")))
    return EXIT_OK


# -- devices ------------------------------------------------------------------------------------


def _attach(op: str, check: Callable[[str], object], args: argparse.Namespace) -> int:
    """Hot-plug: join the spec arguments with ',', check them here (a bad spec
    never reaches the host), then ask the host daemon to ``op`` it."""
    from dom0.toolstack.config import ConfigError

    spec = ",".join(args.spec)
    try:
        check(spec)
    except ConfigError as exc:
        _err(f"{op}: {exc}")
        return EXIT_FAILED

    return _ask(op, {"domain": args.domain, "spec": spec}, args)


def _block_attach_args(p: argparse.ArgumentParser) -> None:
    _domain(p)
    p.add_argument("spec", nargs="+", metavar="DISKSPEC",
                   help="xl disk spec, e.g. 'format=raw,vdev=xvdb,access=rw,target=/img' "
                   "(several arguments are joined with ',')")


@verb("block-attach", "hot-plug a disk into a running domain (xl block-attach)",
      _with_args(_block_attach_args))
def block_attach(args: argparse.Namespace) -> int:
    """``xl block-attach DOMAIN DISKSPEC``."""
    from dom0.toolstack.xlcfg import parse_disk_spec

    return _attach("block-attach", parse_disk_spec, args)


def _block_detach_args(p: argparse.ArgumentParser) -> None:
    _domain(p)
    p.add_argument("vdev", metavar="VDEV", help="the disk: xvdb, or its device number")
    p.add_argument("--force", action="store_true",
                   help="remove it without waiting for the guest")


@verb("block-detach", "hot-unplug a disk (xl block-detach)", _with_args(_block_detach_args))
@_remote
def block_detach(client: Any, args: argparse.Namespace) -> int:
    """``xl block-detach [--force] DOMAIN VDEV``."""
    client.request("block-detach", {"domain": args.domain, "vdev": args.vdev,
                                    "force": args.force})
    return EXIT_OK


def _net_attach_args(p: argparse.ArgumentParser) -> None:
    _domain(p)
    p.add_argument("spec", nargs="*", metavar="VIFSPEC",
                   help="xl vif spec parts, e.g. mac=00:16:3e:00:00:01 bridge=xenbr0 "
                   "(joined with ',')")


@verb("network-attach", "hot-plug a network interface (xl network-attach)",
      _with_args(_net_attach_args))
def network_attach(args: argparse.Namespace) -> int:
    """``xl network-attach DOMAIN [VIFSPEC...]``."""
    from dom0.toolstack.xlcfg import parse_vif_spec

    return _attach("network-attach", lambda spec: parse_vif_spec(spec).validate(), args)


def _net_detach_args(p: argparse.ArgumentParser) -> None:
    _domain(p)
    p.add_argument("device", metavar="DEVID|MAC", help="the vif's devid or MAC address")


@verb("network-detach", "hot-unplug a network interface (xl network-detach)",
      _with_args(_net_detach_args))
@_remote
def network_detach(client: Any, args: argparse.Namespace) -> int:
    """``xl network-detach DOMAIN DEVID|MAC``."""
    client.request("network-detach", {"domain": args.domain, "device": args.device})
    return EXIT_OK


# -- scheduler ----------------------------------------------------------------------------------


def _sched_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--domain", metavar="DOMAIN", help="show (or with -w/-c set) "
                   "this domain's parameters")
    p.add_argument("-w", "--weight", type=int, metavar="WEIGHT", help="weight, 1..65535")
    p.add_argument("-c", "--cap", type=int, metavar="CAP",
                   help="cap in %% of one pCPU (0 = none)")
    _control_arg(p)


@verb("sched-credit", "show or set credit scheduler parameters (xl sched-credit)", _sched_args)
def sched_credit(args: argparse.Namespace) -> int:
    """``xl sched-credit [-d DOMAIN [-w WEIGHT] [-c CAP]]``."""
    if args.domain is None and (args.weight is not None or args.cap is not None):
        _err("sched-credit: must specify a domain (-d) with -w or -c")
        return EXIT_USAGE

    def go(client: Any, a: argparse.Namespace) -> int:
        from dom0.toolstack.formats import format_sched_credit

        result = client.request("sched-credit", {"domain": a.domain, "weight": a.weight,
                                                 "cap": a.cap})
        setting = a.weight is not None or a.cap is not None
        if not setting and (result["pools"] is None or result["pools"]):
            print(format_sched_credit(result["pools"], result["rows"]))
        return EXIT_OK

    return _remote(go)(args)


def _vcpu_list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("domains", nargs="*", metavar="DOMAIN", help="only these domains")
    _control_arg(p)


@verb("vcpu-list", "list vCPUs: pCPU, state, time, affinity (xl vcpu-list)", _vcpu_list_args)
@_remote
def vcpu_list(client: Any, args: argparse.Namespace) -> int:
    """``xl vcpu-list [DOMAIN...]``."""
    from dom0.toolstack.formats import format_vcpu_list

    result = client.request("vcpu-list", {"domains": args.domains})
    print(format_vcpu_list(result["rows"], result["nr_cpus"]))
    return EXIT_OK


_VCPU_RE = re.compile(r"[0-9]+")
_VCPU_MAX = 2**32 - 1


def parse_vcpu_arg(text: str) -> int | str:
    """``xl vcpu-pin``'s VCPU argument: a vCPU number (decimal), or ``"all"``.

    Raises:
        ValueError: anything else (xl: ``Invalid argument ... as VCPU``).
    """
    if text == "all":
        return "all"
    if not _VCPU_RE.fullmatch(text) or int(text) > _VCPU_MAX:
        raise ValueError(f"invalid VCPU '{text}' (expected a vCPU number or 'all')")
    return int(text)


def _vcpu_pin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true",
                   help="as xl, undo a temporary pinning made by the guest kernel; xensim "
                   "guests cannot make one, so this only refuses VCPU 'all' (as xl does)")
    p.add_argument("-i", "--ignore-global-affinity-masks", action="store_true",
                   help="accepted for xl compatibility: xensim has no xl.conf global "
                   "affinity masks to ignore")
    _domain(p)
    p.add_argument("vcpu", metavar="VCPU", help="a vCPU number, or 'all'")
    p.add_argument("hard", metavar="HARD",
                   help="hard affinity: a CPULIST as in xl.cfg cpus= ('0-3', '0,2', "
                   "'all,^1', 'all'), or '-' to leave it unchanged")
    p.add_argument("soft", metavar="SOFT", nargs="?",
                   help="soft affinity: '-' (the default) or 'all' only; soft affinity is "
                   "not simulated")


@verb("vcpu-pin", "set which pCPUs a vCPU may run on: its hard affinity (xl vcpu-pin)",
      _with_args(_vcpu_pin_args))
def vcpu_pin(args: argparse.Namespace) -> int:
    """``xl vcpu-pin [-f] DOMAIN VCPU|all HARD|-|all [SOFT|-|all]``; prints nothing.

    The VCPU argument is checked here; the CPU lists, the vCPU's existence and
    everything else by the host, which changes nothing unless all is well.
    """
    try:
        vcpu = parse_vcpu_arg(args.vcpu)
    except ValueError as exc:
        _err(f"vcpu-pin: {exc}")
        return EXIT_FAILED
    request = {"domain": args.domain, "vcpu": vcpu, "force": args.force,
               "hard": None if args.hard == "-" else args.hard,
               "soft": None if args.soft in (None, "-") else args.soft}

    return _ask("vcpu-pin", request, args)


_INT_MAX = 2**31 - 1


def parse_vcpu_count(text: str) -> int:
    """``xl vcpu-set``'s count: a decimal number (the host checks its range).

    Raises:
        ValueError: anything else (xl: ``Error: Invalid argument.``).
    """
    if not _VCPU_RE.fullmatch(text) or int(text) > _INT_MAX:
        raise ValueError(f"invalid vCPU count '{text}' (expected a number)")
    return int(text)


def _vcpu_set_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--ignore-host", action="store_true",
                   help="allow more vCPUs online than the host has pCPUs (without it, "
                   "growing past the pCPU count is refused, as by xl)")
    _domain(p)
    p.add_argument("vcpus", metavar="N", help="vCPUs to have online: 1..maxvcpus")


@verb("vcpu-set", "set how many of a domain's vCPUs are online (xl vcpu-set)",
      _with_args(_vcpu_set_args))
def vcpu_set(args: argparse.Namespace) -> int:
    """``xl vcpu-set [-i] DOMAIN N``; prints nothing.

    vCPUs 0..N-1 are put online and the others offline; the guest kernel
    follows on its own, so ``list`` and ``vcpu-list`` show the change once
    it has.
    """
    try:
        n = parse_vcpu_count(args.vcpus)
    except ValueError as exc:
        _err(f"vcpu-set: {exc}")
        return EXIT_FAILED
    return _ask("vcpu-set", {"domain": args.domain, "vcpus": n,
                             "ignore_host": args.ignore_host}, args)


def _domains_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("domains", nargs="+", metavar="DOMAIN", help="domain names or ids")
    _control_arg(p)


def _device_list_verb(op: str, what: str, whats: str) -> None:
    """Register ``xl <op> DOMAIN...``: the host's rows for ``op``, in xl's columns
    (``formats.format_<op with _>``)."""

    def device_list(client: Any, args: argparse.Namespace) -> int:
        from dom0.toolstack import formats

        result = client.request(op, {"domains": args.domains})
        print(getattr(formats, "format_" + op.replace("-", "_"))(result["rows"]))
        return EXIT_OK

    device_list.__doc__ = f"``xl {op} DOMAIN...``: xl's columns, one line per {what}."
    verb(op, f"list a domain's {whats} (xl {op})", _domains_args)(_remote(device_list))


_device_list_verb("channel-list", "channel", "channels (named secondary consoles)")
_device_list_verb("block-list", "virtual disk", "virtual disks")
_device_list_verb("network-list", "virtual network interface", "virtual network interfaces")


def _top_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--delay", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between updates (default 1)")
    p.add_argument("-i", "--iterations", type=int, default=0, metavar="N",
                   help="stop after N updates (default: until Ctrl-C)")
    p.add_argument("-b", "--batch", action="store_true",
                   help="batch mode: print frames one after another instead of redrawing")
    _control_arg(p)


@verb("top", "a live per-domain view of CPU, memory, vCPUs, disks and network (xentop)",
      _top_args)
def top(args: argparse.Namespace) -> int:
    """``xl top``: redraws in place on a terminal; batch mode for scripts."""
    if args.delay < 0.01 or args.iterations < 0:
        _err("top: --delay must be >= 0.01 and --iterations >= 0")
        return EXIT_USAGE

    def go(client: Any, a: argparse.Namespace) -> int:
        from dom0.toolstack.top import CLEAR, format_frame

        batch = a.batch or a.iterations > 0 or not sys.stdout.isatty()
        prev = None
        first = True
        for snap in client.stream("top", {"delay": a.delay, "iterations": a.iterations}):
            frame = format_frame(snap, prev)
            if batch:
                print(frame if first else "\n" + frame, flush=True)
            else:
                sys.stdout.write(CLEAR + frame + "\n")
                sys.stdout.flush()
            prev, first = snap, False
        return EXIT_OK

    return _remote(go)(args)


# -- one-shot hosts -----------------------------------------------------------------------------


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("configs", nargs="+", metavar="CFG", help="xl.cfg files, one per guest")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="extra setting applied to every config (repeatable)")
    p.add_argument("--pcpus", type=int, default=2, metavar="N", help="physical CPUs (default 2)")
    p.add_argument("--sched", choices=("credit", "rr"), default="credit",
                   help="hypervisor scheduler (default credit)")
    p.epilog = ("Boots a private host, creates the guests, prints their consoles as "
                "'[name] line', and exits when all have shut down. Exit status: 0 if every "
                "guest powered off by itself; 1 if one crashed, failed to start or a config "
                "is invalid; 130 on Ctrl-C (the guests are destroyed).")


@verb("run", "one-shot: boot a host, run guests from xl.cfg files, exit when they are done",
      _run_args)
def run(args: argparse.Namespace) -> int:
    """``xensim run CFG [CFG...]``."""
    from dom0.demo import run_main
    from dom0.toolstack.config import ConfigError

    try:
        return run_main(args.configs, "\n".join(args.settings) or None, nr_pcpus=args.pcpus,
                        scheduler=args.sched)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILED


@verb("demo", "boot a host and run the bundled example guests (console, CPU, disk, network)")
def demo(args: argparse.Namespace) -> int:
    """Run :mod:`dom0.demo`."""
    from dom0.demo import main

    return main()


# -- xenstored ----------------------------------------------------------------------------------


def _xenstored_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--socket",
        default=str(default_xenstored_socket()),
        help="Unix socket to listen on (default: %(default)s). Point Xen's tools at it "
        "with XENSTORED_PATH=SOCKET xenstore-ls /",
    )


@verb("xenstored", "run a standalone xenstored (Xen's wire protocol) in the foreground",
      _xenstored_args)
def xenstored(args: argparse.Namespace) -> int:
    """Serve XenStore on a Unix socket until interrupted."""
    import os

    from dom0.toolstack.control import is_live
    from dom0.xenstored.unix_server import run_standalone

    sock = args.socket
    os.makedirs(os.path.dirname(os.path.abspath(sock)), mode=0o700, exist_ok=True)
    if os.path.exists(sock):
        if is_live(sock):
            print(f"xensim xenstored: something is already listening on {sock}",
                  file=sys.stderr)
            return EXIT_FAILED
        os.unlink(sock)  # stale, left by a process that died
    print(f"xenstored listening on {sock} (Ctrl-C to stop)", file=sys.stderr)
    return run_standalone(sock)
