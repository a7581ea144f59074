"""Mastering one song with auto-retry across the stage groups.

The retry loop is :func:`mastering.retry.master_with_retry`, unchanged: it calls a chain,
scores the master, proposes overrides and calls the chain again while the score is below the
policy's threshold. Here the chain it calls is a :class:`PipelineChain`: calling it sends one
attempt (a :class:`~serving.batch.SongJob` with that attempt's overrides) through the stage
groups, wherever they run (one fused replica, or one deployment per group), and turns the
finished job back into the :class:`~mastering.chain.ChainOutput` the loop expects. So:

* retry works the same for every placement: each attempt goes through the groups like a
  first attempt, and attempts of concurrent requests batch together at every group;
* the last group scores each master on its device (:mod:`serving.runner`), and the evaluator
  handed to the loop (:class:`ReplicaScores`) returns that score instead of scoring the master
  again on the caller's CPU (it scores here only a tensor it does not recognise);
* the input is measured once (first attempt); the loop keeps the best attempt, never one that
  scores below the first.

Songs shorter than the evaluator takes (:data:`MIN_SCORE_SAMPLES`) are mastered once,
unscored. The same code serves the in-process path (:mod:`serving.direct`), whose ``send``
runs the groups in the calling process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from mastering import SAMPLE_RATE
from mastering.chain import Chain, ChainOutput
from mastering.conditioning import Conditioning
from mastering.errors import InvalidParameterError
from mastering.evaluation import Evaluation, Evaluator
from mastering.render import MasterOptions
from mastering.retry import Attempt, ChainStandIn, RetryPolicy, master_with_retry
from serving.batch import SongJob

#: Shortest master the evaluator scores (:func:`mastering.evaluation.measure` needs 0.5 s).
MIN_SCORE_SAMPLES = SAMPLE_RATE // 2

#: Sends a job through every stage group and returns the finished job.
Send = Callable[[SongJob], SongJob]


class PipelineChain(ChainStandIn):
    """What :func:`mastering.retry.master_with_retry` calls as its chain (see the module
    docstring).

    Args:
        chain: a local copy of the chain the groups run (same adapter/variant): its stages
            give the parameter specs and its config the report; no audio runs through it.
        send: sends a job through the stage groups.
        song: the request's job (adapter, target, ceiling, mono); each call is an attempt.
        score: whether the last group scores each master.
    """

    def __init__(self, chain: Chain, send: Send, song: SongJob, score: bool = True):
        self.chain = chain
        self.send = send
        self.song = song
        self.score = score
        self.done: list[tuple[ChainOutput, SongJob]] = []

    def __call__(
        self,
        x: Tensor,
        conditioning: Conditioning,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> ChainOutput:
        """Master ``x [1, 2, samples]`` (one song) through the stage groups."""
        if x.shape[0] != 1:
            raise InvalidParameterError(f"the stage groups take one song per call, got {x.shape}")
        job = self.song.attempt(
            x[0],
            conditioning,
            {k: dict(v) for k, v in (overrides or {}).items()},
            measure_input=not self.done,
            score=self.score,
        )
        finished = self.send(job)
        out = finished.output(self.chain.config)
        self.done.append((out, finished))
        return out

    def job_of(self, out: ChainOutput) -> SongJob:
        """The finished job that produced ``out``."""
        return next(job for o, job in self.done if o is out)

    @property
    def before(self) -> dict[str, Any]:
        """Measurements of the input (taken on the first attempt)."""
        return self.done[0][1].before if self.done else {}


class ReplicaScores:
    """The evaluator :func:`mastering.retry.master_with_retry` calls: the score the last
    stage group computed for the master of the latest attempt (same tensor, same genre,
    target and ceiling), else a score computed here with :class:`Evaluator`."""

    def __init__(self, pipeline: PipelineChain):
        self.pipeline = pipeline
        self._local: Evaluator | None = None
        self.rescored = 0

    def __call__(
        self,
        x: Tensor,
        genres=None,
        *,
        target_lufs: float | None = None,
        ceiling_dbtp: float | None = None,
    ) -> Evaluation:
        if self.pipeline.done:
            out, job = self.pipeline.done[-1]
            same = (
                job.evaluation is not None
                and x.shape == out.audio.shape
                and x.untyped_storage().data_ptr() == out.audio.untyped_storage().data_ptr()
                and list(genres or []) == [job.conditioning.resolved_genre()]
                and target_lufs == job.target_lufs
                and ceiling_dbtp == job.ceiling_dbtp
            )
            if same:
                return job.evaluation
            if job.encoded is not None:
                # The master stayed on the device (encoded there): nothing here to score.
                raise RuntimeError("cannot score a master encoded on the stage group's device")
        self.rescored += 1
        if self._local is None:
            self._local = Evaluator()
        return self._local(x, genres, target_lufs=target_lufs, ceiling_dbtp=ceiling_dbtp)


@dataclass
class SongResult:
    """One mastered song.

    Attributes:
        job: the kept attempt's finished job (``job.audio``: the master ``[2, samples]``).
        output: the kept attempt as a :class:`ChainOutput`.
        attempts: every attempt (:class:`mastering.retry.Attempt`); empty when unscored.
        parameters: the kept attempt's parameters (``ChainOutput.parameters_json``).
        before: measurements of the input.
        seconds: wall-clock seconds of all attempts.
        device_seconds: seconds the stage groups spent on the batches holding the attempts
            (the rest of ``seconds`` is transport, queueing and the retry loop).
        rescored: masters scored again by the caller instead of by the last group (0 unless
            the retry loop scored a tensor it did not get from the groups).
    """

    job: SongJob
    output: ChainOutput
    attempts: list[Attempt]
    parameters: dict[str, Any]
    before: dict[str, Any]
    seconds: float
    device_seconds: float
    rescored: int = 0

    @property
    def kept(self) -> Attempt | None:
        return next((a for a in self.attempts if a.best), None)

    def evaluation(self) -> dict[str, Any] | None:
        """``{"score", "attempt", "of"}`` of the kept attempt (``None`` when unscored)."""
        kept = self.kept
        if kept is None:
            return None
        return {"score": kept.score, "attempt": kept.number, "of": len(self.attempts)}

    def attempt_summaries(self, full: bool) -> list[dict[str, Any]]:
        """Every attempt: number, score, sub-scores, kept flag; ``full`` adds the rule and
        learned scores, the overrides, the measurements and the timings (s)."""
        keys = ("number", "score", "sub_scores", "best")
        if full:
            keys += ("rule", "learned", "overrides", "measurements", "timings_s")
        return [{k: getattr(a, k) for k in keys} for a in self.attempts]


def master_song(
    chain: Chain, send: Send, song: SongJob, audio: Tensor, policy: RetryPolicy | None
) -> SongResult:
    """Master ``audio [2, samples]`` (48 kHz, CPU) for ``song``'s settings through ``send``:
    scored and retried with ``policy`` (``max_attempts=1``: scored, no retry), or once and
    unscored when ``policy`` is ``None`` or the song is too short to score."""
    t0 = time.perf_counter()
    scored = policy is not None and audio.shape[-1] >= MIN_SCORE_SAMPLES
    pipeline = PipelineChain(chain, send, song, score=scored)
    scores = ReplicaScores(pipeline)
    if scored:
        options = MasterOptions(
            conditioning=song.conditioning,
            target_lufs=song.target_lufs,
            ceiling_dbtp=song.ceiling_dbtp,
            device="cpu",
        )
        _, out, attempts = master_with_retry(pipeline, audio, options, policy, scores)
    else:
        out, attempts = pipeline(audio.unsqueeze(0), song.conditioning), []
    kept = next((a for a in attempts if a.best), None)
    return SongResult(
        job=pipeline.job_of(out),
        output=out,
        attempts=attempts,
        parameters=kept.parameters if kept else out.parameters_json(0, chain.stages),
        before=pipeline.before,
        seconds=time.perf_counter() - t0,
        device_seconds=sum(sum(job.group_seconds) for _, job in pipeline.done),
        rescored=scores.rescored,
    )
