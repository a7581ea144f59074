"""The Serve application: a FastAPI ingress deployment in front of the stage-group
deployments (:mod:`serving.stages`), composed with DeploymentHandles.

Per ``POST /v1/master``: the ingress spools and decodes the upload (:mod:`serving.codec`),
validates the parameters, sends the song through the stage groups (each call's
``DeploymentResponse`` is handed straight to the next group, so the audio goes replica to
replica through the object store, not back through the ingress), then encodes the master. The
first and the last group measure the input and the master for the report where the audio is
(on the GPU when there is one).

Fault handling: if a stage replica dies while holding a song (killed, node lost), the ingress
sends the song through the pipeline again, up to ``pipeline_retries`` times with a growing
pause while Serve replaces the replica; the client sees only the extra latency. When the
retries are used up it answers 503 with ``Retry-After``. Overload is answered by Serve's
back-pressure (429 + ``Retry-After`` at the ingress, ``max_queued_requests``).

Build it with :func:`serving.config.build_app`, or ``serve deploy serving/config.yaml``
(which calls :func:`app_builder`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from mastering.chain import ChainConfig
from mastering.conditioning import EMOTIONS, GENRES, RULE_BREAKS, STYLE_WORDS, Conditioning
from mastering.errors import InvalidParameterError
from mastering.render import FORMATS
from serving.api import MasterParams, build_api
from serving.batch import SongJob
from serving.codec import (
    analysis,
    decode,
    encode,
    file_blocks,
    header_measures,
    media_type,
    source_info,
)
from serving.config import ServingConfig, build_app
from serving.http import Upload
from serving.models import adapter_names, check_adapter, use_adapter_dir
from serving.studio import studio_series

#: Failures of a stage replica (not of the song) after which the song is sent again.
RETRYABLE = (RayActorError, ActorDiedError, ActorUnavailableError, DeploymentUnavailableError)
#: First pause before re-sending, seconds (doubles each time).
RETRY_PAUSE_S = 0.5


class StageUnavailable(Exception):
    """The pipeline kept failing on replica deaths; answered 503 with Retry-After."""


@serve.deployment
@serve.ingress()
class Ingress:
    """The HTTP front (see the module docstring).

    Args:
        config: the app's :class:`~serving.config.ServingConfig` (token left out).
        token: bearer token checked on every endpoint but ``/healthz`` (``None``: none).
        *groups: handles of the stage-group deployments, in chain order.
    """

    def __init__(self, config: ServingConfig, token: str | None, *groups: DeploymentHandle):
        self.config = config
        self.token = token
        self.max_upload_bytes = config.max_upload_bytes
        self.upload_dir = config.upload_dir
        self.groups = list(groups)
        use_adapter_dir(config.adapter_dir)

    def __serve_build_asgi_app__(self):
        from fastapi import Request

        from serving.http import error_response

        app = build_api(self)

        @app.exception_handler(StageUnavailable)
        async def _unavailable(request: Request, exc: StageUnavailable):
            return error_response(
                503,
                "stage_unavailable",
                str(exc),
                headers={"Retry-After": str(int(max(1, self.config.retry_after_s)))},
            )

        return app

    # -- endpoints ---------------------------------------------------------------------------
    def presets(self) -> dict[str, Any]:
        return {
            "genres": list(GENRES),
            "styles": list(STYLE_WORDS),
            "emotions": list(EMOTIONS),
            "rule_breaks": dict(RULE_BREAKS),
            "adapters": adapter_names(),
            "formats": list(FORMATS),
        }

    async def analyze(self, upload: Upload) -> dict[str, Any]:
        audio, info = await asyncio.to_thread(decode, upload.path)
        report = await asyncio.to_thread(analysis, audio, info)
        return {"file": upload.filename, **report}

    async def master(
        self, upload: Upload, params: MasterParams, series: bool = False
    ) -> dict[str, Any]:
        """Master one upload; ``series``: add the studio page's plot data to the full report
        (``None`` there otherwise)."""
        want_series = series
        t0 = time.perf_counter()
        job = self._job(params)  # parameters first: a bad one costs no decode
        job.audio, info = await asyncio.to_thread(decode, upload.path)
        job.mono = info.channels == 1
        t_decode = time.perf_counter()
        done, attempts = await self._pipeline(job)
        t_chain = time.perf_counter()
        series = None
        if want_series:
            series = await asyncio.to_thread(studio_series, job.audio, done.audio, job.mono)
        path = await asyncio.to_thread(encode, done.audio, info, params.format, upload.path.parent)
        before = {**done.before, "source": source_info(info)}
        after = done.after
        t_end = time.perf_counter()
        seconds = {
            "decode": round(t_decode - t0, 4),
            "chain": round(t_chain - t_decode, 4),
            "encode": round(t_end - t_chain, 4),
        }
        used = {
            "adapter": job.adapter,
            "target_lufs": job.target_lufs,
            "ceiling_dbtp": job.ceiling_dbtp,
            "format": params.format,
            "conditioning": done.conditioning_used,
        }
        header = {
            "file": upload.filename,
            "before": header_measures(before),
            "after": header_measures(after),
            **used,
            "batch_sizes": done.batch_sizes,
            "pipeline_attempts": attempts,
            "seconds": seconds,
        }
        report = {
            "file": upload.filename,
            "before": before,
            "after": after,
            **used,
            "parameters": done.parameters,
            "batch_sizes": done.batch_sizes,
            "group_seconds": done.group_seconds,
            "pipeline_attempts": attempts,
            "seconds": seconds,
            "series": series,
        }
        return {
            "path": path,
            "filename": f"{_stem(upload.filename)}.mastered.{FORMATS[params.format]}",
            "media_type": media_type(params.format),
            "header": header,
            "report": report,
            "blocks": file_blocks(path),
        }

    # -- helpers -----------------------------------------------------------------------------
    def _job(self, params: MasterParams) -> SongJob:
        """Validate ``params`` (422 listing valid values on a bad one) into a job."""
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
        return SongJob(
            adapter=check_adapter(params.adapter),
            target_lufs=params.target_lufs,
            ceiling_dbtp=params.ceiling_dbtp,
            conditioning=conditioning,
            audio=None,
        )

    async def _pipeline(self, job: SongJob) -> tuple[SongJob, int]:
        """Send ``job`` through every stage group; re-send it when a replica died. Returns
        the finished job and the number of attempts it took."""
        pause = RETRY_PAUSE_S
        for attempt in range(self.config.pipeline_retries + 1):
            try:
                response: Any = job
                for group in self.groups:
                    response = group.options(multiplexed_model_id=job.adapter).remote(response)
                return await response, attempt + 1
            except BackPressureError:
                raise
            except Exception as exc:
                if not replica_died(exc):
                    raise
                if attempt == self.config.pipeline_retries:
                    raise StageUnavailable(
                        f"a stage replica failed {attempt + 1} times ({type(exc).__name__}); "
                        "the service is restarting it"
                    ) from exc
                await asyncio.sleep(pause)
                pause *= 2
        raise AssertionError("unreachable")


def replica_died(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it: Serve wraps an upstream replica's death in a
    ``RayServeException`` whose cause is the ``ActorDiedError``) is a replica failure rather
    than a failure of the song."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, RETRYABLE):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or getattr(exc, "cause", None) or exc.__context__
    return False


def _stem(filename: str) -> str:
    stem = filename.rsplit(".", 1)[0]
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in stem).lstrip(".") or "song"


def app_builder(args: dict[str, Any] | None = None):
    """Application builder for ``serve run`` / ``serve deploy`` (``import_path`` of
    ``serving/config.yaml``): the args are :class:`ServingConfig` fields."""
    return build_app(ServingConfig.from_args(args))
