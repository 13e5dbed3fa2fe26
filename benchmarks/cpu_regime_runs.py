"""CPU-scale Fashion-MNIST runs, one per regime (cnn, cnn+inv, gcnn), through ``gcnn train``.

Each run is one ``gcnn train`` subprocess (one thread); its wall time (process start to exit,
data loading and final evaluation included) and the sidecar's numbers are collected into
``benchmarks/results/cpu_regime_runs.json``. The recipes are in ``models/*/recipe.json``.

    python benchmarks/cpu_regime_runs.py --out runs/cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import gcnn

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["vgg11-w025-fmnist-cnn", "vgg11-w025-fmnist-cnn-inv", "vgg11flip-w025-fmnist-gcnn"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/cpu")
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--results", default="benchmarks/results/cpu_regime_runs.json")
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    rows = []
    for name in args.models:
        recipe_path = ROOT / "models" / name / "recipe.json"
        recipe = json.loads(recipe_path.read_text())
        train_args = ["train", "--config", str(recipe_path.relative_to(ROOT))]
        cmd = [sys.executable, "-m", "gcnn.cli", *train_args, "--out", args.out,
               "--no-progress", "--overwrite"]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        wall = time.perf_counter() - start
        sidecar_path = next(Path(args.out).glob(f"{recipe['run_name']}/seed*/model.json"))
        sidecar = json.loads(sidecar_path.read_text())
        row = {
            "model": name,
            "command": "OMP_NUM_THREADS=1 gcnn " + " ".join(train_args),
            "regime": sidecar["regime"],
            "test_acc": sidecar["test_acc"],
            "test_acc_tta": sidecar["test_acc_tta"],
            "train_time_s": sidecar["train_time_s"],
            "wall_time_s": wall,
            "weights": str(sidecar_path.with_name("model.safetensors")),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "what": "CPU-scale Fashion-MNIST training, one net per regime (NOT the GPU targets)",
        "device": f"CPU ({platform.machine()}), 1 torch thread, shared 2-core machine",
        "torch": torch.__version__,
        "gcnn": gcnn.__version__,
        "python": platform.python_version(),
        "command": "python benchmarks/cpu_regime_runs.py --out " + args.out,
        "runs": rows,
    }
    out = ROOT / args.results
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file():  # keep the rows of models not re-run now
        done = {r["model"] for r in rows}
        old = [r for r in json.loads(out.read_text())["runs"] if r["model"] not in done]
        result["runs"] = sorted(old + rows, key=lambda r: r["model"])
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
