"""``gcnn check``: is a trained CNN a channel permutation of a GCNN? (see gcnn.analysis.check)"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gcnn.analysis.check import DEFAULT_ALPHAS, METHODS, validate_alphas
from gcnn.data.datasets import DATASETS
from gcnn.data.preprocessing import INTERPOLATIONS, PRESETS, Preprocessing
from gcnn.sources import ModelSource, build_model, parse_model_kwargs


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
        help="the model: a gcnn registry name, a torchvision name, timm:<name> (pip install "
        "'gcnn[timm]'), or package.module:callable; optional when a gcnn train sidecar "
        "(model.json) sits next to --weights",
    )
    p.add_argument("--weights", help="checkpoint: .safetensors or a torch state dict")
    add_measurement_arguments(p)
    p.set_defaults(func=run)


def add_measurement_arguments(p: argparse.ArgumentParser) -> None:
    """The data, preprocessing and method flags shared by ``gcnn check`` and ``gcnn compare``."""
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
    add_preprocessing_arguments(p)
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="merge curves to measure (default all; the plain one always): plain "
        "interpolation, BN reset, REPAIR folded into BN/conv, REPAIR at every activation",
    )
    p.add_argument(
        "--no-mirror",
        dest="mirror_closed",
        action="store_false",
        help="collect the statistics on the images only, not also on their mirror images "
        "(not recommended: a data set that is not mirror-symmetric then biases the matching)",
    )
    p.add_argument(
        "--probe",
        choices=("activation", "last"),
        default="activation",
        help="where each group is measured: every ReLU-like output carrying it, before pooling "
        "(default), or the last node carrying it on a map ≥ 2 px wide",
    )
    p.add_argument("--device", help="default: cuda when available, else cpu")
    p.add_argument("--out", required=True, help="output folder for the report and plots")


def add_preprocessing_arguments(p: argparse.ArgumentParser) -> None:
    """``--preprocess``, ``--mean``, ``--std``, ``--interpolation``, ``--crop-pct``,
    ``--class-map``."""
    g = p.add_argument_group(
        "preprocessing and labels",
        "how images become model inputs; default: the model's own config for timm: models, the "
        "data set's statistics for cifar10 / fashion-mnist, else the imagenet preset",
    )
    g.add_argument("--preprocess", choices=list(PRESETS), help="a preset (mean, std, crop)")
    g.add_argument("--mean", type=float, nargs="+", help="per-channel mean, 0-1 pixel units")
    g.add_argument("--std", type=float, nargs="+", help="per-channel std, 0-1 pixel units")
    g.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize interpolation")
    g.add_argument(
        "--crop-pct", type=float, help="image folders: resize to size / crop-pct, centre-crop"
    )
    g.add_argument(
        "--class-map",
        help="JSON file {folder name: class index} for class folders (default: numeric "
        "folders are indices, ImageNet synsets the standard 1000-class order, else sorted)",
    )


def default_preprocessing(
    source: ModelSource, model: nn.Module, data: str
) -> tuple[Preprocessing | None, int | None]:
    """The preprocessing and input width a model source implies for ``data`` (before flags)."""
    from gcnn.data.preprocessing import timm_preprocessing

    if source.kind == "timm":
        return timm_preprocessing(model, source.name)
    if data in DATASETS and data != "imagefolder":
        return None, None  # the data set's own statistics
    return PRESETS["imagenet"], None


def resolve_check_preprocessing(
    args: argparse.Namespace, source: ModelSource, model: nn.Module
) -> tuple[Preprocessing | None, int | None]:
    """The preprocessing and default image size for ``gcnn check`` from its flags."""
    from gcnn.data.preprocessing import resolve_preprocessing

    default, size = default_preprocessing(source, model, args.data)
    flags = (args.preprocess, args.mean, args.std, args.interpolation, args.crop_pct)
    if all(f is None for f in flags):
        return default, size
    return (
        resolve_preprocessing(
            default or PRESETS["imagenet"],
            args.preprocess,
            tuple(args.mean) if args.mean else None,
            tuple(args.std) if args.std else None,
            args.interpolation,
            args.crop_pct,
        ),
        size,
    )


def build_checked_model(
    arch: str | None, weights: str | None, kwargs: dict[str, Any]
) -> tuple[nn.Module, str]:
    """The plain model to check (flip models are exported) and its model source string."""
    model, source = build_model(arch, weights, kwargs)
    return model, source.spec


def _fail_fast_on_graph(model: nn.Module, channels: int, size: int, arch: str) -> None:
    """Find the permutation groups on a blank input before any slow step (one line if not)."""
    from gcnn.analysis.graph import UnsupportedGraphError, analyse_graph
    from gcnn.commands import UsageError

    try:
        analyse_graph(model, torch.zeros(1, channels, size, size))
    except UnsupportedGraphError as err:
        raise UsageError(f"{arch}: {err}") from err
    except RuntimeError:
        pass  # too small for the network, or other channels: the model run below says so


def _first_in_channels(model: nn.Module) -> int | None:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


def annotate_report(out: str | Path, extra: dict[str, Any]) -> None:
    """Add ``extra`` keys (model source, preprocessing, labels) to ``out/report.json``."""
    path = Path(out) / "report.json"
    report = json.loads(path.read_text())
    report.update(extra)
    path.write_text(json.dumps(report, indent=2))


@dataclass
class Prepared:
    """What the analysis commands build from their flags before measuring."""

    models: list[nn.Module]
    sources: list[ModelSource]
    data: Any  # gcnn.analysis.data.AnalysisData
    alphas: list[float]
    device: torch.device | str


def prepare(args: argparse.Namespace, weights: list[str | None]) -> Prepared:
    """Validate the flags, build one model per checkpoint in ``weights`` and load the data;
    every user error is one line (exit 2) before any slow step."""
    from gcnn.analysis.data import load_analysis_data
    from gcnn.commands import UsageError
    from gcnn.devices import resolve_device
    from gcnn.errors import user_input

    kwargs = parse_model_kwargs(args.model_kwargs)
    for flag in ("image_size", "resize", "num_images", "num_eval", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {value}: must be ≥ 1")
    with user_input("--alphas"):
        alphas = validate_alphas(args.alphas)
    device = resolve_device(args.device)
    models, sources = [], []
    with user_input():
        for path in weights:
            model, source = build_model(args.arch, path, kwargs)
            models.append(model)
            sources.append(source)
        preprocessing, default_size = resolve_check_preprocessing(args, sources[0], models[0])
        class_map = None
        if args.class_map:
            from gcnn.data.labels import read_class_map

            class_map = read_class_map(args.class_map)
    model, arch = models[0], sources[0].spec
    image_size = args.image_size or default_size
    channels = _first_in_channels(model)
    early_size = image_size or (32 if args.data in DATASETS else 224)
    if channels is not None:
        _fail_fast_on_graph(model, channels, early_size, arch)
    with user_input(f"--data {args.data}"):
        data = load_analysis_data(
            args.data,
            root=args.data_root,
            image_size=image_size,
            resize=args.resize,
            num_train=args.num_images,
            num_test=args.num_eval,
            batch_size=args.batch_size,
            preprocessing=preprocessing,
            class_map=class_map,
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
    return Prepared(models, sources, data, alphas, device)


def source_record(source: ModelSource, weights: str | None) -> dict[str, Any]:
    """The report's description of one model: source, checkpoint and training sidecar."""
    record: dict[str, Any] = {"spec": source.spec, "kind": source.kind, "name": source.name}
    if weights is not None:
        from gcnn.sources import read_sidecar

        record["weights"] = str(weights)
        sidecar = read_sidecar(weights) or {}
        record["run"] = {
            k: sidecar.get(k)
            for k in ("arch", "arch_kwargs", "regime", "seed", "test_acc", "dataset", "epochs")
            if k in sidecar
        }
    return record


def run(args: argparse.Namespace) -> int:
    from gcnn.analysis.check import check_flip_symmetry
    from gcnn.analysis.report import summary_table, write_report

    ready = prepare(args, [args.weights])
    model, source, data = ready.models[0], ready.sources[0], ready.data
    arch, alphas, device = source.spec, ready.alphas, ready.device
    report = check_flip_symmetry(
        model,
        data.train,
        data.test,
        arch=arch,
        alphas=alphas,
        mirror_closed=args.mirror_closed,
        methods=args.methods,
        probe=args.probe,
        device=device,
    )
    print(summary_table(report))
    written = write_report(report, args.out)
    annotate_report(
        args.out,
        {
            "model_source": source_record(source, args.weights),
            "preprocessing": data.preprocessing,
            "labels": data.labels,
        },
    )
    for path in written:
        print(f"wrote {path}")
    return 0
