"""Training the mastering chain: configs, the crop pool, the loop (per-module pretraining,
joint fine-tuning, checkpoints), style adapters per genre and per cluster, fine-tuning an
upstream generator through the chain, and the evaluation table."""

from mastering.training.config import CONFIGS, PhaseConfig, TrainConfig, get_config
from mastering.training.render import master_batch
from mastering.training.trainer import Trainer, TrainResult, export_weights

__all__ = [
    "CONFIGS",
    "PhaseConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "export_weights",
    "get_config",
    "master_batch",
]
