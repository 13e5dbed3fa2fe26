"""What runs where gcnn is installed with ``--no-deps`` beside a bare torch (the GPU machines
the benchmarks and ``benchmarks/gpu_check.sh`` run on have torch, torchvision, scipy, einops,
safetensors, matplotlib, but not rustworkx, escnn or timm): the models, ``gcnn train`` and its
CLI. Only the analysis's exact matching needs rustworkx, and says so when it is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CODE = """
import sys
for name in ("rustworkx", "escnn", "timm"):
    sys.modules[name] = None  # as if not installed
import torch
from gcnn.cli import main
out = sys.argv[1]
flags = ["--width", "0.125", "--data", "fashion-mnist-samples", "--epochs", "1"]
assert main(["train", "--arch", "vgg11_flip", *flags, "--no-progress", "--out", out]) == 0
from gcnn.analysis.involution import best_involution
try:
    best_involution(torch.rand(4, 4))
except ImportError as err:
    print("control:", err)
else:
    raise SystemExit("the matching ran without rustworkx")
"""


def test_models_and_training_run_without_the_analysis_only_packages(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CODE, str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "control:" in done.stdout and "rustworkx" in done.stdout
    assert list(tmp_path.glob("vgg11_flip_gcnn_*/seed0/model.safetensors"))
