"""escnn backend: construction time, and training-step throughput vs hand-written and plain.

Construction: each builder runs in a fresh process (``import gcnn.escnn`` timed on its own),
twice: the first build also samples the kernel bases, the second is what every later model in
the process costs. Throughput: for VGG11 (32×32) and ResNet50 (65×65, an exact size) the plain,
hand-written flip and escnn models take training steps (forward, cross-entropy, backward, SGD)
in turns, ``--repeats`` rounds of ``--steps`` steps each after warm-up, so machine load hits
all three alike; median images/s and the median over rounds of the within-round ratios are
reported (on a shared machine the load changes between rounds more than within one).

    python benchmarks/bench_escnn.py --out benchmarks/results/escnn_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import gcnn

ROOT = Path(__file__).resolve().parents[1]
ARCHS = {"vgg11": 32, "resnet50": 65}

BUILD_SCRIPT = """
import json, sys, time, torch
torch.set_num_threads({threads})
t0 = time.perf_counter()
import gcnn.escnn
t1 = time.perf_counter()
gcnn.create_model("{name}")
t2 = time.perf_counter()
gcnn.create_model("{name}")
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "first_build_s": t2 - t1, "build_s": t3 - t2}}))
"""


def construction_times(name: str, threads: int) -> dict[str, float]:
    """Seconds to import gcnn.escnn, to build ``name`` first and a second time (fresh process)."""
    code = BUILD_SCRIPT.format(name=name, threads=threads)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One SGD training step (forward, cross-entropy, backward, update), training mode."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def throughput(arch: str, batch: int, steps: int, repeats: int) -> dict[str, object]:
    """Median images/s of plain, flip and escnn training steps, timed in turns."""
    size = ARCHS[arch]
    num_classes = 10
    x = torch.rand(batch, 3, size, size)
    y = torch.randint(0, num_classes, (batch,))
    names = {"plain": arch, "flip": f"{arch}_flip", "escnn": f"{arch}_flip_escnn"}
    step_of = {}
    for key, name in names.items():
        torch.manual_seed(0)
        model = gcnn.create_model(name, num_classes=num_classes)
        step_of[key] = make_step(model, x, y)
        for _ in range(2):  # warm-up (and the exactness check of the flip models)
            step_of[key]()
    rates: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(repeats):
        for key, step in step_of.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            rates[key].append(batch * steps / (time.perf_counter() - start))
    median = {k: statistics.median(v) for k, v in rates.items()}

    def ratio(a: str, b: str) -> float:  # median over rounds of the within-round ratio
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    return {
        "input": [batch, 3, size, size],
        "img_per_s": median,
        "escnn_over_plain": ratio("escnn", "plain"),
        "flip_over_plain": ratio("flip", "plain"),
        "escnn_over_flip": ratio("escnn", "flip"),
        "all_img_per_s": rates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads for construction")
    parser.add_argument("--step-threads", type=int, default=1, help="torch threads for steps")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch-vgg", type=int, default=32)
    parser.add_argument("--batch-resnet", type=int, default=8)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--skip-construction", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", gcnn.FlipExactnessWarning)
    import escnn

    result: dict[str, object] = {
        "device": "cpu",
        "gpu": "none in this session",
        "cpu": platform.processor() or platform.machine(),
        "threads_construction": args.threads,
        "threads_training_step": args.step_threads,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "escnn": escnn.__version__,
            "numpy": __import__("numpy").__version__,
        },
        "note": "2-core machine shared with other engineers' test runs during the measurement",
        "construction_s": {},
        "training_step": {},
    }
    for name in () if args.skip_construction else ("vgg11_flip_escnn", "resnet50_flip_escnn"):
        result["construction_s"][name] = construction_times(name, args.threads)
        print(name, result["construction_s"][name], flush=True)
    torch.set_num_threads(args.step_threads)
    batches = {"vgg11": args.batch_vgg, "resnet50": args.batch_resnet}
    for arch, batch in ((a, batches[a]) for a in args.archs):
        result["training_step"][arch] = throughput(arch, batch, args.steps, args.repeats)
        r = result["training_step"][arch]
        print(arch, r["img_per_s"], f"escnn/plain {r['escnn_over_plain']:.3f}",
              f"flip/plain {r['flip_over_plain']:.3f}", flush=True)  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
