"""Training-step throughput of flip models relative to plain models, in one process.

For each (model pair, batch size, mode) the plain and the flip model are timed alternately
(``--repeats`` rounds of ``--steps`` forward+backward+SGD steps each, after warm-up), and the
median images/s and the ratio flip/plain are reported. Absolute numbers vary between machines;
the ratio, measured in one process, is the result.

CPU: fp32, channels-first. GPU: bf16 autocast and channels_last.

    python benchmarks/bench_flip_vs_plain.py --device cpu \
        --out benchmarks/results/flip_vs_plain_cpu.json
    python benchmarks/bench_flip_vs_plain.py --device cuda --batch-sizes 512 2048 \
        --out benchmarks/results/flip_vs_plain_h100.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import gcnn

PAIRS = {"vgg11": ("vgg11", "vgg11_flip", 32), "resnet50": ("resnet50", "resnet50_flip", 65)}


def gpu_numerics(device: torch.device, requested: bool | None = None) -> bool:
    """Whether a run takes the GPU configuration (bf16 autocast, channels-last): ``requested``,
    or by default on CUDA only."""
    return device.type == "cuda" if requested is None else requested


def make_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, compile_: bool, bf16: bool | None = None
) -> Callable:
    """One SGD training step (forward, cross-entropy, backward, update) as a closure; the
    forward under bf16 autocast when ``bf16`` (default: on CUDA)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    fwd = torch.compile(model) if compile_ else model
    autocast = gpu_numerics(x.device, bf16)

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = nn.functional.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Callable, steps: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - start


def bench_pair(
    arch: str, batch: int, compile_: bool, device: torch.device, steps: int, repeats: int,
    size: int | None,
) -> dict:  # fmt: skip
    plain_name, flip_name, default_size = PAIRS[arch]
    size = size or default_size
    torch.manual_seed(0)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = torch.rand(batch, 3, size, size, device=device).to(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,), device=device)
    stepper = {}
    for name in (plain_name, flip_name):
        model = gcnn.create_model(name, num_classes=10).to(device, memory_format=memory_format)
        stepper[name] = make_step(model.train(), x, y, compile_)
        for _ in range(3 if compile_ else 2):  # warm-up (and compilation)
            stepper[name]()
    rates: dict[str, list[float]] = {plain_name: [], flip_name: []}
    for _ in range(repeats):
        for name in (plain_name, flip_name):
            rates[name].append(batch * steps / time_steps(stepper[name], steps, device))
    plain_rate = statistics.median(rates[plain_name])
    flip_rate = statistics.median(rates[flip_name])
    return {
        "arch": arch, "batch": batch, "image_size": size,
        "mode": "compile" if compile_ else "eager",
        "plain_images_per_s": round(plain_rate, 1), "flip_images_per_s": round(flip_rate, 1),
        "ratio_flip_over_plain": round(flip_rate / plain_rate, 3),
    }  # fmt: skip


def write_report(results: list[dict], env: dict, out: Path | None) -> None:
    """Write ``{environment, command, results}`` as JSON to ``out`` (nothing when ``None``)."""
    if out is None:
        return
    report = {"environment": env, "command": " ".join(["python", *sys.argv]), "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def environment(device: torch.device) -> dict:
    info = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gcnn": gcnn.__version__,
        "python": platform.python_version(),
        "dtype": "bf16 autocast, channels_last"
        if device.type == "cuda"
        else "fp32, channels-first",
    }
    return info


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--archs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    p.add_argument("--image-size", type=int, default=None, help="default: 32 (VGG), 65 (ResNet)")
    p.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    batches = args.batch_sizes or ([512, 2048] if device.type == "cuda" else [32])
    warnings.simplefilter("ignore", gcnn.FlipExactnessWarning)
    results = []
    for arch in args.archs:
        for batch in batches:
            for mode in args.modes:
                r = bench_pair(
                    arch,
                    batch,
                    mode == "compile",
                    device,
                    args.steps,
                    args.repeats,
                    args.image_size,
                )
                results.append(r)
                print(json.dumps(r), flush=True)
    write_report(results, environment(device), args.out)


if __name__ == "__main__":
    main()
