"""``gcnn compare A B``: merge two different nets, measured exactly like ``gcnn check``."""

from __future__ import annotations

import argparse

from gcnn.analysis.compare import MATCHINGS
from gcnn.commands.check import add_measurement_arguments, annotate_report, prepare, source_record


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="merge two independently trained nets of one architecture (the two-net barrier)",
        description="Align net B to net A (activation matching on the same statistics as "
        "gcnn check: every image and its mirror, the same probes and dead-channel handling; or "
        "weight matching) and measure their interpolation barriers (plain, BN reset, REPAIR), "
        "so that the flip-merge and the two-net merge can be compared. Writes the same report "
        "files as gcnn check into --out.",
    )
    p.add_argument("weights_a", metavar="A", help="checkpoint of net A (.safetensors / state dict)")
    p.add_argument("weights_b", metavar="B", help="checkpoint of net B, same architecture")
    p.add_argument(
        "--arch",
        help="the model (as for gcnn check); optional when gcnn train sidecars sit next to A and B",
    )
    p.add_argument(
        "--matching",
        choices=MATCHINGS,
        default="activation",
        help="activation matching (default) or data-free weight matching (Git Re-Basin)",
    )
    add_measurement_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gcnn.analysis.compare import compare_models, same_architecture
    from gcnn.analysis.report import summary_table, write_report
    from gcnn.commands import UsageError

    ready = prepare(args, [args.weights_a, args.weights_b])
    (model_a, model_b), (source_a, source_b) = ready.models, ready.sources
    try:
        same_architecture(model_a, model_b)
    except ValueError as err:
        raise UsageError(f"{args.weights_a} and {args.weights_b}: {err}") from err
    report = compare_models(
        model_a,
        model_b,
        ready.data.train,
        ready.data.test,
        arch=source_a.spec,
        matching=args.matching,
        alphas=ready.alphas,
        mirror_closed=args.mirror_closed,
        probe=args.probe,
        methods=args.methods,
        device=ready.device,
    )
    print(summary_table(report))
    written = write_report(report, args.out)
    annotate_report(
        args.out,
        {
            "model_source": source_record(source_a, args.weights_a),
            "partner_source": source_record(source_b, args.weights_b),
            "preprocessing": ready.data.preprocessing,
            "labels": ready.data.labels,
        },
    )
    for path in written:
        print(f"wrote {path}")
    return 0
