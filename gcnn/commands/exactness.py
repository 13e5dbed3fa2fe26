"""``gcnn exactness``: is a model exactly flip-equivariant at an input size?"""

from __future__ import annotations

import argparse

from gcnn.exactness import flip_exactness
from gcnn.models import create_model, list_models


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
        raise ValueError("--size takes one or two positive integers (W, or H W)")
    size = args.size[0] if len(args.size) == 1 else tuple(args.size)
    report = flip_exactness(create_model(args.arch), size)
    print(report)
    return 0 if report.exact else 1
