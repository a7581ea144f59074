"""Running the app on a Ray that is already connected: start Serve's HTTP proxy on a chosen
address and deploy a :class:`~serving.config.ServingConfig` (``lacquer serve``, the tests and
``benchmarks/serving.py`` share this)."""

from __future__ import annotations

import socket
import time

from serving.config import ServingConfig, build_app


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_http(host: str, port: int) -> None:
    """Start (or reuse) Serve's HTTP proxy on ``host:port``."""
    from ray import serve

    serve.start(http_options={"host": host, "port": port})


def deploy(*configs: ServingConfig, timeout_s: float = 300.0) -> list[str]:
    """Deploy the apps of ``configs`` together (Serve must be started) and wait until each
    answers ``/healthz``; returns their base URLs (``http://host:port/prefix``)."""
    from ray import serve

    serve.run_many(
        [
            serve.RunTarget(build_app(c), name=c.app_name, route_prefix=c.route_prefix)
            for c in configs
        ]
    )
    return [wait_healthy(base_url(c), timeout_s) for c in configs]


def base_url(config: ServingConfig) -> str:
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    return f"http://{host}:{config.port}{config.route_prefix.rstrip('/')}"


def wait_healthy(url: str, timeout_s: float = 300.0) -> str:
    """Poll ``url/healthz`` until it answers 200; returns ``url``."""
    import requests

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return url
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/healthz did not answer within {timeout_s} s")
        time.sleep(0.2)
