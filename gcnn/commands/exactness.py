"""``gcnn exactness``: is a model exactly flip-equivariant at an input size?"""

from __future__ import annotations

import argparse

from gcnn.errors import UsageError
from gcnn.exactness import flip_exactness
from gcnn.models import create_model, get_builder, list_models


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "exactness",
        help="check the exactness rule of a model at an input size",
        description="Walk every strided conv and pool of a registry model at one input size "
        "and say whether the flip commutes exactly, which op breaks it, and the nearest "
        "exact widths.",
    )
    p.add_argument("--arch", required=True, help=f"one of: {', '.join(list_models())}")
    p.add_argument("--size", type=int, nargs="+", required=True, help="W, or H W")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if len(args.size) > 2 or min(args.size) < 1:
        raise UsageError("--size takes one or two positive integers (W, or H W)")
    size = args.size[0] if len(args.size) == 1 else tuple(args.size)
    try:
        get_builder(args.arch)
    except ValueError as err:  # the registry's "unknown model …; known models: …"
        raise UsageError(str(err)) from None
    model = create_model(args.arch)
    try:
        report = flip_exactness(model, size)
    except ValueError as err:  # "the model cannot run at input size …"
        raise UsageError(f"--size {' '.join(map(str, args.size))}: {err}") from err
    print(report)
    return 0 if report.exact else 1
