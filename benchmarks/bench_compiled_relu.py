"""Compiled vs eager forward of BatchNorm / ReLU blocks on the CPU: where ``torch.compile`` is slow.

On an AVX-512 Xeon, inductor's forward of a training-mode ReLU whose backward mask it saves as
``bool`` ran ≈ 45× slower than eager (``VecMask<float,1>::store(bool*)``, ≈ 6 ns per element);
the same ReLU with no gradient, or before an op that keeps its input, did not. Each case below
is one small module or function, compiled alone (inductor, a fresh dynamo cache per case) and
run eagerly on the same ``(B, C, H, W)`` channels-last input; the forward alone is timed
(minimum over ``--repeats`` runs of ``--calls`` calls, after 3 warm-up calls). ``grad`` says
whether the input or the parameters require gradients, which is what makes the compiled graph a
training graph. The pair BatchNorm is :class:`gcnn.nn.FlipBatchNorm2d`'s train-mode
``torch.compile`` formulation (``gcnn.nn.batchnorm._PairBatchNorm``).

``--model resnet50`` also reports, for compiled ``resnet50`` and ``resnet50_flip`` training steps,
the time of inductor's generated kernels per step (``enable_kernel_profile``) and the ``bool``
tensors the compiled forward keeps for the backward
(:func:`gcnn.testing.saved_for_backward_when_compiled`: ReLU masks, each stored by one of those
slow stores).

    python benchmarks/bench_compiled_relu.py --out benchmarks/results/compiled_relu_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import glibc_malloc  # noqa: E402
from bench_flip_vs_plain import make_step  # noqa: E402
from bench_isotypic import build, environment  # noqa: E402

from gcnn.nn.batchnorm import _PairBatchNorm  # noqa: E402
from gcnn.testing import saved_for_backward_when_compiled  # noqa: E402


class _PairBatchNormReLU(nn.Module):
    """Train-mode pair BatchNorm (``_PairBatchNorm``) and ReLU, without running statistics."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels // 2))
        self.bias = nn.Parameter(torch.zeros(channels // 2))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(_PairBatchNorm.apply(x, self.weight, self.bias, 1e-5)[0])


class _Lambda(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def cases(channels: int) -> list[tuple[str, Callable[[], nn.Module], bool]]:
    """``(name, module factory, grad)``; ``grad``: the input and the module's parameters
    require gradients (a training graph) or neither does."""

    def bn_relu() -> nn.Module:
        return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU())

    return [
        ("nn.BatchNorm2d", lambda: nn.BatchNorm2d(channels), True),
        ("nn.BatchNorm2d + nn.ReLU", bn_relu, True),
        ("nn.BatchNorm2d + nn.ReLU", bn_relu, False),
        ("torch.relu(x)", lambda: _Lambda(torch.relu), True),
        ("torch.relu(x)", lambda: _Lambda(torch.relu), False),
        ("torch.relu(x) * x", lambda: _Lambda(lambda x: torch.relu(x) * x), True),
        ("pair BatchNorm + ReLU", lambda: _PairBatchNormReLU(channels), True),
        ("pair BatchNorm + ReLU", lambda: _PairBatchNormReLU(channels), False),
    ]


def forward_ms(module: nn.Module, x: Tensor, calls: int, repeats: int) -> float:
    """Minimum over ``repeats`` of the mean forward time of ``calls`` calls, in ms."""
    for _ in range(3):
        module(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            module(x)
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e3


def bench_ops(shape: tuple[int, ...], calls: int, repeats: int) -> list[dict]:
    """Eager and compiled forward time of every case on one channels-last input."""
    torch.manual_seed(0)
    base = torch.randn(shape).to(memory_format=torch.channels_last)
    rows = []
    for name, factory, grad in cases(shape[1]):
        x = base.clone().requires_grad_(grad)
        module = factory().to(memory_format=torch.channels_last).requires_grad_(grad)
        eager = forward_ms(module, x, calls, repeats)
        torch._dynamo.reset()
        compiled = forward_ms(torch.compile(module), x, calls, repeats)
        row = {"case": name, "grad": grad, "eager_ms": round(eager, 3)}
        row["compiled_ms"] = round(compiled, 3)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def ms_per_step(events: list, steps: int) -> float:
    return round(sum(e.self_cpu_time_total for e in events) / steps / 1e3, 1)


def resnet50_rows(batch: int, steps: int) -> list[dict]:
    """Inductor's generated kernels per compiled ResNet50 training step and the ``bool``
    tensors its forward keeps for the backward, plain and flip."""
    import torch._inductor.config as inductor_config
    from torch.profiler import ProfilerActivity, profile

    inductor_config.cpp.enable_kernel_profile = True
    x = torch.rand(batch, 3, 65, 65)
    y = torch.randint(0, 10, (batch,))
    rows = []
    for key in ("plain", "flip"):
        torch._dynamo.reset()
        model = build("resnet50", key, 1.0, torch.device("cpu"))
        step = make_step(model, x, y, True)
        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        kernels = [e for e in prof.key_averages() if "cpp_fused" in e.key]
        saved = saved_for_backward_when_compiled(model, x)
        masks = [shape.numel() for dtype, shape in saved if dtype == torch.bool]
        row = {
            "model": key,
            "kernels_ms_per_step": ms_per_step(kernels, steps),
            "saved_bool_tensors": len(masks),
            "saved_bool_elements": sum(masks),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[32, 64, 17, 17])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--model", choices=["resnet50"], help="also its compiled kernel time and saved bool tensors"
    )
    parser.add_argument("--model-steps", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    allocator = glibc_malloc.pin()
    report = {
        "environment": environment(torch.device("cpu"), allocator),
        "command": "python " + " ".join(sys.argv),
        "shape": args.shape,
        "ops": bench_ops(tuple(args.shape), args.calls, args.repeats),
    }
    if args.model:
        report["resnet50_b32"] = resnet50_rows(32, args.model_steps)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
