"""``gcnn tuning``: what the flip convs' measured kernel choices on this machine are; clear them.

``path="auto"`` (the default of :class:`gcnn.nn.FlipConv2d`) times its kernels once per conv
shape and machine and keeps the choice in a per-machine file (:mod:`gcnn.nn.tuning_store`);
this command shows where that file is, which machine this process counts as, and how many
choices each kernel won, and ``--clear`` forgets this machine's (the next run times again).
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from gcnn.nn import tuning_store
from gcnn.nn.isotypic_tuning import KERNELS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tuning",
        help="show or clear the flip convs' measured kernel choices on this machine",
        description="Flip convs on path='auto' time their kernels once per conv shape and "
        "machine and keep the fastest in a per-machine file ($GCNN_TUNING_CACHE, default "
        "~/.cache/gcnn/conv_tuning.json). Show that file, this machine's id and its stored "
        "choices, or clear them so the next run times again.",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="the torch thread count the machine id is for (default: this process's)",
    )
    p.add_argument(
        "--clear", action="store_true", help="forget this machine's choices (others' stay)"
    )
    p.add_argument("--verbose", action="store_true", help="list every stored choice")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gcnn.commands import UsageError

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    path = tuning_store.store_path()
    if path is None:
        print(f"conv tuning cache: off (${tuning_store.ENV_VAR}); choices live in memory only")
        return 0
    machine = tuning_store.machine_id(torch.device("cpu"))
    stored = tuning_store.load_all()  # one read of the file for everything below
    choices = stored.get(machine, {})
    if args.clear:
        tuning_store.forget(machine)
        print(f"cleared {len(choices)} stored choice(s) of {machine} from {path}")
        return 0
    print(f"conv tuning cache: {path}{'' if path.exists() else ' (not written yet)'}")
    print(f"this machine: {machine}")
    print(f"  {_summary(choices)}")
    for other, other_choices in sorted(stored.items()):
        if other != machine:
            print(f"also stored for: {other}\n  {_summary(other_choices)}")
    if args.verbose:
        for key, kernel in sorted(choices.items()):
            print(f"{kernel:8s} {key}")
    return 0


def _summary(choices: dict[str, str]) -> str:
    """``N choices: regular a, kh_x_1 b, gemm c``."""
    counts = Counter(choices.values())
    return f"{len(choices)} choice(s): " + ", ".join(f"{k} {counts[k]}" for k in KERNELS)
