"""``gcnn train``: train CNN, CNN + invariance loss, or GCNN nets, one per seed.

Example: ``gcnn train --arch vgg11_flip --data fashion-mnist --epochs 30 --seeds 0-3 --out runs/``.
Under ``torchrun --nproc_per_node N`` the same command trains with DDP; ``--config
recipe.json`` (or a run's ``model.json``) repeats a recorded run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, NoReturn

from gcnn.data.datasets import DATASETS, load_dataset
from gcnn.errors import UsageError
from gcnn.models import get_builder, is_flip_arch
from gcnn.nn.isotypic import CONV_PATHS
from gcnn.runs import read_recipe
from gcnn.train.config import REGIMES, TrainConfig
from gcnn.train.distributed import init_distributed
from gcnn.train.loop import train_seed
from gcnn.train.preflight import preflight
from gcnn.train.seeds import parse_seeds

#: Flags that only apply to ``--data imagefolder``.
IMAGEFOLDER_ONLY = ("image_size", "resize", "random_resized_crop", "workers")
_UNSET = argparse.SUPPRESS  # a training setting the user did not type stays absent from args


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
        "{model.safetensors,model.json,log.jsonl}. Defaults: the published VGG11 recipe "
        "(shown in brackets); --config starts from a recipe.json or a run's model.json instead, "
        "and the flags given override it.",
    )
    d = TrainConfig()

    def add(group: argparse._ArgumentGroup, flag: str, help: str = "", **kw: Any) -> None:
        dest = kw.get("dest", flag.removeprefix("--").replace("-", "_"))
        default = getattr(d, dest, None) if "action" not in kw and dest != "regime" else None
        shown = f" [{default}]" if default is not None else ""
        group.add_argument(flag, default=_UNSET, help=help + shown, **kw)

    g = p.add_argument_group("model and regime")
    add(g, "--arch", "any registered model (gcnn.list_models())")
    add(g, "--regime", "default: gcnn for a flip architecture, else cnn", choices=REGIMES)
    add(g, "--width", "channel width multiplier (VGG)", type=float)
    add(g, "--arch-kwarg", "extra builder keyword (JSON value), repeatable", type=_kwarg,
        action="append", metavar="K=V")  # fmt: skip
    add(g, "--inv-lambda", "λ of cnn+inv", type=float)
    add(g, "--inv-start", "fraction of training before the invariance loss starts", type=float)
    add(g, "--inv-target", "", choices=("logits", "features"))
    g = p.add_argument_group("data")
    add(g, "--data", "", choices=DATASETS)
    add(g, "--data-root", "dataset folder (imagefolder: the tree's root)")
    add(g, "--download", "download via torchvision", action="store_true")
    add(g, "--train-subset", "use the first N training images", type=int)
    add(g, "--test-subset", "use the first N test images", type=int)
    add(g, "--no-flip", "no horizontal-flip augmentation", dest="flip_augment",
        action="store_false")  # fmt: skip
    add(g, "--crop-pad", "zero padding of the random crop", type=int)
    add(g, "--image-size", "imagefolder crop", type=int)
    add(g, "--resize", "imagefolder short side before the crop", type=int)
    add(g, "--random-resized-crop", "imagefolder: RandomResizedCrop", action="store_true")
    add(g, "--workers", "imagefolder loader workers", type=int)
    g = p.add_argument_group("recipe")
    add(g, "--epochs", "", type=int)
    add(g, "--batch-size", "global batch", type=int)
    add(g, "--lr", "peak learning rate", type=float)
    add(g, "--momentum", "", type=float)
    add(g, "--no-nesterov", "", dest="nesterov", action="store_false")
    add(g, "--weight-decay", "", type=float)
    add(g, "--warmup", "warm-up fraction of steps", type=float)
    add(g, "--label-smoothing", "", type=float)
    add(g, "--no-amp", "no bf16 autocast", dest="amp", action="store_false")
    add(g, "--no-channels-last", "", dest="channels_last", action="store_false")
    add(g, "--compile", "torch.compile the model", action="store_true")
    add(
        g,
        "--conv-path",
        "how flip convs compute: auto (per layer, the fastest kernel, timed once per machine "
        "and kept in GCNN_TUNING_CACHE), static (per layer, a fixed rule), isotypic (s/d "
        "basis, half the multiply-adds) or regular (F.conv2d on the full weight)",
        choices=CONV_PATHS,
    )
    add(g, "--device", "default: cuda if available, else cpu")
    add(g, "--eval-every", "epochs; 0 = end only", type=int)
    add(g, "--checkpoint-every", "also save the resumable state every N steps (0: per epoch)",
        type=int)  # fmt: skip
    g = p.add_argument_group("runs")
    g.add_argument("--config", metavar="JSON",
                   help="start from a recipe.json or a finished run's model.json (its settings "
                   "and seeds); flags given here override them")  # fmt: skip
    add(g, "--seeds", "e.g. 0-23 or 0,3,7 (default 0, or the --config file's)")
    g.add_argument("--out", default="runs", help="output folder (default runs/)")
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue unfinished runs, skip finished ones (settings must match)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="retrain; the old run stays until the new one has finished",
    )
    g.add_argument("--no-progress", dest="progress", action="store_false")
    g.add_argument("--debug-kill-after-step", type=int, help=argparse.SUPPRESS)
    g.add_argument("--debug-stop-after-step", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


_CONFIG_FIELDS = frozenset(TrainConfig.__dataclass_fields__)


class _RecipeParser(argparse.ArgumentParser):
    """Parses a recipe's recorded arguments (never abbreviated); an error names the recipe."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: its recorded arguments do not parse: {message}")


def _legacy_recipe(meta: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The config of an older recipe that recorded ``gcnn train`` arguments (``"argv"``)."""
    argv = meta.get("argv")
    if not isinstance(argv, list) or "config" in meta:
        return None
    parser = _RecipeParser(prog=f"--config {path}")
    add_parser(parser.add_subparsers(dest="command", parser_class=_RecipeParser))
    args = parser.parse_args([str(a) for a in argv])
    return {"config": config_from_args(args).to_dict(), "seeds": getattr(args, "seeds", None)}


def _recipe(path: str) -> tuple[dict[str, Any], str | None]:
    """``(config dict, seeds)`` of a ``--config`` file: a recipe, a sidecar, or an old recipe."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        meta = None  # read_recipe words the error
    legacy = _legacy_recipe(meta, path) if isinstance(meta, dict) else None
    if legacy is not None:
        return legacy["config"], legacy["seeds"]
    recipe = read_recipe(path)
    return recipe.config, recipe.seeds


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed arguments: the ``--config`` file's settings (else
    the defaults) with every flag the user typed on top. Raises ``UsageError`` on bad values."""
    config_file = getattr(args, "config", None)
    base = _recipe(config_file)[0] if config_file else {}
    given = {k: v for k, v in vars(args).items() if k in _CONFIG_FIELDS}
    values = {**base, **given}
    arch_kwargs = dict(base.get("arch_kwargs", {}))
    arch_kwargs.update(dict(getattr(args, "arch_kwarg", [])))
    if getattr(args, "width", None) is not None:
        arch_kwargs["width"] = args.width
    values["arch_kwargs"] = arch_kwargs
    if "regime" not in values:
        values["regime"] = "gcnn" if is_flip_arch(values.get("arch", TrainConfig.arch)) else "cnn"
    return TrainConfig.from_dict(values, source=f"--config {config_file}")


def _seeds(args: argparse.Namespace) -> list[int]:
    text = getattr(args, "seeds", None)
    if text is None and getattr(args, "config", None):
        text = _recipe(args.config)[1]
    return parse_seeds(text if text is not None else "0")


def check_flags(args: argparse.Namespace, cfg: TrainConfig) -> None:
    """Refuse contradicting flags, an ``--out`` that is a file, and ImageFolder-only flags
    given for a tensor dataset (they would be ignored)."""
    if args.resume and args.overwrite:
        raise UsageError(
            "--resume and --overwrite contradict each other: --resume continues or keeps a "
            "run, --overwrite retrains it"
        )
    out = Path(args.out)
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--out {args.out}: {folder} is a file, not a folder")
    ignored = [k for k in IMAGEFOLDER_ONLY if k in vars(args)]
    if ignored and cfg.data != "imagefolder":
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in ignored)
        raise UsageError(f"{flags} only apply to --data imagefolder, not {cfg.data}")
    for name in ("debug_kill_after_step", "debug_stop_after_step"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be ≥ 1")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    check_flags(args, cfg)
    seeds = _seeds(args)
    ctx = init_distributed(cfg.device)  # an unknown or absent device is a one-line error
    try:
        get_builder(cfg.arch)
    except ValueError as err:  # the registry's "unknown model …, known models: …"
        raise UsageError(f"--arch: {err}") from None
    data = load_dataset(
        cfg.data, cfg.data_root, download=cfg.download, image_size=cfg.image_size,
        resize=cfg.resize, random_resized_crop=cfg.random_resized_crop, flip=cfg.flip_augment,
    )  # fmt: skip
    if cfg.train_subset or cfg.test_subset:
        if not hasattr(data, "subset"):
            raise UsageError("--train-subset/--test-subset work with tensor datasets only")
        data = data.subset(cfg.train_subset, cfg.test_subset)
    preflight(cfg, data, seeds[0])  # bad data, arch/regime or input size: before any file
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
            debug_stop_after_step=args.debug_stop_after_step,
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
