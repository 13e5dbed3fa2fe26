"""Training: regimes (cnn, cnn+inv, gcnn), recipe, checkpoints, resume, DDP."""

from gcnn.errors import TrainingCollapsed, TrainingDiverged
from gcnn.runs import RunPaths, load_run, run_paths, write_json
from gcnn.train.config import REGIMES, TrainConfig
from gcnn.train.distributed import DistContext, init_distributed
from gcnn.train.evaluate import evaluate
from gcnn.train.guard import claim_run
from gcnn.train.lock import RunLock
from gcnn.train.loop import build_model, train_seed
from gcnn.train.regimes import PenultimateFeatures, check_regime, invariance_loss, is_flip_model
from gcnn.train.schedule import lr_factor
from gcnn.train.seeds import parse_seeds
from gcnn.train.state import load_train_state, read_state_scalars, save_train_state

__all__ = [
    "REGIMES",
    "DistContext",
    "PenultimateFeatures",
    "RunLock",
    "RunPaths",
    "TrainConfig",
    "TrainingCollapsed",
    "TrainingDiverged",
    "build_model",
    "check_regime",
    "claim_run",
    "evaluate",
    "init_distributed",
    "invariance_loss",
    "is_flip_model",
    "load_run",
    "load_train_state",
    "lr_factor",
    "parse_seeds",
    "read_state_scalars",
    "run_paths",
    "save_train_state",
    "train_seed",
    "write_json",
]
