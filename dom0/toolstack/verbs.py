"""The CLI verbs. Each registers itself with :func:`dom0.toolstack.cli.verb`."""

from __future__ import annotations

import argparse
import sys

from dom0.toolstack.cli import EXIT_FAILED, verb
from dom0.toolstack.paths import default_xenstored_socket


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

    from dom0.xenstored.unix_server import run_standalone

    sock = args.socket
    os.makedirs(os.path.dirname(os.path.abspath(sock)), mode=0o700, exist_ok=True)
    if os.path.exists(sock):
        if _socket_is_live(sock):
            print(f"xensim xenstored: something is already listening on {sock}",
                  file=sys.stderr)
            return EXIT_FAILED
        os.unlink(sock)  # stale, left by a process that died
    print(f"xenstored listening on {sock} (Ctrl-C to stop)", file=sys.stderr)
    return run_standalone(sock)


def _socket_is_live(path: str) -> bool:
    """True if a server accepts connections on the Unix socket ``path``."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
        return True


@verb("demo", "boot a host, run two example guests, show `xl list`, shut them down")
def demo(args: argparse.Namespace) -> int:
    """Run :mod:`dom0.demo`."""
    from dom0.demo import main

    return main()
