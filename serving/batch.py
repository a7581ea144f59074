"""Songs travelling through the Serve stage groups, and how a group batches them.

A request is one :class:`SongJob`. The first stage group turns its audio into a
:class:`~mastering.chain.ChainState` of batch 1 (``Chain.begin``: DC removal, conditioning
estimated on that song alone, unpadded); every group then

1. groups the jobs of one dynamic batch by :meth:`SongJob.chain_key` (adapter, loudness target,
   ceiling: songs in one tensor batch must share a chain),
2. pads each group's songs with silence to the longest and concatenates them
   (:func:`merge_states`),
3. runs its stages on the batch (``Chain.run_stages``), except the stages of
   :data:`EXACT_LENGTH_STAGES`, which run on sub-batches of songs of equal length
   (:func:`run_group`),
4. writes each song's parameters of those stages into its job as JSON (time-varying ones cut
   back to the song's own frames) and splits the batch back into songs of their own lengths
   (:func:`split_state`).

Why master out runs unpadded: it searches the gain that brings the song's integrated loudness
to the target, and trailing silence lowers the loudness it measures (BS.1770 blocks that
straddle the song's end), which made a 6 s song batched with an 8 s one 0.12 LU louder than
alone (0.5 LU for 1.5 s in 2 s). The other stages' analysis sees the padding too, but their
results move by about 1e-3 (measured in ``tests/test_serving_units.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mastering.chain import Chain, ChainOutput, ChainState
from mastering.conditioning import Conditioning, ConditioningBatch
from mastering.errors import InvalidParameterError
from mastering.stages.base import FRAME_HOP

#: Adapter name meaning "the shipped chain, no adapter".
DEFAULT_ADAPTER = "default"
#: Stages run only on songs of equal length (never padded): whole-song loudness matching.
EXACT_LENGTH_STAGES = frozenset({"master_out"})


@dataclass
class SongJob:
    """One song on its way through the stage groups (pickled between replicas).

    Attributes:
        adapter: style adapter / chain variant name (the multiplexed model id).
        target_lufs: loudness target, LUFS. ceiling_dbtp: true-peak ceiling, dBTP.
        conditioning: what the song is mastered for (read by the first group).
        audio: ``[2, samples]`` float32 at 48 kHz: the input until the first group has run,
            the master once the last group has run, ``None`` in between.
        state: the song part-way through the chain (batch 1), between groups.
        parameters: ``{stage: {param: {value|mean/min/max, unit}}}`` of the stages run so far.
        mono: the source was mono (its loudness is measured on one channel).
        before, after: measurements of the input and of the master
            (:func:`serving.codec.measurements`), taken where the audio is (the first and the
            last group's device).
        conditioning_used: resolved genre, tempo (BPM), energy and vocal ratio (0..1).
        group_seconds: seconds each group spent on the batch holding this song.
        batch_sizes: size of the tensor batch this song was in, per group.
    """

    adapter: str
    target_lufs: float
    ceiling_dbtp: float
    conditioning: Conditioning
    audio: Tensor | None
    mono: bool = False
    state: ChainState | None = None
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    conditioning_used: dict[str, Any] = field(default_factory=dict)
    group_seconds: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)

    def chain_key(self) -> tuple[str, float, float]:
        """Songs with equal keys can share one tensor batch."""
        return (self.adapter, self.target_lufs, self.ceiling_dbtp)


def merge_states(states: list[ChainState]) -> ChainState:
    """Concatenate batch-1 states that have run the same stages into one batch, each song's
    audio ``[1, 2, n_i]`` padded with silence to the longest ``n``. The merged ``length`` is
    the longest; per-song lengths stay with the callers (see :func:`split_state`)."""
    done = {s.done for s in states}
    if len(done) != 1:
        raise InvalidParameterError(f"cannot batch songs at different stages: {sorted(done)}")
    if any(s.params or s.info for s in states):
        raise InvalidParameterError("merge_states takes states whose parameters were reported")
    n = max(s.audio.shape[-1] for s in states)

    def pad(x: Tensor) -> Tensor:
        return torch.nn.functional.pad(x, (0, n - x.shape[-1]))

    has_dry = {s.dry is not None for s in states}
    if len(has_dry) != 1:
        raise InvalidParameterError("cannot batch songs with and without a dry path")
    return ChainState(
        audio=torch.cat([pad(s.audio) for s in states]),
        dry=torch.cat([pad(s.dry) for s in states]) if has_dry == {True} else None,
        cond=ConditioningBatch.cat([s.cond for s in states]),
        overrides=states[0].overrides,
        length=max(s.length for s in states),
        done=states[0].done,
    )


def split_state(batch: ChainState, like: list[ChainState]) -> list[ChainState]:
    """The songs of ``batch`` (made by :func:`merge_states` from ``like``) as batch-1 states
    of their own lengths, without parameters (report them first: :func:`song_parameters`)."""
    out = []
    for i, song in enumerate(like):
        n = song.audio.shape[-1]
        out.append(
            ChainState(
                audio=batch.audio[i : i + 1, :, :n].clone(),
                dry=None if batch.dry is None else batch.dry[i : i + 1, :, :n].clone(),
                cond=batch.cond.select([i]),
                overrides=batch.overrides,
                length=song.length,
                done=batch.done,
            )
        )
    return out


def song_parameters(
    chain: Chain, batch: ChainState, index: int, samples: int, stages: tuple[str, ...]
) -> dict[str, Any]:
    """JSON parameters of ``stages`` for song ``index`` of ``batch``; time-varying values are
    cut to the song's own ``ceil(samples / FRAME_HOP)`` frames before they are summarized."""
    frames = math.ceil(samples / FRAME_HOP)
    params = {}
    for name in stages:
        stage = chain.stages[name]
        params[name] = {
            k: (
                v[index : index + 1, ..., :frames] if stage.spec(k).frames else v[index : index + 1]
            )
            for k, v in batch.params[name].items()
        }
    info = {k: [v[index]] for k, v in batch.info.items() if k in stages}
    out = ChainOutput(
        audio=batch.audio[index : index + 1],
        params=params,
        cond=batch.cond.select([index]),
        info=info,
        config=chain.config,
    )
    return out.parameters_json(0, chain.stages)


def run_group(
    chain: Chain, songs: list[ChainState], stages: Sequence[str]
) -> tuple[list[ChainState], list[dict[str, Any]]]:
    """Run ``stages`` on batch-1 ``songs`` as padded batches (equal-length sub-batches for
    :data:`EXACT_LENGTH_STAGES`). Returns the songs after the stages, at their own lengths,
    and each song's JSON parameters of those stages."""
    params: list[dict[str, Any]] = [{} for _ in songs]
    for segment, exact in _segments(stages):
        if exact:
            by_length: dict[int, list[int]] = {}
            for i, song in enumerate(songs):
                by_length.setdefault(song.audio.shape[-1], []).append(i)
            buckets = list(by_length.values())
        else:
            buckets = [list(range(len(songs)))]
        after: list[ChainState] = list(songs)
        for index in buckets:
            part = [songs[i] for i in index]
            batch = chain.run_stages(merge_states(part), segment)
            for j, i in enumerate(index):
                params[i].update(song_parameters(chain, batch, j, part[j].audio.shape[-1], segment))
            for i, state in zip(index, split_state(batch, part), strict=True):
                after[i] = state
        songs = after
    return songs, params


def _segments(stages: Sequence[str]) -> list[tuple[tuple[str, ...], bool]]:
    """``stages`` cut into runs of consecutive stages that may be padded or must not be."""
    out: list[tuple[tuple[str, ...], bool]] = []
    for name in stages:
        exact = name in EXACT_LENGTH_STAGES
        if out and out[-1][1] == exact:
            out[-1] = ((*out[-1][0], name), exact)
        else:
            out.append(((name,), exact))
    return out


def conditioning_used(job: SongJob, cond: ConditioningBatch) -> dict[str, Any]:
    """What the song was mastered for, estimates filled in (BPM, 0..1 ratios)."""
    c = job.conditioning
    return {
        "genre": c.resolved_genre(),
        "style": c.style,
        "emotion": c.emotion,
        "rule_breaks": list(c.rule_breaks),
        "tempo_bpm": round(float(cond.tempo_bpm[0]), 2),
        "energy": round(float(cond.energy[0]), 3),
        "vocal_ratio": round(float(cond.vocal_ratio[0]), 3),
    }
