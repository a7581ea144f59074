"""What the Ray Tune searches share: resources per trial, the Tuner (new or restored), ASHA,
and the trial table of a finished run.

Experiments live in ``<store>/tune/<name>/`` (Tune's own layout). :func:`run_experiment`
restores the experiment with :meth:`ray.tune.Tuner.restore` when that folder holds one
(:meth:`ray.tune.Tuner.can_restore`), so running the same command again after an interruption
resumes it: finished trials are kept, unfinished and errored ones continue from their last
checkpoint. Trainables checkpoint their progress after every reported iteration
(:func:`report`), so a resumed trial does not redo finished iterations.

Trials ask for ``{"cpu": 1, "gpu": gpus_per_trial}`` when the cluster has GPUs and
``{"cpu": 1}`` otherwise (:func:`trial_resources`); a trial runs its torch work on CUDA only
when Ray gave it a GPU and torch can see one (:func:`trial_device`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mastering.errors import InvalidParameterError, LacquerError
from tuning.trials import trial_table, write_trials


class SearchError(LacquerError):
    """A search cannot run (no corpus, no cluster, an experiment that does not fit)."""


def experiment_dir(store: str | Path, name: str) -> Path:
    """``<store>/tune/<name>`` as an absolute path (Tune needs absolute storage paths)."""
    if not name or "/" in name or name.startswith("."):
        raise InvalidParameterError(f"invalid experiment name {name!r}")
    return (Path(store) / "tune").resolve() / name


def cluster_gpus() -> float:
    """GPUs of the connected Ray cluster (0 without one or without GPUs)."""
    import ray

    if not ray.is_initialized():
        return 0.0
    return float(ray.cluster_resources().get("GPU", 0.0))


def trial_resources(gpus_per_trial: float = 1.0) -> dict[str, float]:
    """What one trial asks for: 1 CPU, plus ``gpus_per_trial`` GPUs when the cluster has any."""
    if gpus_per_trial > 0 and cluster_gpus() > 0:
        return {"cpu": 1, "gpu": gpus_per_trial}
    return {"cpu": 1}


def trial_device() -> str:
    """``"cuda"`` when this trial was given a GPU and torch sees one, else ``"cpu"``."""
    import ray
    import torch

    try:
        gpus = ray.get_gpu_ids()
    except Exception:  # not inside a Ray worker
        gpus = []
    return "cuda" if gpus and torch.cuda.is_available() else "cpu"


def load_state() -> dict[str, Any] | None:
    """The state this trial last checkpointed with :func:`report` (``None`` when fresh)."""
    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        path = Path(d) / "state.json"
        return json.loads(path.read_text()) if path.exists() else None


def report(
    metrics: Mapping[str, Any],
    state: Mapping[str, Any],
    files: Mapping[str, Callable[[Path], None]] | None = None,
) -> None:
    """``tune.report(metrics)`` with a checkpoint holding ``state`` (``state.json``) and any
    ``files`` (name -> writer of ``folder/name``)."""
    from ray import tune

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "state.json").write_text(json.dumps(dict(state)))
        for name, write in (files or {}).items():
            write(Path(d) / name)
        tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(d))


def run_experiment(
    trainable: Callable[[dict], None],
    param_space: Mapping[str, Any],
    *,
    store: str | Path,
    name: str,
    metric: str,
    mode: str,
    num_samples: int,
    max_iterations: int,
    gpus_per_trial: float = 1.0,
    grace_period: int = 1,
    seed: int = 0,
    resume: bool = True,
    max_concurrent: int = 0,
):
    """Run (or resume) one Tune experiment with ASHA; returns ``(ResultGrid, restored)``.

    ASHA (:class:`ray.tune.schedulers.ASHAScheduler`) compares trials at
    ``training_iteration`` rungs ``grace_period, 2*grace_period, ...`` up to
    ``max_iterations`` and stops the worse half at each rung (reduction factor 2).
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    if num_samples < 1 or max_iterations < 1:
        raise InvalidParameterError("num_samples and iterations must be >= 1")
    path = experiment_dir(store, name)
    wrapped = tune.with_resources(trainable, trial_resources(gpus_per_trial))
    restored = resume and tune.Tuner.can_restore(str(path))
    if restored:
        tuner = tune.Tuner.restore(
            str(path), trainable=wrapped, resume_unfinished=True, resume_errored=True
        )
    else:
        if path.exists() and any(path.iterdir()):
            raise SearchError(
                f"{path}: experiment folder exists but is not restorable; remove it or pick "
                "another --name"
            )
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=max_iterations,
            grace_period=min(grace_period, max_iterations),
            reduction_factor=2,
        )
        tuner = tune.Tuner(
            wrapped,
            param_space=dict(param_space),
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                num_samples=num_samples,
                scheduler=scheduler,
                search_alg=BasicVariantGenerator(random_state=seed),
                max_concurrent_trials=max_concurrent or None,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(path.parent),
                verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            ),
        )
    return tuner.fit(), restored


def result_rows(grid) -> list[dict[str, Any]]:
    """One dict per trial of a ``ResultGrid`` (for :func:`tuning.trials.trial_table`)."""
    rows = []
    for result in grid:
        metrics = dict(result.metrics or {})
        rows.append(
            {
                "trial_id": metrics.get("trial_id") or Path(result.path).name,
                "status": "ERROR" if result.error else "TERMINATED",
                "config": dict(result.config or {}),
                "metrics": metrics,
                "iterations": int(metrics.get("training_iteration") or 0),
                "error": None if result.error is None else str(result.error).splitlines()[0],
            }
        )
    return rows


def record_trials(store: str | Path, kind: str, name: str, grid, metrics: list[str]) -> Path:
    """Write every trial of ``grid`` as a new file of ``kind``'s trial table."""
    return write_trials(store, kind, trial_table(name, result_rows(grid), metrics))


def best_result(grid, metric: str, mode: str):
    """The best trial's last result among the trials that ran the most iterations; raises
    :class:`SearchError` when every trial failed."""
    ok = [r for r in grid if r.error is None and r.metrics and metric in r.metrics]
    if not ok:
        errors = [str(r.error).splitlines()[0] for r in grid if r.error is not None]
        raise SearchError(f"no trial finished; first error: {errors[0] if errors else 'none'}")
    # Trials ASHA stopped early saw fewer song batches: only the longest-run ones compete.
    longest = max(int(r.metrics.get("training_iteration") or 0) for r in ok)
    ok = [r for r in ok if int(r.metrics.get("training_iteration") or 0) == longest]
    sign = 1.0 if mode == "max" else -1.0
    # Ties (e.g. policies that never retry) go to the lowest trial id, so a restored run
    # picks the same best as the original.
    return min(ok, key=lambda r: (-sign * float(r.metrics[metric]), str(r.metrics["trial_id"])))
