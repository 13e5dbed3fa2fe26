"""``gcnn train``: train CNN, CNN + invariance loss, or GCNN nets, one per seed.

Example: ``gcnn train --arch vgg11_flip --data fashion-mnist --epochs 30 --seeds 0-3 --out runs/``.
Under ``torchrun --nproc_per_node N`` the same command trains with DDP.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from gcnn.commands import UsageError
from gcnn.data.datasets import DATASETS, load_dataset
from gcnn.models import get_builder
from gcnn.train.config import REGIMES, TrainConfig
from gcnn.train.distributed import init_distributed
from gcnn.train.loop import build_model, train_seed
from gcnn.train.seeds import parse_seeds


def _kwarg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train nets (cnn, cnn+inv or gcnn), one checkpoint per seed",
        description="Train one net per seed with SGD (Nesterov), warm-up then linear decay, "
        "random crop + flip augmentation. Writes OUT/<arch>_<regime>_<data>/seed<N>/"
        "{model.safetensors,model.json,log.jsonl}. Defaults: the published VGG11 recipe.",
    )
    d = TrainConfig()
    g = p.add_argument_group("model and regime")
    g.add_argument("--arch", default=d.arch, help="any registered model (gcnn.list_models())")
    g.add_argument("--regime", choices=REGIMES,
                   help="default: gcnn for a flip architecture, else cnn")  # fmt: skip
    g.add_argument("--width", type=float, help="channel width multiplier (VGG)")
    g.add_argument("--arch-kwarg", type=_kwarg, action="append", default=[], metavar="K=V",
                   help="extra builder keyword (JSON value), repeatable")  # fmt: skip
    g.add_argument("--inv-lambda", type=float, default=d.inv_lambda, help="λ of cnn+inv")
    g.add_argument("--inv-start", type=float, default=d.inv_start,
                   help="fraction of training before the invariance loss starts")  # fmt: skip
    g.add_argument("--inv-target", default=d.inv_target, choices=("logits", "features"))
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data, choices=DATASETS)
    g.add_argument("--data-root", help="dataset folder (imagefolder: the tree's root)")
    g.add_argument("--download", action="store_true", help="download via torchvision")
    g.add_argument("--train-subset", type=int, help="use the first N training images")
    g.add_argument("--test-subset", type=int, help="use the first N test images")
    g.add_argument("--no-flip", dest="flip_augment", action="store_false",
                   help="no horizontal-flip augmentation")  # fmt: skip
    g.add_argument("--crop-pad", type=int, default=d.crop_pad)
    g.add_argument("--image-size", type=int, default=d.image_size, help="imagefolder crop")
    g.add_argument("--resize", type=int, help="imagefolder short side before the crop")
    g.add_argument("--random-resized-crop", action="store_true")
    g.add_argument("--workers", type=int, default=d.workers, help="imagefolder loader workers")
    g = p.add_argument_group("recipe")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--no-nesterov", dest="nesterov", action="store_false")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--warmup", type=float, default=d.warmup, help="warm-up fraction of steps")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--device", help="default: cuda if available, else cpu")
    g = p.add_argument_group("runs")
    g.add_argument("--seeds", default="0", help="e.g. 0-23 or 0,3,7 (default 0)")
    g.add_argument("--out", default="runs", help="output folder (default runs/)")
    g.add_argument("--resume", action="store_true", help="continue unfinished runs, skip done")
    g.add_argument("--overwrite", action="store_true", help="retrain finished runs")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="epochs; 0 = end only")
    g.add_argument(
        "--checkpoint-every", type=int, default=d.checkpoint_every,
        help="also save the resumable state every N steps (default: per epoch)",
    )  # fmt: skip
    g.add_argument("--no-progress", dest="progress", action="store_false")
    g.add_argument("--debug-kill-after-step", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed arguments (raises ``ValueError`` on bad values)."""
    arch_kwargs = dict(args.arch_kwarg)
    if args.width is not None:
        arch_kwargs["width"] = args.width
    for name in ("train_subset", "test_subset"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be ≥ 1")
    regime = args.regime or ("gcnn" if "flip" in args.arch else "cnn")
    return TrainConfig(
        arch=args.arch, regime=regime, data=args.data, data_root=args.data_root,
        download=args.download, arch_kwargs=arch_kwargs, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
        weight_decay=args.weight_decay, warmup=args.warmup, label_smoothing=args.label_smoothing,
        flip_augment=args.flip_augment, crop_pad=args.crop_pad, inv_lambda=args.inv_lambda,
        inv_start=args.inv_start, inv_target=args.inv_target, train_subset=args.train_subset,
        test_subset=args.test_subset, image_size=args.image_size, resize=args.resize,
        random_resized_crop=args.random_resized_crop, workers=args.workers, amp=args.amp,
        channels_last=args.channels_last, compile=args.compile, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every, device=args.device,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    seeds = parse_seeds(args.seeds)
    get_builder(args.arch)  # unknown arch → ValueError listing the known ones
    cfg = config_from_args(args)
    data = load_dataset(
        cfg.data, cfg.data_root, download=cfg.download, image_size=cfg.image_size,
        resize=cfg.resize, random_resized_crop=cfg.random_resized_crop, flip=cfg.flip_augment,
    )  # fmt: skip
    if cfg.train_subset or cfg.test_subset:
        if not hasattr(data, "subset"):
            raise UsageError("--train-subset/--test-subset work with tensor datasets only")
        data = data.subset(cfg.train_subset, cfg.test_subset)
    build_model(cfg, data, seeds[0])  # arch/regime mismatch or bad kwargs fail before training
    ctx = init_distributed(cfg.device)
    results = [
        train_seed(
            cfg,
            data,
            seed,
            args.out,
            ctx,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=args.progress,
            debug_kill_after_step=args.debug_kill_after_step,
        )  # fmt: skip
        for seed in seeds
    ]
    if ctx.is_main:
        print(summary_table(results))
    return 0


def summary_table(results: list[dict[str, Any]]) -> str:
    """A plain-text table: one row per seed, then mean ± std of the accuracies."""
    lines = [
        f"{'seed':>5} {'arch':<20} {'regime':<8} {'test acc':>9} {'flip TTA':>9} {'train s':>8}"
    ]
    for r in results:
        lines.append(
            f"{r['seed']:>5} {r['arch']:<20} {r['regime']:<8} {r['test_acc']:>8.2f}% "
            f"{r['test_acc_tta']:>8.2f}% {r['train_time_s']:>8.1f}"
        )
    if len(results) > 1:
        import statistics

        accs = [r["test_acc"] for r in results]
        ttas = [r["test_acc_tta"] for r in results]
        lines.append(
            f"{'mean':>5} {'':<20} {'':<8} {statistics.mean(accs):>8.2f}% "
            f"{statistics.mean(ttas):>8.2f}%  (± {statistics.stdev(accs):.2f} over "
            f"{len(results)} seeds)"
        )
    return "\n".join(lines)
