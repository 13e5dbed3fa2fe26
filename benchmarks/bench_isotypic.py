"""Training steps of flip models (isotypic fast path) vs plain models, in one process.

For each (model, width, batch, mode) five models take full training steps (forward,
cross-entropy, backward, SGD step) in turn, round after round: the plain model, the plain model
in channels-last memory format, the flip model on its default ``path="auto"`` (each conv
times its kernels during warm-up and keeps the fastest; the choices are kept in memory only,
``GCNN_TUNING_CACHE=off``, so every run measures afresh), the flip model on ``path="static"``
(the isotypic fast path where a fixed rule says it wins; under ``torch.compile`` ``"auto"``
times its kernels while dynamo traces, so the two differ there too) and the flip model forced
onto
``path="regular"``. The ratios are
medians of the within-round throughput ratios (machine load hits every model of a round
alike); absolute images/s are medians too. Each row also keeps every round's images/s
(``round_images_per_s``) and the lowest and highest within-round ratio (``ratio_range``), so
the medians can be recomputed and their spread read: ``benchmarks/recheck_isotypic.py FILE``
does both.

On the CPU glibc's allocator is pinned first (:mod:`glibc_malloc`: no ``mmap`` for blocks up to
32 MiB, no trimming), unless ``--malloc default``: otherwise whether a step's activations
fault in fresh pages depends on what ran before it, and that moved one model's step time by a
third. Each row records the minor page faults per timed step of each model
(``page_faults_per_step``).

CPU: fp32, channels-first input. GPU (``--device cuda``): bf16 autocast, channels-last input
and models, batch 512 / 2048 by default. ``--gpu-numerics`` runs the GPU configuration on the
CPU too: a dry run of the GPU benchmark before a GPU session spends device time on it. The
report is rewritten after every row, so a run stopped at a time limit keeps what it measured.

    python benchmarks/bench_isotypic.py --out benchmarks/results/isotypic_cpu.json
    python benchmarks/bench_isotypic.py --device cuda --out benchmarks/results/isotypic_gpu.json
    python benchmarks/bench_isotypic.py --gpu-numerics --archs vgg11 --widths 0.25 \
        --batch-sizes 4 --modes eager --rounds 1     # the GPU configuration, dry run on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

os.environ["GCNN_TUNING_CACHE"] = "off"  # before gcnn: every run times its own choices

import gcnn
from gcnn.nn import set_conv_path
from gcnn.nn.tuning_store import machine_id
from gcnn.provenance import code_provenance

sys.path.insert(0, str(Path(__file__).resolve().parent))
import glibc_malloc  # noqa: E402
from bench_flip_vs_plain import gpu_numerics, make_step, time_steps, write_report  # noqa: E402
from recheck_isotypic import ratio_summary  # noqa: E402

#: arch → (plain builder, flip builder, input size, widths it takes)
ARCHS = {
    "vgg11": ("vgg11", "vgg11_flip", 32, True),
    "resnet50": ("resnet50", "resnet50_flip", 65, False),
}
#: model key → (flip model?, conv path, channels-last)
VARIANTS = {
    "plain": (False, None, False),
    "plain_cl": (False, None, True),
    "flip": (True, "auto", False),
    "flip_static": (True, "static", False),
    "flip_regular": (True, "regular", False),
}


def build(
    arch: str, key: str, width: float, device: torch.device, channels_last: bool | None = None
) -> nn.Module:
    """One benchmark model (seeded init, train mode, on ``device``; channels-last when the
    variant says so or ``channels_last``, by default on CUDA)."""
    plain_name, flip_name, _, has_width = ARCHS[arch]
    flip, path, variant_channels_last = VARIANTS[key]
    torch.manual_seed(0)
    kwargs = {"num_classes": 10, **({"width": width} if has_width else {})}
    model = gcnn.create_model(flip_name if flip else plain_name, **kwargs)
    if path is not None:
        set_conv_path(model, path)
    model = model.to(device)
    if variant_channels_last or gpu_numerics(device, channels_last):
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def bench(
    arch: str,
    width: float,
    batch: int,
    compile_: bool,
    device: torch.device,
    args: argparse.Namespace,
) -> dict:
    """Interleaved rounds of the variants; medians of throughput and of within-round ratios."""
    size = args.image_size or ARCHS[arch][2]
    if compile_:
        # A fresh dynamo cache per configuration: past its recompile limit (8 per code object:
        # every model of every configuration compiles the same forward) dynamo would run later
        # models eagerly without a word. Hitting the limit within one configuration is an error.
        torch._dynamo.reset()
        torch._dynamo.config.fail_on_recompile_limit_hit = True
    torch.manual_seed(0)
    x = torch.rand(batch, 3, size, size, device=device)
    if args.gpu_numerics:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    keys = list(args.variants)
    steps, warmup_s = {}, {}
    for key in keys:
        start = time.perf_counter()
        model = build(arch, key, width, device, channels_last=args.gpu_numerics)
        steps[key] = make_step(model, x, y, compile_, bf16=args.gpu_numerics)
        for _ in range(args.warmup):
            steps[key]()
        warmup_s[key] = round(time.perf_counter() - start, 1)
    rates: dict[str, list[float]] = {key: [] for key in keys}
    faults = dict.fromkeys(keys, 0)
    for _ in range(args.rounds):
        for key in keys:
            before = glibc_malloc.minor_faults()
            rates[key].append(batch * args.steps / time_steps(steps[key], args.steps, device))
            faults[key] += glibc_malloc.minor_faults() - before
    timed_steps = args.rounds * args.steps
    ratios, ranges = {}, {}
    for key in (k for k in keys if k != "plain"):
        name = f"{key}/plain"
        ratios[name], ranges[name] = ratio_summary(rates[key], rates["plain"])
    return {
        "arch": arch,
        "width": width if ARCHS[arch][3] else None,
        "batch": batch,
        "image_size": size,
        "mode": "compile" if compile_ else "eager",
        "images_per_s": {key: round(statistics.median(r), 1) for key, r in rates.items()},
        "ratios": ratios,
        "ratio_range": ranges,
        "round_images_per_s": rates,
        "page_faults_per_step": {k: round(n / timed_steps) for k, n in faults.items()},
        "warmup_s": warmup_s,
        "rounds": args.rounds,
    }


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``) and architecture."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or "CPU"
    return f"{model} ({platform.machine()})"


def environment(
    device: torch.device, allocator: str = "default", bf16_channels_last: bool | None = None
) -> dict:
    """Device, library versions, allocator and numeric settings of the run
    (``bf16_channels_last``: the GPU configuration, by default on CUDA)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "device": name,
        "machine_id": machine_id(device),
        "cpu_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "gcnn": gcnn.__version__,
        "code": code_provenance(),
        "python": platform.python_version(),
        "numerics": "bf16 autocast, channels_last input and models"
        if gpu_numerics(device, bf16_channels_last)
        else "fp32",
        "cpu_allocator": allocator,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="VGG11 only")
    p.add_argument(
        "--batch-sizes", type=int, nargs="+", default=None, help="CPU 32 128, GPU 512 2048"
    )
    p.add_argument(
        "--image-size", type=int, default=None, help="default: 32 (VGG11), 65 (ResNet50)"
    )
    p.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=list(VARIANTS),
        help="default: all; with --gpu-numerics all but plain_cl (every model is channels-last)",
    )
    p.add_argument("--steps", type=int, default=1, help="training steps per timed unit")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2, help="steps before timing (compiles)")
    p.add_argument(
        "--malloc",
        choices=["pinned", "default"],
        default="pinned",
        help="pinned (default): fix glibc's mmap and trim thresholds first (glibc_malloc.py)",
    )
    p.add_argument(
        "--gpu-numerics",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast, channels-last input and models (default: on CUDA only)",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    args.gpu_numerics = gpu_numerics(device, args.gpu_numerics)
    if args.variants is None:
        args.variants = [k for k in VARIANTS if not (args.gpu_numerics and k == "plain_cl")]
    if "plain" not in args.variants:
        p.error("--variants must include plain (the reference of every ratio)")
    batches = args.batch_sizes or ([512, 2048] if device.type == "cuda" else [32, 128])
    warnings.simplefilter("ignore", gcnn.FlipExactnessWarning)
    allocator = glibc_malloc.pin() if args.malloc == "pinned" else "default"
    env = environment(device, allocator, args.gpu_numerics)
    results = []
    for arch in args.archs:
        for width in args.widths if ARCHS[arch][3] else [1.0]:
            for batch in batches:
                for mode in args.modes:
                    row = bench(arch, width, batch, mode == "compile", device, args)
                    results.append(row)
                    print(json.dumps(row), flush=True)
                    write_report(results, env, args.out)  # each row kept as it lands


if __name__ == "__main__":
    main()
