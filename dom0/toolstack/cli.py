"""The ``xensim`` command line.

Each verb is a function registered in :data:`VERBS` with its own argparse
sub-parser, so ``xensim --help`` lists exactly the verbs that exist and
``xensim VERB --help`` explains each one. Exit codes a script can rely on:

* 0 -- success
* 1 -- the operation failed (the message says why)
* 2 -- bad usage (argparse's convention)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class Verb:
    """One CLI verb: its name, one-line help, how to add its arguments, and
    the function that runs it (returns the exit code)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


VERBS: dict[str, Verb] = {}


def verb(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]
         = lambda p: None) -> Callable[[Callable[[argparse.Namespace], int]],
                                       Callable[[argparse.Namespace], int]]:
    """Register a CLI verb (decorator)."""

    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        VERBS[name] = Verb(name, help, add_arguments, fn)
        return fn

    return register


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per registered verb."""
    parser = argparse.ArgumentParser(
        prog="xensim",
        description="xensim: a simulated Xen-style split-driver hypervisor, on trio.",
        epilog="Run 'xensim VERB --help' for a verb's options.",
    )
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("xensim")
    except PackageNotFoundError:  # running from a source tree without install
        ver = "unknown"
    parser.add_argument("--version", action="version", version=f"xensim {ver}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", title="verbs")
    for v in VERBS.values():
        p = sub.add_parser(v.name, help=v.help, description=v.help)
        v.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``xensim`` console script."""
    from dom0.toolstack import verbs as _verbs  # noqa: F401  (registers the verbs)

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return VERBS[args.verb].run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
