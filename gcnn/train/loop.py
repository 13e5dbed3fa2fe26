"""Train one network per seed: the training loop, checkpoints, resume and DDP.

:func:`train_seed` runs four parts: the run-folder guard (:mod:`gcnn.train.guard`, under the
folder's lock, :mod:`gcnn.train.lock`), the set-up (:mod:`gcnn.train.start`: model, optimizer,
a resumed state), the steps (:mod:`gcnn.train.step`) with the state saves and epoch records
(:mod:`gcnn.train.records`), and the final write. The folder layout and the sidecar are
:mod:`gcnn.runs`'s.

The loss and the weights are checked to be finite every :data:`FINITE_CHECK_EVERY` steps,
before every state save and at every epoch end: a diverged run stops with
:class:`~gcnn.errors.TrainingDiverged` and keeps its last good state.

Determinism: the model is initialised after ``torch.manual_seed(seed)``; after that no global
RNG is used (the data order and augmentation are counter-based, see :mod:`gcnn.data.loaders`),
so resuming from any saved step reproduces the uninterrupted run bit for bit on the CPU.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from gcnn.data.datasets import Dataset
from gcnn.errors import TrainingCollapsed, TrainingDiverged, UsageError
from gcnn.runs import RunPaths, data_identity, run_name, run_paths, write_json
from gcnn.train.config import TrainConfig
from gcnn.train.distributed import DistContext, on_main
from gcnn.train.guard import Claim, claim_run, commit
from gcnn.train.lock import RunLock
from gcnn.train.records import diverged, end_epoch, finish_run, format_row, non_finite, save_state
from gcnn.train.start import Run, build_model, start_run
from gcnn.train.step import Meter, train_step

__all__ = [
    "FINITE_CHECK_EVERY",
    "RunPaths",
    "TrainingCollapsed",
    "TrainingDiverged",
    "build_model",
    "run_epochs",
    "run_name",
    "run_paths",
    "train_seed",
    "write_json",
]

#: Steps between two checks that the loss and the weights are finite.
FINITE_CHECK_EVERY = 20


def _kill_self() -> None:  # pragma: no cover - the process ends here
    os.kill(os.getpid(), signal.SIGKILL)


def _stop_self() -> None:  # pragma: no cover - the process waits here until killed or continued
    os.kill(os.getpid(), signal.SIGSTOP)


def _debug_hook(step: int, kill_after: int | None, stop_after: int | None) -> None:
    if kill_after is not None and step == kill_after:
        _kill_self()
    if stop_after is not None and step == stop_after:
        _stop_self()


def run_epochs(
    run: Run,
    meter_values: list[float] | None,
    *,
    progress: bool = True,
    debug_kill_after_step: int | None = None,
    debug_stop_after_step: int | None = None,
) -> None:
    """Train ``run`` from its current step to the end, saving state and logging each epoch."""
    cfg, ctx, spe = run.cfg, run.ctx, run.steps_per_epoch
    if run.saved_step is None:  # a fresh run: the initial weights are the first good state
        save_state(run, Meter(ctx.device))
    bar = tqdm(
        total=run.total_steps, initial=run.step, disable=not (progress and ctx.is_main),
        desc=f"seed {run.seed}", unit="step", dynamic_ncols=True, leave=True,
    )  # fmt: skip
    if cfg.compile:  # the first step traces and compiles (flip convs time their kernels then)
        bar.set_postfix_str("compiling the first step", refresh=True)
    try:
        while run.step < run.total_steps:
            epoch, start = divmod(run.step, spe)
            meter = Meter(ctx.device, meter_values)
            meter_values = None
            tick = time.perf_counter()
            for x, y in run.loader.epoch(epoch, start):
                train_step(run, x, y, meter)
                bar.update(1)
                _show(bar, meter, run, tick)
                if run.step % FINITE_CHECK_EVERY == 0 and run.step % spe:
                    reason = non_finite(run, meter)
                    if reason is not None:
                        raise diverged(run, meter, reason)
                every = cfg.checkpoint_every
                if every and run.step % every == 0 and run.step < run.total_steps:
                    if run.step % spe:
                        save_state(run, meter)
                _debug_hook(run.step, debug_kill_after_step, debug_stop_after_step)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            row = end_epoch(run, epoch, meter, time.perf_counter() - tick)
            if not bar.disable:
                bar.write(format_row(row))
            if run.step < run.total_steps:
                save_state(run, Meter(ctx.device))
    finally:
        bar.close()
        if run.features is not None:
            run.features.remove()


def _show(bar: tqdm, meter: Meter, run: Run, tick: float) -> None:
    if bar.disable or not (run.step % 10 == 0 or run.step % run.steps_per_epoch == 0):
        return
    s = meter.values()
    bar.set_postfix(
        loss=f"{s[0] / s[3]:.3f}", acc=f"{100 * s[2] / s[3]:.1f}",
        img_s=f"{s[3] * run.ctx.world_size / (time.perf_counter() - tick):.0f}",
    )  # fmt: skip


def _locked(paths: RunPaths, ctx: DistContext) -> RunLock | None:
    """Rank 0 takes the run folder's lock (refused with the holder's PID); others take none."""
    for folder in (paths.dir, *paths.dir.parents):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder} is a file, not a folder: choose another --out")
    lock = RunLock(paths.lock, what=f"the run folder {paths.dir}")

    def acquire() -> None:
        try:
            lock.acquire()
        except PermissionError as err:
            raise UsageError(
                f"cannot write under {paths.dir.parent}: {err}; choose another --out"
            ) from err

    on_main(acquire, ctx)
    return lock if ctx.is_main else None


def train_seed(
    cfg: TrainConfig,
    data: Dataset,
    seed: int,
    out: str | Path,
    ctx: DistContext,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    debug_kill_after_step: int | None = None,
    debug_stop_after_step: int | None = None,
) -> dict[str, Any]:
    """Train (or resume, or skip if finished) the net of ``seed``; return its sidecar dict.

    The run folder is ``out/<arch>_<regime>_<data>/seed<N>/`` (:func:`gcnn.runs.run_paths`),
    locked while this runs; see :mod:`gcnn.train.guard` for what ``resume`` and ``overwrite``
    do. Raises :class:`~gcnn.errors.RunFolderError` when the folder may not be written as
    asked, :class:`~gcnn.errors.TrainingDiverged` / :class:`~gcnn.errors.TrainingCollapsed`
    when the run stops itself.
    """
    final = run_paths(out, cfg, seed)
    identity = data_identity(data)
    lock = _locked(final, ctx)
    try:
        claim: Claim = on_main(
            _claim(final, cfg, identity, resume=resume, overwrite=overwrite), ctx
        )
        if claim.finished is not None:
            return claim.finished
        run, meter_values = start_run(cfg, data, seed, ctx, claim)
        run_epochs(
            run, meter_values, progress=progress, debug_kill_after_step=debug_kill_after_step,
            debug_stop_after_step=debug_stop_after_step,
        )  # fmt: skip
        sidecar = finish_run(run)
        on_main(lambda: commit(claim), ctx)
        return sidecar
    finally:
        if lock is not None:
            lock.release()


def _claim(
    final: RunPaths, cfg: TrainConfig, identity: dict[str, Any], *, resume: bool, overwrite: bool
) -> Callable[[], Claim]:
    def decide() -> Claim:
        return claim_run(final, cfg.to_dict(), identity, resume=resume, overwrite=overwrite)

    return decide
