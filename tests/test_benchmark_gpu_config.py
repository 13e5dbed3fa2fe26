"""``benchmarks/bench_isotypic.py --gpu-numerics``: the GPU benchmark's configuration (bf16
autocast, channels-last) runs end to end on the CPU, so a GPU session finds the script working
(the prepared device check, ``benchmarks/gpu_check.sh``, calls it this way)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_isotypic.py"
RECHECK = ROOT / "benchmarks" / "recheck_isotypic.py"


def _bench(out: Path, *flags: str) -> dict:
    command = [
        sys.executable, str(BENCH), "--archs", "vgg11", "--widths", "0.25", "--batch-sizes", "2",
        "--modes", "eager", "--rounds", "2", "--warmup", "1",
        "--variants", "plain", "flip", "flip_regular", "--out", str(out), *flags,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text())


@pytest.mark.parametrize(
    ("flags", "numerics"),
    [(("--gpu-numerics",), "bf16 autocast, channels_last input and models"), ((), "fp32")],
)
def test_the_gpu_configuration_runs_on_the_cpu(tmp_path: Path, flags, numerics: str) -> None:
    out = tmp_path / "report.json"
    report = _bench(out, *flags)
    assert report["environment"]["numerics"] == numerics
    (row,) = report["results"]
    assert set(row["ratios"]) == {"flip/plain", "flip_regular/plain"}
    assert all(len(rates) == 2 for rates in row["round_images_per_s"].values())
    recheck = subprocess.run([sys.executable, str(RECHECK), str(out)], capture_output=True)
    assert recheck.returncode == 0, recheck.stdout
