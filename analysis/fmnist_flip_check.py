"""Study: are the committed Fashion-MNIST VGG11s permutations of GCNNs?

Runs ``gcnn check`` on every model card in ``models/`` (a plain CNN, a CNN with an invariance
loss, a GCNN) with the same real data, and writes ``analysis/results/fmnist/<model>/`` (the
report and its plots) and a summary table ``analysis/results/fmnist/summary.md``.

    python analysis/fmnist_flip_check.py --num-images 1000 --num-eval 2000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gcnn.cli import main as gcnn_main

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("vgg11-w025-fmnist-cnn", "vgg11-w025-fmnist-cnn-inv", "vgg11flip-w025-fmnist-gcnn")


def summary(reports: dict[str, dict]) -> str:
    rows = [
        "| model | acc model | acc twin | merged | + BN reset | + REPAIR | REPAIR barrier "
        "(acc points) | involutions | mean equiv. error before → after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in reports.items():
        acc, layers = r["accuracy"], r["layers"]
        inv = sum(la["involution"] for la in layers)
        before = sum(la["equivariance_error_before"] for la in layers) / len(layers)
        after = sum(la["equivariance_error_after"] for la in layers) / len(layers)
        rows.append(
            f"| `{name}` | {acc['model']:.2f} | {acc['twin']:.2f} | {acc['merged']:.2f} "
            f"| {acc['merged_bn_reset']:.2f} | {acc['merged_repair']:.2f} "
            f"| {r['barrier']['accuracy']:.2f} | {inv}/{len(layers)} | {before:.3g} → {after:.3g} |"
        )
    return "\n".join(rows) + "\n"


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--num-eval", type=int, default=2000)
    p.add_argument("--out", type=Path, default=ROOT / "analysis" / "results" / "fmnist")
    args = p.parse_args()
    reports = {}
    for name in MODELS:
        out = args.out / name
        code = gcnn_main(
            ["check", "--weights", str(ROOT / "models" / name / "model.safetensors"),
             "--data", "fashion-mnist", "--num-images", str(args.num_images),
             "--num-eval", str(args.num_eval), "--out", str(out)]
        )  # fmt: skip
        if code:
            raise SystemExit(code)
        reports[name] = json.loads((out / "report.json").read_text())
    (args.out / "summary.md").write_text(summary(reports))
    print(summary(reports))


if __name__ == "__main__":
    run()
