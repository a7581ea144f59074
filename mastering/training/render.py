"""Differentiable mastering of a training batch with per-song loudness targets.

:class:`mastering.chain.Chain` normalizes a whole batch to one ``target_lufs``; reference
masters come at per-song (per-genre) loudness. :func:`master_batch` runs the learned stages
on the batch as the chain does, then ``master_out`` song by song at each song's target, so the
output is level-matched to its reference the way inference would master it. Gradients flow
to the audio, the conditioning embedding and every controller weight (``master_out``'s gain
is a straight-through constant, as in the chain).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mastering.chain import Chain, run_aligned
from mastering.conditioning import Conditioning, ConditioningBatch
from mastering.features import estimate_energy, estimate_tempo, estimate_vocal_ratio
from mastering.stages.base import StageContext


@torch.no_grad()
def resolve_conditioning(x: Tensor, items: Sequence[Conditioning]) -> list[Conditioning]:
    """Fill the tempo, energy and vocal ratio each item leaves open with the chain's
    estimators on ``x [batch, 2, samples]`` (done once per crop, not per step)."""
    out = []
    for i, c in enumerate(items):
        xi = x[i : i + 1].float()
        out.append(
            Conditioning(
                genre=c.genre,
                tempo_bpm=c.tempo_bpm
                if c.tempo_bpm is not None
                else float(estimate_tempo(xi).clamp(20.0, 400.0)[0]),
                energy=c.energy if c.energy is not None else float(estimate_energy(xi)[0]),
                vocal_ratio=c.vocal_ratio
                if c.vocal_ratio is not None
                else float(estimate_vocal_ratio(xi)[0]),
                style=c.style,
                emotion=c.emotion,
                rule_breaks=c.rule_breaks,
                macros=dict(c.macros),
            )
        )
    return out


def master_batch(
    chain: Chain,
    x: Tensor,
    conditioning: Sequence[Conditioning] | ConditioningBatch,
    target_lufs: Tensor | Sequence[float] | None = None,
) -> Tensor:
    """Master ``x [batch, 2, samples]``; song ``i`` is normalized to ``target_lufs[i]``
    (default: the chain's configured target). Returns ``[batch, 2, samples]``."""
    order = chain.config.order
    state = chain.begin(x, conditioning if isinstance(conditioning, ConditioningBatch) else
                        list(conditioning))  # fmt: skip
    if not order or order[-1] != "master_out" or target_lufs is None:
        return chain.finish(chain.run_stages(state, order)).audio
    state = chain.run_stages(state, order[:-1])
    stage = chain.stages["master_out"]
    y = state.audio
    if state.dry is not None:
        y = chain._blend(state.dry, y, chain.config.mix)
    targets = torch.as_tensor(target_lufs, dtype=torch.float64).reshape(-1).tolist()
    outs = []
    try:
        for i, t in enumerate(targets):
            stage.configure(target_lufs=float(t))
            yi = y[i : i + 1]
            p = stage.predict(yi, StageContext(cond=state.cond.select([i])))
            outs.append(run_aligned(stage, yi, p))
    finally:
        stage.configure(target_lufs=chain.config.target_lufs)
    return torch.cat(outs)[..., : state.length]
