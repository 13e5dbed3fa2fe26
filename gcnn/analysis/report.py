"""Write a :class:`~gcnn.analysis.check.CheckReport`: ``report.json``, ``report.md`` and plots.

Plots (PNG, matplotlib's Agg backend):

* ``barrier.png``: test loss and accuracy over α, plain interpolation vs BN reset vs REPAIR
  (folded into BN/conv) vs REPAIR at every activation;
* ``equivariance.png``: per group, the equivariance error before and after alignment (log
  scale), the error normalised by its chance level, and the gap between the best permutation
  and the best involution;
* ``permutations.png``: per group, fixed points, 2-cycles, channels in longer cycles and dead
  channels of the matched permutation.

Also ``permutations.json`` (group name → matched permutation, ``perm[c]`` = the partner's
channel matched to the model's channel ``c``).
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

from gcnn.analysis.check import CheckReport, LayerReport
from gcnn.provenance import code_provenance

METHOD_LABELS = {
    "interpolate": "plain",
    "bn_reset": "BN reset",
    "repair": "REPAIR (BN/conv)",
    "repair_activations": "REPAIR (activations)",
}
PARTNER = {"flip": "its aligned flipped twin", "compare": "the aligned second net"}
NAME_WIDTH = 34


def _fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}" if abs(value) >= 1e-2 or value == 0 else f"{value:.2e}"
    return str(value)


def _verdict_line(report: CheckReport) -> str:
    v = report.verdict
    if not v:
        return ""
    n = v["decidable_layers"]
    undecided = f", {v['undecided_layers']} undecided" if v["undecided_layers"] else ""
    detail = (
        f"{v['exact_layers']}/{n} decidable groups aligned exactly; best matching an "
        f"involution in {v['involutive_layers']}/{n}{undecided}; mean error/chance "
        f"{_fmt(v['mean_equivariance_error_normalized'])}"
    )
    if report.kind != "flip":
        return f"matching: {detail}"
    answer = {True: "a permuted GCNN", False: "NOT a permuted GCNN", None: "undecided"}
    return f"verdict: {answer[v['gcnn']]} ({detail})"


def _statistics_line(report: CheckReport) -> str:
    st = report.statistics
    if not st:
        return f"statistics: {report.statistics_images} images"
    closed = " and their mirror images" if st.get("mirror_closed") else " (not mirror-closed)"
    return f"statistics: {st['images']} images{closed}; probes: {st['probe']}"


def _wrapped(name: str) -> list[str]:
    return textwrap.wrap(name, NAME_WIDTH - 1, break_on_hyphens=False) or [""]


def _involution_mark(layer: LayerReport) -> str:
    if not layer.decidable:
        return "?"
    return "yes" if layer.involution else "no"


def summary_table(report: CheckReport) -> str:
    """A plain-text summary for the terminal (group names wrapped, never cut)."""
    acc, loss = report.accuracy, report.loss
    h, w = report.image_size
    lines = [
        f"{report.arch} at {h}×{w}: "
        + ("exact size" if report.exact_size else "NOT an exact size"),
        _statistics_line(report),
        f"{'':<26}{'accuracy %':>12}{'loss':>10}",
    ]
    for key in acc:
        lines.append(f"{key:<26}{_fmt(acc[key]):>12}{_fmt(loss[key], 4):>10}")
    lines.append(
        f"barriers (vs {PARTNER.get(report.kind, 'the partner')}): mean of the α = 0 and α = 1 "
        "points minus the α = ½ point of each curve (BN-reset and REPAIR endpoints are reset too)"
    )
    by_method = report.barrier["by_method"]
    for m, b in by_method.items():  # type: ignore[union-attr]
        lines.append(
            f"  {METHOD_LABELS[m]:<22} loss {_fmt(b['loss'], 4)}, accuracy {_fmt(b['accuracy'])} "
            "points"
        )
    lines.append(_verdict_line(report))
    lines.append(
        f"{'group':<{NAME_WIDTH}}{'C':>6}{'dead':>6}{'inv':>5}{'fixed':>7}{'2-cyc':>7}"
        f"{'longer':>8}{'corr':>7}{'gap':>9}{'err':>10}{'err/chance':>11}"
    )
    for layer in report.layers:
        names = _wrapped(layer.name)
        lines.append(
            f"{names[0]:<{NAME_WIDTH}}{layer.channels:>6}{layer.dead_channels:>6}"
            f"{_involution_mark(layer):>5}{layer.fixed_points:>7}{layer.two_cycles:>7}"
            f"{layer.channels_in_longer_cycles:>8}{_fmt(layer.matched_correlation, 3):>7}"
            f"{_fmt(layer.involution_gap, 3):>9}{_fmt(layer.equivariance_error_after):>10}"
            f"{_fmt(layer.equivariance_error_normalized):>11}"
        )
        lines += names[1:]
    undecided = [la for la in report.layers if not la.decidable]
    for layer in undecided:
        lines.append(f"undecided: {layer.name}: {layer.undecided_reason}")
    nearest = report.nearest_gcnn
    if nearest.get("built"):
        lines.append(
            f"nearest GCNN: invariance error {_fmt(nearest['invariance_error'])}"
            + (" (certified)" if nearest["certified"] else " (not certified)")
            + f", output difference to the model {_fmt(nearest['output_difference_to_model'])}"
            + (f", as {nearest['flip_model']}" if nearest.get("flip_model") else "")
        )
    elif nearest:
        lines.append(f"nearest GCNN: not built ({nearest.get('reason')})")
    return "\n".join(line for line in lines if line)


def markdown(report: CheckReport) -> str:
    """``report.md``: the summary, the per-group table and the plots."""
    h, w = report.image_size
    title = "Flip-symmetry check" if report.kind == "flip" else "Two-net merge"
    rows = [
        f"# {title}: `{report.arch}` at {h}×{w}",
        "",
        f"- exact size: **{report.exact_size}**"
        + (f" (broken by {'; '.join(report.breaking_ops)})" if report.breaking_ops else ""),
        f"- {_statistics_line(report)}; evaluation images: {report.eval_images}",
        f"- {_verdict_line(report)}",
        "",
        "| | accuracy % | loss |",
        "|---|---|---|",
    ]
    rows += [
        f"| {k} | {_fmt(report.accuracy[k])} | {_fmt(report.loss[k], 4)} |" for k in report.accuracy
    ]
    rows += [
        "",
        f"Barriers against {PARTNER.get(report.kind, 'the partner')}: mean of the curve's α = 0 "
        "and α = 1 points minus its α = ½ point (the endpoints of the BN-reset and REPAIR curves "
        "are reset too).",
        "",
        "| barrier | loss | accuracy (points) |",
        "|---|---|---|",
    ]
    by_method = report.barrier["by_method"]
    for m, b in by_method.items():  # type: ignore[union-attr]
        rows.append(f"| {METHOD_LABELS[m]} | {_fmt(b['loss'], 4)} | {_fmt(b['accuracy'])} |")
    rows += [
        "",
        "| group | channels | dead | decidable | involution | fixed points | 2-cycles "
        "| in longer cycles | matched corr. | involution gap | equiv. error before | after "
        "| after / chance | weight error before | after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for la in report.layers:
        rows.append(
            f"| `{la.name}` | {la.channels} | {la.dead_channels} | "
            f"{'yes' if la.decidable else 'no: ' + str(la.undecided_reason)} | {la.involution} "
            f"| {la.fixed_points} | {la.two_cycles} | {la.channels_in_longer_cycles} "
            f"| {_fmt(la.matched_correlation, 4)} | {_fmt(la.involution_gap, 4)} "
            f"| {_fmt(la.equivariance_error_before)} | {_fmt(la.equivariance_error_after)} "
            f"| {_fmt(la.equivariance_error_normalized)} | {_fmt(la.weight_error_before)} "
            f"| {_fmt(la.weight_error_after)} |"
        )
    if report.nearest_gcnn:
        rows += ["", f"Nearest GCNN: `{json.dumps(_finite(report.nearest_gcnn))}`"]
    rows += ["", "What each number means: docs/analysis.md, section “The report”.", ""]
    rows += [f"![{p}]({p}.png)" for p in ("barrier", "equivariance", "permutations")]
    return "\n".join(rows) + "\n"


def _finite(value: object) -> object:
    """``value`` with every NaN / ±inf float replaced by ``None`` (standard JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


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
    for m, points in report.curves.items():
        alphas = [p["alpha"] for p in points]
        ax_loss.plot(alphas, [p["loss"] for p in points], marker="o", label=METHOD_LABELS[m])
        ax_acc.plot(alphas, [p["accuracy"] for p in points], marker="o", label=METHOD_LABELS[m])
    partner = PARTNER.get(report.kind, "the partner")
    ax_loss.set(xlabel=f"α (0: model, 1: {partner})", ylabel="test loss")
    ax_acc.set(xlabel=f"α (0: model, 1: {partner})", ylabel="test accuracy %")
    ax_acc.legend()
    fig.suptitle(f"{report.arch}: interpolation with {partner}")
    paths = [_save(fig, out / "barrier.png")]

    layers = report.layers
    names = [layer.name for layer in layers]
    x = list(range(len(names)))
    fig, (ax, ax_gap) = plt.subplots(
        2, 1, figsize=(max(6, 0.35 * len(names)), 6.5), sharex=True, height_ratios=(2, 1)
    )
    ax.set(ylabel="‖a − Q t‖² / ‖a‖²", title="layerwise equivariance error")
    floor = 1e-16  # exact zeros (a GCNN) drawn at float precision
    ax.semilogy(x, [max(la.equivariance_error_before, floor) for la in layers], "o-",
                label="before alignment (Q = id)")  # fmt: skip
    ax.semilogy(x, [max(la.equivariance_error_after, floor) for la in layers], "s-",
                label="after alignment (matched Q)")  # fmt: skip
    normalized = [la.equivariance_error_normalized for la in layers]
    ax.semilogy(x, [max(v, floor) if v is not None else math.nan for v in normalized], "^--",
                label="after / chance level (1 = chance)")  # fmt: skip
    ax.legend(fontsize=7)
    gaps = [la.involution_gap if la.involution_gap is not None else math.nan for la in layers]
    ax_gap.bar(x, gaps, color=["grey" if la.decidable else "lightgrey" for la in layers])
    ax_gap.set(ylabel="involution gap\n(mean correlation)")
    ax_gap.set_xticks(x, names, rotation=90, fontsize=6)
    paths.append(_save(fig, out / "equivariance.png"))

    fig, ax = _per_group_axes(names, "channels", "structure of the matched permutations")
    fixed = [la.fixed_points for la in layers]
    paired = [2 * la.two_cycles for la in layers]
    longer = [la.channels_in_longer_cycles for la in layers]
    dead = [la.dead_channels for la in layers]
    bottom = [0] * len(layers)
    for values, label, color in (
        (fixed, "fixed points (invariant)", None),
        (paired, "channels in 2-cycles (mirror pairs)", None),
        (longer, "channels in longer cycles", "lightgrey"),
        (dead, "dead (constant over the data)", "black"),
    ):
        ax.bar(x, values, bottom=bottom, label=label, color=color)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.legend(fontsize=7)
    paths.append(_save(fig, out / "permutations.png"))
    return paths


def write_report(report: CheckReport, out: str | Path) -> list[Path]:
    """Write ``report.json``, ``permutations.json``, ``report.md`` and the plots into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = {**report.to_json(), "code": code_provenance()}
    text = json.dumps(_finite(data), indent=2, allow_nan=False)
    (out / "report.json").write_text(text + "\n")
    (out / "permutations.json").write_text(json.dumps(report.permutations) + "\n")
    (out / "report.md").write_text(markdown(report))
    return [out / "report.json", out / "permutations.json", out / "report.md", *plot(report, out)]
