"""Entry point of the ``lacquer`` console script.

Subcommands register themselves by module name in :data:`COMMANDS`; each module in
``lacquer.commands`` provides ``add_parser(subparsers)`` and ``run(args) -> int`` (the exit code).
Errors derived from :class:`mastering.errors.LacquerError` are printed as one line naming the
file and the problem, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mastering import __version__
from mastering.errors import LacquerError

#: Subcommand name -> module under ``lacquer.commands``.
COMMANDS: dict[str, str] = {
    "analyze": "analyze",
    "master": "master",
    "demo": "demo",
    "render": "render",
    "corpus": "corpus",
    "train": "train",
    "evaluate": "evaluate",
    "feedback": "feedback",
    "serve": "serve",
    "tune": "tune",
    "improve": "improve",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lacquer", description="Lacquer: neural mastering on a Ray render farm."
    )
    parser.add_argument("--version", action="version", version=f"lacquer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f"lacquer.commands.{module}")
        sp = mod.add_parser(sub)
        sp.set_defaults(_run=mod.run, command=name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except LacquerError as exc:
        print(f"lacquer {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lacquer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
