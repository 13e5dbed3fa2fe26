"""The ``gcnn`` command. Each sub-command lives in its own module with ``add_parser``.

Errors a user can fix (:class:`gcnn.errors.GcnnError`: bad arguments, missing or broken files,
unfit checkpoints, run folders in use) print one line and exit with code 2; a training run that
stops itself (collapse, divergence) exits with code 3. Any other exception is a bug and keeps
its traceback. Flags are never abbreviated (``--epoch`` is not ``--epochs``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import gcnn
from gcnn.errors import GcnnError, RankEcho, UsageError, one_line

__all__ = ["UsageError", "build_parser", "main"]

#: Modules that each define ``add_parser(subparsers)``; the parser's ``func(args) -> int`` runs it.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "gcnn.commands.check",
    "gcnn.commands.compare",
    "gcnn.commands.demo",
    "gcnn.commands.exactness",
    "gcnn.commands.summarize",
    "gcnn.commands.train",
    "gcnn.commands.tuning",
)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that never matches abbreviated flags and words its errors in one
    line (exit code 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gcnn",
        description="Flip-equivariant GCNNs and tools that test whether CNNs are permuted GCNNs.",
    )
    parser.add_argument("--version", action="version", version=f"gcnn {gcnn.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
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
    except GcnnError as err:
        if not isinstance(err, RankEcho):  # rank 0 reports it
            label = getattr(err, "label", "error")
            print(f"gcnn {args.command}: {label}: {one_line(err)}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"gcnn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
