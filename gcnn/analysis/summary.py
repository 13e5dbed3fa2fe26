"""Summaries over many runs: accuracy, flip-merge vs two-net-merge barriers, per-layer structure.

:func:`collect` reads, under any number of folders, every training sidecar (``model.json`` with
its ``log.jsonl``) and every ``gcnn check`` / ``gcnn compare`` ``report.json``; each report is
attributed to the regime and width of the net(s) it measured (from the sidecar recorded in its
``model_source``). :func:`summarize` writes CSV and markdown tables and PNG figures.

Every mean comes with a 95 % confidence interval over seeds (or over disjoint pairs of nets for
``compare``): ``mean ± t_{0.975, n−1} · s / √n`` with ``s`` the sample standard deviation
(Student's t; ``n = 1`` gives no interval).
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scipy import stats as scipy_stats

METHOD_ORDER = ("interpolate", "bn_reset", "repair", "repair_activations")


@dataclass(frozen=True)
class Estimate:
    """Mean and 95 % confidence half-width of ``n`` values (``half_width`` ``None`` if n < 2)."""

    mean: float
    half_width: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Estimate | None:
        values = [v for v in values if v is not None and math.isfinite(v)]
        if not values:
            return None
        n = len(values)
        mean = sum(values) / n
        if n < 2:
            return cls(mean, None, n)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        return cls(mean, float(scipy_stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n), n)

    def text(self, digits: int = 2) -> str:
        ci = "" if self.half_width is None else f" ± {self.half_width:.{digits}f}"
        return f"{self.mean:.{digits}f}{ci} (n={self.n})"


@dataclass
class Run:
    """One trained net: its sidecar and its evaluation history."""

    path: Path
    regime: str
    width: float
    seed: int | None
    test_acc: float | None
    plateau_gain: float | None  # test accuracy gained over the last two evaluations


@dataclass
class Report:
    """One ``check`` (``kind="flip"``) or ``compare`` (``kind="compare"``) report."""

    path: Path
    kind: str
    regime: str
    width: float
    data: dict = field(repr=False)


def _width(run: dict) -> float:
    return float((run.get("arch_kwargs") or {}).get("width", 1.0))


def _plateau_gain(log: Path) -> float | None:
    if not log.is_file():
        return None
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    evals = [r["test_acc"] for r in rows if r.get("test_acc") is not None]
    return evals[-1] - evals[-2] if len(evals) >= 2 else None


def collect(paths: Iterable[str | Path]) -> tuple[list[Run], list[Report]]:
    """Every training run and analysis report found under ``paths`` (files or folders)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found")
        files += [p] if p.is_file() else sorted(p.rglob("*.json"))
    runs, reports = [], []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(data, dict):
            continue
        if f.name == "model.json" and "regime" in data and "test_acc" in data:
            runs.append(
                Run(
                    f.parent,
                    data["regime"],
                    _width(data),
                    data.get("seed"),
                    data.get("test_acc"),
                    _plateau_gain(f.parent / "log.jsonl"),
                )
            )
        elif f.name == "report.json" and "layers" in data and "barrier" in data:
            run = (data.get("model_source") or {}).get("run") or {}
            reports.append(
                Report(
                    f.parent,
                    data.get("kind", "flip"),
                    run.get("regime", "unknown"),
                    _width(run) if run else math.nan,
                    data,
                )
            )
    return runs, reports


def _key(regime: str, width: float) -> tuple[str, float]:
    return regime, width


def accuracy_rows(runs: Sequence[Run]) -> list[dict]:
    """Per regime and width: test accuracy and the last evaluations' gain (plateau)."""
    groups: dict[tuple[str, float], list[Run]] = defaultdict(list)
    for r in runs:
        groups[_key(r.regime, r.width)].append(r)
    rows = []
    for (regime, width), rs in sorted(groups.items()):
        acc = Estimate.of([r.test_acc for r in rs])
        gain = Estimate.of([r.plateau_gain for r in rs])
        rows.append(
            {
                "regime": regime,
                "width": width,
                "nets": len(rs),
                "test_acc": acc,
                "last_eval_gain": gain,
            }
        )
    return rows


def barrier_rows(reports: Sequence[Report]) -> list[dict]:
    """Per regime, width, kind and method: accuracy and loss barriers."""
    groups: dict[tuple[str, float, str], list[Report]] = defaultdict(list)
    for r in reports:
        groups[(r.regime, r.width, r.kind)].append(r)
    rows = []
    for (regime, width, kind), rs in sorted(groups.items()):
        methods = {m for r in rs for m in r.data["barrier"]["by_method"]}
        for m in [m for m in METHOD_ORDER if m in methods]:
            barriers = [r.data["barrier"]["by_method"].get(m, {}) for r in rs]
            rows.append(
                {
                    "regime": regime,
                    "width": width,
                    "kind": kind,
                    "method": m,
                    "accuracy_barrier": Estimate.of([b.get("accuracy") for b in barriers]),
                    "loss_barrier": Estimate.of([b.get("loss") for b in barriers]),
                }
            )
    return rows


def _weights(source: dict | None) -> str | None:
    return (source or {}).get("weights")


def paired_rows(reports: Sequence[Report]) -> list[dict]:
    """Per regime, width and method: two-net barrier minus the flip barriers of the same nets.

    For a ``compare`` report of nets A and B with flip checks of both,
    ``Δ = barrier(A, B) − ½ (barrier(A, flip A) + barrier(B, flip B))``: positive when merging
    two nets is harder than merging each with its flipped self. Pairing removes the spread
    between nets that both barriers share; disjoint pairs make the Δs independent, so the
    interval is over pairs. ``compare_larger`` counts pairs with ``Δ > 0``.

    When pairs of a regime come from more than one width, a row with ``width = "all"`` pools
    them: the question "is the flip merge easier?" does not depend on the width, and the pairs
    stay independent, so pooling narrows the interval (it averages Δ over the widths run, each
    weighted by its number of pairs).
    """
    flips = {_weights(r.data.get("model_source")): r for r in reports if r.kind == "flip"}
    groups: dict[tuple[str, float, str], list[float]] = defaultdict(list)
    for r in reports:
        if r.kind != "compare":
            continue
        a = flips.get(_weights(r.data.get("model_source")))
        b = flips.get(_weights(r.data.get("partner_source")))
        if a is None or b is None:
            continue
        by_method = r.data["barrier"]["by_method"]
        for m, barrier in [(m, by_method[m]) for m in METHOD_ORDER if m in by_method]:
            pair = [f.data["barrier"]["by_method"].get(m, {}).get("accuracy") for f in (a, b)]
            if barrier.get("accuracy") is None or None in pair:
                continue
            groups[(r.regime, r.width, m)].append(barrier["accuracy"] - sum(pair) / 2)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows = []
    for regime in sorted({key[0] for key in groups}):
        mine = sorted(
            (key for key in groups if key[0] == regime), key=lambda k: (k[1], order[k[2]])
        )
        rows += [_paired_row(regime, width, m, groups[(regime, width, m)]) for _, width, m in mine]
        if len({width for _, width, _ in mine}) > 1:
            for m in sorted({m for _, _, m in mine}, key=order.__getitem__):
                pooled = [
                    d for _, width, mm in mine if mm == m for d in groups[(regime, width, mm)]
                ]
                rows.append(_paired_row(regime, "all", m, pooled))
    return rows


def _paired_row(regime: str, width: float | str, method: str, deltas: list[float]) -> dict:
    return {
        "regime": regime,
        "width": width,
        "method": method,
        "pairs": len(deltas),
        "two_net_minus_flip": Estimate.of(deltas),
        "compare_larger": sum(d > 0 for d in deltas),
    }


LAYER_FIELDS = (
    "equivariance_error_normalized",
    "involution_gap",
    "matched_correlation",
    "fixed_points",
    "two_cycles",
    "channels_in_longer_cycles",
    "dead_channels",
)


def layer_rows(reports: Sequence[Report], kind: str = "flip") -> list[dict]:
    """Per regime, width and layer (index and name): the mean of each per-layer number."""
    groups: dict[tuple[str, float, int, str], list[dict]] = defaultdict(list)
    for r in reports:
        if r.kind != kind:
            continue
        for i, layer in enumerate(r.data["layers"]):
            groups[(r.regime, r.width, i, layer["name"])].append(layer)
    rows = []
    for (regime, width, i, name), layers in sorted(groups.items()):
        row: dict = {"regime": regime, "width": width, "layer": i, "name": name}
        for f in LAYER_FIELDS:
            row[f] = Estimate.of([la.get(f) for la in layers])
        rows.append(row)
    return rows


def _cell(value: object) -> str:
    if isinstance(value, Estimate):
        return value.text(4 if abs(value.mean) < 1 else 2)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _write_table(rows: list[dict], stem: Path, title: str) -> list[Path]:
    if not rows:
        return []
    columns = list(rows[0])
    with open(stem.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.writer(fh)
        header = []
        for c in columns:
            is_estimate = any(isinstance(r[c], Estimate) for r in rows)
            header += [c, f"{c}_ci95", f"{c}_n"] if is_estimate else [c]
        writer.writerow(header)
        for r in rows:
            line = []
            for c in columns:
                v = r[c]
                if any(isinstance(x[c], Estimate) for x in rows):
                    line += [v.mean, v.half_width, v.n] if v is not None else ["", "", 0]
                else:
                    line.append(v)
            writer.writerow(line)
    md = [f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += [
        "| " + " | ".join(_cell(r[c]) if r[c] is not None else "—" for c in columns) + " |"
        for r in rows
    ]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    return [stem.with_suffix(".csv"), stem.with_suffix(".md")]


def _errorbar(ax, xs, estimates, **kw) -> None:  # noqa: ANN001
    pts = [(x, e) for x, e in zip(xs, estimates, strict=True) if e is not None]
    if pts:
        ax.errorbar(
            [x for x, _ in pts],
            [e.mean for _, e in pts],
            yerr=[e.half_width or 0 for _, e in pts],
            capsize=3,
            marker="o",
            **kw,
        )


def _figures(acc: list[dict], barriers: list[dict], layers: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    regimes = sorted({r["regime"] for r in acc} | {r["regime"] for r in barriers})
    if acc:
        fig, ax = plt.subplots(figsize=(5, 4))
        for regime in regimes:
            rows = [r for r in acc if r["regime"] == regime]
            _errorbar(ax, [r["width"] for r in rows], [r["test_acc"] for r in rows], label=regime)
        ax.set(xlabel="width", ylabel="test accuracy % (95 % CI)", title="accuracy per regime")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "accuracy.png", dpi=120)
        plt.close(fig)
        paths.append(out / "accuracy.png")
    methods = [m for m in METHOD_ORDER if any(r["method"] == m for r in barriers)]
    if methods:
        fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 4), squeeze=False)
        for ax, m in zip(axes[0], methods, strict=True):
            for regime in regimes:
                for kind, style in (("flip", "-"), ("compare", "--")):
                    rows = [
                        r
                        for r in barriers
                        if r["regime"] == regime and r["kind"] == kind and r["method"] == m
                    ]
                    label = f"{regime} ({'flipped self' if kind == 'flip' else 'two nets'})"
                    _errorbar(
                        ax,
                        [r["width"] for r in rows],
                        [r["accuracy_barrier"] for r in rows],
                        linestyle=style,
                        label=label,
                    )
            ax.set(xlabel="width", ylabel="accuracy barrier (points, 95 % CI)", title=m)
        axes[0][0].legend(fontsize=7)
        fig.suptitle("merge with the flipped self (solid) vs with another net (dashed)")
        fig.tight_layout()
        fig.savefig(out / "barriers.png", dpi=120)
        plt.close(fig)
        paths.append(out / "barriers.png")
    if layers:
        widths = sorted({r["width"] for r in layers})
        fig, axes = plt.subplots(2, len(widths), figsize=(5 * len(widths), 7), squeeze=False)
        for j, width in enumerate(widths):
            for regime in regimes:
                rows = [r for r in layers if r["regime"] == regime and r["width"] == width]
                xs = [r["layer"] for r in rows]
                _errorbar(
                    axes[0][j], xs, [r["equivariance_error_normalized"] for r in rows], label=regime
                )
                _errorbar(axes[1][j], xs, [r["involution_gap"] for r in rows], label=regime)
            axes[0][j].set(title=f"width {width:g}", ylabel="equivariance error / chance")
            axes[1][j].set(xlabel="layer", ylabel="involution gap (mean correlation)")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "layers.png", dpi=120)
        plt.close(fig)
        paths.append(out / "layers.png")
        fig, axes = plt.subplots(1, len(regimes), figsize=(5 * len(regimes), 4), squeeze=False)
        for ax, regime in zip(axes[0], regimes, strict=True):
            rows = [r for r in layers if r["regime"] == regime and r["width"] == widths[-1]]
            xs = [r["layer"] for r in rows]
            bottom = [0.0] * len(rows)
            for f, label in (
                ("fixed_points", "fixed points"),
                ("two_cycles", "2-cycles (×2 channels)"),
                ("channels_in_longer_cycles", "in longer cycles"),
                ("dead_channels", "dead"),
            ):
                scale = 2 if f == "two_cycles" else 1
                values = [scale * (r[f].mean if r[f] else 0) for r in rows]
                ax.bar(xs, values, bottom=bottom, label=label)
                bottom = [b + v for b, v in zip(bottom, values, strict=True)]
            ax.set(title=f"{regime}, width {widths[-1]:g}", xlabel="layer", ylabel="channels")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "structure.png", dpi=120)
        plt.close(fig)
        paths.append(out / "structure.png")
    return paths


def summarize(paths: Iterable[str | Path], out: str | Path) -> list[Path]:
    """Read everything under ``paths`` and write the tables and figures into ``out``."""
    runs, reports = collect(paths)
    if not runs and not reports:
        raise ValueError("no training runs (model.json) or reports (report.json) found")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    acc, barriers, layers = accuracy_rows(runs), barrier_rows(reports), layer_rows(reports)
    written = _write_table(acc, out / "accuracy", "Test accuracy per regime and width")
    written += _write_table(barriers, out / "barriers", "Barriers: flipped self vs two nets")
    written += _write_table(
        paired_rows(reports),
        out / "paired",
        "Paired: two-net barrier minus the mean flip barrier of the same two nets (accuracy "
        "points; > 0: the flip merge is easier)",
    )
    written += _write_table(layers, out / "layers", "Per-layer structure (flip check)")
    parts = [p.read_text() for p in written if p.suffix == ".md"]
    intro = (
        f"# Summary of {len(runs)} trained nets and {len(reports)} reports\n\n"
        "Means with 95 % confidence intervals over nets (Student's t); `kind` flip = merge with "
        "the flipped self (`gcnn check`), compare = merge of two different nets "
        "(`gcnn compare`). Barriers in accuracy points.\n\n"
    )
    (out / "summary.md").write_text(intro + "\n".join(parts))
    written.append(out / "summary.md")
    written += _figures(acc, barriers, layers, out)
    return written
