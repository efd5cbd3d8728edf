"""The `lvlmva` command: argument parsing, one-line errors and Ctrl-C handling."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from lvlmva import __version__
from lvlmva.commands import COMMANDS
from lvlmva.errors import LvlmvaError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvlmva",
        description="Align small vision models with domain knowledge, using an LVLM as critic.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    parser.add_argument("--version", action="version", version=f"lvlmva {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"lvlmva.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"lvlmva.commands.{name}":
                continue  # command not built in this checkout
            raise
        add_command(subparsers, module)
    return parser


def add_command(subparsers: argparse._SubParsersAction, module: ModuleType) -> None:
    """Create the parser of one command module (`lvlmva.commands`): from its `COMMAND`, with the
    flags its `add_arguments` adds and `handler=run`."""
    command = module.COMMAND
    parser = subparsers.add_parser(command.name, help=command.help, description=command.description)
    module.add_arguments(parser)
    parser.set_defaults(handler=module.run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except LvlmvaError as exc:
        label = getattr(exc, "label", "error")  # "detached": work goes on elsewhere
        print(f"lvlmva {args.command}: {label}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"lvlmva {args.command}: {_interrupted(args)}", file=sys.stderr)
        return 130


def _interrupted(args: argparse.Namespace) -> str:
    if getattr(args, "batch", None) == "api":
        return (
            "detached; submitted batches run on at the API (lvlmva batch status); rerun the "
            "same command to collect them without sending their requests again"
        )
    return "interrupted; finished LVLM answers are cached, rerun the same command to resume"


if __name__ == "__main__":
    sys.exit(main())
