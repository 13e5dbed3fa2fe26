"""Training throughput (images/s) of ``vgg11`` vs ``vgg11_flip``, measured in ONE process.

Each timed unit is a full SGD training step (forward, cross-entropy, backward, Nesterov SGD
step) on a fixed real batch (Fashion-MNIST from Debian's package, padded to 32×32; CIFAR-10
samples if it is missing). Plain and flip steps alternate (ABAB…) so that machine load hits
both alike; the ratio of the medians is reported. Writes ``benchmarks/results/*.json``.

    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py --widths 0.25 0.5 --batch 32
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import gcnn
from gcnn.data.datasets import to_float


def batch(size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from gcnn.data import load_fashion_mnist

        data = load_fashion_mnist()
    except FileNotFoundError:
        from gcnn.data import load_sample_dataset

        data = load_sample_dataset("cifar10")
    x = data.train_x[:size].repeat(-(-size // len(data.train_x[:size])), 1, 1, 1)[:size]
    return to_float(x, data.mean, data.std), data.train_y[: len(x)].repeat(2)[:size], data.name


def make_step(arch: str, width: float, in_channels: int, device: torch.device):
    torch.manual_seed(0)
    model = gcnn.create_model(arch, width=width, in_channels=in_channels).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", default="benchmarks/results/train_throughput_cpu.json")
    args = p.parse_args()
    device = torch.device("cpu")
    x, y, data_name = batch(args.batch)
    rows = []
    for width in args.widths:
        steps = {a: make_step(a, width, x.shape[1], device) for a in ("vgg11", "vgg11_flip")}
        times: dict[str, list[float]] = {a: [] for a in steps}
        for _ in range(3):  # warm-up
            for s in steps.values():
                s(x, y)
        for _ in range(args.repeats):
            for arch, s in steps.items():
                t = time.perf_counter()
                s(x, y)
                times[arch].append(time.perf_counter() - t)
        med = {a: statistics.median(t) for a, t in times.items()}
        row = {
            "width": width,
            "images_per_s": {a: args.batch / m for a, m in med.items()},
            "median_step_s": med,
            "flip_over_plain_throughput": med["vgg11"] / med["vgg11_flip"],
        }
        rows.append(row)
        print(json.dumps(row))
    result = {
        "benchmark": "training step throughput, vgg11 vs vgg11_flip (fp32, one process)",
        "device": f"CPU ({platform.processor() or platform.machine()}), "
        f"{torch.get_num_threads()} torch thread(s), shared 2-core machine",
        "command": "OMP_NUM_THREADS=1 python benchmarks/train_throughput.py "
        f"--widths {' '.join(map(str, args.widths))} --batch {args.batch} --repeats {args.repeats}",
        "data": f"{data_name}, first {args.batch} training images, 32x32",
        "batch": args.batch,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "gcnn": gcnn.__version__,
        "python": platform.python_version(),
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
