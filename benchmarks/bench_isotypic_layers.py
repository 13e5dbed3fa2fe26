"""Per-layer forward + backward of one regular → regular ``FlipConv2d`` on its three kernels.

For each layer shape (batch, channels in → out, input size, kernel, stride; padding k // 2)
the same conv runs (1) the regular path (``F.conv2d`` on the expanded weight), (2) the
``kh × 1`` conv on the width-stacked s/d input (``regular_conv2d_eager``) and (3) the s/d GEMM
(``regular_conv2d_gemm``); each timed as forward + backward (input and weight gradients) of a
sum, minimum of ``--repeats`` runs. Ratios are regular time / kernel time (> 1: the kernel is
faster). These measurements set the static rule (``path="static"``, and ``"auto"`` under
``torch.compile``: ``gcnn.nn.isotypic.AUTO_MIN_MACS``, ``AUTO_MIN_MACS_1X1``, ``GEMM_MIN_MACS``);
``"static"`` in each row is its pick (files before the measured ``"auto"`` call it ``"auto"``).

    PYTHONPATH=. python benchmarks/bench_isotypic_layers.py \\
        --out benchmarks/results/isotypic_cpu_xeon_layers.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gcnn.nn import FlipConv2d
from gcnn.nn.isotypic import prefers_gemm, prefers_isotypic, regular_conv2d_eager
from gcnn.nn.isotypic_gemm import regular_conv2d_gemm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_flip_vs_plain import write_report  # noqa: E402
from bench_isotypic import environment  # noqa: E402

#: (batch, c_in, c_out, size, kernel, stride): VGG11 (32×32 input, widths 0.25–1) and
#: ResNet50 (65×65 input) layers.
LAYERS = [
    (128, 64, 128, 16, 3, 1), (128, 128, 256, 8, 3, 1), (128, 256, 256, 8, 3, 1),
    (128, 256, 512, 4, 3, 1), (128, 512, 512, 4, 3, 1), (128, 512, 512, 2, 3, 1),
    (32, 128, 256, 16, 3, 1), (32, 256, 256, 8, 3, 1), (32, 512, 512, 4, 3, 1),
    (32, 512, 512, 2, 3, 1),
    (32, 16, 32, 16, 3, 1), (32, 64, 64, 8, 3, 1), (32, 128, 128, 4, 3, 1),
    (128, 64, 64, 8, 3, 1), (128, 128, 128, 4, 3, 1), (32, 128, 128, 8, 3, 1),
    (32, 128, 256, 4, 3, 1), (32, 256, 256, 4, 3, 1),
    (32, 64, 64, 17, 1, 1), (32, 64, 256, 17, 1, 1), (32, 256, 64, 17, 1, 1),
    (32, 64, 64, 17, 3, 1), (32, 256, 512, 17, 1, 2), (32, 128, 128, 17, 3, 2),
    (32, 512, 128, 9, 1, 1), (32, 128, 512, 9, 1, 1), (32, 128, 128, 9, 3, 1),
    (32, 1024, 256, 5, 1, 1), (32, 256, 1024, 5, 1, 1), (32, 256, 256, 5, 3, 1),
    (32, 2048, 512, 3, 1, 1), (32, 512, 2048, 3, 1, 1), (32, 512, 512, 3, 3, 1),
    (32, 1024, 2048, 5, 1, 2),
]  # fmt: skip


def best_ms(run: Callable[[], torch.Tensor], repeats: int) -> float:
    """Minimum wall time (ms) of forward + backward of ``run().sum()``."""
    run().sum().backward()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run().sum().backward()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def bench_layer(shape: tuple[int, ...], repeats: int) -> dict:
    batch, c_in, c_out, size, kernel, stride = shape
    torch.manual_seed(0)
    conv = FlipConv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
    conv.set_path("regular")
    plan = conv._plan()
    x = torch.randn(batch, c_in, size, size, requires_grad=True)
    times = {
        "regular": best_ms(lambda: conv(x), repeats),
        "kh_x_1": best_ms(lambda: regular_conv2d_eager(x, conv.weight, None, plan), repeats),
        "gemm": best_ms(lambda: regular_conv2d_gemm(x, conv.weight, None, plan), repeats),
    }
    macs = c_in * c_out * kernel * kernel
    static = "regular"
    if prefers_isotypic(plan):
        static = "gemm" if prefers_gemm(plan) else "kh_x_1"
    return {
        "batch": batch, "c_in": c_in, "c_out": c_out, "size": size, "kernel": kernel,
        "stride": stride, "log2_macs_per_pixel": round(float(torch.tensor(macs).log2()), 2),
        "ms": {k: round(v, 2) for k, v in times.items()},
        "speedup": {k: round(times["regular"] / times[k], 2) for k in ("kh_x_1", "gemm")},
        "static": static,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    results = []
    for shape in LAYERS:
        row = bench_layer(shape, args.repeats)
        results.append(row)
        print(json.dumps(row), flush=True)
    write_report(results, environment(torch.device("cpu")), args.out)


if __name__ == "__main__":
    main()
