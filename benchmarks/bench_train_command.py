"""Flip vs plain VGG11 *through* ``gcnn train``: the throughput a user actually gets.

The step benchmarks (``bench_isotypic.py``, ``train_throughput.py``) time a training step on a
fixed batch. This one runs the whole command — Fashion-MNIST loader, device-side augmentation,
schedule, logging — so that whatever the loop adds (e.g. the batch's memory layout, which once
made flip models ≈ 2× slower inside ``gcnn train`` than on a step benchmark) shows up.

Per round, each variant trains once in this process (``gcnn.cli.main``): ``vgg11`` (plain),
``vgg11_flip`` on ``--conv-path auto`` and on ``--conv-path regular``, same width, seed, data
and recipe, in turn. The throughput is the training images/s that ``gcnn train`` logs for its
epochs (``log.jsonl``: ``images_per_s``, evaluation excluded). The ratio is the median of the
within-round ratios (machine load hits every variant of a round alike).

    python benchmarks/bench_train_command.py --widths 0.25 0.5 --rounds 5 \\
        --out benchmarks/results/train_command_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from gcnn.cli import main as gcnn_main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_flip_vs_plain import environment, write_report  # noqa: E402

#: variant → extra ``gcnn train`` arguments
VARIANTS = {
    "plain": ["--arch", "vgg11"],
    "flip": ["--arch", "vgg11_flip", "--conv-path", "auto"],
    "flip_regular": ["--arch", "vgg11_flip", "--conv-path", "regular"],
}


def train_images_per_s(argv: list[str], out: Path) -> float:
    """Run ``gcnn train argv --out out`` and return its epochs' mean logged images/s."""
    if gcnn_main([*argv, "--out", str(out), "--no-progress"]) != 0:
        raise SystemExit(f"gcnn train {' '.join(argv)} failed")
    (log,) = out.glob("*/seed*/log.jsonl")
    epochs = [json.loads(line) for line in log.read_text().splitlines()]
    return statistics.fmean(e["images_per_s"] for e in epochs if "images_per_s" in e)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--images", type=int, default=6400, help="training subset per run")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", help="results JSON (default: print only)")
    args = p.parse_args()
    recipe = [
        "train", "--data", "fashion-mnist", "--train-subset", str(args.images),
        "--test-subset", "500", "--epochs", str(args.epochs), "--eval-every", "0",
        "--batch-size", str(args.batch_size), "--lr", "0.05", "--seeds", "0",
    ]  # fmt: skip
    rows = []
    for width in args.widths:
        speeds: dict[str, list[float]] = {k: [] for k in VARIANTS}
        for r in range(args.rounds):
            for key, extra in VARIANTS.items():
                with tempfile.TemporaryDirectory() as tmp:
                    argv = [*recipe, *extra, "--width", f"{width:g}"]
                    speeds[key].append(train_images_per_s(argv, Path(tmp)))
            line = "  ".join(f"{k} {v[-1]:7.0f}" for k, v in speeds.items())
            print(f"width {width:g} round {r + 1}/{args.rounds}: {line} img/s", flush=True)
        row = {"width": width, "images_per_s": {k: statistics.median(v) for k, v in speeds.items()}}
        for key in ("flip", "flip_regular"):
            ratios = [f / q for f, q in zip(speeds[key], speeds["plain"], strict=True)]
            row[f"{key}_vs_plain"] = statistics.median(ratios)
            row[f"{key}_vs_plain_range"] = [min(ratios), max(ratios)]
        row["raw_images_per_s"] = speeds
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "raw_images_per_s"}), flush=True)
    env = {**environment(torch.device("cpu")), "recipe": " ".join(recipe)}
    write_report(rows, env, Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
