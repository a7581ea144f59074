"""``lacquer serve``: run the mastering endpoints (Ray Serve) until Ctrl-C.

Starts an embedded local Ray (or connects to ``--address``), starts Serve's HTTP proxy on
``--host``/``--port`` (loopback by default), deploys the app built from
:class:`serving.config.ServingConfig` (the same source ``serving/config.yaml`` is generated
from), prints the URL and blocks. Binding to any other address than loopback needs a bearer
token in ``LACQUER_API_TOKEN``; every endpoint but ``/healthz`` then checks it. Ray's own token
authentication stays as Ray configures it.
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
    p.add_argument("--max-upload-mb", type=float, default=200.0, help="largest upload, MB")
    p.add_argument("--max-replicas", type=int, default=2, help="autoscaling limit per deployment")
    return p


def run(args: argparse.Namespace) -> int:
    from serving.config import ServingConfig

    config = ServingConfig(
        host=args.host,
        port=args.port,
        gpus=args.gpus,
        device=args.device or ("cuda" if args.gpus > 0 else "cpu"),
        max_upload_mb=args.max_upload_mb,
        max_replicas=args.max_replicas,
    ).validate()

    import ray
    from ray import serve

    from serving.local import base_url, deploy, start_http

    ray.init(address=args.address, log_to_driver=False)
    try:
        start_http(config.host, config.port)
        deploy(config)
        print(f"lacquer serve: listening on {base_url(config)}  (docs: /docs)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("lacquer serve: stopping", flush=True)
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0
