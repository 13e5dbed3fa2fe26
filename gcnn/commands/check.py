"""``gcnn check``: is a trained CNN a channel permutation of a GCNN? (see gcnn.analysis.check)"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from gcnn.analysis.check import DEFAULT_ALPHAS, validate_alphas
from gcnn.checkpoint import load_weights, read_state_dict
from gcnn.data.datasets import DATASETS
from gcnn.models import get_builder, list_models


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="test whether a trained CNN is a channel permutation of a GCNN",
        description="Merge a model with its horizontally flipped twin after activation "
        "matching: interpolation barriers (plain, BN reset, REPAIR), the structure of the "
        "matched permutations, layerwise equivariance errors and the nearest GCNN. Prints a "
        "table and writes report.json, report.md and PNG plots into --out.",
    )
    p.add_argument(
        "--arch",
        help="a gcnn registry name or a torchvision model name; optional when a gcnn train "
        "sidecar (model.json) sits next to --weights",
    )
    p.add_argument("--weights", help="checkpoint: .safetensors or a torch state dict")
    p.add_argument(
        "--data",
        required=True,
        help=f"one of {', '.join(d for d in DATASETS if d != 'imagefolder')}, a dataset root "
        "with train/ and val/, or a folder of images (flat, or one sub-folder per class)",
    )
    p.add_argument("--data-root", help="root of cifar10 / fashion-mnist files")
    p.add_argument("--image-size", type=int, help="input size (default: the data's own; 224)")
    p.add_argument("--resize", type=int, help="image folders: resize the short side first")
    p.add_argument("--num-images", type=int, default=500, help="images for the statistics")
    p.add_argument("--num-eval", type=int, default=1000, help="images for the evaluation")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument(
        "--alphas",
        type=float,
        nargs="+",
        default=list(DEFAULT_ALPHAS),
        help="interpolation grid (must contain 0, 0.5 and 1)",
    )
    p.add_argument("--model-kwargs", default="{}", help="JSON keyword arguments of the builder")
    p.add_argument("--device", help="default: cuda when available, else cpu")
    p.add_argument("--out", required=True, help="output folder for the report and plots")
    p.set_defaults(func=run)


def _sidecar(weights: str | None) -> dict[str, Any]:
    if weights is None:
        return {}
    for path in (Path(weights).with_suffix(".json"), Path(weights).with_name("model.json")):
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                return {}
    return {}


def _builder(arch: str):  # noqa: ANN202
    if arch in list_models():
        return get_builder(arch)
    if arch in torchvision.models.list_models():
        return lambda **kw: torchvision.models.get_model(arch, weights=None, **kw)
    raise ValueError(
        f"unknown --arch {arch!r}: use a gcnn model ({', '.join(list_models())}) or a "
        "torchvision model name"
    )


def _infer_kwargs(build, state: dict[str, torch.Tensor]) -> dict[str, Any]:  # noqa: ANN001
    """``num_classes`` / ``in_channels`` read off the checkpoint's last linear and first conv."""
    model = build()
    kwargs: dict[str, Any] = {}
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if linears and f"{linears[-1]}.weight" in state:
        classes = state[f"{linears[-1]}.weight"].shape[0]
        if classes != model.get_submodule(linears[-1]).out_features:
            kwargs["num_classes"] = int(classes)
    if convs and f"{convs[0]}.weight" in state:
        channels = state[f"{convs[0]}.weight"].shape[1]
        if channels != model.get_submodule(convs[0]).in_channels:
            kwargs["in_channels"] = int(channels)
    return kwargs


def build_checked_model(
    arch: str | None, weights: str | None, kwargs: dict[str, Any]
) -> tuple[nn.Module, str]:
    """The plain model to check (flip models are exported) and its architecture name."""
    sidecar = _sidecar(weights)
    arch = arch or sidecar.get("arch")
    if arch is None:
        raise ValueError("--arch is required (no model.json sidecar next to --weights)")
    build = _builder(arch)
    if sidecar.get("arch") == arch:
        kwargs = {**sidecar.get("arch_kwargs", {}), **kwargs}
    elif weights is not None:
        kwargs = {**_infer_kwargs(lambda: build(**kwargs), read_state_dict(weights)), **kwargs}
    try:
        model = build(**kwargs)
    except TypeError as err:
        raise ValueError(f"--arch {arch} does not take these arguments {kwargs}: {err}") from err
    if weights is not None:
        load_weights(model, weights)
    export = getattr(model, "export", None)
    return (export() if callable(export) else model).eval(), arch


def run(args: argparse.Namespace) -> int:
    from gcnn.analysis.check import check_flip_symmetry
    from gcnn.analysis.data import load_analysis_data
    from gcnn.analysis.report import summary_table, write_report
    from gcnn.commands import UsageError

    try:
        kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as err:
        raise UsageError(f"--model-kwargs is not JSON: {err}") from err
    from gcnn.devices import resolve_device
    from gcnn.errors import user_input

    for flag in ("image_size", "resize", "num_images", "num_eval", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {value}: must be ≥ 1")
    with user_input("--alphas"):
        alphas = validate_alphas(args.alphas)
    device = resolve_device(args.device)
    with user_input():
        model, arch = build_checked_model(args.arch, args.weights, kwargs)
    with user_input(f"--data {args.data}"):
        data = load_analysis_data(
            args.data,
            root=args.data_root,
            image_size=args.image_size,
            resize=args.resize,
            num_train=args.num_images,
            num_test=args.num_eval,
            batch_size=args.batch_size,
        )
    x = data.train[0][0][:1]
    try:
        with torch.no_grad():
            model.to(device)(x.to(device))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        c, h, w = x.shape[1:]
        if "channels" in first:
            raise UsageError(
                f"{arch} does not take the {c}-channel images of --data {args.data} ({first}): "
                "check the model's in_channels (--model-kwargs) or the data"
            ) from err
        raise UsageError(
            f"{arch} cannot run on {c}-channel images at input size {h}×{w}: {first}; "
            "try a larger --image-size"
        ) from err
    report = check_flip_symmetry(
        model, data.train, data.test, arch=arch, alphas=alphas, device=device
    )
    print(summary_table(report))
    for path in write_report(report, args.out):
        print(f"wrote {path}")
    return 0
