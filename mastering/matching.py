"""Inference-time reference matching: gradient steps on the conditioning macros.

The chain is differentiable end to end with respect to the conditioning, so after the
:class:`mastering.reference.ReferenceEncoder` has proposed macros, ``steps`` Adam steps on the
macro vector (through every stage's prior and controller, ``Chain.begin/run_stages``) lower
:func:`mastering.reference.feature_distance` between the master and the reference. Every
evaluated point is scored and the best one is kept (step 0 = the encoder's proposal, so the
refinement never makes the match worse on the excerpt it optimizes).

To keep a step cheap the optimization runs on an excerpt (the loudest ``excerpt_s`` seconds,
by 10 ms frame RMS); the features compared are level- and length-independent, so an excerpt
measures the same quantities as the whole song. The master is then rendered once, whole,
with the best macros.

:func:`master_guided` is the entry point the renderer uses (``MasterOptions.reference``,
``match_steps``, ``sections``): encode the conditioning, steer it toward the reference, refine
it, then render with or without per-section conditioning (:mod:`mastering.sections`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mastering.chain import Chain, ChainOutput
from mastering.conditioning import MACROS, Conditioning, ConditioningBatch
from mastering.errors import InvalidParameterError
from mastering.features import frame_rms_db
from mastering.reference import (
    ANALYSIS_LUFS,
    DistanceWeights,
    ReferenceFeatures,
    condition_on_reference,
    distance_terms,
    feature_distance,
    load_reference,
    measure_features,
    with_macros,
)
from mastering.sections import SectionPolicy, detect_sections, master_with_sections
from mastering.stages.base import FRAME_HOP

#: Default excerpt length of the optimization, s.
EXCERPT_S = 8.0
#: Default Adam step size on the macros (macro units, nominal range -1..1).
LEARNING_RATE = 0.15
#: Largest accepted ``steps``.
MAX_STEPS = 200


@dataclass
class MatchResult:
    """Outcome of :func:`match_reference`.

    Attributes:
        cond: the conditioning with the best macros (for the whole song).
        best_step: index of the kept point (0 = the encoder's proposal).
        distances: feature distance (:func:`mastering.reference.feature_distance`) at every
            evaluated point, ``steps + 1`` values (summed over the batch's songs).
        terms: the distance terms of the kept point (dB; see ``distance_terms``).
        excerpt_s: (start, end) of the excerpt optimized, s.
    """

    cond: ConditioningBatch
    best_step: int
    distances: list[float]
    terms: dict[str, float] = field(default_factory=dict)
    excerpt_s: tuple[float, float] = (0.0, 0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": len(self.distances) - 1,
            "best_step": self.best_step,
            "distances": [round(d, 4) for d in self.distances],
            "terms": {k: round(v, 4) for k, v in self.terms.items()},
            "excerpt_s": [round(t, 3) for t in self.excerpt_s],
        }


def loudest_excerpt(x: Tensor, seconds: float | None) -> tuple[Tensor, int]:
    """The loudest ``seconds`` of ``x [batch, 2, n]`` (by the batch's mean 10 ms frame power
    summed over the window) and its start sample; ``x`` itself when shorter or ``None``."""
    n = x.shape[-1]
    if seconds is None or n <= seconds * 48_000:
        return x, 0
    win = max(1, round(seconds * 48_000 / FRAME_HOP))
    p = torch.pow(10.0, frame_rms_db(x.detach()) / 10.0).mean(0)  # [F]
    sums = torch.nn.functional.avg_pool1d(p.view(1, 1, -1), win, 1).view(-1)
    start = int(sums.argmax()) * FRAME_HOP
    length = round(seconds * 48_000)
    start = min(start, n - length)
    return x[..., start : start + length], start


def master_features(chain: Chain, x: Tensor, cond: ConditioningBatch, overrides) -> dict:
    """Features (:func:`mastering.reference.measure_features`) of the master of ``x`` with
    ``cond``, measured at :data:`mastering.reference.ANALYSIS_LUFS`-equivalent level (the
    features are level-independent; the chain's master out already sits at its target)."""
    state = chain.begin(x, cond, overrides)
    state = chain.run_stages(state, chain.config.order)
    y = chain.finish(state).audio
    return measure_features(y)


def match_reference(
    chain: Chain,
    x: Tensor,
    cond: ConditioningBatch,
    reference: ReferenceFeatures,
    steps: int,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    excerpt_s: float | None = EXCERPT_S,
    lr: float = LEARNING_RATE,
    weights: DistanceWeights | None = None,
) -> MatchResult:
    """Refine ``cond``'s macros for ``x [batch, 2, n]`` (48 kHz) toward ``reference``.

    Args:
        chain: the chain (its weights are not changed; gradients flow only to the macros).
        cond: the encoded conditioning to start from (e.g. the reference encoder's output).
        steps: Adam steps (0: only score the starting point). At most :data:`MAX_STEPS`.
        excerpt_s: optimize on the loudest this-many seconds (``None``: the whole song).
        lr: Adam step size, macro units.
    """
    if not 0 <= int(steps) <= MAX_STEPS:
        raise InvalidParameterError(f"match steps must be within 0..{MAX_STEPS}, got {steps}")
    clip, start = loudest_excerpt(x, excerpt_s)
    clip = clip.detach()
    ref = reference.batch(x.shape[0], x.device)
    base = cond
    macros = cond.macros.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([macros], lr=lr)
    frozen = [p for p in chain.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    distances: list[float] = []
    best = (float("inf"), 0, macros.detach().clone(), {})
    try:
        for step in range(int(steps) + 1):
            last = step == int(steps)
            with torch.set_grad_enabled(not last):
                feats = master_features(chain, clip, with_macros(base, macros), overrides)
                d = feature_distance(feats, ref, weights)
            total = float(d.detach().sum())
            distances.append(total)
            if total < best[0]:
                terms = {k: float(v.detach().mean()) for k, v in distance_terms(feats, ref).items()}
                best = (total, step, macros.detach().clone(), terms)
            if last:
                break
            opt.zero_grad()
            d.sum().backward()
            opt.step()
            with torch.no_grad():
                macros.clamp_(-1.5, 1.5)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return MatchResult(
        cond=with_macros(base, best[2]),
        best_step=best[1],
        distances=distances,
        terms=best[3],
        excerpt_s=(start / 48_000, (start + clip.shape[-1]) / 48_000),
    )


@functools.lru_cache(maxsize=8)
def _cached_reference(path: str, mtime_ns: int, size: int) -> ReferenceFeatures:
    return load_reference(path)


def cached_reference(path: str | Path) -> ReferenceFeatures:
    """:func:`mastering.reference.load_reference`, memoized on (path, mtime, size), so a batch
    of songs matched to one reference reads it once."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return load_reference(p)  # raises the reader's error naming the file
    return _cached_reference(str(p.resolve()), st.st_mtime_ns, st.st_size)


def master_guided(
    chain: Chain,
    x: Tensor,
    conditioning: Conditioning,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    reference: str | Path | ReferenceFeatures | None = None,
    match_steps: int = 0,
    sections: bool = False,
    policy: SectionPolicy | None = None,
) -> ChainOutput:
    """Master one song ``x [1, 2, n]`` (48 kHz) guided by a reference and/or its sections.

    1. encode ``conditioning`` (estimating what it leaves open);
    2. with ``reference`` (a path or features): steer the macros with
       :func:`mastering.reference.condition_on_reference`, then, when ``match_steps`` > 0,
       refine them with that many steps of :func:`match_reference`;
    3. render with :func:`mastering.sections.master_with_sections` when ``sections`` (one
       setting per detected energy level, crossfaded), else with the chain as is.

    ``info["reference"]`` (features, macros, match history) and ``info["sections"]`` (the
    analysis) describe what was done."""
    if x.shape[0] != 1:
        raise InvalidParameterError("guided mastering takes one song at a time")
    with torch.no_grad():
        cond = chain.condition(x, [conditioning])
    ref_info: dict[str, Any] | None = None
    if reference is not None:
        ref = reference if isinstance(reference, ReferenceFeatures) else cached_reference(reference)
        start = cond.macros.clone()
        cond = condition_on_reference(cond, x, ref)
        ref_info = {"features": ref.to_json(), "macros_before": _macro_dict(start)}
        if match_steps:
            match = match_reference(chain, x, cond, ref, match_steps, overrides=overrides)
            cond = match.cond
            ref_info["match"] = match.to_json()
        ref_info["macros"] = _macro_dict(cond.macros)
    with torch.no_grad():
        if sections:
            analysis = detect_sections(x[0], policy, tempo_bpm=float(cond.tempo_bpm[0]))
            out = master_with_sections(chain, x, cond, analysis, policy, overrides)
        else:
            out = chain(x, cond, overrides=overrides)
    if ref_info is not None:
        out.info["reference"] = [ref_info]
    return out


def _macro_dict(macros: Tensor) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in zip(MACROS, macros[0].detach().cpu(), strict=True)}


__all__ = [
    "ANALYSIS_LUFS",
    "MatchResult",
    "cached_reference",
    "loudest_excerpt",
    "master_guided",
    "match_reference",
]
