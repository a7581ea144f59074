"""One ``POST /v1/master`` apart from its transport: validate the parameters, decode the
spooled upload, master it with auto-retry (:func:`serving.attempts.master_song`), encode the
master in memory and build the reports. The ingress (:mod:`serving.app`) runs
:func:`master_upload` with a ``send`` that goes through the stage-group deployments; the
in-process path (:mod:`serving.direct`) with one that runs the groups in the calling process,
so both do the same work.

Retry (:mod:`mastering.retry`): on by default with the app's policy
(:attr:`serving.config.ServingConfig.retry`); ``retry=false`` makes one scored attempt;
``max_attempts`` (1 .. :attr:`~serving.config.ServingConfig.max_attempts_limit`) replaces the
policy's cap for the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mastering import SAMPLE_RATE
from mastering.chain import Chain, ChainConfig
from mastering.conditioning import Conditioning
from mastering.errors import InvalidParameterError
from mastering.render import FORMATS
from mastering.retry import RetryPolicy
from serving.api import MasterParams
from serving.attempts import Send, SongResult, master_song
from serving.batch import DEFAULT_ADAPTER, SongJob
from serving.codec import (
    DEVICE_FORMATS,
    decode,
    device_bytes,
    encode_bytes,
    header_measures,
    media_type,
    source_info,
)
from serving.models import check_adapter, genre_adapter


def song_job(params: MasterParams, genre_folder: str | None = None) -> SongJob:
    """The request's song settings, validated (422 listing the valid values on a bad one).
    A request that names no adapter gets ``genre_folder``'s adapter for its genre
    (:func:`serving.models.genre_adapter`), else the shipped chain."""
    if params.format not in FORMATS:
        raise InvalidParameterError(
            f"unknown format {params.format!r}; valid: {', '.join(FORMATS)}"
        )
    conditioning = Conditioning(
        genre=params.genre,
        tempo_bpm=params.tempo,
        style=params.style,
        emotion=params.emotion,
        rule_breaks=params.rule_break_names(),
    ).validate()
    ChainConfig(target_lufs=params.target_lufs, ceiling_dbtp=params.ceiling_dbtp).validate()
    adapter = params.adapter
    if adapter is None:
        adapter = genre_adapter(genre_folder, conditioning.resolved_genre()) or DEFAULT_ADAPTER
    return SongJob(
        adapter=check_adapter(adapter),
        target_lufs=params.target_lufs,
        ceiling_dbtp=params.ceiling_dbtp,
        conditioning=conditioning,
        audio=None,
    )


def request_policy(params: MasterParams, policy: RetryPolicy, limit: int) -> RetryPolicy:
    """The retry policy of one request: the app's ``policy``, one attempt with
    ``retry=false``, ``max_attempts`` attempts when given (1..``limit``, else 422)."""
    if params.max_attempts is not None and not 1 <= params.max_attempts <= limit:
        raise InvalidParameterError(
            f"max_attempts {params.max_attempts} is outside 1..{limit} (this server's limit)"
        )
    if not params.retry:
        return replace(policy, max_attempts=1)
    if params.max_attempts is not None:
        return replace(policy, max_attempts=params.max_attempts)
    return policy


@dataclass
class Mastered:
    """The answer to one request: the encoded master and its reports."""

    data: bytes
    filename: str
    media_type: str
    header: dict[str, Any]
    report: dict[str, Any]


def master_upload(
    path: Path,
    filename: str,
    params: MasterParams,
    policy: RetryPolicy,
    chain_for: Callable[[str], Chain],
    send: Send,
    series: bool = False,
    genre_folder: str | None = None,
) -> Mastered:
    """Master the upload spooled at ``path`` (blocking; run it in a worker thread).

    Args:
        filename: the client's name for the upload (reports, the answer's file name).
        params: the request's parameters (validated here, :func:`song_job`).
        policy: the request's retry policy (:func:`request_policy`).
        chain_for: adapter name -> a local chain of that adapter (specs and config only).
        send: sends an attempt through the stage groups.
        series: add the studio page's plot series to the full report.
        genre_folder: the folder whose genre adapters master requests naming no adapter.
    """
    t0 = time.perf_counter()
    song = song_job(params, genre_folder)
    audio, info = decode(path)
    song.mono = info.channels == 1
    if params.format in DEVICE_FORMATS and info.sample_rate == SAMPLE_RATE and not series:
        song.encode = params.format  # the plot series need the master's samples here
    t_decode = time.perf_counter()
    result = master_song(chain_for(song.adapter), send, song, audio, policy)
    t_chain = time.perf_counter()
    master = result.job.audio
    plots = None
    if series:
        from serving.studio import studio_series

        plots = studio_series(audio, master, song.mono)
    if result.job.encoded is not None:
        data = device_bytes(result.job.encoded, params.format)
    else:
        data = encode_bytes(master, params.format, info.sample_rate, path.parent)
    t_end = time.perf_counter()
    seconds = {
        "decode": round(t_decode - t0, 4),
        "chain": round(t_chain - t_decode, 4),
        "device": round(result.device_seconds, 4),
        "encode": round(t_end - t_chain, 4),
        "total": round(t_end - t0, 4),
    }
    header, report = reports(filename, params, song, result, source_info(info), seconds)
    header["encoded_on_device"] = report["encoded_on_device"] = result.job.encoded is not None
    report["series"] = plots
    if genre_folder is not None and params.adapter is None and song.adapter != DEFAULT_ADAPTER:
        # The genre adapter of the folder (a promoted version is named v0001, v0002...).
        header["adapter_version"] = report["adapter_version"] = Path(genre_folder).name
    return Mastered(
        data=data,
        filename=f"{_stem(filename)}.mastered.{FORMATS[params.format]}",
        media_type=media_type(params.format),
        header=header,
        report=report,
    )


def reports(
    filename: str,
    params: MasterParams,
    song: SongJob,
    result: SongResult,
    source: dict[str, Any],
    seconds: dict[str, float],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The small ``X-Lacquer-Report`` header and the full report of one master."""
    job = result.job
    before = {**result.before, "source": source}
    used = {
        "adapter": song.adapter,
        "target_lufs": song.target_lufs,
        "ceiling_dbtp": song.ceiling_dbtp,
        "format": params.format,
        "conditioning": job.conditioning_used,
    }
    header = {
        "file": filename,
        "before": header_measures(before),
        "after": header_measures(job.after),
        **used,
        "evaluation": result.evaluation(),
        "attempts": result.attempt_summaries(full=False),
        "batch_sizes": job.batch_sizes,
        "seconds": seconds,
    }
    report = {
        "file": filename,
        "before": before,
        "after": job.after,
        **used,
        "evaluation": result.evaluation(),
        "attempts": result.attempt_summaries(full=True),
        "rescored": result.rescored,
        "parameters": result.parameters,
        "batch_sizes": job.batch_sizes,
        "group_seconds": job.group_seconds,
        "seconds": seconds,
    }
    return header, report


def _stem(filename: str) -> str:
    stem = filename.rsplit(".", 1)[0]
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in stem).lstrip(".") or "song"
