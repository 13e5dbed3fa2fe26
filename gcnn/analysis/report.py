"""Write a :class:`~gcnn.analysis.check.CheckReport`: ``report.json``, ``report.md`` and plots.

Plots (PNG, matplotlib's Agg backend):

* ``barrier.png``: test loss and accuracy over α, plain interpolation vs BN reset vs REPAIR;
* ``equivariance.png``: per-group equivariance error before and after alignment (log scale);
* ``permutations.png``: per group, fixed points and 2-cycles of the matched permutation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from gcnn.analysis.check import METHODS, CheckReport

METHOD_LABELS = {"interpolate": "plain", "bn_reset": "BN reset", "repair": "REPAIR"}


def _fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}" if abs(value) >= 1e-2 or value == 0 else f"{value:.2e}"
    return str(value)


def summary_table(report: CheckReport) -> str:
    """A plain-text summary for the terminal."""
    acc, loss = report.accuracy, report.loss
    h, w = report.image_size
    lines = [
        f"{report.arch} at {h}×{w}: "
        + ("exact size" if report.exact_size else "NOT an exact size"),
        f"{'':<18}{'accuracy %':>12}{'loss':>10}",
    ]
    for key in acc:
        lines.append(f"{key:<18}{_fmt(acc[key]):>12}{_fmt(loss[key], 4):>10}")
    by_method = report.barrier["by_method"]
    for m in METHODS:
        b = by_method[m]  # type: ignore[index]
        lines.append(
            f"barrier ({METHOD_LABELS[m]}): loss {_fmt(b['loss'], 4)}, "
            f"accuracy {_fmt(b['accuracy'])} points"
        )
    inv = sum(layer.involution for layer in report.layers)
    lines.append(f"involutions: {inv}/{len(report.layers)} groups")
    lines.append(
        f"{'group':<34}{'C':>6}{'inv':>5}{'fixed':>7}{'2-cyc':>7}"
        f"{'err before':>12}{'err after':>12}"
    )
    for layer in report.layers:
        lines.append(
            f"{layer.name[:33]:<34}{layer.channels:>6}{'yes' if layer.involution else 'no':>5}"
            f"{layer.fixed_points:>7}{layer.two_cycles:>7}"
            f"{_fmt(layer.equivariance_error_before):>12}{_fmt(layer.equivariance_error_after):>12}"
        )
    nearest = report.nearest_gcnn
    if nearest.get("built"):
        lines.append(
            f"nearest GCNN: invariance error {_fmt(nearest['invariance_error'])}"
            + (" (certified)" if nearest["certified"] else " (not certified)")
            + (f", as {nearest['flip_model']}" if nearest.get("flip_model") else "")
        )
    else:
        lines.append(f"nearest GCNN: not built ({nearest.get('reason')})")
    return "\n".join(lines)


def markdown(report: CheckReport) -> str:
    """``report.md``: the summary, the per-group table and the plots."""
    h, w = report.image_size
    rows = [
        f"# Flip-symmetry check: `{report.arch}` at {h}×{w}",
        "",
        f"- exact size: **{report.exact_size}**"
        + (f" (broken by {'; '.join(report.breaking_ops)})" if report.breaking_ops else ""),
        f"- statistics images: {report.statistics_images}; evaluation images: {report.eval_images}",
        "",
        "| | accuracy % | loss |",
        "|---|---|---|",
    ]
    rows += [
        f"| {k} | {_fmt(report.accuracy[k])} | {_fmt(report.loss[k], 4)} |" for k in report.accuracy
    ]
    rows += ["", "| barrier | loss | accuracy (points) |", "|---|---|---|"]
    by_method = report.barrier["by_method"]
    for m in METHODS:
        b = by_method[m]  # type: ignore[index]
        rows.append(f"| {METHOD_LABELS[m]} | {_fmt(b['loss'], 4)} | {_fmt(b['accuracy'])} |")
    rows += [
        "",
        "| group | channels | involution | fixed points | 2-cycles | equiv. error before | after "
        "| weight error before | after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for layer in report.layers:
        rows.append(
            f"| `{layer.name}` | {layer.channels} | {layer.involution} | {layer.fixed_points} "
            f"| {layer.two_cycles} | {_fmt(layer.equivariance_error_before)} "
            f"| {_fmt(layer.equivariance_error_after)} | {_fmt(layer.weight_error_before)} "
            f"| {_fmt(layer.weight_error_after)} |"
        )
    rows += ["", f"Nearest GCNN: `{json.dumps(report.nearest_gcnn)}`", ""]
    rows += [f"![{p}]({p}.png)" for p in ("barrier", "equivariance", "permutations")]
    return "\n".join(rows) + "\n"


def _save(fig, path: Path) -> Path:  # noqa: ANN001
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _per_group_axes(names: list[str], ylabel: str, title: str):  # noqa: ANN202
    """A figure with one x tick per permutation group."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set(ylabel=ylabel, title=title)
    return fig, ax


def plot(report: CheckReport, out: Path) -> list[Path]:
    """Write the three PNG plots into ``out``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for m in METHODS:
        points = report.curves[m]
        alphas = [p["alpha"] for p in points]
        ax_loss.plot(alphas, [p["loss"] for p in points], marker="o", label=METHOD_LABELS[m])
        ax_acc.plot(alphas, [p["accuracy"] for p in points], marker="o", label=METHOD_LABELS[m])
    ax_loss.set(xlabel="α (0: model, 1: aligned flipped twin)", ylabel="test loss")
    ax_acc.set(xlabel="α (0: model, 1: aligned flipped twin)", ylabel="test accuracy %")
    ax_acc.legend()
    fig.suptitle(f"{report.arch}: interpolation with its flipped twin")
    paths = [_save(fig, out / "barrier.png")]

    layers = report.layers
    names = [layer.name for layer in layers]
    x = range(len(names))
    fig, ax = _per_group_axes(
        names, "‖a − Q⁻¹ flip a(flip x)‖² / ‖a‖²", "layerwise equivariance error"
    )
    floor = 1e-16
    ax.semilogy(x, [max(la.equivariance_error_before, floor) for la in layers], "o-",
                label="before alignment (Q = id)")  # fmt: skip
    ax.semilogy(x, [max(la.equivariance_error_after, floor) for la in layers], "s-",
                label="after alignment (matched Q)")  # fmt: skip
    ax.legend()
    paths.append(_save(fig, out / "equivariance.png"))

    fig, ax = _per_group_axes(names, "channels", "structure of the matched permutations")
    fixed = [la.fixed_points for la in layers]
    paired = [2 * la.two_cycles for la in layers]
    longer = [la.channels - f - p for la, f, p in zip(layers, fixed, paired, strict=True)]
    ax.bar(x, fixed, label="fixed points (invariant)")
    ax.bar(x, paired, bottom=fixed, label="channels in 2-cycles (mirror pairs)")
    ax.bar(x, longer, bottom=[f + p for f, p in zip(fixed, paired, strict=True)],
           color="lightgrey", label="channels in longer cycles")  # fmt: skip
    ax.legend()
    paths.append(_save(fig, out / "permutations.png"))
    return paths


def write_report(report: CheckReport, out: str | Path) -> list[Path]:
    """Write ``report.json``, ``report.md`` and the plots into ``out`` (created)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    return [out / "report.json", out / "report.md", *plot(report, out)]
