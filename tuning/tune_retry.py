"""``lacquer tune retry``: a Ray Tune search of the auto-retry policy (:mod:`mastering.retry`).

Searched (``param_space``, :func:`retry_space`):

* ``threshold``: retry below this score (0-100);
* ``max_attempts``: attempts in all, the first included;
* ``scale_dynamics``, ``scale_tone``, ``scale_stereo``: multipliers of the default
  perturbation steps (:data:`mastering.retry.DEFAULT_PERTURBATIONS`) of the dynamics parameters
  (limiter drive, compressor ratio/threshold), the tone parameters (EQ shelves, exciter drive)
  and the stereo parameters (imager side gain, mono-below frequency).

The corpus sample (:class:`Corpus`) is songs from a folder of audio files or a pair manifest
(the raw mixes), or, when none is given, :func:`mastering.testsignals.music_like` songs each
degraded by one problem of :mod:`mastering.degradations` (severity 0.5-1, seeded). Every song
is cropped to ``seconds`` from its middle. One **iteration** of a trial masters one batch of
``batch_size`` songs with :func:`mastering.retry.master_with_retry` and reports the running
means over every song so far; ASHA stops weak trials at the batch rungs.

Objective (maximized)::

    objective = mean_score - attempt_cost * (mean_attempts - 1)

``mean_score`` is the mean score (0-100) of the kept masters, ``mean_attempts`` the mean
number of chain runs per song (1 = never retried), ``attempt_cost`` the score points one extra
attempt must buy to be worth it (default 2.0). ``share_above`` (share of songs at or above
the *default* pass score :data:`mastering.evaluation.PASS_SCORE`) is reported alongside.

The best configuration goes to ``<store>/best/retry.json``; :func:`load_retry_policy` turns it
into a :class:`mastering.retry.RetryPolicy` (``lacquer master`` picks it up through it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mastering.errors import InvalidParameterError
from mastering.retry import DEFAULT_PERTURBATIONS, RetryPolicy
from tuning.search import SearchError, best_result, record_trials, run_experiment
from tuning.trials import load_best, save_best

KIND = "retry"
METRIC = "objective"
#: Perturbation groups scaled together by one searched multiplier.
GROUPS: dict[str, tuple[str, ...]] = {
    "scale_dynamics": ("limiter.drive_db", "compressor.ratio", "compressor.threshold_db"),
    "scale_tone": ("eq.high_shelf_db", "eq.low_shelf_db", "exciter.drive_db"),
    "scale_stereo": ("imager.side_gain_db", "imager.mono_below_hz"),
}
PROBLEMS = ("dull_eq", "harsh_eq", "muddy_eq", "wide_bass", "over_compression", "clipping")
GENRES = ("pop", "rock", "jazz", "edm", "ambient", "hiphop")
METRICS = ["objective", "mean_score", "mean_attempts", "share_above", "songs", "first_score"]


@dataclass
class Corpus:
    """The songs a trial masters.

    Attributes:
        files: audio files (absolute paths); their genre is ``genre`` (``None``: estimated).
        manifest: a pair manifest; its raw mixes and genres are used (``split`` only).
        split: manifest split (``None``: every row).
        synthetic: number of synthetic degraded songs when no files or manifest are given.
        seconds: crop length, s (from the middle of each song).
        seed: of the synthetic songs and degradations.
        genre: genre of ``files``.
    """

    files: list[str] = field(default_factory=list)
    manifest: str | None = None
    split: str | None = None
    synthetic: int = 8
    seconds: float = 2.0
    seed: int = 0
    genre: str | None = None

    def validate(self) -> Corpus:
        if self.seconds < 0.5:
            raise InvalidParameterError(f"song crop must be >= 0.5 s, got {self.seconds}")
        if not self.files and not self.manifest and self.synthetic < 1:
            raise InvalidParameterError("the corpus has no songs")
        for f in self.files:
            if not Path(f).is_file():
                raise InvalidParameterError(f"{f}: no such audio file")
        if self.manifest and not Path(self.manifest).is_file():
            raise InvalidParameterError(f"{self.manifest}: no such pair manifest")
        return self


def corpus_from_inputs(
    inputs: Sequence[str | Path],
    seconds: float,
    synthetic: int,
    seed: int,
    genre: str | None = None,
) -> Corpus:
    """A corpus from one ``.parquet``/``.csv`` pair manifest, or audio files (already expanded
    from folders and globs by the caller); no inputs: ``synthetic`` synthetic songs."""
    items = [Path(p) for p in inputs]
    if len(items) == 1 and items[0].suffix.lower() in (".parquet", ".csv"):
        return Corpus(manifest=str(items[0].resolve()), seconds=seconds, seed=seed).validate()
    files = [str(p.resolve()) for p in items]
    return Corpus(
        files=files, synthetic=synthetic, seconds=seconds, seed=seed, genre=genre
    ).validate()


def crop_middle(x, seconds: float):
    """``x [2, samples]`` cut to ``seconds`` (48 kHz) from its middle (unchanged if shorter)."""
    n = round(seconds * 48_000)
    if x.shape[-1] <= n:
        return x
    start = (x.shape[-1] - n) // 2
    return x[:, start : start + n].contiguous()


def load_corpus(corpus: Corpus) -> list[tuple[Any, Any]]:
    """``[(audio [2, samples] at 48 kHz, Conditioning)]`` of the corpus, in a fixed order."""
    import random

    from mastering.conditioning import Conditioning
    from mastering.degradations import degrade
    from mastering.io import read_audio
    from mastering.testsignals import music_like

    songs = []
    if corpus.manifest:
        from mastering.data.pairs import read_pair_manifest

        for rec in read_pair_manifest(corpus.manifest, split=corpus.split):
            audio, _ = read_audio(rec.raw_path)
            songs.append((crop_middle(audio, corpus.seconds), Conditioning(genre=rec.genre)))
    elif corpus.files:
        for f in corpus.files:
            audio, _ = read_audio(f)
            songs.append((crop_middle(audio, corpus.seconds), Conditioning(genre=corpus.genre)))
    else:
        rng = random.Random(corpus.seed)
        for k in range(corpus.synthetic):
            x = music_like(corpus.seconds, seed=corpus.seed * 1000 + k).unsqueeze(0)
            x = degrade(x, PROBLEMS[k % len(PROBLEMS)], rng.uniform(0.5, 1.0))[0]
            songs.append((x, Conditioning(genre=GENRES[k % len(GENRES)])))
    if not songs:
        raise SearchError("the corpus sample has no songs")
    return songs


def policy_from_config(config: dict[str, Any]) -> RetryPolicy:
    """The :class:`RetryPolicy` of a trial's (or the saved best) configuration."""
    steps = dict(DEFAULT_PERTURBATIONS)
    for group, keys in GROUPS.items():
        scale = float(config.get(group, 1.0))
        for k in keys:
            if k in steps:
                steps[k] = steps[k] * scale
    return RetryPolicy(
        threshold=float(config.get("threshold", RetryPolicy.threshold)),
        perturbations=steps,
        max_attempts=int(config.get("max_attempts", RetryPolicy.max_attempts)),
        min_gain=float(config.get("min_gain", RetryPolicy.min_gain)),
        seed=int(config.get("seed", 0)),
    ).validate()


def objective(mean_score: float, mean_attempts: float, attempt_cost: float) -> float:
    """``mean_score - attempt_cost * (mean_attempts - 1)`` (see the module docstring)."""
    return mean_score - attempt_cost * (mean_attempts - 1.0)


def retry_trainable(config: dict[str, Any], corpus: Corpus | None = None) -> None:
    """One trial: master the corpus batch by batch with the trial's policy, report after each.

    ``config`` holds the searched keys plus ``batch_size``, ``batches``, ``attempt_cost``."""
    import torch

    from mastering.chain import Chain
    from mastering.evaluation import PASS_SCORE, Evaluator
    from mastering.render import MasterOptions
    from mastering.retry import master_with_retry
    from tuning.search import load_state, report, trial_device

    torch.set_num_threads(1)
    corpus = corpus or Corpus()
    songs = load_corpus(corpus)
    policy = policy_from_config(config)
    device = trial_device()
    chain = Chain.pretrained().to(device)
    evaluator = Evaluator()
    bs, batches = int(config["batch_size"]), int(config["batches"])
    state = load_state() or {"batch": 0, "scores": [], "attempts": [], "first": []}
    while state["batch"] < batches:
        b = state["batch"]
        for j in range(bs):
            audio, cond = songs[(b * bs + j) % len(songs)]
            options = MasterOptions(conditioning=cond, device=device)
            _, _, attempts = master_with_retry(chain, audio, options, policy, evaluator)
            kept = next(a for a in attempts if a.best)
            state["scores"].append(kept.score)
            state["attempts"].append(len(attempts))
            state["first"].append(attempts[0].score)
        state["batch"] = b + 1
        n = len(state["scores"])
        mean_score = sum(state["scores"]) / n
        mean_attempts = sum(state["attempts"]) / n
        metrics = {
            "objective": objective(mean_score, mean_attempts, float(config["attempt_cost"])),
            "mean_score": mean_score,
            "mean_attempts": mean_attempts,
            "share_above": sum(s >= PASS_SCORE for s in state["scores"]) / n,
            "first_score": sum(state["first"]) / n,
            "songs": n,
        }
        report(metrics, state)


def retry_space(
    num_attempts: Sequence[int] = (1, 2, 3, 4),
    thresholds: tuple[float, float] = (55.0, 85.0),
    scales: tuple[float, float] = (0.25, 2.0),
) -> dict[str, Any]:
    """The searched keys (random search)."""
    from ray import tune

    return {
        "threshold": tune.uniform(*thresholds),
        "max_attempts": tune.choice(list(num_attempts)),
        "scale_dynamics": tune.loguniform(*scales),
        "scale_tone": tune.loguniform(*scales),
        "scale_stereo": tune.loguniform(*scales),
    }


@dataclass
class RetrySearch:
    """A retry-policy search.

    Attributes:
        store: feedback store root (trial table, best file and experiments live under it).
        name: experiment name (``<store>/tune/<name>``; the same name resumes).
        corpus: the songs.
        num_samples: trials.
        batches, batch_size: iterations per trial and songs per iteration.
        attempt_cost: score points per extra attempt in the objective.
        attempts: ``max_attempts`` choices.
        gpus_per_trial: GPUs per trial when the cluster has GPUs.
        seed: of the random search.
    """

    store: str
    name: str = "retry"
    corpus: Corpus = field(default_factory=Corpus)
    num_samples: int = 8
    batches: int = 4
    batch_size: int = 2
    attempt_cost: float = 2.0
    attempts: tuple[int, ...] = (1, 2, 3, 4)
    gpus_per_trial: float = 1.0
    seed: int = 0
    resume: bool = True

    def run(self) -> dict[str, Any]:
        """Run (or resume) the search; record the trials; save and return the best."""
        from ray import tune

        self.corpus.validate()
        space = {
            **retry_space(self.attempts),
            "batch_size": self.batch_size,
            "batches": self.batches,
            "attempt_cost": self.attempt_cost,
        }
        trainable = tune.with_parameters(retry_trainable, corpus=self.corpus)
        grid, restored = run_experiment(
            trainable,
            space,
            store=self.store,
            name=self.name,
            metric=METRIC,
            mode="max",
            num_samples=self.num_samples,
            max_iterations=self.batches,
            gpus_per_trial=self.gpus_per_trial,
            seed=self.seed,
            resume=self.resume,
        )
        table = record_trials(self.store, KIND, self.name, grid, METRICS)
        best = best_result(grid, METRIC, "max")
        config = {k: best.config[k] for k in ("threshold", "max_attempts", *GROUPS)}
        policy = policy_from_config(config)
        record = {
            "experiment": self.name,
            "trial_id": best.metrics.get("trial_id"),
            "config": config,
            "policy": asdict(policy),
            "metrics": {k: best.metrics.get(k) for k in METRICS},
            "objective": "mean_score - attempt_cost * (mean_attempts - 1)",
            "attempt_cost": self.attempt_cost,
            "corpus": asdict(self.corpus),
            "trials": len(grid),
            "restored": restored,
        }
        record["path"] = str(save_best(self.store, KIND, record))
        record["trial_table"] = str(table)
        return record


def default_store() -> str:
    return os.environ.get("LACQUER_FEEDBACK_DIR", "feedback")


def load_retry_policy(
    store: str | Path | None = None, max_attempts: int | None = None
) -> RetryPolicy:
    """The tuned policy of ``<store>/best/retry.json`` (``store`` default:
    ``$LACQUER_FEEDBACK_DIR``, else ``./feedback``), or the default :class:`RetryPolicy` when
    no search has saved one. ``max_attempts`` (e.g. ``--retry-attempts``) caps a tuned
    policy's attempts and sets the default policy's."""
    best = load_best(store or default_store(), KIND)
    if best is None:
        policy = RetryPolicy()
        if max_attempts is not None:
            policy.max_attempts = max(1, int(max_attempts))
        return policy
    policy = policy_from_config(best["config"])
    if max_attempts is not None:
        policy.max_attempts = max(1, min(policy.max_attempts, int(max_attempts)))
    return policy
