"""The `coarse2fine` command. Each module in this package adds its subcommands via `register`.

Subcommand modules stay thin: parse flags, call the library, print results. User mistakes raise
`coarse2fine.config.UserError` (or FileNotFoundError with a clear message) and become one-line errors.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from coarse2fine.cli._args import Parser, prepare
from coarse2fine.config import UserError
from coarse2fine.fileio import describe_os_error


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="coarse2fine",
        description="Autoregressive image generation with coarse-to-fine token prediction (CTF).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        prepare(args)
        rc = args.func(args)
    except UserError as e:
        print(f"coarse2fine {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # missing or wrong-kind paths, a full disk, no permission: the user's to fix
        print(f"coarse2fine {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"coarse2fine {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
