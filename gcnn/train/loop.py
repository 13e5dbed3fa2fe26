"""Train one network per seed: the training loop, checkpoints, resume and DDP.

:func:`train_seed` runs four parts: the run-folder guard (:mod:`gcnn.train.guard`, under the
folder's lock), the set-up (:func:`start_run`: model, optimizer, a resumed state), the steps
and epoch records (:func:`train_step`, :func:`end_epoch`), and the final write
(:func:`finish_run`). The folder layout and the sidecar are :mod:`gcnn.runs`'s.

Divergence stops a run: a non-finite training loss or weight (checked every
:data:`FINITE_CHECK_EVERY` steps, before every state save and at every epoch end) ends it with
:class:`~gcnn.errors.TrainingDiverged`; the last good ``state.safetensors`` stays and the log
records the stop (standard JSON: non-finite numbers are written as ``null``).

Determinism: the model is initialised after ``torch.manual_seed(seed)``; after that no global
RNG is used (the data order and augmentation are counter-based, see :mod:`gcnn.data.loaders`),
so resuming from any saved step reproduces the uninterrupted run bit for bit on the CPU.
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

import gcnn
from gcnn.checkpoint import save_weights
from gcnn.data.datasets import Dataset
from gcnn.data.imagefolder import ImageFolderData
from gcnn.data.loaders import DeviceLoader, StreamLoader
from gcnn.errors import TrainingCollapsed, TrainingDiverged, UsageError
from gcnn.models import create_model
from gcnn.runs import RunPaths, build_sidecar, data_identity, run_name, run_paths, write_json
from gcnn.runs import write_jsonl as _write_jsonl
from gcnn.train.config import TrainConfig
from gcnn.train.distributed import (
    DistContext,
    all_reduce_sum,
    average_buffers,
    barrier,
    on_main,
    ranks_agree,
)
from gcnn.train.evaluate import evaluate
from gcnn.train.guard import Claim, claim_run, commit
from gcnn.train.lock import RunLock
from gcnn.train.regimes import PenultimateFeatures, check_regime, collapse, invariance_loss
from gcnn.train.schedule import lr_factor
from gcnn.train.state import load_train_state, save_train_state

__all__ = [
    "FINITE_CHECK_EVERY",
    "RunPaths",
    "TrainingCollapsed",
    "TrainingDiverged",
    "build_model",
    "run_name",
    "run_paths",
    "train_seed",
    "write_json",
]

#: Steps between two checks that the loss and the weights are finite.
FINITE_CHECK_EVERY = 20


def model_kwargs(cfg: TrainConfig, data: Dataset) -> dict[str, Any]:
    """Builder keyword arguments: ``num_classes`` (and ``in_channels`` ≠ 3) plus ``arch_kwargs``."""
    kwargs: dict[str, Any] = {"num_classes": data.num_classes}
    if data.in_channels != 3:
        kwargs["in_channels"] = data.in_channels
    kwargs.update(cfg.arch_kwargs)
    return kwargs


def build_model(cfg: TrainConfig, data: Dataset, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """Seed the global RNG with ``seed`` and build ``cfg.arch``; check it fits ``cfg.regime``."""
    kwargs = model_kwargs(cfg, data)
    torch.manual_seed(seed)
    try:
        model = create_model(cfg.arch, **kwargs)
    except TypeError as err:
        raise UsageError(
            f"{cfg.arch} does not accept {kwargs}: {err} (check --arch-kwarg / --width)"
        ) from err
    check_regime(cfg.regime, cfg.arch, model)
    return model, kwargs


def make_loader(
    cfg: TrainConfig,
    data: Dataset,
    seed: int,
    ctx: DistContext,
    memory_format: torch.memory_format,
) -> DeviceLoader | StreamLoader:
    """Device-resident batches for tensor datasets, a worker ``DataLoader`` for ImageFolder."""
    if isinstance(data, ImageFolderData):
        return StreamLoader(
            data, cfg.batch_size, ctx.device, seed, workers=cfg.workers, rank=ctx.rank,
            world_size=ctx.world_size, memory_format=memory_format,
        )  # fmt: skip
    return DeviceLoader(
        data, cfg.batch_size, ctx.device, seed, crop_pad=cfg.crop_pad, flip=cfg.flip_augment,
        rank=ctx.rank, world_size=ctx.world_size, memory_format=memory_format,
    )  # fmt: skip


def regime_loss(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    use_inv: bool,
    features: PenultimateFeatures | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, cross-entropy, invariance loss, logits (B, K))`` of one batch ``x (B, C, H, W)``.

    With ``use_inv``, ``x`` and ``flip x`` go through the net as one batch of ``2B`` and
    ``loss = CE(f(x), y) + λ · D(g(x), g(flip x))`` with ``g`` the logits or the penultimate
    ``features`` and ``D`` the scale-free :func:`~gcnn.train.regimes.invariance_loss`;
    otherwise ``loss = CE(f(x), y)``.
    """
    if use_inv:
        logits, logits_flipped = net(torch.cat([x, x.flip(-1)])).chunk(2)
        if features is not None:
            assert features.value is not None
            a, b = features.value.chunk(2)
        else:
            a, b = logits, logits_flipped
        inv = invariance_loss(a, b, cfg.inv_target)
    else:
        logits = net(x)
        inv = torch.zeros((), device=x.device)
    ce = nn.functional.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    loss = ce + cfg.inv_lambda * inv if use_inv else ce
    return loss, ce, inv, logits


def _kill_self() -> None:  # pragma: no cover - the process ends here
    os.kill(os.getpid(), signal.SIGKILL)


def _stop_self() -> None:  # pragma: no cover - the process waits here until killed or continued
    os.kill(os.getpid(), signal.SIGSTOP)


class _Meter:
    """Running sums of one epoch (kept on the device; synced only when read):
    ``[Σ loss·n, Σ inv·n, correct, images, batches]``."""

    def __init__(self, device: torch.device, values: list[float] | None = None) -> None:
        self.sums = torch.tensor(values or [0.0] * 5, dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, inv: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        self.sums += torch.stack(
            [loss.detach().double() * n, inv.detach().double() * n, correct.double(),
             torch.tensor(float(n), dtype=torch.float64, device=self.sums.device),
             torch.tensor(1.0, dtype=torch.float64, device=self.sums.device)]
        )  # fmt: skip

    def values(self) -> list[float]:
        return self.sums.tolist()


@dataclass
class Run:
    """Everything one seed's training holds between steps."""

    cfg: TrainConfig
    data: Dataset
    seed: int
    ctx: DistContext
    claim: Claim
    identity: dict[str, Any]
    model: nn.Module
    kwargs: dict[str, Any]
    optimizer: torch.optim.Optimizer
    net: nn.Module
    loader: DeviceLoader | StreamLoader
    features: PenultimateFeatures | None
    memory_format: torch.memory_format
    autocast: Any
    total_steps: int
    warmup_steps: int
    inv_start_step: int
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time: float = 0.0
    saved_step: int | None = None

    @property
    def paths(self) -> RunPaths:
        return self.claim.work

    @property
    def steps_per_epoch(self) -> int:
        return self.loader.steps_per_epoch


def start_run(
    cfg: TrainConfig, data: Dataset, seed: int, ctx: DistContext, claim: Claim
) -> tuple[Run, list[float] | None]:
    """Build the model (right after ``torch.manual_seed(seed)``), optimizer and loader; load
    the claimed state when resuming. Returns the run and the resumed epoch's meter sums."""
    device = ctx.device
    on_cuda = device.type == "cuda"
    memory_format = (
        torch.channels_last if cfg.channels_last and on_cuda else torch.contiguous_format
    )
    model, kwargs = build_model(cfg, data, seed)
    model = model.to(device=device, memory_format=memory_format).train()
    loader = make_loader(cfg, data, seed, ctx, memory_format)
    total_steps = cfg.epochs * loader.steps_per_epoch
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )  # fmt: skip
    features = PenultimateFeatures(model) if cfg.inv_target == "features" else None
    net: nn.Module = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if on_cuda else None
        )
    if cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and on_cuda else nullcontext()
    )
    run = Run(
        cfg=cfg, data=data, seed=seed, ctx=ctx, claim=claim, identity=data_identity(data),
        model=model, kwargs=kwargs, optimizer=optimizer, net=net, loader=loader,
        features=features, memory_format=memory_format, autocast=autocast,
        total_steps=total_steps, warmup_steps=round(cfg.warmup * total_steps),
        inv_start_step=round(cfg.inv_start * total_steps),
    )  # fmt: skip
    if not claim.resume:
        return run, None
    model_state, optim_state, scalars = load_train_state(claim.work.state)
    model.load_state_dict(model_state)
    optimizer.load_state_dict(optim_state)
    if scalars.get("threads", torch.get_num_threads()) != torch.get_num_threads():
        warnings.warn(
            f"resuming with {torch.get_num_threads()} torch threads, the run used "
            f"{scalars['threads']}: CPU results will not match an uninterrupted run bit for "
            "bit (set OMP_NUM_THREADS as before)",
            stacklevel=2,
        )
    run.step, run.history = scalars["step"], scalars["history"]
    run.train_time, run.saved_step = scalars["train_time"], scalars["step"]
    return run, scalars["meter"]


def non_finite(run: Run, meter: _Meter) -> str | None:
    """Why the run has diverged (a non-finite loss or weight, on any rank), or ``None``."""
    loss_ok = bool(torch.isfinite(meter.sums[:2]).all())
    floats = [t for t in run.model.state_dict().values() if t.is_floating_point()]
    bad = int(torch.stack([(~torch.isfinite(t)).sum() for t in floats]).sum())
    flags = all_reduce_sum([float(not loss_ok), float(bad)], run.ctx)
    if flags[0]:
        return "the training loss is not finite"
    if flags[1]:
        return f"{int(flags[1] / run.ctx.world_size)} weights are not finite"
    return None


def _diverged(run: Run, meter: _Meter, reason: str) -> TrainingDiverged:
    """Log the stop (main rank) and build the error; the last good state stays on disk."""
    epoch = run.step // run.steps_per_epoch + (1 if run.step % run.steps_per_epoch else 0)
    sums = all_reduce_sum(meter.values(), run.ctx)
    seen = max(sums[3], 1.0)
    row = {
        "epoch": max(epoch, 1), "step": run.step, "lr": run.optimizer.param_groups[0]["lr"],
        "train_loss": sums[0] / seen, "train_acc": 100 * sums[2] / seen,
        "inv_loss": sums[1] / seen, "stopped": f"diverged: {reason}",
    }  # fmt: skip
    if run.ctx.is_main:
        _write_jsonl(run.paths.log, [*run.history, row])
    kept = (
        f"the last good state (step {run.saved_step}) is kept in {run.paths.state}"
        if run.saved_step is not None
        else "no good state was saved"
    )
    return TrainingDiverged(
        f"{run.paths.dir}: diverged at step {run.step} of {run.total_steps}: {reason}; {kept}; "
        f"lower --lr (now {run.cfg.lr}) or lengthen --warmup, then retrain with --overwrite"
    )


def save_state(run: Run, meter: _Meter) -> None:
    """Save the resumable state (main rank) once the loss and weights are checked finite."""
    reason = non_finite(run, meter)
    if reason is not None:
        raise _diverged(run, meter, reason)
    if run.ctx.is_main:
        scalars = {
            "step": run.step, "history": run.history, "meter": meter.values(),
            "train_time": run.train_time, "config": run.cfg.to_dict(), "seed": run.seed,
            "threads": torch.get_num_threads(), "data": run.identity,
        }  # fmt: skip
        save_train_state(
            run.paths.state, run.model.state_dict(), run.optimizer.state_dict(), scalars
        )
    run.saved_step = run.step
    barrier(run.ctx)


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor, meter: _Meter) -> None:
    """One optimizer step on the batch ``x (B, C, H, W)``, ``y (B,)`` at ``run.step``."""
    cfg = run.cfg
    for group in run.optimizer.param_groups:
        group["lr"] = cfg.lr * lr_factor(run.step, run.total_steps, run.warmup_steps)
    use_inv = cfg.regime == "cnn+inv" and run.step >= run.inv_start_step and cfg.inv_lambda > 0
    with run.autocast:
        loss, ce, inv, logits = regime_loss(run.net, x, y, cfg, use_inv, run.features)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    meter.add(ce, inv, (logits.argmax(1) == y).sum(), len(y))
    run.step += 1


def end_epoch(run: Run, epoch: int, meter: _Meter, epoch_time: float) -> dict[str, Any]:
    """The epoch's log row (evaluated when due); raises when the run diverged or collapsed."""
    cfg, ctx = run.cfg, run.ctx
    reason = non_finite(run, meter)
    if reason is not None:
        raise _diverged(run, meter, reason)
    run.train_time += epoch_time
    loss_sum, inv_sum, correct, seen, _ = all_reduce_sum(meter.values(), ctx)
    row: dict[str, Any] = {
        "epoch": epoch + 1, "step": run.step, "lr": run.optimizer.param_groups[0]["lr"],
        "train_loss": loss_sum / seen, "train_acc": 100 * correct / seen,
        "inv_loss": inv_sum / seen, "images_per_s": seen / max(epoch_time, 1e-9),
        "train_time_s": run.train_time,
    }  # fmt: skip
    last = run.step == run.total_steps
    average_buffers(run.model, ctx)
    if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
        result = evaluate(run.model, run.data, ctx, amp=cfg.amp, memory_format=run.memory_format)
        row.update({f"test_{k}": v for k, v in result.items()})
    run.history.append(row)
    stop = None
    if cfg.regime == "cnn+inv" and cfg.inv_lambda > 0:
        inv_epoch = run.inv_start_step // run.steps_per_epoch + 1
        stop = collapse(run.history, run.data.num_classes, inv_epoch)
    if stop is not None:
        row["stopped"] = stop
    if ctx.is_main:
        _write_jsonl(run.paths.log, run.history)
    if stop is not None:
        raise TrainingCollapsed(f"{run.paths.dir}: {stop} (no model.safetensors written)")
    return row


def finish_run(run: Run) -> dict[str, Any]:
    """Write the final weights and the sidecar (main rank), drop the state; return the sidecar."""
    final, ctx, data = run.history[-1], run.ctx, run.data
    identical = ranks_agree(run.model, ctx)
    sidecar = build_sidecar(
        run.cfg, run.seed, run.kwargs, run.identity,
        normalize={"mean": list(data.mean), "std": list(data.std)},
        results={
            "steps": run.total_steps, "test_acc": final["test_acc"],
            "test_acc_tta": final["test_acc_tta"], "test_loss": final["test_loss"],
            "train_time_s": run.train_time, "gcnn_version": gcnn.__version__,
            "torch_version": torch.__version__, "device": _device_name(ctx.device),
            "world_size": ctx.world_size, "torch_threads": torch.get_num_threads(),
            "ranks_identical": identical,
        },
    )  # fmt: skip
    if ctx.is_main:
        save_weights(run.model.state_dict(), run.paths.weights)
        write_json(run.paths.sidecar, sidecar)
        run.paths.state.unlink(missing_ok=True)
    barrier(ctx)
    return sidecar


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
        save_state(run, _Meter(ctx.device))
    bar = tqdm(
        total=run.total_steps, initial=run.step, disable=not (progress and ctx.is_main),
        desc=f"seed {run.seed}", unit="step", dynamic_ncols=True, leave=True,
    )  # fmt: skip
    try:
        while run.step < run.total_steps:
            epoch, start = divmod(run.step, spe)
            meter = _Meter(ctx.device, meter_values)
            meter_values = None
            tick = time.perf_counter()
            for x, y in run.loader.epoch(epoch, start):
                train_step(run, x, y, meter)
                bar.update(1)
                _show(bar, meter, run, tick)
                if run.step % FINITE_CHECK_EVERY == 0 and run.step % spe:
                    reason = non_finite(run, meter)
                    if reason is not None:
                        raise _diverged(run, meter, reason)
                every = cfg.checkpoint_every
                if every and run.step % every == 0 and run.step < run.total_steps:
                    if run.step % spe:
                        save_state(run, meter)
                _debug_hook(run.step, debug_kill_after_step, debug_stop_after_step)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            row = end_epoch(run, epoch, meter, time.perf_counter() - tick)
            if not bar.disable:
                bar.write(_format_row(row))
            if run.step < run.total_steps:
                save_state(run, _Meter(ctx.device))
    finally:
        bar.close()
        if run.features is not None:
            run.features.remove()


def _show(bar: tqdm, meter: _Meter, run: Run, tick: float) -> None:
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


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return str(device)


def _format_row(row: dict[str, Any]) -> str:
    text = (
        f"epoch {row['epoch']}: loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% "
        f"{row['images_per_s']:.0f} img/s"
    )
    if row.get("inv_loss"):
        text += f" inv {row['inv_loss']:.4f}"
    if "test_acc" in row:
        text += f" | test {row['test_acc']:.2f}% (flip TTA {row['test_acc_tta']:.2f}%)"
    return text
