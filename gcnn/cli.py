"""The ``gcnn`` command. Each sub-command lives in its own module with ``add_parser``.

Errors a user can fix (bad arguments, missing files, unfit checkpoints) print one line and
exit with code 2; they never show a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import gcnn
from gcnn.commands import UsageError
from gcnn.train.regimes import TrainingCollapsed

__all__ = ["UsageError", "build_parser", "main"]

#: Modules that each define ``add_parser(subparsers)``; the parser's ``func(args) -> int`` runs it.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "gcnn.commands.check",
    "gcnn.commands.demo",
    "gcnn.commands.exactness",
    "gcnn.commands.train",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gcnn",
        description="Flip-equivariant GCNNs and tools that test whether CNNs are permuted GCNNs.",
    )
    parser.add_argument("--version", action="version", version=f"gcnn {gcnn.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (UsageError, gcnn.CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"gcnn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingCollapsed as err:
        print(f"gcnn {args.command}: stopped: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"gcnn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
