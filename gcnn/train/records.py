"""What a run writes as it goes: the resumable state, the epoch records (with the divergence
and collapse checks that can stop the run), and the final weights and sidecar.

Divergence stops a run: a non-finite training loss or weight ends it with
:class:`~gcnn.errors.TrainingDiverged`; the last good ``state.safetensors`` stays and the log
records the stop (standard JSON: non-finite numbers are written as ``null``).
"""

from __future__ import annotations

from typing import Any

import torch

import gcnn
from gcnn.checkpoint import save_weights
from gcnn.errors import TrainingCollapsed, TrainingDiverged
from gcnn.provenance import code_provenance
from gcnn.runs import build_sidecar, write_json, write_jsonl
from gcnn.train.distributed import all_reduce_sum, average_buffers, barrier, ranks_agree
from gcnn.train.evaluate import evaluate
from gcnn.train.regimes import collapse
from gcnn.train.start import Run
from gcnn.train.state import save_train_state
from gcnn.train.step import Meter

__all__ = [
    "device_name",
    "diverged",
    "end_epoch",
    "finish_run",
    "format_row",
    "non_finite",
    "save_state",
]


def non_finite(run: Run, meter: Meter) -> str | None:
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


def diverged(run: Run, meter: Meter, reason: str) -> TrainingDiverged:
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
        write_jsonl(run.paths.log, [*run.history, row])
    kept = (
        f"the last good state (step {run.saved_step}) is kept in {run.paths.state}"
        if run.saved_step is not None
        else "no good state was saved"
    )
    return TrainingDiverged(
        f"{run.paths.dir}: diverged at step {run.step} of {run.total_steps}: {reason}; {kept}; "
        f"lower --lr (now {run.cfg.lr}) or lengthen --warmup, then retrain with --overwrite"
    )


def save_state(run: Run, meter: Meter) -> None:
    """Save the resumable state (main rank) once the loss and weights are checked finite."""
    reason = non_finite(run, meter)
    if reason is not None:
        raise diverged(run, meter, reason)
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


def end_epoch(run: Run, epoch: int, meter: Meter, epoch_time: float) -> dict[str, Any]:
    """The epoch's log row (evaluated when due); raises when the run diverged or collapsed."""
    cfg, ctx = run.cfg, run.ctx
    reason = non_finite(run, meter)
    if reason is not None:
        raise diverged(run, meter, reason)
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
        write_jsonl(run.paths.log, run.history)
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
            "torch_version": torch.__version__, "device": device_name(ctx.device),
            "world_size": ctx.world_size, "torch_threads": torch.get_num_threads(),
            "ranks_identical": identical, "code": code_provenance(),
        },
    )  # fmt: skip
    if ctx.is_main:
        save_weights(run.model.state_dict(), run.paths.weights)
        write_json(run.paths.sidecar, sidecar)
        run.paths.state.unlink(missing_ok=True)
    barrier(ctx)
    return sidecar


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return str(device)


def format_row(row: dict[str, Any]) -> str:
    text = (
        f"epoch {row['epoch']}: loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% "
        f"{row['images_per_s']:.0f} img/s"
    )
    if row.get("inv_loss"):
        text += f" inv {row['inv_loss']:.4f}"
    if "test_acc" in row:
        text += f" | test {row['test_acc']:.2f}% (flip TTA {row['test_acc_tta']:.2f}%)"
    return text
