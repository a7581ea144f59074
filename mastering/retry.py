"""Auto-retry: re-master a song whose score is below a threshold with altered parameters.

The policy (:class:`RetryPolicy`): a score threshold, which parameters to perturb and by how
much (``{"stage.param": step}`` in the parameter's physical unit), the maximum number of
attempts (the first included) and the acceptance rule (a later attempt replaces the best only
when it scores more than ``min_gain`` points above it). The first attempt is the chain's own
prediction; attempt ``k`` starts from the first attempt's parameters and moves each
perturbed parameter by ``step * (k - 1)`` in the direction that should lift the weakest
sub-score of the best attempt so far (:data:`DIRECTIONS`, e.g. weak dynamics: less limiter
drive), plus a seeded jitter of ``jitter * step``, clamped to the parameter's bounds
(time-varying parameters, e.g. the imager's side gains, are set to their mean over time plus
the offset). The best attempt is returned, so the result never scores below the first
attempt, and every attempt is recorded (:class:`Attempt`).

``master_with_retry`` masters one song (or goes on from a first attempt already mastered and
scored elsewhere: ``first=``, as the render farm's last stage worker does after a batch);
:class:`RetryingChain` wraps a chain so code that calls ``chain(x, conditioning,
overrides=...)`` (``mastering.render.master_file``) gets the best attempt per song, with the
attempts in ``last_attempts``. :func:`select_output` cuts one song out of a batch's output.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from mastering.chain import Chain, ChainOutput, stage_class
from mastering.conditioning import Conditioning, ConditioningBatch
from mastering.errors import InvalidParameterError
from mastering.evaluation import PASS_SCORE, SUB_SCORES, Evaluation, Evaluator, target_tilt
from mastering.render import MasterOptions, master_tensor

#: Default perturbation steps, physical units per attempt.
DEFAULT_PERTURBATIONS: dict[str, float] = {
    "limiter.drive_db": 1.5,
    "compressor.ratio": 0.75,
    "compressor.threshold_db": 2.0,
    "eq.high_shelf_db": 1.5,
    "eq.low_shelf_db": 1.5,
    "exciter.drive_db": 3.0,
    "imager.side_gain_db": 1.5,
    "imager.mono_below_hz": 20.0,
}

#: Weakest sub-score -> {"stage.param": direction}. Direction +1 raises the parameter, -1
#: lowers it; ``"tilt"`` follows the sign of (target tilt - measured tilt) (a too-dark master
#: gets more high shelf), ``"mud"`` lowers the low shelf when the 150-500 Hz bands are high.
DIRECTIONS: dict[str, dict[str, float | str]] = {
    "clarity": {"exciter.drive_db": -1.0, "eq.low_shelf_db": "mud", "compressor.ratio": -1.0},
    "dynamics": {
        "limiter.drive_db": -1.0,
        "compressor.ratio": -1.0,
        "compressor.threshold_db": 1.0,
    },
    "balance": {"eq.high_shelf_db": "tilt", "eq.low_shelf_db": "mud"},
    "loudness": {"limiter.drive_db": 1.0},
    "stereo": {"imager.side_gain_db": -1.0, "imager.mono_below_hz": 1.0},
    "artifacts": {"exciter.drive_db": -1.0, "limiter.drive_db": -1.0, "compressor.ratio": -1.0},
}


@dataclass
class RetryPolicy:
    """When and how to re-master.

    Attributes:
        threshold: score (0-100) at or above which no retry is made.
        perturbations: ``{"stage.param": step}``, physical units per attempt.
        max_attempts: attempts in all, the first included (1 = no retry).
        min_gain: an attempt replaces the best only if it scores more than best + min_gain.
        jitter: seeded random offset, in steps (uniform in ``[-jitter, jitter]``).
        seed: of the jitter.
    """

    threshold: float = PASS_SCORE
    perturbations: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PERTURBATIONS))
    max_attempts: int = 3
    min_gain: float = 0.5
    jitter: float = 0.25
    seed: int = 0

    def validate(self, chain: Chain | None = None) -> RetryPolicy:
        """Check the policy; perturbed parameters are checked against ``chain``'s stages, or
        against the stage classes when no chain is given (no chain needs building)."""
        if self.max_attempts < 1:
            raise InvalidParameterError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not 0.0 <= self.threshold <= 100.0:
            raise InvalidParameterError(f"threshold must be within 0..100, got {self.threshold}")
        for key, step in self.perturbations.items():
            stage, dot, param = key.partition(".")
            if not dot:
                raise InvalidParameterError(f"perturbation {key!r} is not STAGE.PARAM")
            if not step >= 0.0:
                raise InvalidParameterError(f"perturbation step of {key} must be >= 0")
            try:
                specs = (chain.stages[stage] if chain is not None else stage_class(stage)).specs
            except (KeyError, InvalidParameterError):
                raise InvalidParameterError(
                    f"perturbation {key!r}: unknown stage {stage!r}"
                ) from None
            names = [s.name for s in specs]
            if param not in names:
                raise InvalidParameterError(
                    f"perturbation {key!r}: stage {stage} has no parameter {param!r}; "
                    f"valid: {', '.join(names)}"
                )
        return self


@dataclass
class Attempt:
    """One mastering attempt of one song.

    Attributes:
        number: 1 for the chain's own prediction, then 2, 3...
        overrides: ``{stage: {param: value}}`` this attempt set (physical units); empty for 1.
        score, rule, learned: 0-100 (``learned`` ``None`` without a learned model; ``rule``
            ``None`` only in records rebuilt from a score alone, :meth:`from_dict`).
        sub_scores: name -> 0-100.
        best: whether this attempt was the best when the loop ended.
        timings_s: ``{"master": s, "evaluate": s}`` (empty for a first attempt made elsewhere).
        parameters: every stage's parameters (``ChainOutput.parameters_json``).
    """

    number: int
    overrides: dict[str, dict[str, Any]]
    score: float
    rule: float | None
    learned: float | None
    sub_scores: dict[str, float]
    measurements: dict[str, float]
    timings_s: dict[str, float]
    parameters: dict[str, Any] = field(default_factory=dict)
    best: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def brief(self) -> dict[str, Any]:
        """The record without ``parameters``: the small dict reports and the farm carry."""
        out = self.to_dict()
        del out["parameters"]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Attempt:
        """A record from :meth:`to_dict` / :meth:`brief` output, or from a smaller dict with at
        least ``number`` and ``score`` (what is missing stays empty: ``rule``/``learned``
        ``None``, no sub-scores, measurements, timings or parameters)."""
        return cls(
            number=int(d["number"]),
            overrides=dict(d.get("overrides") or {}),
            score=float(d["score"]),
            rule=d.get("rule"),
            learned=d.get("learned"),
            sub_scores=dict(d.get("sub_scores") or {}),
            measurements=dict(d.get("measurements") or {}),
            timings_s=dict(d.get("timings_s") or {}),
            parameters=dict(d.get("parameters") or {}),
            best=bool(d.get("best", False)),
        )


def _mean_value(t: Tensor) -> list[float]:
    """One song's parameter ``[size]`` or ``[size, frames]`` -> ``size`` values (frame mean)."""
    v = t.detach().float().cpu()
    if v.dim() == 2:
        v = v.mean(-1)
    return [float(a) for a in v.reshape(-1)]


def propose(
    chain: Chain,
    first: ChainOutput,
    best: Evaluation,
    number: int,
    policy: RetryPolicy,
    locked: Mapping[str, Mapping[str, Any]],
    tilt_error: float,
    rng: random.Random,
) -> dict[str, dict[str, Any]]:
    """Overrides of attempt ``number`` (>= 2) for one song (see the module docstring).

    ``tilt_error`` is target tilt minus measured tilt of the best attempt (dB/octave);
    parameters in ``locked`` (the user's own overrides) are never perturbed."""
    weakest = min(SUB_SCORES, key=lambda k: float(best.sub_scores[k][0]))
    directions = DIRECTIONS.get(weakest, {})
    out: dict[str, dict[str, Any]] = {}
    for key, step in sorted(policy.perturbations.items()):
        stage, _, param = key.partition(".")
        if param in locked.get(stage, {}) or stage not in first.params:
            continue
        rule = directions.get(key, 0.0)
        if rule == "tilt":
            sign = 1.0 if tilt_error > 0 else -1.0
        elif rule == "mud":
            sign = -1.0 if float(best.measurements.mud_db[0]) > 2.0 else 0.0
        else:
            sign = float(rule)
        offset = step * (sign * (number - 1) + rng.uniform(-policy.jitter, policy.jitter))
        if offset == 0.0:
            continue
        spec = chain.stages[stage].spec(param)
        values = [
            min(spec.high, max(spec.low, v + offset))
            for v in _mean_value(first.params[stage][param][0])
        ]
        out.setdefault(stage, {})[param] = values[0] if len(values) == 1 else values
    return out


def _merge(a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]):
    out = {k: dict(v) for k, v in a.items()}
    for stage, params in b.items():
        out.setdefault(stage, {}).update(params)
    return out


def _record(
    chain: Chain,
    number: int,
    overrides: dict[str, dict[str, Any]],
    out: ChainOutput,
    ev: Evaluation,
    timings_s: dict[str, float],
) -> Attempt:
    item = ev.item(0)
    return Attempt(
        number=number,
        overrides=overrides,
        score=item["score"],
        rule=item["rule"],
        learned=item["learned"],
        sub_scores=item["sub_scores"],
        measurements=item["measurements"],
        timings_s=timings_s,
        parameters=out.parameters_json(0, chain.stages),
    )


def _attempt(
    chain: Chain,
    audio: Tensor,
    options: MasterOptions,
    evaluator: Evaluator,
    number: int,
    overrides: dict[str, dict[str, Any]],
) -> tuple[Tensor, ChainOutput, Evaluation, Attempt]:
    t0 = time.perf_counter()
    opts = replace(options, overrides=_merge(options.overrides, overrides))
    master, out = master_tensor(chain, audio, opts)
    t1 = time.perf_counter()
    ev = evaluator(
        master.unsqueeze(0).cpu(),
        [options.conditioning.resolved_genre()],
        target_lufs=options.target_lufs,
        ceiling_dbtp=options.ceiling_dbtp,
    )
    t2 = time.perf_counter()
    timings = {"master": round(t1 - t0, 4), "evaluate": round(t2 - t1, 4)}
    return master, out, ev, _record(chain, number, overrides, out, ev, timings)


def master_with_retry(
    chain: Chain,
    audio: Tensor | None,
    options: MasterOptions,
    policy: RetryPolicy | None = None,
    evaluator: Evaluator | None = None,
    first: tuple[Tensor, ChainOutput, Evaluation] | None = None,
) -> tuple[Tensor, ChainOutput, list[Attempt]]:
    """Master one song ``audio [2, samples]`` (48 kHz), retrying below the threshold.

    Args:
        first: attempt 1 when it was already computed (the render farm masters and scores a
            whole batch first): ``(master [2, samples], its single-song ChainOutput, its
            single-song Evaluation)``, made with ``options`` and ``chain``; it is not
            mastered again (its record's ``timings_s`` is empty). ``audio`` is then only
            read when a further attempt is made (``None`` is allowed when none can be, i.e.
            the first scores at or above the threshold or ``max_attempts`` is 1).

    Returns:
        ``(best master [2, samples], its ChainOutput, attempts)``; exactly one attempt has
        ``best=True``, and its score is >= the first attempt's.
    """
    policy = (policy or RetryPolicy()).validate(chain)
    evaluator = evaluator or Evaluator()
    rng = random.Random(policy.seed)
    if first is None:
        best = _attempt(chain, audio, options, evaluator, 1, {})
    else:
        master, out, ev = first
        best = (master, out, ev, _record(chain, 1, {}, out, ev, {}))
    first_out = best[1]
    attempts = [best[3]]
    genre_tilt = float(target_tilt([options.conditioning.resolved_genre()], 1)[0])
    for number in range(2, policy.max_attempts + 1):
        if best[3].score >= policy.threshold:
            break
        if audio is None:
            raise InvalidParameterError("a retry needs the song's audio")
        tilt_error = genre_tilt - float(best[2].measurements.tilt_db_oct[0])
        overrides = propose(
            chain, first_out, best[2], number, policy, options.overrides, tilt_error, rng
        )
        cand = _attempt(chain, audio, options, evaluator, number, overrides)
        attempts.append(cand[3])
        if cand[3].score > best[3].score + policy.min_gain:
            best = cand
    best[3].best = True
    return best[0], best[1], attempts


def select_output(out: ChainOutput, index: int, length: int | None = None) -> ChainOutput:
    """Song ``index`` of a batch's :class:`ChainOutput` as a one-song output (the inverse of
    concatenating them). ``length`` (samples, 48 kHz): the song's own length when the batch
    was zero-padded to a longer one; its audio and the frames of its time-varying parameters
    (``[1, size, frames]``) are cut to that share, so padding does not count."""
    total = out.audio.shape[-1]
    n = total if length is None else min(int(length), total)

    def cut(t: Tensor) -> Tensor:
        t = t[index : index + 1]
        if t.dim() == 3 and n < total:
            t = t[..., : max(1, math.ceil(t.shape[-1] * n / total))]
        return t

    return ChainOutput(
        audio=out.audio[index : index + 1, :, :n],
        params={stage: {k: cut(v) for k, v in p.items()} for stage, p in out.params.items()},
        cond=out.cond.select(slice(index, index + 1)),
        info={k: v[index : index + 1] for k, v in out.info.items()},
        config=out.config,
    )


def _cat_outputs(outs: Sequence[ChainOutput]) -> ChainOutput:
    """One :class:`ChainOutput` from single-song outputs (concatenated along the batch)."""
    if len(outs) == 1:
        return outs[0]
    first = outs[0]
    params = {
        stage: {n: torch.cat([o.params[stage][n] for o in outs]) for n in p}
        for stage, p in first.params.items()
    }
    info = {k: [i for o in outs for i in o.info.get(k, [])] for k in first.info}
    return ChainOutput(
        audio=torch.cat([o.audio for o in outs]),
        params=params,
        cond=ConditioningBatch.cat([o.cond for o in outs]),
        info=info,
        config=first.config,
    )


class ChainStandIn:
    """Base of objects called in place of a chain (``obj(x, conditioning, overrides=...)`` ->
    :class:`ChainOutput`) that wrap one: ``stages`` and ``config`` are the wrapped
    ``self.chain``'s, which is what callers read besides calling it."""

    chain: Chain

    @property
    def stages(self):
        return self.chain.stages

    @property
    def config(self):
        return self.chain.config


class RetryingChain(ChainStandIn):
    """A chain that retries: ``RetryingChain(chain, policy, evaluator)(x, conditioning,
    overrides=...)`` returns the best attempt of each song as one :class:`ChainOutput`; the
    attempts of the last call are in :attr:`last_attempts` (one list per song).

    ``stages`` and ``config`` are the wrapped chain's, so it drops in wherever a chain is
    called (e.g. ``mastering.render.master_file``).
    """

    def __init__(
        self, chain: Chain, policy: RetryPolicy | None = None, evaluator: Evaluator | None = None
    ):
        self.chain = chain
        self.policy = (policy or RetryPolicy()).validate(chain)
        self.evaluator = evaluator or Evaluator(
            target_lufs=chain.config.target_lufs, ceiling_dbtp=chain.config.ceiling_dbtp
        )
        self.last_attempts: list[list[Attempt]] = []

    def __call__(
        self,
        x: Tensor,
        conditioning: Conditioning | Sequence[Conditioning],
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> ChainOutput:
        items = (
            [conditioning] * x.shape[0]
            if isinstance(conditioning, Conditioning)
            else list(conditioning)
        )
        if len(items) != x.shape[0]:
            raise InvalidParameterError(f"{len(items)} conditionings for {x.shape[0]} songs")
        outs, self.last_attempts = [], []
        for i in range(x.shape[0]):
            options = MasterOptions(
                conditioning=items[i],
                target_lufs=self.chain.config.target_lufs,
                ceiling_dbtp=self.chain.config.ceiling_dbtp,
                overrides={k: dict(v) for k, v in (overrides or {}).items()},
                device=str(x.device),
            )
            _, out, attempts = master_with_retry(
                self.chain, x[i], options, self.policy, self.evaluator
            )
            outs.append(out)
            self.last_attempts.append(attempts)
        return _cat_outputs(outs)


def measure_gain(
    songs: int = 16,
    duration_s: float = 3.0,
    attempts: Sequence[int] = (1, 2, 3, 5),
    policy: RetryPolicy | None = None,
) -> list[dict[str, float]]:
    """How much retrying lifts the share of songs above the threshold, and at what cost.

    Songs: :func:`mastering.testsignals.music_like` raw mixes, each with one problem from
    :mod:`mastering.degradations` applied at severity 0.5-1 (seeded), genres cycling. For each
    cap in ``attempts``: the share of kept masters at or above the threshold, the mean score
    and the mean number of attempts made (the master cost, in chain runs per song).
    """
    from mastering.degradations import degrade
    from mastering.testsignals import music_like

    policy = policy or RetryPolicy()
    problems = ("dull_eq", "harsh_eq", "muddy_eq", "thin_eq", "wide_bass", "phase_problem",
                "over_compression", "clipping")  # fmt: skip
    genres = ("pop", "rock", "jazz", "edm", "ambient", "hiphop")
    chain, evaluator = Chain.pretrained(), Evaluator()
    rng = random.Random(1234)
    runs: list[list[Attempt]] = []
    for k in range(songs):
        x = music_like(duration_s, seed=5000 + k).unsqueeze(0)
        x = degrade(x, problems[k % len(problems)], rng.uniform(0.5, 1.0))[0]
        options = MasterOptions(conditioning=Conditioning(genre=genres[k % len(genres)]))
        full = replace(policy, max_attempts=max(attempts))
        runs.append(master_with_retry(chain, x, options, full, evaluator)[2])
    table = []
    for cap in attempts:
        kept, made = [], []
        for run in runs:
            # The loop is deterministic: a smaller cap is a prefix of the same run.
            prefix = run[:cap]
            best = prefix[0]
            for a in prefix[1:]:
                if a.score > best.score + policy.min_gain:
                    best = a
            kept.append(best.score)
            made.append(len(prefix))
        table.append(
            {
                "max_attempts": cap,
                "share_above": sum(s >= policy.threshold for s in kept) / len(kept),
                "mean_score": sum(kept) / len(kept),
                "mean_attempts": sum(made) / len(made),
            }
        )
    return table


if __name__ == "__main__":
    import json as _json

    torch.set_num_threads(max(1, torch.get_num_threads()))
    for line in measure_gain():
        print(_json.dumps({k: round(v, 3) for k, v in line.items()}))
