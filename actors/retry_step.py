"""Auto-retry on a render farm's last stage worker (:mod:`mastering.retry`).

The last worker of a pipeline holds the whole chain (every :class:`~actors.stage_actor.StageWorker`
loads ``Chain.pretrained`` in full) and has just finished, measured and scored a batch. For
each song whose score is below the policy's threshold, :func:`retry_weak_songs` re-reads the
song from its path (paths travel through a pipeline, not samples: in pipeline mode the last
worker never saw the input) and goes on from the batch's master as attempt 1
(``master_with_retry(..., first=...)``), so attempt 1 is not mastered again. The best attempt
replaces the song's master, measurements and scores in the batch, so it is what gets written;
it never scores below attempt 1. A song whose file can no longer be read keeps attempt 1.

Every song gets its attempts as small dicts (:meth:`mastering.retry.Attempt.brief`: number,
score, sub-scores, overrides, ...; ``best`` marks the kept one); a song at or above the
threshold has one, built from its batch scores.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from mastering.chain import Chain, ChainOutput
from mastering.errors import LacquerError
from mastering.evaluation import SUB_SCORES, Evaluator
from mastering.io import read_audio
from mastering.render import MasterOptions, summary
from mastering.retry import RetryPolicy, master_with_retry, select_output

#: Prefix of the sub-scores in a worker's score dicts (``score_dynamics``...).
SUB_PREFIX = "score_"


def first_attempt(scores: dict[str, float]) -> dict[str, Any]:
    """The record of a song's only attempt, from its batch scores
    (``{"score": s, "score_<sub>": s...}``, 0-100)."""
    return {
        "number": 1,
        "overrides": {},
        "score": scores.get("score"),
        "sub_scores": {
            k[len(SUB_PREFIX) :]: v for k, v in scores.items() if k.startswith(SUB_PREFIX)
        },
        "best": True,
    }


def retry_weak_songs(
    chain: Chain,
    evaluator: Evaluator,
    policy: RetryPolicy,
    options: MasterOptions,
    songs: Sequence[Any],
    lengths: Sequence[int],
    out: ChainOutput,
    afters: list[dict[str, Any]],
    scores: list[dict[str, float]],
    timings_s: dict[str, float] | None = None,
) -> list[list[dict[str, Any]]]:
    """Retry the batch's songs that score below ``policy.threshold``; per song its attempts.

    Args:
        chain: the worker's chain (with the batch's adapter attached, if any), on its device.
        evaluator: the worker's evaluation model (the job's loudness target and ceiling).
        songs: the batch's :class:`~actors.stage_actor.SongSpec` s (``input_path`` and
            ``conditioning`` are read).
        lengths: each song's length, samples at 48 kHz.
        out: the finished batch, ``out.audio [batch, 2, samples]`` (padded to the longest);
            a kept later attempt is written into it in place.
        afters, scores: per song the master's measurements and scores; replaced in place
            for songs whose later attempt is kept.
        timings_s: the batch's step timings; the seconds spent here are added as ``retry``.
    """
    t0 = time.perf_counter()
    device = out.audio.device
    records: list[list[dict[str, Any]]] = []
    for i, spec in enumerate(songs):
        first = first_attempt(scores[i])
        if policy.max_attempts < 2 or first["score"] is None or first["score"] >= policy.threshold:
            records.append([first])
            continue
        n = int(lengths[i])
        # The farm's first attempt ran the plain chain (no reference, no sections): so do these.
        opts = replace(
            options,
            conditioning=spec.conditioning,
            device=str(device),
            reference=None,
            match_steps=0,
            sections=False,
        )
        try:
            audio, _ = read_audio(spec.input_path)
            master = out.audio[i, :, :n]
            ev = evaluator(
                master.unsqueeze(0),
                [spec.conditioning.resolved_genre()],
                target_lufs=options.target_lufs,
                ceiling_dbtp=options.ceiling_dbtp,
            )
            best, _, attempts = master_with_retry(
                chain,
                audio,
                opts,
                policy,
                evaluator,
                first=(master, select_output(out, i, n), ev),
            )
        except LacquerError as exc:
            records.append([{**first, "retry_error": str(exc)}])
            continue
        kept = next(a for a in attempts if a.best)
        if kept.number != 1:
            with torch.no_grad():
                out.audio[i, :, :n] = best.to(device)
            afters[i] = summary(best.unsqueeze(0))[0]
            scores[i] = {
                "score": kept.score,
                **{f"{SUB_PREFIX}{k}": kept.sub_scores[k] for k in SUB_SCORES},
            }
        records.append([a.brief() for a in attempts])
    if timings_s is not None:
        timings_s["retry"] = timings_s.get("retry", 0.0) + time.perf_counter() - t0
    return records
