"""``gcnn compare`` (the two-net merge), ``gcnn summarize`` and the study driver end to end.

The study runs its reduced ``tiny`` preset (two seeds per regime, width 0.125, 600 training
images, one epoch): this checks the files and their schema, not the scientific values.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import gcnn
from gcnn.analysis.graph import analyse_graph, permute_model, random_permutations
from gcnn.cli import main
from gcnn.provenance import code_provenance

ROOT = Path(__file__).resolve().parents[2]
CNN = ROOT / "models" / "vgg11-w025-fmnist-cnn" / "model.safetensors"
SMALL = ["--data", "fashion-mnist", "--num-images", "50", "--num-eval", "100"]
FAST = ["--alphas", "0", "0.5", "1", "--methods", "interpolate", "bn_reset"]


def test_compare_a_net_with_a_permuted_copy_of_itself_finds_no_barrier(tmp_path) -> None:
    """Planted ground truth for the two-net merge: B is A with every group permuted."""
    meta = json.loads(CNN.with_name("model.json").read_text())
    model = gcnn.create_model(meta["arch"], weights=CNN, **meta["arch_kwargs"]).eval()
    graph = analyse_graph(model, torch.zeros(1, 1, 32, 32))
    planted = random_permutations(graph, torch.Generator().manual_seed(0))
    permuted = permute_model(model, graph, planted)
    b = tmp_path / "b" / "model.safetensors"
    b.parent.mkdir()
    save_file({k: v.contiguous() for k, v in permuted.state_dict().items()}, str(b))
    b.with_name("model.json").write_text(json.dumps(meta))
    out = tmp_path / "report"
    assert main(["compare", str(CNN), str(b), *SMALL, *FAST, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "compare" and report["statistics"]["mirror_closed"]
    assert report["verdict"]["exact_layers"] == len(report["layers"]) == 8
    for method, b_ in report["barrier"]["by_method"].items():
        assert abs(b_["accuracy"]) < 1e-9, method
    assert report["partner_source"]["run"]["regime"] == "cnn"
    perms = json.loads((out / "permutations.json").read_text())
    for name, p in perms.items():  # the match undoes the planted permutation
        assert planted[name][torch.tensor(p)].tolist() == list(range(len(p)))


def test_compare_two_different_nets_reports_a_barrier(tmp_path, capsys) -> None:
    other = ROOT / "models" / "vgg11-w025-fmnist-cnn-inv" / "model.safetensors"
    out = tmp_path / "report"
    argv = ["compare", str(CNN), str(other), *SMALL, *FAST, "--matching", "weight"]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["statistics"]["matching"] == "weight"
    assert report["verdict"]["exact_layers"] == 0  # the negative control: not one net
    assert report["barrier"]["by_method"]["interpolate"]["accuracy"] > 1
    assert "matching:" in capsys.readouterr().out


def test_compare_refuses_two_architectures_in_one_line(tmp_path, capsys) -> None:
    wide = tmp_path / "wide.safetensors"
    save_file(gcnn.vgg11(width=0.5, in_channels=1).state_dict(), str(wide))
    argv = ["compare", str(CNN), str(wide), "--arch", "vgg11", "--model-kwargs",
            '{"width": 0.25, "in_channels": 1}', *SMALL, "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wide.safetensors" in err[0]


def _study():
    spec = importlib.util.spec_from_file_location("flip_study", ROOT / "analysis/flip_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_tiny_study_trains_checks_compares_and_summarizes_and_resumes(tmp_path) -> None:
    study = _study()
    out = tmp_path / "study"
    argv = ["--preset", "tiny", "--gcnn", "inprocess", "--out", str(out)]
    assert study.main(argv) == 0
    weights = sorted(out.glob("runs/w0.125/*/seed*/model.safetensors"))
    assert len(weights) == 6  # 3 regimes × 2 seeds
    # every sidecar and report names the code that wrote it
    records = [*out.glob("runs/*/*/seed*/model.json"), *out.glob("c*/*/*/*/report.json")]
    assert len(records) == 6 + 6 + 3
    assert {json.loads(p.read_text())["code"]["commit"] for p in records} == {
        code_provenance()["commit"]
    }
    assert len(list(out.glob("checks/w0.125/*/seed*/report.json"))) == 6
    compares = list(out.glob("compares/w0.125/*/seed0-seed1/report.json"))
    assert len(compares) == 3 and all(json.loads(p.read_text())["kind"] == "compare"
                                      for p in compares)  # fmt: skip
    summary = out / "summary"
    for name in ("summary.md", "accuracy.csv", "barriers.csv", "paired.csv", "layers.csv",
                 "accuracy.png", "barriers.png", "layers.png", "structure.png"):  # fmt: skip
        assert (summary / name).stat().st_size > 0, name
    with open(summary / "accuracy.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["regime"] for r in rows} == {"cnn", "cnn+inv", "gcnn"}
    assert all(r["test_acc_n"] == "2" and float(r["width"]) == 0.125 for r in rows)
    with open(summary / "barriers.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["regime"], r["kind"]) for r in rows} == {
        (g, k) for g in ("cnn", "cnn+inv", "gcnn") for k in ("flip", "compare")
    }
    assert {"accuracy_barrier", "accuracy_barrier_ci95", "loss_barrier"} <= set(rows[0])
    gcnn_flip = [r for r in rows if r["regime"] == "gcnn" and r["kind"] == "flip"]
    assert all(abs(float(r["accuracy_barrier"])) < 1e-6 for r in gcnn_flip)  # a GCNN: 0
    # the opt-in plateau phase: seed 0 of every regime at twice the epochs, tabulated
    assert study.main([*argv, "--phases", "plateau"]) == 0
    long_runs = sorted(out.glob("plateau/w0.125/*/seed0/model.json"))
    assert len(long_runs) == 3 and all(json.loads(p.read_text())["epochs"] == 2 for p in long_runs)
    table = (out / "plateau" / "plateau.md").read_text().splitlines()
    assert len(table) == 2 + 3 and "at 2 epochs" in table[0]
    # resumable: a rerun trains and measures nothing again
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json") if "summary" not in p.parts}
    assert study.main([*argv, "--phases", "train", "check", "compare"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.parametrize("conv_path", ["regular", None])
def test_study_forwards_conv_path_to_the_flip_nets_only(tmp_path, monkeypatch, conv_path) -> None:
    study = _study()
    studies = []  # the Study that main builds from the command line, caught before training
    monkeypatch.setattr(study.Study, "train", lambda self: studies.append(self))
    flags = ["--preset", "tiny", "--out", str(tmp_path), "--phases", "train"]
    assert study.main(flags + (["--conv-path", conv_path] if conv_path else [])) == 0
    gcnn_argv = studies[0].train_argv(0.125, "gcnn", 0, 1, tmp_path)
    cnn_argv = studies[0].train_argv(0.125, "cnn+inv", 0, 1, tmp_path)
    assert "--conv-path" not in cnn_argv  # forcing a path on a plain net is a usage error
    if conv_path:
        assert gcnn_argv[gcnn_argv.index("--conv-path") + 1] == conv_path
    else:
        assert "--conv-path" not in gcnn_argv
