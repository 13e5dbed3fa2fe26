"""The run-folder guard: what a new ``gcnn train`` may do with a seed's folder.

Under the folder's lock (:class:`~gcnn.train.lock.RunLock`, held by the caller) it

1. finishes or undoes a swap that a kill interrupted (:func:`recover`);
2. decides (:func:`claim_run`): skip a finished run (``--resume``), resume an unfinished one
   (``--resume``, settings checked), train fresh, or train a replacement (``--overwrite``) —
   and refuses everything else with a message that names the way forward;
3. after training, swaps the replacement in (:func:`commit`).

An ``--overwrite`` never touches the old run while it trains: the new run lives in
``.seed<N>.new/`` and replaces ``seed<N>/`` only when it has finished, by two renames
(``seed<N>`` → ``.seed<N>.old``, ``.seed<N>.new`` → ``seed<N>``) and a deletion. A kill at any
point leaves either the old run (with the new one resumable by ``--resume``) or the new one;
:func:`recover` completes an interrupted swap on the next start.

``--resume`` compares the requested settings and data with those the run was trained on
(finished or not) and names every difference; the settings in
:data:`~gcnn.train.config.RESUMABLE_CHANGES` may change.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

from gcnn.errors import ConfigMismatchError, RunFolderError, UsageError
from gcnn.runs import RunPaths, read_sidecar
from gcnn.train.config import config_differences
from gcnn.train.state import read_state_scalars

__all__ = ["Claim", "claim_run", "commit", "recover", "settings_differences"]


@dataclass(frozen=True)
class Claim:
    """The guard's decision for one seed.

    ``work``: the folder this run writes (``final`` or its ``.new`` replacement);
    ``finished``: the sidecar of a finished run to skip (nothing to train);
    ``resume``: whether ``work.state`` holds the state to continue from.
    """

    final: RunPaths
    work: RunPaths
    finished: dict[str, Any] | None = None
    resume: bool = False

    @property
    def replaces(self) -> bool:
        """Whether this run replaces ``final`` when it finishes (an ``--overwrite``)."""
        return self.work.dir != self.final.dir


def _identity_differences(stored: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    return [
        f"data {key}: {stored[key]!r} in the run, {identity.get(key)!r} now"
        for key in sorted(stored)
        if stored[key] != identity.get(key)
    ]


def settings_differences(
    stored_config: dict[str, Any],
    stored_identity: dict[str, Any] | None,
    config: dict[str, Any],
    identity: dict[str, Any],
) -> list[str]:
    """Every training setting and data property that differs between a run and a request."""
    diffs = config_differences(stored_config, config)
    if stored_identity:
        diffs += _identity_differences(stored_identity, identity)
    return diffs


def _sidecar_identity(sidecar: dict[str, Any]) -> dict[str, Any]:
    """The data identity of a sidecar; older sidecars recorded the dataset and its train size."""
    if isinstance(sidecar.get("data"), dict):
        return sidecar["data"]
    return {k: sidecar[k] for k in ("dataset", "train_images") if k in sidecar}


def _refuse_mismatch(where: str, diffs: list[str], hint: str) -> None:
    if diffs:
        raise ConfigMismatchError(
            f"{where} was trained with other settings ({'; '.join(diffs)}): {hint}", diffs
        )


def _check_finished(paths: RunPaths, config: dict[str, Any], identity: dict[str, Any]) -> dict:
    sidecar = read_sidecar(paths.sidecar)
    diffs = settings_differences(
        sidecar.get("config", {}), _sidecar_identity(sidecar), config, identity
    )
    _refuse_mismatch(
        f"the finished run {paths.dir}",
        diffs,
        f"keep it with its own settings (gcnn train --config {paths.sidecar} --resume), "
        "retrain it with the new ones with --overwrite (it stays until the new run finishes), "
        "or use another --out",
    )
    return sidecar


def _check_unfinished(
    paths: RunPaths, config: dict[str, Any], identity: dict[str, Any], replaces: RunPaths | None
) -> None:
    scalars = read_state_scalars(paths.state)
    diffs = settings_differences(scalars.get("config", {}), scalars.get("data"), config, identity)
    what = f"the unfinished run {paths.dir} (step {scalars.get('step', '?')})"
    hint = (
        "resume it with the settings it was started with, restart it with --overwrite, or use "
        "another --out"
    )
    if replaces is not None:
        what = f"the unfinished --overwrite of {replaces.dir} in {paths.dir.name}"
        hint += f" (to keep the finished run as it is instead, delete {paths.dir})"
    _refuse_mismatch(what, diffs, hint)


def recover(final: RunPaths) -> None:
    """Complete or undo a swap of ``final`` and its ``.new`` replacement that a kill interrupted.

    ``.old`` exists only between the two renames of :func:`commit` or before its deletion: if
    ``final`` is back in place the swap finished (delete ``.old``); if not, the finished
    replacement moves in (or, if it is not finished, the old run moves back).
    """
    old, new = final.discarded, final.pending
    if old.exists():
        if not final.dir.exists():
            target = new.dir if new.finished else old
            target.rename(final.dir)
        if old.exists():
            shutil.rmtree(old)
    if new.finished:  # trained to the end; killed before the swap
        commit(Claim(final=final, work=new))


def claim_run(
    final: RunPaths,
    config: dict[str, Any],
    identity: dict[str, Any],
    *,
    resume: bool = False,
    overwrite: bool = False,
) -> Claim:
    """Decide what to do with the run folder ``final`` (the caller holds its lock).

    ``config``: the requested :class:`~gcnn.train.config.TrainConfig` as a dict; ``identity``:
    the requested data's :func:`~gcnn.runs.data_identity`. Raises
    :class:`~gcnn.errors.RunFolderError` (or :class:`~gcnn.errors.ConfigMismatchError`) when
    the folder must not be written as asked.
    """
    if resume and overwrite:
        raise UsageError(
            "--resume and --overwrite contradict each other: --resume continues or keeps a "
            "run, --overwrite retrains it"
        )
    recover(final)
    new = final.pending
    exists = final.dir.exists() and any(final.dir.iterdir())
    if overwrite:
        if new.dir.exists():
            shutil.rmtree(new.dir)
        if not exists:
            return Claim(final=final, work=final)
        return Claim(final=final, work=new)
    if resume:
        if new.dir.exists():  # a killed --overwrite: continue the replacement
            if new.state.is_file():
                _check_unfinished(new, config, identity, replaces=final)
            return Claim(final=final, work=new, resume=new.state.is_file())
        if final.finished:
            sidecar = _check_finished(final, config, identity)
            final.state.unlink(missing_ok=True)  # a kill between the final writes left it
            return Claim(final=final, work=final, finished=sidecar)
        if final.state.is_file():
            _check_unfinished(final, config, identity, replaces=None)
            return Claim(final=final, work=final, resume=True)
        return Claim(final=final, work=final)
    if new.dir.exists():
        raise RunFolderError(
            f"{new.dir} holds an unfinished --overwrite of {final.dir} (which is kept until it "
            "finishes): pass --resume to finish it, or --overwrite to start it again"
        )
    if final.finished:
        raise RunFolderError(
            f"{final.dir} holds a finished run: pass --resume to keep it (finished seeds are "
            "skipped), --overwrite to retrain it (the old run stays until the new one "
            "finishes), or another --out"
        )
    if final.state.is_file():
        raise RunFolderError(
            f"{final.dir} holds an unfinished run (state.safetensors): pass --resume to "
            "continue it, or --overwrite to start it again"
        )
    return Claim(final=final, work=final)


def commit(claim: Claim) -> None:
    """Put a finished replacement in place of ``claim.final`` (no-op for an in-place run)."""
    if not claim.replaces:
        return
    final, old = claim.final, claim.final.discarded
    if final.dir.exists():
        final.dir.rename(old)
    claim.work.dir.rename(final.dir)
    if old.exists():
        shutil.rmtree(old)
