"""Study: are the committed Fashion-MNIST VGG11s permutations of GCNNs?

Runs ``gcnn check`` on every model card in ``models/`` (a plain CNN, a CNN with an invariance
loss, a GCNN) with the same real data, and writes ``analysis/results/fmnist/<model>/`` (the
report and its plots) and a summary table ``analysis/results/fmnist/summary.md``.

    python analysis/fmnist_flip_check.py --num-images 500 --num-eval 2000

Each model is checked twice: with the statistics closed under the flip (the default) and,
to show what that changes, without (``--no-mirror``, structure only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gcnn.cli import main as gcnn_main

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("vgg11-w025-fmnist-cnn", "vgg11-w025-fmnist-cnn-inv", "vgg11flip-w025-fmnist-gcnn")


def _mean(values: list) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def summary(reports: dict[str, dict], raw: dict[str, dict]) -> str:
    """Two tables: the corrected (mirror-closed) check, and what the statistics without the
    mirror images would have said about the same models."""
    rows = [
        "| model | acc model | acc twin | merged | + BN reset | + REPAIR (BN) | + REPAIR (act.) "
        "| barrier BN reset | barrier REPAIR (act.) | exact layers | involutive matchings "
        "| mean error / chance | mean involution gap | nearest GCNN: output change |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in reports.items():
        acc, layers, v = r["accuracy"], r["layers"], r["verdict"]
        by = r["barrier"]["by_method"]
        rows.append(
            f"| `{name}` | {acc['model']:.2f} | {acc['twin']:.2f} | {acc['merged']:.2f} "
            f"| {acc['merged_bn_reset']:.2f} | {acc['merged_repair']:.2f} "
            f"| {acc['merged_repair_activations']:.2f} | {by['bn_reset']['accuracy']:.2f} "
            f"| {by['repair_activations']['accuracy']:.2f} "
            f"| {v['exact_layers']}/{v['decidable_layers']} "
            f"| {v['involutive_layers']}/{v['decidable_layers']} "
            f"| {_mean([la['equivariance_error_normalized'] for la in layers]):.3g} "
            f"| {_mean([la['involution_gap'] for la in layers]):.2g} "
            f"| {r['nearest_gcnn']['output_difference_to_model']:.3g} |"
        )
    rows += [
        "",
        "Without the mirror images (`--no-mirror`, the earlier method) on the same images:",
        "",
        "| model | involutive matchings | longer cycles (channels) | max ‖C − Cᵀ‖/‖C‖ |",
        "|---|---|---|---|",
    ]
    for name, r in raw.items():
        layers = r["layers"]
        rows.append(
            f"| `{name}` | {sum(la['involution'] for la in layers)}/{len(layers)} "
            f"| {sum(la['channels_in_longer_cycles'] for la in layers)} "
            f"| {max(la['correlation_asymmetry'] or 0 for la in layers):.2f} |"
        )
    return "\n".join(rows) + "\n"


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--num-eval", type=int, default=2000)
    p.add_argument("--out", type=Path, default=ROOT / "analysis" / "results" / "fmnist")
    args = p.parse_args()
    reports, raw = {}, {}
    for name in MODELS:
        common = [
            "check", "--weights", str(ROOT / "models" / name / "model.safetensors"),
            "--data", "fashion-mnist", "--num-images", str(args.num_images),
            "--num-eval", str(args.num_eval),
        ]  # fmt: skip
        for target, extra in (
            (reports, []),
            (raw, ["--no-mirror", "--methods", "interpolate", "--alphas", "0", "0.5", "1"]),
        ):
            out = args.out / (name if target is reports else f"{name}-no-mirror")
            code = gcnn_main([*common, *extra, "--out", str(out)])
            if code:
                raise SystemExit(code)
            target[name] = json.loads((out / "report.json").read_text())
    text = summary(reports, raw)
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    run()
