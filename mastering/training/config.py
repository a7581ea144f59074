"""Typed training configurations: a CPU-small one (ships the weights on 2 cores in under
~20 minutes), a GPU one for real runs, and a tiny one for tests.

A run is a list of **phases** (:class:`PhaseConfig`): first one per stage in chain order
(sequential per-module pretraining, each stage's residual trained alone on a loss local to
its job, the stages before it frozen), then a joint phase (every controller and the genre
embedding, end to end through the whole chain on :class:`mastering.losses.MasteringLoss`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from mastering.errors import InvalidParameterError
from mastering.losses import LossWeights

#: Stages with a learned residual, in chain order (``master_out`` has nothing to learn).
LEARNED_STAGES: tuple[str, ...] = ("eq", "compressor", "exciter", "imager", "reverb", "limiter")


@dataclass(frozen=True)
class PhaseConfig:
    """One training phase.

    Attributes:
        name: ``"pretrain:<stage>"`` (one stage's residual on its local loss) or ``"joint"``
            (every controller and the conditioning encoder, full-chain loss).
        steps: optimizer steps.
        lr: Adam learning rate.
    """

    name: str
    steps: int
    lr: float

    @property
    def stage(self) -> str | None:
        return self.name.split(":", 1)[1] if self.name.startswith("pretrain:") else None


@dataclass(frozen=True)
class TrainConfig:
    """A training run.

    Attributes:
        name: config name.
        seed: seeds the crops, the batch order and the initialization.
        crop_seconds: training crop length, s.
        crops_per_song: fixed crops drawn per training song (the crop pool).
        val_crops: validation crops (from the ``val`` split; the pool's if there is none).
        batch_size: crops per step.
        pretrain_steps, pretrain_lr: per-stage pretraining phase length and learning rate.
        joint_steps, joint_lr: joint fine-tuning phase.
        grad_clip: global gradient-norm clip.
        weights: loss weights of the joint phase.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        threads: torch CPU threads (0: leave torch's default).
        checkpoint_every: steps between checkpoints within a phase (phase ends always save).
        keep_if_better: after each phase, keep its weights only if the validation loss went
            down (otherwise restore the phase's starting weights and say so in the log).
        adapter_steps, adapter_lr: style-adapter fine-tuning per genre / cluster.
        n_clusters: k of the k-means over the songs' mixing features.
        pretrain_stages: stages given a pretraining phase (a subset of the learned stages).
    """

    name: str = "cpu-small"
    seed: int = 0
    crop_seconds: float = 2.0
    crops_per_song: int = 3
    val_crops: int = 6
    batch_size: int = 3
    pretrain_steps: int = 15
    pretrain_lr: float = 5e-3
    joint_steps: int = 25
    joint_lr: float = 1e-3
    grad_clip: float = 1.0
    weights: LossWeights = field(default_factory=LossWeights)
    device: str = "cpu"
    amp: bool = False
    threads: int = 2
    checkpoint_every: int = 10
    keep_if_better: bool = True
    adapter_steps: int = 12
    adapter_lr: float = 1e-2
    n_clusters: int = 3
    pretrain_stages: tuple[str, ...] = LEARNED_STAGES

    def phases(self) -> list[PhaseConfig]:
        """Per-stage pretraining phases in chain order, then the joint phase."""
        out = [PhaseConfig(f"pretrain:{s}", self.pretrain_steps, self.pretrain_lr) for s in
               LEARNED_STAGES if s in self.pretrain_stages]  # fmt: skip
        out.append(PhaseConfig("joint", self.joint_steps, self.joint_lr))
        return [p for p in out if p.steps > 0]

    def validate(self) -> TrainConfig:
        if self.crop_seconds < 1.0:
            raise InvalidParameterError(f"crop_seconds must be >= 1 s, got {self.crop_seconds}")
        for name in ("crops_per_song", "batch_size", "val_crops", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise InvalidParameterError(f"{name} must be >= 1")
        bad = [s for s in self.pretrain_stages if s not in LEARNED_STAGES]
        if bad:
            raise InvalidParameterError(
                f"cannot pretrain {bad}; learned stages: {', '.join(LEARNED_STAGES)}"
            )
        if self.device not in ("cpu", "cuda", "auto"):
            raise InvalidParameterError(f"device must be cpu, cuda or auto, got {self.device!r}")
        return self


CONFIGS: dict[str, TrainConfig] = {
    # Ships the weights: ~15-20 minutes on 2 shared CPU cores for a 24-song corpus.
    "cpu-small": TrainConfig(),
    # One GPU: the same crops, bigger batches, many more steps, bf16 autocast.
    "gpu": TrainConfig(
        name="gpu",
        crop_seconds=2.0,
        crops_per_song=3,
        val_crops=6,
        batch_size=12,
        pretrain_steps=100,
        pretrain_lr=3e-3,
        joint_steps=300,
        joint_lr=5e-4,
        device="cuda",
        amp=True,
        threads=0,
        checkpoint_every=50,
        adapter_steps=40,
        adapter_lr=5e-3,
        n_clusters=3,
    ),
    # Unit tests: seconds.
    "test-tiny": TrainConfig(
        name="test-tiny",
        crop_seconds=1.0,
        crops_per_song=2,
        val_crops=2,
        batch_size=2,
        pretrain_steps=2,
        joint_steps=2,
        checkpoint_every=1,
        adapter_steps=2,
        n_clusters=2,
    ),
}


def get_config(name: str, **overrides) -> TrainConfig:
    """A named config (:data:`CONFIGS`), with field overrides; raises listing valid names."""
    if name not in CONFIGS:
        raise InvalidParameterError(f"unknown config {name!r}; valid: {', '.join(CONFIGS)}")
    return replace(CONFIGS[name], **overrides).validate()
