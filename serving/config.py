"""One source of truth for the Serve app: :class:`ServingConfig` builds the application
(:func:`build_app`, used by ``lacquer serve`` and the tests) and generates
``serving/config.yaml`` (:func:`serve_config`, for ``serve deploy`` / ``serve run`` on an
existing cluster, whose ``import_path`` calls :func:`serving.app.app_builder` with the same
arguments).

Regenerate the committed file after changing a default::

    python -m serving.config > serving/config.yaml
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from mastering.chain import DEFAULT_ORDER
from mastering.errors import InvalidParameterError

#: Hosts that count as loopback (no token needed).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Environment variable holding the bearer token.
TOKEN_ENV = "LACQUER_API_TOKEN"
CONFIG_YAML = Path(__file__).with_name("config.yaml")
IMPORT_PATH = "serving.app:app_builder"


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
        gpus: GPUs for the stage groups (0: CPU). groups: stage groups, each a deployment
            (default: one per GPU, at most one per stage; 1 on CPU).
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
            seconds).
        min_replicas, max_replicas: autoscaling range of every deployment.
        target_ongoing_requests: autoscaling target per replica.
        health_check_period_s: how often Serve checks replicas, seconds (a killed replica is
            replaced within about this long).
        pipeline_retries: times the ingress re-sends a song whose stage replica died.
        upload_dir: folder for spooled uploads (default: the system's temporary folder).
        adapter_dir: folder of user style adapters (``LACQUER_ADAPTER_DIR`` of
            :mod:`mastering.adapters`) for the replicas; ``None``: their environment's.
        app_name, route_prefix: Serve application name and route prefix.
    """

    host: str = "127.0.0.1"
    port: int = 8000
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
    batch_wait_timeout_s: float = 0.02
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 8.0
    health_check_period_s: float = 2.0
    pipeline_retries: int = 4
    upload_dir: str | None = None
    adapter_dir: str | None = None
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
        n = self.groups if self.groups is not None else max(1, min(self.gpus, len(DEFAULT_ORDER)))
        return plan_groups(DEFAULT_ORDER, n)

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
        self.stage_groups()
        return self

    # -- (de)serialization --------------------------------------------------------------------
    def to_args(self) -> dict[str, Any]:
        """Builder arguments (everything but the token) for ``serve deploy``."""
        return {k: v for k, v in asdict(self).items() if k != "api_token"}

    @classmethod
    def from_args(cls, args: dict[str, Any] | None) -> ServingConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(args or {}) - known
        if unknown:
            raise InvalidParameterError(f"unknown serving options: {', '.join(sorted(unknown))}")
        return cls(**(args or {}))

    def autoscaling(self) -> dict[str, Any]:
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": 3.0,
            "downscale_delay_s": 60.0,
        }


def build_app(config: ServingConfig):
    """The Serve application: the ingress bound to one deployment per stage group, each
    replica reserving ``gpus_per_group`` GPUs."""
    from ray.serve.config import BackpressureConfig

    from serving.app import Ingress
    from serving.stages import StageGroup

    config.validate()
    groups = config.stage_groups()
    handles = []
    for i, stages in enumerate(groups):
        deployment = StageGroup.options(
            name=f"StageGroup{i}",
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
