"""The ``cluster-launcher`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from . import plugins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster-launcher")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="List installed plugins as JSON.")
    p.set_defaults(func=lambda args: print(json.dumps(plugins.describe(), indent=2)) or 0)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
