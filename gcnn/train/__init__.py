"""Training: regimes (cnn, cnn+inv, gcnn), recipe, checkpoints, resume, DDP."""

from gcnn.train.config import REGIMES, TrainConfig
from gcnn.train.distributed import DistContext, init_distributed
from gcnn.train.evaluate import evaluate
from gcnn.train.loop import RunPaths, build_model, run_paths, train_seed
from gcnn.train.regimes import PenultimateFeatures, check_regime, invariance_loss, is_flip_model
from gcnn.train.schedule import lr_factor
from gcnn.train.seeds import parse_seeds
from gcnn.train.state import load_train_state, save_train_state, write_json

__all__ = [
    "REGIMES",
    "DistContext",
    "PenultimateFeatures",
    "RunPaths",
    "TrainConfig",
    "build_model",
    "check_regime",
    "evaluate",
    "init_distributed",
    "invariance_loss",
    "is_flip_model",
    "load_train_state",
    "lr_factor",
    "parse_seeds",
    "run_paths",
    "save_train_state",
    "train_seed",
    "write_json",
]
