"""DDP on the CPU: torchrun with 2 gloo processes; ranks end with identical weights."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gcnn
from gcnn.runs import load_run
from gcnn.train.distributed import DistContext, ranks_agree

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_gloo_ranks_train_identical_weights(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "gcnn.cli", "train", "--arch", "vgg11_flip", "--regime", "gcnn", "--width", "0.125",
        "--data", "fashion-mnist", "--train-subset", "200", "--test-subset", "100",
        "--epochs", "1", "--batch-size", "50", "--device", "cpu", "--no-progress",
        "--out", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sidecar = json.loads(next(tmp_path.glob("*/seed0/model.json")).read_text())
    assert sidecar["world_size"] == 2 and sidecar["ranks_identical"] is True
    assert proc.stdout.count("vgg11_flip") == 1  # only rank 0 prints the summary
    model, meta = load_run(next(tmp_path.glob("*/seed0")))
    assert meta == sidecar and model.features[0].weight.shape[1] == 1


def _check_agreement(rank: int, port: int, result_path: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ctx = DistContext(rank=rank, world_size=2)
    torch.manual_seed(0)
    model = gcnn.vgg11(width=0.125)
    same = ranks_agree(model, ctx)
    if rank == 1:
        with torch.no_grad():
            model.classifier.bias[0] += 1e-6
    different = ranks_agree(model, ctx)
    dist.destroy_process_group()
    if rank == 0:
        Path(result_path).write_text(json.dumps([same, different]))


def test_ranks_agree_detects_a_rank_that_drifted(tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    mp.spawn(_check_agreement, args=(_free_port(), str(result)), nprocs=2, join=True)
    assert json.loads(result.read_text()) == [True, False]
