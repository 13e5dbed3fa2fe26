"""``gcnn summarize RUNS… --out DIR``: tables and figures over many runs and reports."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summarize",
        help="tables and figures over many training runs and check/compare reports",
        description="Reads every training sidecar (model.json + log.jsonl) and every gcnn "
        "check / gcnn compare report.json under the given folders and writes, per regime and "
        "width, accuracy, flip-merge vs two-net-merge barriers and per-layer structure — means "
        "with 95 %% confidence intervals — as CSV, markdown (summary.md) and PNG figures.",
    )
    p.add_argument("paths", nargs="+", metavar="RUNS", help="folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gcnn.analysis.summary import summarize
    from gcnn.commands import UsageError

    try:
        written = summarize(args.paths, args.out)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err
    print((Path(args.out) / "summary.md").read_text())
    for path in written:
        print(f"wrote {path}")
    return 0
