"""Speed of the analysis: the one-pass statistics vs plain forward passes, and a full check.

1. ResNet50 at 224×224, ``--images`` images in batches of ``--batch``: the time of
   :func:`gcnn.analysis.collect_pair_statistics` (model on ``x`` and on ``x.flip(-1)``,
   float64 moments of all 37 groups) over the time of plain eval forward passes of the same
   images (both the ``x`` and the ``flip x`` pass, and one pass alone). Alternating, median of
   ``--repeats``.
2. ``check_flip_symmetry`` end to end (graph, statistics, matching, curves at 5 α with BN
   reset and REPAIR, nearest GCNN) for torchvision ResNet18 at 64×64 on ``--check-images``
   real Fashion-MNIST images (grey replicated to RGB, resized), random weights.

    python benchmarks/bench_analysis.py --out benchmarks/results/analysis_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision
from torch.nn import functional as F

import gcnn
from gcnn.analysis import ActivationProbe, analyse_graph, check_flip_symmetry
from gcnn.analysis.statistics import collect_pair_statistics, probe_function
from gcnn.data import load_fashion_mnist


def _timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def statistics_ratio(images: int, batch: int, repeats: int, device: str) -> dict:
    torch.manual_seed(0)
    model = gcnn.resnet50().to(device).eval()
    x = torch.randn(images, 3, 224, 224, device=device)
    batches = [(x[i : i + batch], None) for i in range(0, images, batch)]
    graph = analyse_graph(model, x[:1])
    probe = probe_function(ActivationProbe(model, graph))

    @torch.no_grad()
    def forward(flipped: bool) -> None:
        for xb, _ in batches:
            model(xb)
            if flipped:
                model(xb.flip(-1))

    def stats() -> None:
        collect_pair_statistics(probe, probe, batches, flip_b=True, device=device)

    forward(False)  # warm-up
    times: dict[str, list[float]] = {"forward_x": [], "forward_x_and_flip": [], "statistics": []}
    for _ in range(repeats):
        times["forward_x"].append(_timed(lambda: forward(False)))
        times["forward_x_and_flip"].append(_timed(lambda: forward(True)))
        times["statistics"].append(_timed(stats))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": "resnet50", "image_size": 224, "images": images, "batch": batch,
        "groups": len(graph.groups), "seconds_median": {k: round(v, 3) for k, v in med.items()},
        "ratio_statistics_over_forward_x_and_flip":
            round(med["statistics"] / med["forward_x_and_flip"], 3),
        "ratio_statistics_over_forward_x": round(med["statistics"] / med["forward_x"], 3),
    }  # fmt: skip


def full_check(images: int, device: str) -> dict:
    data = load_fashion_mnist(None)
    x = data.train_x[:images].float().div(255).repeat(1, 3, 1, 1)
    x = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True)
    x = (x - x.mean()) / x.std()
    y = data.train_y[:images]
    batches = [(x[i : i + 100], y[i : i + 100]) for i in range(0, images, 100)]
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device).eval()
    start = time.perf_counter()
    report = check_flip_symmetry(model, batches, batches, arch="resnet18", device=device)
    total = time.perf_counter() - start
    return {
        "model": "resnet18 (random init)", "image_size": 64, "images": images,
        "alphas": report.alphas, "seconds_total": round(total, 2),
        "seconds_by_stage": {k: round(v, 2) for k, v in report.seconds.items()},
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--check-images", type=int, default=500)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = {
        "environment": {
            "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.machine(),
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "gcnn": gcnn.__version__,
            "python": platform.python_version(),
        },  # fmt: skip
        "command": "python benchmarks/bench_analysis.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "statistics_vs_forward": statistics_ratio(
            args.images, args.batch, args.repeats, args.device
        ),
    }
    print(json.dumps(result["statistics_vs_forward"]), flush=True)
    result["full_check"] = full_check(args.check_images, args.device)
    print(json.dumps(result["full_check"]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
