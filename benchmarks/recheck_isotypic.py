"""Recompute the medians of ``bench_isotypic.py`` result files from their per-round data.

Every row written since the files kept ``round_images_per_s`` is recomputed: the median
images/s of each variant, and for each ``flip…/plain`` ratio the median and range of the
within-round ratios. Prints one line per ratio with its spread; exits 1 if a stored figure
disagrees with its recomputation (beyond the last rounded digit), 2 if no file has per-round
data (older files keep only medians, which cannot be checked).

    python benchmarks/recheck_isotypic.py benchmarks/results/isotypic_cpu_*.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def ratio_summary(rates: list[float], reference: list[float]) -> tuple[float, list[float]]:
    """Median and ``[min, max]`` of the within-round ratios ``rates[i] / reference[i]``
    (rounded to 3 decimals, as ``bench_isotypic.py`` stores them)."""
    per_round = [a / b for a, b in zip(rates, reference, strict=True)]
    return round(statistics.median(per_round), 3), [
        round(min(per_round), 3),
        round(max(per_round), 3),
    ]


def recheck_row(row: dict) -> list[str]:
    """The disagreements between a row's stored figures and those recomputed from its rounds."""
    rounds = row["round_images_per_s"]
    problems = []
    for key, rates in rounds.items():
        if abs(statistics.median(rates) - row["images_per_s"][key]) > 0.051:
            problems.append(f"images_per_s[{key}] {row['images_per_s'][key]}")
    for name, stored in row["ratios"].items():
        median, spread = ratio_summary(rounds[name.split("/")[0]], rounds["plain"])
        if abs(median - stored) > 5e-4 or spread != row["ratio_range"][name]:
            problems.append(f"{name}: stored {stored} {row['ratio_range'][name]}, "
                            f"recomputed {median} {spread}")  # fmt: skip
    return problems


def label(row: dict) -> str:
    width = "" if row["width"] is None else f" w{row['width']:g}"
    return f"{row['arch']}{width} b{row['batch']} {row['image_size']}px {row['mode']}"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("files", nargs="+", type=Path)
    args = p.parse_args()
    checked, failed = 0, False
    for path in args.files:
        report = json.loads(path.read_text())
        for row in report["results"]:
            if "round_images_per_s" not in row:
                continue
            checked += 1
            problems = recheck_row(row)
            failed |= bool(problems)
            for name, ratio in row["ratios"].items():
                low, high = row["ratio_range"][name]
                print(f"{path.name}: {label(row)}  {name} {ratio:.3f}  "
                      f"(rounds {low:.3f}–{high:.3f}, n={row['rounds']})")  # fmt: skip
            for problem in problems:
                print(f"  MISMATCH {problem}")
    if checked == 0:
        print("no row with per-round data (round_images_per_s) in these files", file=sys.stderr)
        sys.exit(2)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
