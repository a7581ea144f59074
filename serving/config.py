"""One source of truth for the Serve app: :class:`ServingConfig` builds the application
(:func:`build_app`, used by ``lacquer serve`` and the tests) and generates
``serving/config.yaml`` (:func:`serve_config`, for ``serve deploy`` / ``serve run`` on an
existing cluster, whose ``import_path`` calls :func:`serving.app.app_builder` with the same
arguments).

Regenerate the committed file after changing a default::

    python -m serving.config > serving/config.yaml

(then ``python infra/generate.py``: the KubeRay RayService embeds this file).

Placement: ``fused`` (default) runs the whole chain in one deployment (each replica reserves
``gpus_per_group`` GPUs; ``min_replicas``..``max_replicas`` of them, e.g. one per GPU): a song
makes one hop, ingress -> chain replica -> ingress. ``split`` runs one deployment per stage
group (default one per GPU), the farm's stage-per-GPU composition: a song makes one more hop
per extra group, each carrying the whole song. Fused is the default because it measured
faster and has nothing to wait on: with ``benchmarks/serving.py``-style requests of a 30 s
clip on the 2-core CPU machine, transport and queueing took 24.5 ms fused and 36.5 ms split
in two groups (the stage work is the same), the farm measured ~0.4 s per hop of a 3-minute
song through the object store on a GPU node, and every fused replica holds every stage, so
any GPU can take any song (no pipeline stage to starve or to wait for). Split is for a chain
that does not fit one GPU, or to pipeline long songs through several GPUs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from mastering.chain import DEFAULT_ORDER
from mastering.errors import InvalidParameterError
from mastering.retry import RetryPolicy

#: Hosts that count as loopback (no token needed).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Environment variable holding the bearer token.
TOKEN_ENV = "LACQUER_API_TOKEN"
CONFIG_YAML = Path(__file__).with_name("config.yaml")
IMPORT_PATH = "serving.app:app_builder"
#: Where the stage groups run (see the module docstring).
PLACEMENTS = ("fused", "split")
#: Attempts per song by default on the Serve endpoints (the first included): a small cap.
SERVE_MAX_ATTEMPTS = 2


def serve_retry_policy() -> RetryPolicy:
    """The default auto-retry policy of the endpoints: :class:`RetryPolicy`'s defaults with
    at most :data:`SERVE_MAX_ATTEMPTS` attempts."""
    return RetryPolicy(max_attempts=SERVE_MAX_ATTEMPTS)


def plan_groups(stages: tuple[str, ...], groups: int) -> list[tuple[str, ...]]:
    """Consecutive stage groups balanced by cost (the render farm's planner)."""
    from actors.placement import plan_stage_groups

    if groups <= 1:
        return [tuple(stages)]
    return [tuple(g) for g in plan_stage_groups(stages, groups)]


@dataclass
class ServingConfig:
    """How the Serve app is built and bound.

    Attributes:
        host, port: HTTP bind address. Any host but loopback requires a token.
        placement: ``fused`` (one deployment runs the whole chain) or ``split`` (one
            deployment per stage group); see the module docstring.
        gpus: GPUs for the stage groups (0: CPU). groups: with ``split``, the stage groups,
            each a deployment (default: one per GPU, at most one per stage); ``fused`` is one.
        gpus_per_group: ``num_gpus`` of each stage-group replica (default 1 with GPUs, else 0).
        device: torch device of the stage groups (``cpu`` or ``cuda``).
        api_token: bearer token (default: the ``LACQUER_API_TOKEN`` environment variable).
            Never written to the YAML.
        max_upload_mb: largest request body, MB (10^6 bytes).
        max_ongoing_requests, max_queued_requests: the ingress's concurrency and queue per
            replica; beyond the queue the proxy answers 429 with ``Retry-After``.
        retry_after_s: the ``Retry-After`` of overload answers, seconds.
        stage_max_ongoing_requests, stage_max_queued_requests: the same for stage groups
            (``max_ongoing`` must hold a full batch).
        max_batch_size, batch_wait_timeout_s: dynamic batching of the stage groups (songs,
            seconds). A batch waits up to ``batch_wait_timeout_s`` after its first song for
            more; 0 takes the songs already queued, so a lone song runs at once.
        batch_while_busy: a song that reaches a stage group while a batch runs waits for that
            batch's end and joins the next with the other waiting songs (without it, batches
            form as songs arrive, of one or two songs under load); ``None``: on GPUs only,
            where a batch costs little more than one song (measured on an H200: 10.7 against
            4.6 requests/s for 30 s clips from 8 clients), not on CPUs, where batching does
            not pay (1.3 against 2.3 requests/s for 5 s clips).
        encode_on_device: the last stage group encodes masters asked for in
            :data:`serving.codec.DEVICE_FORMATS` (24-bit WAV at the source's 48 kHz) on its
            device and sends back only their WAV data; ``None``: on GPUs only (see
            :class:`serving.runner.GroupRunner`).
        min_replicas, max_replicas: autoscaling range of every deployment.
        target_ongoing_requests: autoscaling target per replica.
        health_check_period_s: how often Serve checks replicas, seconds (a killed replica is
            replaced within about this long).
        pipeline_retries: times the ingress re-sends a song whose stage replica died.
        retry: the auto-retry policy of ``POST /v1/master`` (:class:`RetryPolicy`: threshold,
            perturbations, max_attempts, min_gain, jitter, seed); on by default with
            :data:`SERVE_MAX_ATTEMPTS` attempts. ``lacquer serve`` puts the tuned policy here.
        max_attempts_limit: the most attempts a request may ask for (``max_attempts``).
        upload_dir: folder for spooled uploads (default: the system's temporary folder).
        adapter_dir: folder of user style adapters (``LACQUER_ADAPTER_DIR`` of
            :mod:`mastering.adapters`) for the replicas, searched before the shipped ones;
            ``None``: their environment's.
        genre_adapters: a request that names no adapter is mastered with ``adapter_dir``'s
            ``genre-<genre>`` adapter for its genre when the folder has one
            (:mod:`mastering.adapter_folder`: the rule ``lacquer improve`` scores a version
            with), else with the shipped chain. ``lacquer serve`` sets it with the folder of
            the promoted version.
        feedback_dir: append every attempt of every master to this feedback store (one
            file per request, safe with many replicas); ``None``: not recorded.
            ``lacquer serve --feedback DIR`` sets it.
        feedback_recorder: import path (``module:function``) of
            ``function(feedback_dir) -> record(report, input_hash)``, which the ingress calls
            with each master's full report and the SHA-256 of its upload. Resolved in the
            replica at start-up, so :mod:`serving` never imports the layer that writes the
            tables (:mod:`tuning.serve_feedback` by default).
        app_name, route_prefix: Serve application name and route prefix.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    placement: str = "fused"
    gpus: int = 0
    groups: int | None = None
    gpus_per_group: float | None = None
    device: str = "cpu"
    api_token: str | None = None
    max_upload_mb: float = 200.0
    max_ongoing_requests: int = 32
    max_queued_requests: int = 64
    retry_after_s: float = 2.0
    stage_max_ongoing_requests: int = 16
    stage_max_queued_requests: int = 256
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.0
    batch_while_busy: bool | None = None
    encode_on_device: bool | None = None
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 8.0
    health_check_period_s: float = 2.0
    pipeline_retries: int = 4
    retry: RetryPolicy = field(default_factory=serve_retry_policy)
    max_attempts_limit: int = 4
    upload_dir: str | None = None
    adapter_dir: str | None = None
    genre_adapters: bool = False
    feedback_dir: str | None = None
    feedback_recorder: str = "tuning.serve_feedback:recorder"
    app_name: str = "lacquer"
    route_prefix: str = "/"

    # -- derived ------------------------------------------------------------------------------
    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    def token(self) -> str | None:
        """The bearer token: the config value, else ``$LACQUER_API_TOKEN``, else ``None``."""
        return self.api_token or os.environ.get(TOKEN_ENV) or None

    def stage_groups(self) -> list[tuple[str, ...]]:
        """The stage groups, each one deployment: the whole chain when ``fused``."""
        if self.placement == "fused":
            return [tuple(DEFAULT_ORDER)]
        n = self.groups if self.groups is not None else max(1, min(self.gpus, len(DEFAULT_ORDER)))
        return plan_groups(DEFAULT_ORDER, n)

    def retry_policy(self) -> RetryPolicy:
        """A copy of the auto-retry policy."""
        return replace(self.retry, perturbations=dict(self.retry.perturbations))

    def group_gpus(self) -> float:
        if self.gpus_per_group is not None:
            return self.gpus_per_group
        return 1.0 if self.gpus > 0 else 0.0

    def validate(self) -> ServingConfig:
        """Raise :class:`InvalidParameterError` on an unusable config (e.g. a public bind
        without a token)."""
        if self.host not in LOOPBACK_HOSTS and not self.token():
            raise InvalidParameterError(
                f"binding to {self.host} (not loopback) requires a bearer token: set "
                f"{TOKEN_ENV} or api_token"
            )
        if not 1 <= self.port <= 65535:
            raise InvalidParameterError(f"port {self.port} is outside 1..65535")
        if self.max_upload_mb <= 0:
            raise InvalidParameterError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if self.stage_max_ongoing_requests < self.max_batch_size:
            raise InvalidParameterError(
                "stage_max_ongoing_requests must hold a full batch (>= max_batch_size)"
            )
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise InvalidParameterError("need 1 <= min_replicas <= max_replicas")
        if self.device not in ("cpu", "cuda"):
            raise InvalidParameterError(f"device must be cpu or cuda, got {self.device!r}")
        if self.placement not in PLACEMENTS:
            raise InvalidParameterError(
                f"unknown placement {self.placement!r}; valid: {', '.join(PLACEMENTS)}"
            )
        if self.placement == "fused" and self.groups not in (None, 1):
            raise InvalidParameterError(
                f"groups={self.groups} needs placement split (fused runs one group)"
            )
        self.retry.validate()  # perturbed parameters checked against the stage classes
        if not 1 <= self.retry.max_attempts <= self.max_attempts_limit:
            raise InvalidParameterError(
                f"retry.max_attempts {self.retry.max_attempts} is outside "
                f"1..max_attempts_limit ({self.max_attempts_limit})"
            )
        if self.genre_adapters and self.adapter_dir is None:
            raise InvalidParameterError("genre_adapters needs adapter_dir (the adapter folder)")
        module, colon, name = self.feedback_recorder.partition(":")
        if not (module and colon and name):
            raise InvalidParameterError(
                f"feedback_recorder must be 'module:function', got {self.feedback_recorder!r}"
            )
        self.stage_groups()
        return self

    def genre_folder(self) -> str | None:
        """The folder whose genre adapters master requests that name no adapter, if any."""
        return self.adapter_dir if self.genre_adapters else None

    # -- (de)serialization --------------------------------------------------------------------
    def to_args(self) -> dict[str, Any]:
        """Builder arguments (everything but the token) for ``serve deploy``."""
        return {k: v for k, v in asdict(self).items() if k != "api_token"}

    @classmethod
    def from_args(cls, args: dict[str, Any] | None) -> ServingConfig:
        args = dict(args or {})
        known = {f.name for f in fields(cls)}
        unknown = set(args) - known
        if unknown:
            raise InvalidParameterError(f"unknown serving options: {', '.join(sorted(unknown))}")
        if isinstance(args.get("retry"), dict):
            retry = args["retry"]
            wrong = set(retry) - {f.name for f in fields(RetryPolicy)}
            if wrong:
                raise InvalidParameterError(f"unknown retry options: {', '.join(sorted(wrong))}")
            args["retry"] = RetryPolicy(**retry)
        return cls(**args)

    def autoscaling(self) -> dict[str, Any]:
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": 3.0,
            "downscale_delay_s": 60.0,
        }


def build_app(config: ServingConfig):
    """The Serve application: the ingress bound to one deployment per stage group (``Chain``
    when fused, ``StageGroup0``.. when split), each replica reserving ``gpus_per_group``
    GPUs."""
    from ray.serve.config import BackpressureConfig

    from serving.app import Ingress
    from serving.stages import StageGroup

    config.validate()
    groups = config.stage_groups()
    handles = []
    for i, stages in enumerate(groups):
        deployment = StageGroup.options(
            name="Chain" if config.placement == "fused" else f"StageGroup{i}",
            ray_actor_options={"num_cpus": 1, "num_gpus": config.group_gpus()},
            max_ongoing_requests=config.stage_max_ongoing_requests,
            max_queued_requests=config.stage_max_queued_requests,
            autoscaling_config=config.autoscaling(),
            health_check_period_s=config.health_check_period_s,
            graceful_shutdown_timeout_s=5,
        )
        handles.append(
            deployment.bind(
                stages,
                i == 0,
                i == len(groups) - 1,
                config.device,
                config.max_batch_size,
                config.batch_wait_timeout_s,
                config.adapter_dir,
                config.batch_while_busy,
                config.encode_on_device,
            )
        )
    ingress = Ingress.options(
        ray_actor_options={"num_cpus": 1},
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=config.retry_after_s),
        autoscaling_config=config.autoscaling(),
        health_check_period_s=config.health_check_period_s,
        graceful_shutdown_timeout_s=5,
    )
    return ingress.bind(replace(config, api_token=None), config.token(), *handles)


def serve_config(config: ServingConfig | None = None) -> dict[str, Any]:
    """The ``serve deploy`` config file for ``config`` (default: the defaults)."""
    config = config or ServingConfig()
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": config.host, "port": config.port},
        "applications": [
            {
                "name": config.app_name,
                "route_prefix": config.route_prefix,
                "import_path": IMPORT_PATH,
                "args": config.to_args(),
            }
        ],
    }


def render_yaml(config: ServingConfig | None = None) -> str:
    header = (
        "# Generated by `python -m serving.config` from serving/config.py (ServingConfig);\n"
        "# do not edit by hand. Deploy: serve deploy serving/config.yaml\n"
        "# Set LACQUER_API_TOKEN on the cluster when binding beyond loopback.\n"
    )
    return header + yaml.safe_dump(serve_config(config), sort_keys=False)


if __name__ == "__main__":
    sys.stdout.write(render_yaml())
