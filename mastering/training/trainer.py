"""The training loop: sequential per-module pretraining, then joint end-to-end fine-tuning.

**Pretraining** (``pretrain:<stage>``, in chain order): only that stage's residual network
learns; the stages before it are frozen and their output on every pool crop is computed once
(no gradients) as the stage's input. The stage's output is compared with the reference master
on a loss local to its job (:data:`LOCAL_LOSSES`):

* ``eq``: perceptual spectral loss after matching loudness (tonal balance only);
* ``compressor`` and ``limiter``: multi-band dynamic loss (level-independent);
* ``exciter``: harmonic (brightness) loss + half the loudness-matched spectral loss;
* ``imager``: stereo image loss;
* ``reverb``: loudness-matched spectral loss + image loss (ambience must not smear either).

**Joint** (``joint``): every controller and the conditioning encoder, through the whole chain
including ``master_out`` at each song's loudness target (:func:`master_batch`), on
:class:`mastering.losses.MasteringLoss`.

After every phase the full-chain validation loss decides (``keep_if_better``) whether the
phase's weights are kept or the phase is undone; the log says which. Checkpoints
(``checkpoint.pt``: weights, optimizer, phase and step, history) are written atomically every
``checkpoint_every`` steps and at each phase end; ``resume=True`` continues from one and ends
with the same weights as an uninterrupted run (batches depend only on seed, phase and step).
CPU runs are seeded and deterministic; CUDA runs use bfloat16 autocast when ``amp``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mastering.chain import Chain, run_aligned
from mastering.errors import InvalidParameterError, LacquerError
from mastering.losses import (
    MasteringLoss,
    dynamic_loss,
    harmonic_loss,
    image_loss,
    k_loudness,
    perceptual_spectral_loss,
)
from mastering.stages.base import StageContext
from mastering.training.config import LEARNED_STAGES, PhaseConfig, TrainConfig
from mastering.training.pool import CropPool, build_pool, has_split, load_pools, save_pools
from mastering.training.render import master_batch, resolve_conditioning

CHECKPOINT = "checkpoint.pt"
#: Crops per no-grad forward chunk when computing stage inputs / validation.
CHUNK = 4


def match_loudness(y: Tensor, ref: Tensor) -> Tensor:
    """``y`` scaled (by a constant, no gradient through the gain) to ``ref``'s K-loudness."""
    gain_db = (k_loudness(ref) - k_loudness(y)).detach().clamp(-40.0, 40.0)
    return y * torch.pow(10.0, gain_db / 20.0).view(-1, 1, 1).to(y.dtype)


def _eq_loss(y: Tensor, ref: Tensor) -> Tensor:
    return perceptual_spectral_loss(match_loudness(y, ref), ref)


def _exciter_loss(y: Tensor, ref: Tensor) -> Tensor:
    return harmonic_loss(y, ref) + 0.5 * perceptual_spectral_loss(match_loudness(y, ref), ref)


def _reverb_loss(y: Tensor, ref: Tensor) -> Tensor:
    return perceptual_spectral_loss(match_loudness(y, ref), ref) + image_loss(y, ref)


#: Stage -> its local pretraining loss ``(stage output, reference) -> scalar``.
LOCAL_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "eq": _eq_loss,
    "compressor": dynamic_loss,
    "exciter": _exciter_loss,
    "imager": image_loss,
    "reverb": _reverb_loss,
    "limiter": dynamic_loss,
}


@contextlib.contextmanager
def residual_autocast(chain: Chain, enabled: bool, dtype: torch.dtype = torch.bfloat16):
    """While active, every stage's ``residual`` (the learned controller) runs under CUDA
    autocast in ``dtype``; nothing else does. Its raw outputs are cast back to float32."""
    if not enabled:
        yield
        return
    patched = []
    for stage in chain.stages.values():
        original = stage.residual

        def amp_residual(x, ctx, _original=original):
            with torch.autocast("cuda", dtype=dtype):
                out = _original(x, ctx)
            return {k: v.float() for k, v in out.items()}

        stage.residual = amp_residual
        patched.append(stage)
    try:
        yield
    finally:
        for stage in patched:
            del stage.residual


class TrainingError(LacquerError):
    """Training cannot start or continue (no data, a checkpoint that does not fit)."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError("config asks for CUDA but no GPU is available")
    return torch.device(name)


def controller_parameters(chain: Chain, stage: str | None = None) -> list[nn.Parameter]:
    """Trainable weights: one stage's (``stage``), or the whole chain's (encoder included),
    never an attached adapter's."""
    module = chain if stage is None else chain.stages[stage]
    return [p for n, p in module.named_parameters() if ".adapter." not in f".{n}"]


def set_trainable(chain: Chain, params: list[nn.Parameter]) -> None:
    keep = {id(p) for p in params}
    for p in chain.parameters():
        p.requires_grad_(id(p) in keep)


def chain_weights(chain: Chain) -> dict[str, Tensor]:
    """The chain's learnable state for export (no adapter weights)."""
    return {
        k: v.detach().float().cpu().contiguous()
        for k, v in chain.state_dict().items()
        if ".adapter." not in k
    }


def export_weights(chain: Chain, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write the chain's weights as safetensors, atomically (what :meth:`Chain.pretrained`
    loads)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "lacquer-chain", "format_version": "1"}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(chain_weights(chain), str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@dataclass
class TrainResult:
    """What a run did: ``history`` (one dict per phase: name, steps, losses, kept) and the
    validation loss of the untrained and final chain."""

    chain: Chain
    history: list[dict[str, Any]] = field(default_factory=list)
    val_before: float = math.nan
    val_after: float = math.nan
    seconds: float = 0.0
    finished: bool = True


class Trainer:
    """Runs a :class:`TrainConfig` on a pair manifest, writing checkpoints to ``out_dir``.

    Args:
        config: the run.
        manifest: pair manifest (``train`` split trained on, ``val`` validated on, ``test``
            never read).
        out_dir: checkpoints and logs.
        chain: the chain to train (default: a fresh, untrained :class:`Chain`).
        log: a callable taking one line of progress.
    """

    def __init__(
        self,
        config: TrainConfig,
        manifest: str | Path,
        out_dir: str | Path,
        chain: Chain | None = None,
        log: Callable[[str], None] = print,
        pool_file: str | Path | None = None,
    ):
        self.config = config.validate()
        self.pool_file = None if pool_file is None else Path(pool_file)
        self.manifest = Path(manifest)
        self.out = Path(out_dir)
        self.log = log
        self.device = pick_device(config.device)
        if config.threads and self.device.type == "cpu":
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.chain = (chain or Chain()).to(self.device)
        self.loss = MasteringLoss(config.weights)
        self.train_pool: CropPool | None = None
        self.val_pool: CropPool | None = None
        self._inputs: dict[str, Tensor] = {}

    # -- data -----------------------------------------------------------------------------
    def load_data(self) -> None:
        """Build the train/val crop pools from the manifest, or read them from
        ``pool_file`` when it exists (and write them there after building when it does not)."""
        c = self.config
        t0 = time.time()
        if self.pool_file is not None and self.pool_file.exists():
            pools = load_pools(self.pool_file)
            self.train_pool, self.val_pool = pools["train"], pools["val"]
            self.log(f"data: {len(self.train_pool)} train and {len(self.val_pool)} validation "
                     f"crops from {self.pool_file}")  # fmt: skip
            return
        self.train_pool = build_pool(self.manifest, "train", c.crops_per_song, c.crop_seconds,
                                     c.seed)  # fmt: skip
        if has_split(self.manifest, "val"):
            per_song = max(1, -(-c.val_crops // max(1, len(self._songs("val")))))
            self.val_pool = build_pool(self.manifest, "val", per_song, c.crop_seconds,
                                       c.seed + 1, max_crops=c.val_crops)  # fmt: skip
            where = "val split"
        else:
            self.val_pool = self.train_pool.subset(
                list(range(min(c.val_crops, len(self.train_pool))))
            )
            where = "train crops (no val split)"
        for pool in (self.train_pool, self.val_pool):
            pool.conditioning = resolve_conditioning(pool.raw, pool.conditioning)
        self.log(
            f"data: {len(self.train_pool)} train crops of {len(self.train_pool.records)} songs, "
            f"{len(self.val_pool)} validation crops from the {where} ({time.time() - t0:.0f} s)"
        )
        if self.pool_file is not None:
            save_pools({"train": self.train_pool, "val": self.val_pool}, self.pool_file)

    def _songs(self, split: str):
        from mastering.data.pairs import read_pair_manifest

        return read_pair_manifest(self.manifest, split=split)

    # -- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, chain: Chain | None = None, pool: CropPool | None = None) -> float:
        """Mean full-chain :class:`MasteringLoss` over the validation crops."""
        chain = chain or self.chain
        pool = pool or self.val_pool
        was = chain.training
        chain.eval()
        total, n = 0.0, 0
        for i in range(0, len(pool), CHUNK):
            sl = slice(i, i + CHUNK)
            x, ref = pool.raw[sl].to(self.device), pool.mastered[sl].to(self.device)
            with self._autocast():
                y = master_batch(chain, x, pool.conditioning[sl], pool.target_lufs[sl])
            loss, _ = self.loss(y.float(), ref, pool.target_lufs[sl].to(self.device))
            total += float(loss) * x.shape[0]
            n += x.shape[0]
        chain.train(was)
        return total / max(n, 1)

    def _autocast(self):
        """Mixed precision on CUDA (``amp``): the stages' residual networks run under bfloat16
        autocast; the DSP, the priors and the losses stay float32 (the IIR scans and FFT
        filters need it). A context manager; a no-op on CPU."""
        enabled = self.config.amp and self.device.type == "cuda"
        return residual_autocast(self.chain, enabled)

    # -- stage inputs for pretraining -----------------------------------------------------
    @torch.no_grad()
    def _stage_inputs(self, stage: str) -> Tensor:
        """Input of ``stage`` for every train crop: the output of the stages before it."""
        if stage in self._inputs:
            return self._inputs[stage]
        order = list(self.chain.config.order)
        pool = self.train_pool
        outs = []
        for i in range(0, len(pool), CHUNK):
            sl = slice(i, i + CHUNK)
            state = self.chain.begin(pool.raw[sl].to(self.device), pool.conditioning[sl])
            state = self.chain.run_stages(state, order[: order.index(stage)])
            outs.append(state.audio.cpu())
        self._inputs = {stage: torch.cat(outs)}
        return self._inputs[stage]

    @torch.no_grad()
    def _advance_inputs(self, stage: str) -> None:
        """After ``stage``'s phase: its outputs become the next stage's inputs."""
        order = list(self.chain.config.order)
        nxt = order[order.index(stage) + 1]
        if stage not in self._inputs:
            return
        x_all = self._inputs[stage]
        pool = self.train_pool
        mod = self.chain.stages[stage]
        outs = []
        for i in range(0, len(pool), CHUNK):
            sl = slice(i, i + CHUNK)
            cond = self.chain.condition(pool.raw[sl].to(self.device), pool.conditioning[sl])
            x = x_all[sl].to(self.device)
            outs.append(run_aligned(mod, x, mod.predict(x, StageContext(cond=cond))).cpu())
        self._inputs = {nxt: torch.cat(outs)}

    # -- one step -------------------------------------------------------------------------
    def _step_loss(self, phase: PhaseConfig, idx: list[int]) -> tuple[Tensor, dict[str, float]]:
        pool = self.train_pool
        ref = pool.mastered[idx].to(self.device)
        conds = [pool.conditioning[i] for i in idx]
        with self._autocast():
            if phase.stage is not None:
                x = self._stage_inputs(phase.stage)[idx].to(self.device)
                with torch.no_grad():
                    cond = self.chain.condition(pool.raw[idx].to(self.device), conds)
                mod = self.chain.stages[phase.stage]
                y = run_aligned(mod, x, mod.predict(x, StageContext(cond=cond)))
                loss = LOCAL_LOSSES[phase.stage](y.float(), ref)
                return loss, {phase.stage: float(loss.detach())}
            x = pool.raw[idx].to(self.device)
            y = master_batch(self.chain, x, conds, pool.target_lufs[idx])
        return self.loss(y.float(), ref, pool.target_lufs[idx].to(self.device))

    # -- the run --------------------------------------------------------------------------
    def run(self, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train. ``resume``: continue from ``out_dir/checkpoint.pt`` if present.
        ``stop_after``: stop (checkpointed) after this many optimizer steps in this call
        (for tests of resuming); the result then has ``finished=False``."""
        t_start = time.time()
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        if self.train_pool is None:
            self.load_data()
        phases = c.phases()
        ck_path = self.out / CHECKPOINT
        state: dict[str, Any] = {"phase": 0, "step": 0, "history": []}
        if resume and ck_path.exists():
            state = self._load_checkpoint(ck_path)
            where = phases[min(state["phase"], len(phases) - 1)].name
            self.log(f"resumed at phase {state['phase']} ({where}) step {state['step']}")
        if "val_before" not in state:
            state["val_before"] = self.validate()
            self.log(f"validation loss of the untrained chain: {state['val_before']:.4f}")
        steps_done = 0
        while state["phase"] < len(phases):
            phase = phases[state["phase"]]
            params = controller_parameters(self.chain, phase.stage)
            set_trainable(self.chain, params)
            opt = torch.optim.Adam(params, lr=phase.lr)
            if state["step"] == 0:
                state["phase_start"] = chain_weights(self.chain)
                state["phase_val_start"] = (
                    state["history"][-1]["val_after"] if state["history"] else state["val_before"]
                )
                state["losses"] = []
            elif "optimizer" in state:
                opt.load_state_dict(state.pop("optimizer"))
            self.chain.train()
            t0 = time.time()
            while state["step"] < phase.steps:
                if stop_after is not None and steps_done >= stop_after:
                    self._save_checkpoint(ck_path, state, opt)
                    return self._result(state, t_start, finished=False)
                idx = self.train_pool.batch_indices(c.batch_size, c.seed, state["phase"],
                                                    state["step"])  # fmt: skip
                opt.zero_grad(set_to_none=True)
                loss, parts = self._step_loss(phase, idx)
                if not torch.isfinite(loss):
                    raise TrainingError(f"non-finite loss in {phase.name} step {state['step']}")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
                opt.step()
                state["losses"].append(float(loss.detach()))
                state["step"] += 1
                steps_done += 1
                if state["step"] % max(1, phase.steps // 5) == 0 or state["step"] == 1:
                    self.log(
                        f"{phase.name} step {state['step']}/{phase.steps} loss "
                        f"{float(loss.detach()):.4f} "
                        + " ".join(f"{k}={v:.3f}" for k, v in parts.items())
                        + f" ({(time.time() - t0) / state['step']:.1f} s/step)"
                    )
                if state["step"] % c.checkpoint_every == 0 and state["step"] < phase.steps:
                    self._save_checkpoint(ck_path, state, opt)
            self._end_phase(phase, state)
            self._save_checkpoint(ck_path, state, None)
        set_trainable(self.chain, list(self.chain.parameters()))
        self.chain.eval()
        return self._result(state, t_start, finished=True)

    def _end_phase(self, phase: PhaseConfig, state: dict[str, Any]) -> None:
        val = self.validate()
        before = state["phase_val_start"]
        kept = (not self.config.keep_if_better) or val < before
        if not kept:
            self.chain.load_state_dict(
                {k: v.to(self.device) for k, v in state["phase_start"].items()}, strict=False
            )
            val = before
        losses = state["losses"]
        k = max(1, len(losses) // 5)
        entry = {
            "phase": phase.name,
            "steps": phase.steps,
            "train_loss_first": float(sum(losses[:k]) / k) if losses else math.nan,
            "train_loss_last": float(sum(losses[-k:]) / k) if losses else math.nan,
            "val_before": before,
            "val_after": val,
            "kept": kept,
        }
        state["history"].append(entry)
        self.log(
            f"{phase.name}: train loss {entry['train_loss_first']:.4f} -> "
            f"{entry['train_loss_last']:.4f}; validation {before:.4f} -> "
            f"{val:.4f} ({'kept' if kept else 'undone: validation did not improve'})"
        )
        with open(self.out / "train_log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        if phase.stage is not None:
            self._advance_inputs(phase.stage)
        else:
            self._inputs = {}
        state["phase"] += 1
        state["step"] = 0
        state.pop("phase_start", None)

    # -- checkpoints ----------------------------------------------------------------------
    def _save_checkpoint(self, path: Path, state: dict[str, Any], opt) -> None:
        payload = {
            "config": json.dumps(asdict(self.config), default=str),
            "chain": chain_weights(self.chain),
            "phase": state["phase"],
            "step": state["step"],
            "history": json.dumps(state["history"]),
            "val_before": state["val_before"],
            "losses": list(state.get("losses", [])),
        }
        if "phase_start" in state:
            payload["phase_start"] = state["phase_start"]
            payload["phase_val_start"] = state["phase_val_start"]
        if opt is not None:
            payload["optimizer"] = opt.state_dict()
        _atomic_save(payload, path)

    def _load_checkpoint(self, path: Path) -> dict[str, Any]:
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise TrainingError(f"cannot read checkpoint ({exc})", path) from exc
        if json.loads(ck["config"]) != json.loads(json.dumps(asdict(self.config), default=str)):
            raise TrainingError("checkpoint was written by a different config", path)
        self.chain.load_state_dict({k: v.to(self.device) for k, v in ck["chain"].items()},
                                   strict=False)  # fmt: skip
        state = {
            "phase": int(ck["phase"]),
            "step": int(ck["step"]),
            "history": json.loads(ck["history"]),
            "val_before": float(ck["val_before"]),
            "losses": list(ck.get("losses", [])),
        }
        if "phase_start" in ck:
            state["phase_start"] = ck["phase_start"]
            state["phase_val_start"] = float(ck["phase_val_start"])
        if "optimizer" in ck:
            state["optimizer"] = ck["optimizer"]
        return state

    def _result(self, state: dict[str, Any], t_start: float, finished: bool) -> TrainResult:
        hist = state["history"]
        return TrainResult(
            chain=self.chain,
            history=hist,
            val_before=state["val_before"],
            val_after=hist[-1]["val_after"] if hist else state["val_before"],
            seconds=time.time() - t_start,
            finished=finished,
        )


def copy_chain(chain: Chain) -> Chain:
    return copy.deepcopy(chain)


__all__ = [
    "LEARNED_STAGES",
    "LOCAL_LOSSES",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "export_weights",
    "master_batch",
    "match_loudness",
]
