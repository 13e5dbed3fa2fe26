"""Train one network per seed: the training loop, checkpoints, resume and DDP.

Per seed, the run folder ``out/<arch>_<regime>_<data>/seed<N>/`` holds

- ``model.safetensors`` + ``model.json``: final weights (loadable with
  ``gcnn.create_model(arch, weights=path, **arch_kwargs)``) and the sidecar (arch, kwargs,
  regime, λ, seed, dataset, epochs, test accuracy, versions, device);
- ``state.safetensors``: the resumable state while the run is unfinished (removed at the end);
- ``log.jsonl``: one JSON line per epoch.

Determinism: the model is initialised after ``torch.manual_seed(seed)``; after that no global
RNG is used (the data order and augmentation are counter-based, see :mod:`gcnn.data.loaders`),
so resuming from any saved step reproduces the uninterrupted run bit for bit on the CPU.
"""

from __future__ import annotations

import json
import os
import signal
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
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
from gcnn.models import create_model
from gcnn.train.config import TrainConfig
from gcnn.train.distributed import (
    DistContext,
    all_reduce_sum,
    average_buffers,
    barrier,
    ranks_agree,
)
from gcnn.train.evaluate import evaluate
from gcnn.train.regimes import (
    PenultimateFeatures,
    TrainingCollapsed,
    check_regime,
    collapse,
    invariance_loss,
)
from gcnn.train.schedule import lr_factor
from gcnn.train.state import load_train_state, save_train_state, write_json

#: Config fields that may change between a run and its resumption.
_RESUMABLE_CHANGES = frozenset(
    {"device", "compile", "workers", "eval_every", "checkpoint_every", "download", "data_root"}
)


@dataclass(frozen=True)
class RunPaths:
    """The files of one seed's run."""

    dir: Path

    @property
    def weights(self) -> Path:
        return self.dir / "model.safetensors"

    @property
    def sidecar(self) -> Path:
        return self.dir / "model.json"

    @property
    def state(self) -> Path:
        return self.dir / "state.safetensors"

    @property
    def log(self) -> Path:
        return self.dir / "log.jsonl"


def run_name(cfg: TrainConfig) -> str:
    """``<arch>_<regime>_<data>``, ``+`` spelled ``-`` (e.g. ``vgg11_cnn-inv_fashion-mnist``)."""
    data = "imagefolder" if cfg.data == "imagefolder" else cfg.data
    return f"{cfg.arch}_{cfg.regime.replace('+', '-')}_{data}"


def run_paths(out: str | Path, cfg: TrainConfig, seed: int) -> RunPaths:
    return RunPaths(Path(out) / run_name(cfg) / f"seed{seed}")


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
        raise ValueError(f"{cfg.arch} does not accept {kwargs}: {err}") from err
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


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in _RESUMABLE_CHANGES}


def _kill_self() -> None:  # pragma: no cover - the process ends here
    os.kill(os.getpid(), signal.SIGKILL)


class _Meter:
    """Running sums of one epoch (kept on the device; synced only when read)."""

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
) -> dict[str, Any]:
    """Train (or resume, or skip if finished) the net of ``seed``; return its sidecar dict."""
    paths = run_paths(out, cfg, seed)
    if paths.sidecar.is_file() and paths.weights.is_file():
        if resume:  # finished (a kill between the final save and the clean-up left a state)
            if ctx.is_main:
                paths.state.unlink(missing_ok=True)
            return json.loads(paths.sidecar.read_text())
        if not overwrite:
            raise ValueError(
                f"{paths.weights} exists; pass --resume to keep it or --overwrite to retrain"
            )
    if paths.state.is_file() and not (resume or overwrite):
        raise ValueError(f"{paths.state} holds an unfinished run; pass --resume or --overwrite")

    device = ctx.device
    on_cuda = device.type == "cuda"
    memory_format = (
        torch.channels_last if cfg.channels_last and on_cuda else torch.contiguous_format
    )
    model, kwargs = build_model(cfg, data, seed)
    model = model.to(device=device, memory_format=memory_format).train()

    loader = make_loader(cfg, data, seed, ctx, memory_format)
    steps_per_epoch = loader.steps_per_epoch
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup * total_steps)
    inv_start_step = round(cfg.inv_start * total_steps)

    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )  # fmt: skip
    step, history, meter_values, train_time = 0, [], None, 0.0
    if resume and paths.state.is_file():
        model_state, optim_state, scalars = load_train_state(paths.state)
        if _comparable(scalars["config"]) != _comparable(cfg.to_dict()):
            raise ValueError(f"{paths.state} was written with a different configuration")
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        if scalars.get("threads", torch.get_num_threads()) != torch.get_num_threads():
            warnings.warn(
                f"resuming with {torch.get_num_threads()} torch threads, the run used "
                f"{scalars['threads']}: CPU results will not match an uninterrupted run bit for "
                "bit (set OMP_NUM_THREADS as before)",
                stacklevel=2,
            )
        step, history = scalars["step"], scalars["history"]
        meter_values, train_time = scalars["meter"], scalars["train_time"]

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

    def save_state(meter: _Meter) -> None:
        if ctx.is_main:
            scalars = {
                "step": step, "history": history, "meter": meter.values(),
                "train_time": train_time, "config": cfg.to_dict(), "seed": seed,
                "threads": torch.get_num_threads(),
            }  # fmt: skip
            save_train_state(paths.state, model.state_dict(), optimizer.state_dict(), scalars)
        barrier(ctx)

    bar = tqdm(
        total=total_steps, initial=step, disable=not (progress and ctx.is_main),
        desc=f"seed {seed}", unit="step", dynamic_ncols=True, leave=True,
    )  # fmt: skip
    while step < total_steps:
        epoch, start = divmod(step, steps_per_epoch)
        meter = _Meter(device, meter_values)
        meter_values = None
        tick = time.perf_counter()
        for x, y in loader.epoch(epoch, start):
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, total_steps, warmup_steps)
            use_inv = cfg.regime == "cnn+inv" and step >= inv_start_step and cfg.inv_lambda > 0
            with autocast:
                loss, ce, inv, logits = regime_loss(net, x, y, cfg, use_inv, features)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            meter.add(ce, inv, (logits.argmax(1) == y).sum(), len(y))
            step += 1
            bar.update(1)
            if not bar.disable and (step % 10 == 0 or step % steps_per_epoch == 0):
                s = meter.values()
                bar.set_postfix(
                    loss=f"{s[0] / s[3]:.3f}", acc=f"{100 * s[2] / s[3]:.1f}",
                    img_s=f"{s[3] * ctx.world_size / (time.perf_counter() - tick):.0f}",
                )  # fmt: skip
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total_steps:
                if step % steps_per_epoch:
                    save_state(meter)
            if debug_kill_after_step is not None and step == debug_kill_after_step:
                _kill_self()
        if on_cuda:
            torch.cuda.synchronize(device)
        epoch_time = time.perf_counter() - tick
        train_time += epoch_time
        loss_sum, inv_sum, correct, seen, _ = all_reduce_sum(meter.values(), ctx)
        row: dict[str, Any] = {
            "epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / seen, "train_acc": 100 * correct / seen,
            "inv_loss": inv_sum / seen, "images_per_s": seen / max(epoch_time, 1e-9),
            "train_time_s": train_time,
        }  # fmt: skip
        last = step == total_steps
        average_buffers(model, ctx)
        if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
            result = evaluate(model, data, ctx, amp=cfg.amp, memory_format=memory_format)
            row.update({f"test_{k}": v for k, v in result.items()})
        history.append(row)
        reason = None
        if cfg.regime == "cnn+inv" and cfg.inv_lambda > 0:
            reason = collapse(history, data.num_classes, inv_start_step // steps_per_epoch + 1)
        if reason is not None:
            row["stopped"] = reason
        if ctx.is_main:
            _write_log(paths.log, history)
            if not bar.disable:
                bar.write(_format_row(row))
        if reason is not None:
            bar.close()
            raise TrainingCollapsed(f"{paths.log.parent}: {reason} (no model.safetensors written)")
        if not last:
            save_state(_Meter(device))
    bar.close()
    if features is not None:
        features.remove()

    final = history[-1]
    identical = ranks_agree(model, ctx)
    sidecar = {
        "arch": cfg.arch,
        "arch_kwargs": kwargs,
        "regime": cfg.regime,
        "inv_lambda": cfg.inv_lambda if cfg.regime == "cnn+inv" else 0.0,
        "inv_start": cfg.inv_start,
        "inv_target": cfg.inv_target,
        "seed": seed,
        "dataset": data.name,
        "train_images": len(data.train_x)
        if not isinstance(data, ImageFolderData)
        else len(data.train),
        "epochs": cfg.epochs,
        "steps": total_steps,
        "test_acc": final["test_acc"],
        "test_acc_tta": final["test_acc_tta"],
        "test_loss": final["test_loss"],
        "train_time_s": train_time,
        "normalize": {"mean": list(data.mean), "std": list(data.std)},
        "gcnn_version": gcnn.__version__,
        "torch_version": torch.__version__,
        "device": _device_name(device),
        "world_size": ctx.world_size,
        "torch_threads": torch.get_num_threads(),
        "ranks_identical": identical,
        "config": cfg.to_dict(),
    }
    if ctx.is_main:
        save_weights(model.state_dict(), paths.weights)
        write_json(paths.sidecar, sidecar)
        paths.state.unlink(missing_ok=True)
    barrier(ctx)
    return sidecar


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return str(device)


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite the JSONL log from the full history (atomic; consistent after resume)."""
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
    os.replace(tmp, path)


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
