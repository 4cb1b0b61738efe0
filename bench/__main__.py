"""``python -m bench NAME [--quick]``: run one benchmark and print its report."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import bench


def available() -> list[str]:
    """Names of the benchmarks that exist (modules in bench/ not starting with _)."""
    modules = pkgutil.iter_modules(bench.__path__)
    return sorted(m.name for m in modules if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("name", choices=names, help="which benchmark to run")
    parser.add_argument("--quick", action="store_true",
                        help="a short run (for smoke tests; figures are noisier)")
    args = parser.parse_args(argv)
    module = importlib.import_module(f"bench.{args.name}")
    report = module.run(quick=args.quick)
    print(report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
