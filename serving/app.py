"""The Serve application: a FastAPI ingress deployment in front of the stage-group
deployments (:mod:`serving.stages`), composed with DeploymentHandles.

Placement (:attr:`serving.config.ServingConfig.placement`): ``fused`` (the default) deploys
one stage group holding the whole chain (one replica per GPU), so a song makes one hop,
ingress -> chain replica -> ingress; ``split`` deploys one group per GPU, the stage-per-GPU
composition of the farm (each call's ``DeploymentResponse`` is handed straight to the next
group, so the audio goes replica to replica through the object store, not back through the
ingress).

Per ``POST /v1/master`` (:func:`serving.request.master_upload`, in a worker thread): the
ingress spools and decodes the upload, validates the parameters, masters the song with
auto-retry (:mod:`serving.attempts`: every attempt goes through the stage groups with its
overrides; the last group measures and scores the master on its device), then encodes the
master in memory. Tensors travel between replicas as NumPy arrays (:mod:`serving.wire`).

Fault handling: if a stage replica dies while holding a song (killed, node lost), the ingress
sends the attempt through the pipeline again, up to ``pipeline_retries`` times with a growing
pause while Serve replaces the replica; the client sees only the extra latency. When the
re-sends are used up it answers 503 with ``Retry-After``. Overload is answered by Serve's
back-pressure (429 + ``Retry-After`` at the ingress, ``max_queued_requests``).

Build it with :func:`serving.config.build_app`, or ``serve deploy serving/config.yaml``
(which calls :func:`app_builder`).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from cluster.manifest import file_sha256
from mastering.conditioning import EMOTIONS, GENRES, RULE_BREAKS, STYLE_WORDS
from mastering.render import FORMATS
from serving import wire
from serving.api import MasterParams, build_api
from serving.batch import SongJob
from serving.codec import analysis, decode
from serving.config import ServingConfig, build_app
from serving.http import Upload
from serving.metrics import metrics
from serving.models import adapter_names, spec_chain, use_adapter_dir
from serving.request import Mastered, master_upload, request_policy, song_job

#: Failures of a stage replica (not of the song) after which the song is sent again.
RETRYABLE = (RayActorError, ActorDiedError, ActorUnavailableError, DeploymentUnavailableError)
#: First pause before re-sending, seconds (doubles each time).
RETRY_PAUSE_S = 0.5


logger = logging.getLogger("ray.serve")


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
        wire.install()
        self.config = config
        self.token = token
        self.max_upload_bytes = config.max_upload_bytes
        self.upload_dir = config.upload_dir
        self.groups = list(groups)
        self.policy = config.retry_policy()
        # One worker thread per request this replica takes at once (the default pool has
        # cpus + 4): a request's thread waits while its song is in the stage groups.
        self.pool = ThreadPoolExecutor(max(1, config.max_ongoing_requests), "lacquer-request")
        use_adapter_dir(config.adapter_dir)
        self.record = feedback_recorder(config)

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
            "max_attempts": {
                "default": self.policy.max_attempts,
                "limit": self.config.max_attempts_limit,
            },
        }

    async def analyze(self, upload: Upload) -> dict[str, Any]:
        audio, info = await asyncio.to_thread(decode, upload.path)
        report = await asyncio.to_thread(analysis, audio, info)
        return {"file": upload.filename, **report}

    async def master(self, upload: Upload, params: MasterParams, series: bool = False) -> Mastered:
        """Master one upload; ``series``: add the studio page's plot data to the full report
        (``None`` there otherwise)."""
        song_job(params, self.config.genre_folder())  # parameters first: no decode if bad
        policy = request_policy(params, self.policy, self.config.max_attempts_limit)
        loop = asyncio.get_running_loop()
        resent = [0]

        def send(job: SongJob) -> SongJob:
            """From the request's worker thread: one attempt through the stage groups, on
            this replica's event loop."""
            done, sends = asyncio.run_coroutine_threadsafe(self._pipeline(job), loop).result()
            resent[0] += sends - 1
            return done

        work = functools.partial(
            master_upload,
            upload.path,
            upload.filename,
            params,
            policy,
            spec_chain,
            send,
            series,
            self.config.genre_folder(),
        )
        result = await loop.run_in_executor(self.pool, work)
        result.header["resent"] = result.report["resent"] = resent[0]
        if self.record is not None:
            await loop.run_in_executor(self.pool, self._record, upload.path, result.report)
        return result

    def _record(self, path: Path, report: dict[str, Any]) -> None:
        """Append the master's attempts to the feedback store. A store that cannot be
        written is logged and counted; the client still gets its master."""
        try:
            self.record(report, file_sha256(path))
        except Exception as exc:
            logger.warning(
                "feedback store %s: attempts not recorded: %s", self.config.feedback_dir, exc
            )
            metrics().feedback_failures.inc()

    # -- helpers -----------------------------------------------------------------------------
    async def _pipeline(self, job: SongJob) -> tuple[SongJob, int]:
        """Send ``job`` through every stage group; re-send it when a replica died. Returns
        the finished job and the number of sends it took."""
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


def feedback_recorder(config: ServingConfig) -> Callable[[dict[str, Any], str], None] | None:
    """The ``record(report, input_hash)`` of ``config.feedback_recorder`` for
    ``config.feedback_dir`` (``None`` without a store)."""
    if config.feedback_dir is None:
        return None
    module, _, name = config.feedback_recorder.partition(":")
    return getattr(importlib.import_module(module), name)(config.feedback_dir)


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


def app_builder(args: dict[str, Any] | None = None):
    """Application builder for ``serve run`` / ``serve deploy`` (``import_path`` of
    ``serving/config.yaml``): the args are :class:`ServingConfig` fields."""
    return build_app(ServingConfig.from_args(args))
