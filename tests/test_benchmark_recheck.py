"""``benchmarks/recheck_isotypic.py``: the reviewer's tool that recomputes the benchmark's
medians from the per-round data in committed result files."""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SCRIPT = ROOT / "benchmarks" / "recheck_isotypic.py"


def _load_recheck():
    spec = importlib.util.spec_from_file_location("recheck_isotypic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recheck = _load_recheck()


def _row() -> dict:
    """A row as ``bench_isotypic.py`` writes it, from made-up rounds."""
    rounds = {"plain": [100.0, 90.0, 110.0], "flip": [120.0, 99.0, 121.0]}
    median, spread = recheck.ratio_summary(rounds["flip"], rounds["plain"])
    return {
        "arch": "vgg11", "width": 1.0, "batch": 128, "image_size": 32, "mode": "eager",
        "images_per_s": {k: round(statistics.median(v), 1) for k, v in rounds.items()},
        "ratios": {"flip/plain": median}, "ratio_range": {"flip/plain": spread},
        "round_images_per_s": rounds, "rounds": 3,
    }  # fmt: skip


def test_ratio_summary_is_the_median_and_range_of_within_round_ratios() -> None:
    median, spread = recheck.ratio_summary([120.0, 99.0, 121.0], [100.0, 90.0, 110.0])
    assert median == 1.1  # ratios 1.2, 1.1, 1.1
    assert spread == [1.1, 1.2]


def test_a_consistent_row_passes() -> None:
    assert recheck.recheck_row(_row()) == []


@pytest.mark.parametrize(
    ("field", "key", "value"),
    [
        ("ratios", "flip/plain", 1.2),
        ("ratio_range", "flip/plain", [1.0, 1.2]),
        ("images_per_s", "plain", 95.0),
    ],
)
def test_a_stored_figure_that_disagrees_with_its_rounds_is_flagged(field, key, value) -> None:
    row = _row()  # a fresh row each call
    row[field][key] = value
    problems = recheck.recheck_row(row)
    assert len(problems) == 1 and key.split("/")[0] in problems[0]


def _run(*files: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, files)], capture_output=True, text=True
    )


def test_committed_files_with_rounds_recompute_to_their_stored_ratios() -> None:
    files = sorted(RESULTS.glob("isotypic_cpu_epyc4_*.json"))
    files = [f for f in files if "round_images_per_s" in f.read_text()]
    assert files, "no committed result file keeps per-round data"
    done = _run(*files)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "flip/plain" in done.stdout and "rounds" in done.stdout


def test_files_without_rounds_cannot_be_checked() -> None:
    old = RESULTS / "isotypic_cpu_epyc3_targets_vgg11_1.json"
    assert "round_images_per_s" not in old.read_text()
    assert _run(old).returncode == 2
