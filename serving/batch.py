"""Songs travelling through the Serve stage groups, and how a group batches them.

A request's attempt is one :class:`SongJob`. The first stage group turns its audio into a
:class:`~mastering.chain.ChainState` of batch 1 (``Chain.begin``: DC removal, conditioning
estimated on that song alone, unpadded, the attempt's parameter overrides); every group then

1. groups the jobs of one dynamic batch by :meth:`SongJob.chain_key` (adapter, loudness target,
   ceiling, overrides: songs in one tensor batch must share a chain and its overrides),
2. pads each group's songs with silence to the longest and concatenates them
   (:func:`merge_states`),
3. runs its stages on the batch (``Chain.run_stages``), except the stages of
   :data:`EXACT_LENGTH_STAGES`, which run on sub-batches of songs of equal length
   (:func:`run_group`),
4. keeps each song's parameters of those stages (time-varying ones cut back to the song's own
   frames) and stage reports, and splits the batch back into songs of their own lengths
   (:func:`split_state`).

Why master out runs unpadded: it searches the gain that brings the song's integrated loudness
to the target, and trailing silence lowers the loudness it measures (BS.1770 blocks that
straddle the song's end), which made a 6 s song batched with an 8 s one 0.12 LU louder than
alone (0.5 LU for 1.5 s in 2 s). The other stages' analysis sees the padding too, but their
results move by about 1e-3 (measured in ``tests/test_serving_units.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mastering.chain import Chain, ChainConfig, ChainOutput, ChainState
from mastering.conditioning import Conditioning, ConditioningBatch
from mastering.errors import InvalidParameterError
from mastering.evaluation import Evaluation
from mastering.stages.base import FRAME_HOP, Params
from serving.codec import device_frames

#: Adapter name meaning "the shipped chain, no adapter".
DEFAULT_ADAPTER = "default"
#: Stages run only on songs of equal length (never padded): whole-song loudness matching.
EXACT_LENGTH_STAGES = frozenset({"master_out"})


@dataclass
class SongJob:
    """One attempt at one song on its way through the stage groups (pickled between
    replicas; its tensors travel as NumPy arrays, :mod:`serving.wire`).

    Attributes:
        adapter: style adapter / chain variant name (the multiplexed model id).
        target_lufs: loudness target, LUFS. ceiling_dbtp: true-peak ceiling, dBTP.
        conditioning: what the song is mastered for (read by the first group).
        audio: ``[2, samples]`` float32 at 48 kHz: the input until the first group has run,
            the master (on the CPU) once the last group has run, ``None`` in between.
        overrides: ``{stage: {param: value}}`` in physical units (a retry attempt's).
        mono: the source was mono (its loudness is measured on one channel).
        measure_input: the first group measures the input (``before``); the first attempt
            of a request asks for it, later attempts do not.
        score: the last group scores the master (``evaluation``) with
            :class:`mastering.evaluation.Evaluator`, on its device.
        state: the song part-way through the chain (batch 1, CPU), between groups.
        params: ``{stage: {param: tensor [1, ...]}}`` (CPU) of the stages run so far,
            time-varying ones cut to the song's frames.
        info: ``{stage: report}`` of the stages that report (e.g. master out's status).
        cond: the song's encoded conditioning (CPU), set by the last group.
        before, after: measurements of the input and of the master
            (:func:`serving.codec.measurements`), taken where the audio is (the first and the
            last group's device).
        evaluation: the master's scores (batch 1), set by the last group when ``score``.
        conditioning_used: resolved genre, tempo (BPM), energy and vocal ratio (0..1).
        group_seconds: seconds each group spent on the batch holding this song.
        batch_sizes: size of the tensor batch this song was in, per group.
        encode: the output format the master may be encoded in on the last group's device
            (:data:`serving.codec.DEVICE_FORMATS`; ``None``: not asked).
        encoded: the master's encoded data (uint8, :func:`serving.codec.device_data`) when
            the last group encoded it; ``audio`` then stays ``None``.
    """

    adapter: str
    target_lufs: float
    ceiling_dbtp: float
    conditioning: Conditioning
    audio: Tensor | None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    mono: bool = False
    measure_input: bool = True
    score: bool = True
    state: ChainState | None = None
    params: dict[str, Params] = field(default_factory=dict)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    cond: ConditioningBatch | None = None
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    evaluation: Evaluation | None = None
    conditioning_used: dict[str, Any] = field(default_factory=dict)
    group_seconds: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    encode: str | None = None
    encoded: np.ndarray | None = None

    def chain_key(self) -> tuple[str, float, float, str]:
        """Songs with equal keys can share one tensor batch."""
        overrides = json.dumps(self.overrides, sort_keys=True, default=float)
        return (self.adapter, self.target_lufs, self.ceiling_dbtp, overrides)

    def attempt(
        self,
        audio: Tensor,
        conditioning: Conditioning,
        overrides: dict[str, dict[str, Any]],
        measure_input: bool,
        score: bool,
    ) -> SongJob:
        """A fresh job for one attempt at this job's song (adapter, target, ceiling, mono)."""
        return SongJob(
            adapter=self.adapter,
            target_lufs=self.target_lufs,
            ceiling_dbtp=self.ceiling_dbtp,
            conditioning=conditioning,
            audio=audio,
            overrides={k: dict(v) for k, v in overrides.items()},
            mono=self.mono,
            measure_input=measure_input,
            score=score,
            encode=self.encode,
        )

    def output(self, config: ChainConfig) -> ChainOutput:
        """The finished attempt as a batch-1 :class:`ChainOutput` of a chain configured by
        ``config`` (what ``Chain.forward`` would have returned for this song alone)."""
        if (self.audio is None and self.encoded is None) or self.cond is None:
            raise InvalidParameterError("the song has not been through the last stage group")
        audio = self.audio if self.audio is not None else self.encoded_stand_in()
        return ChainOutput(
            audio=audio.unsqueeze(0),
            params=self.params,
            cond=self.cond,
            info={k: [v] for k, v in self.info.items()},
            config=config,
        )

    def encoded_stand_in(self) -> Tensor:
        """What stands for the master in :meth:`output` when it came back encoded: a
        ``[2, frames]`` NaN view of one value (no memory). The retry loop only passes it back
        to :class:`serving.attempts.ReplicaScores`, which recognises it; anything that read it
        as audio would get NaN, which the encoder refuses, never silence."""
        return torch.full((1, 1), float("nan")).expand(2, device_frames(self.encoded, 2))


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
    of their own lengths, without parameters (take them first: :func:`song_slice`)."""
    out = []
    alone = len(like) == 1  # a batch of one is the song itself: no copy

    def cut(x: Tensor, i: int, n: int) -> Tensor:
        return x[:, :, :n] if alone else x[i : i + 1, :, :n].clone()

    for i, song in enumerate(like):
        n = song.audio.shape[-1]
        out.append(
            ChainState(
                audio=cut(batch.audio, i, n),
                dry=None if batch.dry is None else cut(batch.dry, i, n),
                cond=batch.cond.select([i]),
                overrides=batch.overrides,
                length=song.length,
                done=batch.done,
            )
        )
    return out


def song_slice(
    chain: Chain, batch: ChainState, index: int, samples: int, stages: tuple[str, ...]
) -> tuple[dict[str, Params], dict[str, dict[str, Any]]]:
    """Song ``index`` of ``batch``: its parameters of ``stages`` (``[1, ...]`` tensors;
    time-varying ones cut to the song's own ``ceil(samples / FRAME_HOP)`` frames) and the
    reports of those stages."""
    frames = math.ceil(samples / FRAME_HOP)
    params: dict[str, Params] = {}
    for name in stages:
        stage = chain.stages[name]
        params[name] = {
            k: (
                v[index : index + 1, ..., :frames] if stage.spec(k).frames else v[index : index + 1]
            )
            for k, v in batch.params[name].items()
        }
    info = {k: v[index] for k, v in batch.info.items() if k in stages}
    return params, info


def run_group(
    chain: Chain, songs: list[ChainState], stages: Sequence[str]
) -> tuple[list[ChainState], list[dict[str, Params]], list[dict[str, dict[str, Any]]]]:
    """Run ``stages`` on batch-1 ``songs`` as padded batches (equal-length sub-batches for
    :data:`EXACT_LENGTH_STAGES`). Returns the songs after the stages, at their own lengths,
    each song's parameters of those stages and each song's stage reports
    (:func:`song_slice`)."""
    params: list[dict[str, Params]] = [{} for _ in songs]
    info: list[dict[str, dict[str, Any]]] = [{} for _ in songs]
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
                p, r = song_slice(chain, batch, j, part[j].audio.shape[-1], segment)
                params[i].update(p)
                info[i].update(r)
            for i, state in zip(index, split_state(batch, part), strict=True):
                after[i] = state
        songs = after
    return songs, params, info


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
