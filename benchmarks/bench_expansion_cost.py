"""What the weight expansion costs a flip model's training step, and what a faster one could win.

The flip convs build their full weight ``W = E(w)`` from the free weights on every forward
(:func:`gcnn.nn.expansion.expand_conv_weight`) and map ``∂W`` back on every backward. At small
widths that is a visible share of a step. This times, in one process, round after round, full
training steps (forward, cross-entropy, backward, SGD) of:

* ``plain``: the plain VGG11;
* ``flip_regular``: the flip model on the regular path (``F.conv2d`` on the expanded weight);
* ``stand_in_copy``: the same, but each conv's expansion replaced by ``W₀.clone()`` of a
  persistent full-weight leaf ``W₀``: a stand-in for an expansion that runs at the speed of a
  copy with autograd's C++ backward (what a fused permutation kernel could reach);
* ``stand_in_free``: each conv's full weight a persistent leaf, no expansion at all (the bound).

The stand-ins are timing only: their models train a full weight, not the free one, so they are
not flip-equivariant after a step and are never used outside this script. The ratios are
medians of within-round ratios to ``plain``, as in ``bench_isotypic.py``.

    python benchmarks/bench_expansion_cost.py --widths 0.25 0.5 --batch-sizes 32 \\
        --out benchmarks/results/expansion_cost_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import glibc_malloc  # noqa: E402
from bench_flip_vs_plain import make_step, time_steps, write_report  # noqa: E402
from bench_isotypic import build, environment  # noqa: E402
from recheck_isotypic import ratio_summary  # noqa: E402

import gcnn  # noqa: E402
from gcnn.nn.conv import FlipConv2d  # noqa: E402

VARIANTS = ("plain", "flip_regular", "stand_in_copy", "stand_in_free")


def _stand_in(model: nn.Module, copy: bool) -> nn.Module:
    """Replace every flip conv's ``full_weight`` by a persistent leaf (``copy``: a fresh clone of
    it per call). Timing only (see the module docstring)."""
    for conv in model.modules():
        if isinstance(conv, FlipConv2d):
            leaf = nn.Parameter(conv.full_weight().detach().clone())
            conv.register_parameter("stand_in_weight", leaf)

            def full_weight(leaf: Tensor = leaf) -> Tensor:
                return leaf.clone() if copy else leaf

            conv.full_weight = full_weight  # type: ignore[method-assign]
    return model


def model_for(key: str, width: float) -> nn.Module:
    cpu = torch.device("cpu")
    if key == "plain":
        return build("vgg11", "plain", width, cpu)
    model = build("vgg11", "flip_regular", width, cpu)
    return model if key == "flip_regular" else _stand_in(model, copy=key == "stand_in_copy")


def bench(width: float, batch: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    x = torch.rand(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    steps: dict[str, Callable[[], None]] = {}
    for key in VARIANTS:
        steps[key] = make_step(model_for(key, width), x, y, False)
        for _ in range(args.warmup):
            steps[key]()
    seconds: dict[str, list[float]] = {key: [] for key in VARIANTS}
    for _ in range(args.rounds):
        for key in VARIANTS:
            seconds[key].append(time_steps(steps[key], args.steps, x.device) / args.steps)
    rates = {key: [batch / s for s in seconds[key]] for key in VARIANTS}
    ratios, ranges = {}, {}
    for key in VARIANTS[1:]:
        ratios[f"{key}/plain"], ranges[f"{key}/plain"] = ratio_summary(rates[key], rates["plain"])
    return {
        "arch": "vgg11",
        "width": width,
        "batch": batch,
        "image_size": 32,
        "mode": "eager",
        "images_per_s": {k: round(statistics.median(r), 1) for k, r in rates.items()},
        "ms_per_step": {k: round(1e3 * statistics.median(s), 2) for k, s in seconds.items()},
        "ratios": ratios,
        "ratio_range": ranges,
        "round_images_per_s": rates,
        "rounds": args.rounds,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--steps", type=int, default=2, help="training steps per timed unit")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    warnings.simplefilter("ignore", gcnn.FlipExactnessWarning)  # as bench_isotypic.py
    allocator = glibc_malloc.pin()
    results = []
    for width in args.widths:
        for batch in args.batch_sizes:
            row = bench(width, batch, args)
            print(json.dumps({k: row[k] for k in ("width", "batch", "ms_per_step", "ratios")}))
            results.append(row)
    write_report(results, environment(torch.device("cpu"), allocator), args.out)


if __name__ == "__main__":
    main()
