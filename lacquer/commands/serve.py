"""``lacquer serve``: run the mastering endpoints (Ray Serve) until Ctrl-C.

Starts an embedded local Ray (or connects to ``--address``), starts Serve's HTTP proxy on
``--host``/``--port`` (loopback by default), deploys the app built from
:class:`serving.config.ServingConfig` (the same source ``serving/config.yaml`` is generated
from), prints the URL and blocks. Binding to any other address than loopback needs a bearer
token in ``LACQUER_API_TOKEN``; every endpoint but ``/healthz`` then checks it. Ray's own token
authentication stays as Ray configures it.

What it picks up from the feedback store (``--feedback``, else ``$LACQUER_FEEDBACK_DIR``, else
``./feedback``):

* the auto-retry policy ``lacquer tune retry`` saved (:func:`tuning.tune_retry.
  load_retry_policy`; the default policy without one), its attempts capped by
  ``--retry-attempts`` (default 2); ``--no-retry``: one scored attempt per request;
* the genre adapters ``lacquer improve`` promoted (:func:`tuning.improve.current_adapter_dir`
  of ``--models``, default ``STORE/models``; ``--models none``: none): a request that names no
  adapter is mastered with the promoted adapter of its genre, the shipped chain when the
  version has none for it, as ``lacquer master`` does (:mod:`mastering.adapter_folder`); the
  replicas find adapters by name in that folder first. Restart to pick up a later promotion.
"""

from __future__ import annotations

import argparse
import time
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="serve the mastering chain over HTTP (Ray Serve) until Ctrl-C",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--address", help="Ray cluster to join (default: start a local Ray)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs for the stage groups (0: CPU)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda with --gpus, else cpu")
    p.add_argument(
        "--placement",
        choices=("fused", "split"),
        default="fused",
        help="fused: the whole chain per replica, one per GPU (default); split: one "
        "deployment per stage group, one group per GPU",
    )
    p.add_argument("--max-upload-mb", type=float, default=200.0, help="largest upload, MB")
    p.add_argument(
        "--max-replicas",
        type=int,
        default=None,
        help="autoscaling limit per deployment (default: 2, or --gpus when fused)",
    )
    p.add_argument("--no-retry", action="store_true", help="one scored attempt per request")
    p.add_argument(
        "--retry-attempts",
        type=int,
        default=2,
        help="attempts per song by default, the first included (default 2)",
    )
    p.add_argument(
        "--feedback",
        metavar="DIR",
        help="feedback store: the tuned policy and promoted versions are read from it, and "
        "every attempt of every master is appended to it (default store: read only)",
    )
    p.add_argument(
        "--models",
        metavar="DIR",
        help="lacquer improve's versions folder whose promoted genre adapters are used "
        "(default: STORE/models; 'none': the shipped chain)",
    )
    return p


def serving_config(args: argparse.Namespace):
    """The :class:`serving.config.ServingConfig` of the command line, with the tuned retry
    policy and the promoted adapters of the feedback store."""
    from dataclasses import replace

    from lacquer.commands.master import feedback_store, promoted_adapter_dir
    from serving.config import ServingConfig
    from tuning.tune_retry import load_retry_policy

    store = feedback_store(args)
    policy = load_retry_policy(store, max_attempts=1 if args.no_retry else args.retry_attempts)
    limit = ServingConfig.max_attempts_limit
    if args.no_retry:
        limit = 1
    elif policy.max_attempts > limit:
        policy = replace(policy, max_attempts=limit)
    adapters = promoted_adapter_dir(args)
    fused = args.placement == "fused"
    max_replicas = args.max_replicas or (max(2, args.gpus) if fused else 2)
    return ServingConfig(
        host=args.host,
        port=args.port,
        placement=args.placement,
        gpus=args.gpus,
        device=args.device or ("cuda" if args.gpus > 0 else "cpu"),
        max_upload_mb=args.max_upload_mb,
        max_replicas=max_replicas,
        retry=policy,
        max_attempts_limit=limit,
        adapter_dir=None if adapters is None else str(adapters),
        genre_adapters=adapters is not None,
        feedback_dir=args.feedback,
    ).validate()


def run(args: argparse.Namespace) -> int:
    config = serving_config(args)

    import ray
    from ray import serve

    from serving.local import base_url, deploy, start_http

    ray.init(address=args.address, log_to_driver=False)
    try:
        start_http(config.host, config.port)
        deploy(config)
        extra = (
            f"adapters from {config.adapter_dir}" if config.adapter_dir else "no promoted adapters"
        )
        print(
            f"lacquer serve: listening on {base_url(config)}  (docs: /docs; "
            f"{config.placement}, retry up to {config.retry.max_attempts} attempts below "
            f"{config.retry.threshold:g}; {extra})",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("lacquer serve: stopping", flush=True)
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0
