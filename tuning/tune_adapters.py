"""``lacquer tune adapters``: a Ray Tune search of style-adapter hyperparameters per genre.

For each genre of the pair manifest's training songs (or the ``--genre`` ones), one Tune
experiment ``<name>-<genre>`` trains a fresh :class:`mastering.adapters.StyleAdapter` on that
genre's crops with the training helper's loop (:func:`mastering.training.style.
train_adapter`, the chain's own weights frozen). Searched (:func:`adapter_space`):

* ``lr``: Adam learning rate (log-uniform);
* ``steps``: optimizer steps per iteration (ASHA decides how many iterations a trial gets,
  so the total number of steps is searched too);
* ``w_dynamic``, ``w_image``, ``w_loudness``, ``w_harmonic``: the training loss weights
  (:class:`mastering.losses.LossWeights`; ``spectral`` stays 1).

The adapter design has no rank: it is a FiLM of the conditioning vector, a macro offset and a
per-parameter bias (a few hundred numbers), so there is no low-rank dimension to search.

Metric (minimized): ``val_loss``, the full-chain :class:`mastering.losses.MasteringLoss` with
the **default** weights on the genre's validation crops (the manifest's ``val`` split, else
the genre's training crops), so trials with different loss weights are compared on one
scale. The pool of crops is built once by the driver and saved (``<store>/tune/pools/``), so
trials only load it. Each iteration checkpoints the adapter; the best trial's adapter is
copied to ``<store>/best/adapters/genre-<genre>.safetensors`` when it lowers the validation
loss below the untrained adapter's (``improves`` in the record), and its record (config,
metrics) always goes to ``<store>/best/adapters/<genre>.json``.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mastering.errors import InvalidParameterError
from tuning.search import SearchError, best_result, record_trials, run_experiment
from tuning.trials import best_path, save_best

KIND = "adapters"
METRIC = "val_loss"
METRICS = ["val_loss", "val_loss_start", "train_loss", "steps_done", "crops"]
WEIGHT_KEYS = ("w_dynamic", "w_image", "w_loudness", "w_harmonic")


def adapter_space(
    lr: tuple[float, float] = (1e-3, 5e-2), steps: Sequence[int] = (2, 4, 8)
) -> dict[str, Any]:
    from ray import tune

    return {
        "lr": tune.loguniform(*lr),
        "steps": tune.choice(list(steps)),
        "w_dynamic": tune.uniform(0.0, 0.3),
        "w_image": tune.uniform(0.2, 1.0),
        "w_loudness": tune.uniform(0.0, 0.3),
        "w_harmonic": tune.uniform(0.2, 1.0),
    }


def loss_weights(config: dict[str, Any]):
    from mastering.losses import LossWeights

    return LossWeights(
        spectral=1.0,
        dynamic=float(config.get("w_dynamic", 0.1)),
        image=float(config.get("w_image", 0.5)),
        loudness=float(config.get("w_loudness", 0.1)),
        harmonic=float(config.get("w_harmonic", 0.5)),
    )


def build_pools(manifest: str | Path, pool_dir: str | Path, base: str = "test-tiny") -> Path:
    """Build (once) and save the train/val crop pools of ``manifest`` with config ``base``'s
    crop settings; returns the pool file (named by the manifest's path and the config)."""
    from mastering.training.config import get_config
    from mastering.training.trainer import Trainer

    manifest = Path(manifest).resolve()
    key = hashlib.sha256(f"{manifest}:{manifest.stat().st_mtime_ns}:{base}".encode()).hexdigest()
    pool_file = Path(pool_dir).resolve() / f"pool-{key[:16]}.pt"
    if not pool_file.exists():
        trainer = Trainer(get_config(base), manifest, pool_file.parent, log=lambda _: None,
                          pool_file=pool_file)  # fmt: skip
        trainer.load_data()
    return pool_file


def genre_crops(pool, genre: str) -> list[int]:
    return [i for i, g in enumerate(pool.genres()) if g == genre]


def _val_loss(chain, adapter, pool, device) -> float:
    """Mean default-weight :class:`MasteringLoss` of ``chain`` + ``adapter`` over ``pool``."""
    import torch

    from mastering.adapters import attach
    from mastering.losses import MasteringLoss
    from mastering.training.render import master_batch

    loss_fn = MasteringLoss()
    attach(chain, adapter)
    total = 0.0
    try:
        with torch.no_grad():
            for i in range(0, len(pool), 4):
                sl = slice(i, i + 4)
                y = master_batch(chain, pool.raw[sl].to(device), pool.conditioning[sl],
                                 pool.target_lufs[sl])  # fmt: skip
                loss, _ = loss_fn(y.float(), pool.mastered[sl].to(device),
                                  pool.target_lufs[sl].to(device))  # fmt: skip
                total += float(loss) * y.shape[0]
    finally:
        attach(chain, None)
    return total / max(len(pool), 1)


def adapter_trainable(config: dict[str, Any], pool_file: str = "", manifest: str = "") -> None:
    """One trial: train a fresh genre adapter ``config["steps"]`` steps per iteration."""
    import torch

    from mastering.adapters import StyleAdapter, read_adapter_file, save_adapter
    from mastering.chain import Chain
    from mastering.training.config import get_config
    from mastering.training.style import train_adapter
    from mastering.training.trainer import Trainer
    from tuning.search import load_state, report, trial_device

    torch.set_num_threads(1)
    genre = str(config["genre"])
    device = trial_device()
    cfg = get_config(str(config.get("base", "test-tiny")), adapter_lr=float(config["lr"]),
                     adapter_steps=int(config["steps"]), weights=loss_weights(config),
                     device=device, threads=1, seed=int(config.get("seed", 0)))  # fmt: skip
    trainer = Trainer(cfg, manifest, Path(pool_file).parent, chain=Chain.pretrained(),
                      log=lambda _: None, pool_file=pool_file)  # fmt: skip
    trainer.load_data()
    train = trainer.train_pool.subset(genre_crops(trainer.train_pool, genre))
    val_idx = genre_crops(trainer.val_pool, genre)
    val = trainer.val_pool.subset(val_idx) if val_idx else train
    if len(train) == 0:
        raise SearchError(f"{manifest}: no training crops of genre {genre!r}")
    adapter = StyleAdapter(f"genre-{genre}", "genre", genre)
    state = None
    ckpt = _checkpoint_adapter()
    if ckpt is not None:
        state = load_state()
        adapter = read_adapter_file(ckpt)
    state = state or {"iteration": 0, "steps_done": 0}
    if "val_loss_start" not in state:
        state["val_loss_start"] = _val_loss(trainer.chain, adapter, val, trainer.device)
    max_iter = int(config["iterations"])
    while state["iteration"] < max_iter:
        _, after = train_adapter(trainer, train, adapter, 1000 + state["iteration"])
        state["iteration"] += 1
        state["steps_done"] += int(config["steps"])
        metrics = {
            "val_loss": _val_loss(trainer.chain, adapter, val, trainer.device),
            "val_loss_start": state["val_loss_start"],
            "train_loss": after,
            "steps_done": state["steps_done"],
            "crops": len(train),
        }
        adapter.info.update(lr=f"{float(config['lr']):.6g}", steps=str(state["steps_done"]))
        report(metrics, state, {"adapter.safetensors": _adapter_writer(adapter, save_adapter)})


def _adapter_writer(adapter, save_adapter):
    def write(path: Path) -> None:
        save_adapter(adapter, path.parent, name=adapter.name)
        (path.parent / f"{adapter.name}.safetensors").rename(path)

    return write


def _checkpoint_adapter() -> Path | None:
    """A copy of the adapter of this trial's last checkpoint (``None`` when fresh)."""
    import tempfile

    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        src = Path(d) / "adapter.safetensors"
        if not src.exists():
            return None
        dst = Path(tempfile.mkdtemp()) / "genre-resume.safetensors"
        shutil.copy(src, dst)
        return dst


@dataclass
class AdapterSearch:
    """Adapter-hyperparameter searches, one experiment per genre.

    Attributes:
        store: feedback store root.
        manifest: pair manifest (``train`` split trained on, ``val`` validated on).
        genres: genres to search (default: every genre of the training split).
        name: experiment name prefix (``<name>-<genre>``).
        num_samples, iterations: trials per genre and iterations per trial.
        base: training config whose crop settings and batch size are used.
    """

    store: str
    manifest: str
    genres: list[str] = field(default_factory=list)
    name: str = "adapters"
    num_samples: int = 8
    iterations: int = 4
    steps: tuple[int, ...] = (2, 4, 8)
    base: str = "test-tiny"
    gpus_per_trial: float = 1.0
    seed: int = 0
    resume: bool = True

    def run(self) -> list[dict[str, Any]]:
        from ray import tune

        from mastering.training.pool import load_pools

        if not Path(self.manifest).is_file():
            raise InvalidParameterError(f"{self.manifest}: no such pair manifest")
        pool_file = build_pools(self.manifest, Path(self.store) / "tune" / "pools", self.base)
        found = sorted(set(load_pools(pool_file)["train"].genres()))
        genres = self.genres or found
        missing = [g for g in genres if g not in found]
        if missing:
            raise InvalidParameterError(
                f"{self.manifest}: no training songs of genre {', '.join(missing)}; "
                f"genres present: {', '.join(found)}"
            )
        trainable = tune.with_parameters(
            adapter_trainable, pool_file=str(pool_file), manifest=str(Path(self.manifest).resolve())
        )
        out = []
        for genre in genres:
            name = f"{self.name}-{genre}"
            space = {
                **adapter_space(steps=self.steps),
                "genre": genre,
                "iterations": self.iterations,
                "base": self.base,
                "seed": self.seed,
            }
            grid, restored = run_experiment(
                trainable, space, store=self.store, name=name, metric=METRIC, mode="min",
                num_samples=self.num_samples, max_iterations=self.iterations,
                gpus_per_trial=self.gpus_per_trial, seed=self.seed, resume=self.resume,
            )  # fmt: skip
            table = record_trials(self.store, KIND, name, grid, METRICS)
            best = best_result(grid, METRIC, "min")
            config = {k: best.config[k] for k in ("lr", "steps", *WEIGHT_KEYS)}
            record: dict[str, Any] = {
                "experiment": name,
                "genre": genre,
                "trial_id": best.metrics.get("trial_id"),
                "config": config,
                "total_steps": best.metrics.get("steps_done"),
                "metrics": {k: best.metrics.get(k) for k in METRICS},
                "trials": len(grid),
                "restored": restored,
                "trial_table": str(table),
            }
            improves = float(best.metrics[METRIC]) < float(best.metrics["val_loss_start"])
            record["improves"] = improves
            # Like the training loop, keep an adapter only if it lowers the validation loss.
            if best.checkpoint is not None and improves:
                with best.checkpoint.as_directory() as d:
                    dst = best_path(self.store, KIND, genre).with_name(f"genre-{genre}.safetensors")
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dst.with_name(f".{dst.name}.tmp")
                    shutil.copy(Path(d) / "adapter.safetensors", tmp)
                    tmp.replace(dst)
                    record["adapter"] = str(dst)
            record["path"] = str(save_best(self.store, KIND, record, key=genre))
            out.append(record)
        return out
