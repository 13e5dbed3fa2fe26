"""``gcnn exactness``: is a model exactly flip-equivariant at an input size?"""

from __future__ import annotations

import argparse

import torch

from gcnn.exactness import flip_exactness
from gcnn.models import list_models
from gcnn.sources import build_model, parse_model_kwargs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "exactness",
        help="check whether the flip commutes exactly with a model at an input size",
        description="Follow which input columns every activation column reads at one input "
        "size and say whether the flipped twin sees the mirror image of what the model sees "
        "(the flip commutes exactly), which op breaks it, and the nearest exact widths. Exit "
        "code 0 when exact, 1 when not.",
    )
    p.add_argument(
        "--arch",
        required=True,
        help=f"the model: a gcnn name ({', '.join(list_models())}), a torchvision name, "
        "timm:<name>, or package.module:callable",
    )
    p.add_argument("--size", type=int, nargs="+", required=True, help="W, or H W")
    p.add_argument("--model-kwargs", default="{}", help="JSON keyword arguments of the builder")
    p.add_argument("--weights", help="checkpoint to load (the verdict does not depend on it)")
    p.add_argument("--in-channels", type=int, help="input channels (default: the first conv's)")
    p.add_argument(
        "--certify",
        action="store_true",
        help="also run the numerical check: the flipped twin on random float64 images against "
        "the model on their mirror images, op by op (two forward passes)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gcnn.commands import UsageError

    if len(args.size) > 2 or min(args.size) < 1:
        raise UsageError("--size takes one or two positive integers (W, or H W)")
    size = args.size[0] if len(args.size) == 1 else tuple(args.size)
    model, source = build_model(
        args.arch, args.weights, parse_model_kwargs(args.model_kwargs), export=False
    )
    try:
        report = flip_exactness(model, size, in_channels=args.in_channels)
    except ValueError as err:
        raise UsageError(f"{source.spec}: {err}") from err
    print(report)
    if args.certify:
        print(_certify(model, report.input_size, args.in_channels, report.exact))
    return 0 if report.exact else 1


def _certify(
    model: torch.nn.Module, size: tuple[int, int], channels: int | None, exact: bool
) -> str:
    from gcnn.exactness import _infer_in_channels
    from gcnn.exactness_check import numerical_flip_check

    plain = model.export() if callable(getattr(model, "export", None)) else model
    plain = plain.double().eval()
    c = channels or _infer_in_channels(plain)
    x = torch.randn(1, c, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    check = numerical_flip_check(plain, x)
    verdict = "exact" if check.exact else "not exact"
    agrees = "agrees" if check.exact == exact else "DISAGREES (please report this)"
    line = (
        f"numerical check (float64, {len(check.errors)} ops, largest error "
        f"{check.max_error:.1e}): {verdict}, {agrees}"
    )
    if check.breaking:
        first = check.breaking[0]
        line += f"; first op off: {first.module or '<root>'} ({first.op})"
    return line
