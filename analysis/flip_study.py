"""The paper's experiment end to end: flip-merge vs two-net merge over seeds, regimes and widths.

For every width and regime (``cnn``, ``cnn+inv``, ``gcnn``) this trains ``--seeds`` VGG11s on
Fashion-MNIST with ``gcnn train``, runs ``gcnn check`` (merge with the flipped self) on every
net and ``gcnn compare`` (merge two different nets) on disjoint pairs of nets of the same regime
and width, then ``gcnn summarize`` over everything. Every step is skipped when its output
exists, so a rerun resumes where a killed one stopped (a half-trained net resumes from its last
epoch checkpoint).

    python analysis/flip_study.py                       # the committed CPU study
    python analysis/flip_study.py --phases train        # only train (e.g. in the background)
    python analysis/flip_study.py --preset gpu          # the paper's scale on one GPU

Layout of ``--out`` (default ``analysis/study``)::

    runs/w<width>/<arch>_<regime>_fashion-mnist/seed<N>/{model.safetensors,model.json,log.jsonl}
    checks/w<width>/<regime>/seed<N>/report.json (+ report.md, plots)
    compares/w<width>/<regime>/seed<A>-seed<B>/report.json
    summary/  (tables and figures of ``gcnn summarize``)
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REGIMES = ("cnn", "cnn+inv", "gcnn")
PHASES = ("train", "check", "compare", "summarize")
#: Opt-in phases (not run by default): ``plateau`` trains seed 0 of every regime with twice the
#: epochs and tabulates how much accuracy the preset's schedule leaves on the table.
EXTRA_PHASES = ("plateau",)


@dataclass
class Preset:
    """One scale of the study: what is trained and how the reports are measured."""

    widths: tuple[float, ...]
    seeds: int
    epochs: int
    train_subset: int | None
    batch_size: int
    lr: float
    check_images: int  # statistics images (and their mirrors) for check / compare
    eval_images: int
    extra_train_args: list[str] = field(default_factory=list)
    extra_measure_args: list[str] = field(default_factory=list)


PRESETS = {
    # 2-core CPU: ≈ 2 000 img/s at width 0.25, ≈ 700 img/s at 0.5 (fp32, 2 threads)
    "cpu": Preset((0.25, 0.5, 0.125), 4, 8, 30_000, 128, 0.05, 1000, 5_000),
    # one H100/H200, data on the GPU, bf16 (≈ 90 000 img/s for VGG11: a 10-epoch net ≈ 7 s):
    # the paper's 24 nets per regime and width, full Fashion-MNIST, run with --jobs 8
    "gpu": Preset((0.25, 0.5, 1.0), 24, 10, None, 500, 0.08, 5000, 10_000),
    # CI: files and their schema, not scientific values
    "tiny": Preset(
        (0.125,),
        2,
        1,
        600,
        100,
        0.05,
        64,
        128,
        ["--test-subset", "200"],
        ["--alphas", "0", "0.5", "1", "--methods", "interpolate", "bn_reset"],
    ),  # fmt: skip
}


def arch_of(regime: str) -> str:
    return "vgg11_flip" if regime == "gcnn" else "vgg11"


def run_folder(out: Path, width: float, regime: str, seed: int) -> Path:
    tag = regime.replace("+", "-")
    return out / "runs" / f"w{width:g}" / f"{arch_of(regime)}_{tag}_fashion-mnist" / f"seed{seed}"


def pairs(seeds: int) -> list[tuple[int, int]]:
    """Disjoint pairs of seeds: (0, 1), (2, 3), …"""
    return [(s, s + 1) for s in range(0, seeds - 1, 2)]


class Study:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.preset = PRESETS[args.preset]
        self.out = Path(args.out)
        self.gcnn = shlex.split(args.gcnn)
        self.widths = args.widths or self.preset.widths
        self.seeds = args.seeds or self.preset.seeds
        self.pending: list[tuple[list[str], str]] = []
        self.data_root = ["--data-root", args.data_root] if args.data_root else []

    def call(self, argv: list[str], what: str) -> None:
        cmd = [*self.gcnn, *argv]
        print(f"[{time.strftime('%H:%M:%S')}] {what}: {shlex.join(cmd)}", flush=True)
        if self.gcnn == ["inprocess"]:
            from gcnn.cli import main as gcnn_main

            code = gcnn_main(argv)
        else:
            code = subprocess.run(cmd, cwd=self.args.cwd or None).returncode
        if code != 0:
            raise SystemExit(f"{what} failed with exit code {code}")

    def queue(self, argv: list[str], what: str) -> None:
        self.pending.append((argv, what))

    def run_queue(self) -> None:
        """Run the queued calls, ``--jobs`` at a time (several small nets share one GPU)."""
        tasks, self.pending = self.pending, []
        if self.args.jobs <= 1 or self.gcnn == ["inprocess"]:
            for argv, what in tasks:
                self.call(argv, what)
            return
        with ThreadPoolExecutor(self.args.jobs) as pool:
            for future in [pool.submit(self.call, argv, what) for argv, what in tasks]:
                future.result()

    def train_argv(self, width: float, regime: str, seed: int, epochs: int, out: Path) -> list[str]:
        p = self.preset
        argv = [
            "train", "--arch", arch_of(regime), "--regime", regime,
            "--width", f"{width:g}", "--data", "fashion-mnist",
            "--epochs", str(epochs), "--batch-size", str(p.batch_size),
            "--lr", str(p.lr), "--seeds", str(seed), "--eval-every", "2",
            "--out", str(out / f"w{width:g}"), "--resume",
            "--no-progress", *p.extra_train_args,
        ]  # fmt: skip
        if p.train_subset is not None:
            argv += ["--train-subset", str(p.train_subset)]
        if self.args.conv_path is not None and arch_of(regime).endswith("_flip"):
            argv += ["--conv-path", self.args.conv_path]  # plain nets have no flip convs
        return argv + self.data_root

    def train(self) -> None:
        """Seed by seed, every regime: a stop at any point leaves a balanced set of nets."""
        p = self.preset
        for width in self.widths:
            for seed in range(self.seeds):
                for regime in REGIMES:
                    if (run_folder(self.out, width, regime, seed) / "model.safetensors").is_file():
                        continue
                    argv = self.train_argv(width, regime, seed, p.epochs, self.out / "runs")
                    self.queue(argv, f"train w{width:g} {regime} seed {seed}")
        self.run_queue()

    def measure_args(self) -> list[str]:
        p = self.preset
        return [
            "--data", "fashion-mnist", "--num-images", str(p.check_images),
            "--num-eval", str(p.eval_images), *p.extra_measure_args, *self.data_root,
        ]  # fmt: skip

    def check(self) -> None:
        for width in self.widths:
            for regime in REGIMES:
                for seed in range(self.seeds):
                    weights = run_folder(self.out, width, regime, seed) / "model.safetensors"
                    report = self.out / "checks" / f"w{width:g}" / regime / f"seed{seed}"
                    if not weights.is_file() or (report / "report.json").is_file():
                        continue
                    argv = ["check", "--weights", str(weights), "--out", str(report)]
                    self.queue(argv + self.measure_args(), f"check w{width:g} {regime} {seed}")
        self.run_queue()

    def compare(self) -> None:
        for width in self.widths:
            for regime in REGIMES:
                for a, b in pairs(self.seeds):
                    wa = run_folder(self.out, width, regime, a) / "model.safetensors"
                    wb = run_folder(self.out, width, regime, b) / "model.safetensors"
                    report = self.out / "compares" / f"w{width:g}" / regime / f"seed{a}-seed{b}"
                    if not (wa.is_file() and wb.is_file()) or (report / "report.json").is_file():
                        continue
                    argv = ["compare", str(wa), str(wb), "--out", str(report)]
                    self.queue(argv + self.measure_args(), f"compare w{width:g} {regime} {a}-{b}")
        self.run_queue()

    def plateau(self) -> None:
        """Seed 0 of every regime with twice the epochs (same schedule shape, same data):
        ``plateau/plateau.md`` lists the test accuracy at the preset's epochs and at twice them."""
        p, root = self.preset, self.out / "plateau"
        for width in self.widths:
            for regime in REGIMES:
                run = run_folder(self.out, width, regime, 0)
                long_run = root / run.relative_to(self.out / "runs")
                if not (long_run / "model.safetensors").is_file():
                    argv = self.train_argv(width, regime, 0, 2 * p.epochs, root)
                    self.queue(argv, f"plateau w{width:g} {regime} seed 0 ({2 * p.epochs} ep)")
        self.run_queue()
        rows = [
            "| width | regime | test acc % at "
            f"{p.epochs} epochs | at {2 * p.epochs} epochs | gain (points) |",
            "|---|---|---|---|---|",
        ]
        for width in self.widths:
            for regime in REGIMES:
                run = run_folder(self.out, width, regime, 0)
                accs = [_test_acc(d) for d in (run, root / run.relative_to(self.out / "runs"))]
                if None not in accs:
                    rows.append(
                        f"| {width:g} | {regime} | {accs[0]:.2f} | {accs[1]:.2f} | "
                        f"{accs[1] - accs[0]:+.2f} |"
                    )
        (root / "plateau.md").write_text("\n".join(rows) + "\n")

    def summarize(self) -> None:
        inputs = [str(self.out / d) for d in ("runs", "checks", "compares")]
        self.call(["summarize", *inputs, "--out", str(self.out / "summary")], "summarize")


def _test_acc(run: Path) -> float | None:
    sidecar = run / "model.json"
    return json.loads(sidecar.read_text()).get("test_acc") if sidecar.is_file() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--phases", nargs="+", choices=PHASES + EXTRA_PHASES, default=list(PHASES))
    p.add_argument("--widths", type=float, nargs="+", help="override the preset's widths")
    p.add_argument("--seeds", type=int, help="nets per regime and width (override)")
    p.add_argument("--out", default=str(ROOT / "analysis" / "study"))
    p.add_argument(
        "--gcnn",
        default=f"{shlex.quote(sys.executable)} -m gcnn.cli",
        help="how to call gcnn (e.g. from a frozen checkout: run with --cwd that checkout); "
        "'inprocess' calls gcnn.cli.main in this process",
    )
    p.add_argument("--cwd", help="working directory of the gcnn calls")
    p.add_argument("--jobs", type=int, default=1, help="gcnn calls run at once (GPU: 6–8)")
    p.add_argument("--data-root", help="folder with the Fashion-MNIST .gz files")
    p.add_argument(
        "--conv-path",
        choices=("auto", "tuned", "isotypic", "regular"),
        help="gcnn train --conv-path for the flip nets (default: gcnn train's own, auto); "
        "'regular' keeps the arithmetic of nets trained before the isotypic path existed",
    )
    args = p.parse_args(argv)
    args.out = str(Path(args.out).resolve())
    study = Study(args)
    for phase in PHASES[:-1] + EXTRA_PHASES + PHASES[-1:]:
        if phase in args.phases:
            getattr(study, phase)()
    return 0


if __name__ == "__main__":
    sys.exit(main())
