"""``lacquer serve`` as a user runs it: a real process joining the shared Ray cluster, serving
HTTP on a free port until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from lacquer.cli import main
from serving.local import free_port

pytestmark = pytest.mark.ray


def test_public_bind_without_token_is_refused(monkeypatch, capsys):
    monkeypatch.delenv("LACQUER_API_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 1
    assert "requires a bearer token" in capsys.readouterr().err


def test_serve_config_takes_the_tuned_policy_and_the_promoted_adapters(tmp_path):
    """What ``lacquer serve`` deploys: the retry policy ``lacquer tune retry`` saved (its
    attempts capped by --retry-attempts), and the adapter folder of the version ``lacquer
    improve`` promoted; without them, the defaults."""
    from lacquer.cli import build_parser
    from lacquer.commands.serve import serving_config
    from tuning.improve import VERSIONS, set_current
    from tuning.trials import save_best
    from tuning.tune_retry import KIND

    store = tmp_path / "feedback"
    plain = serving_config(build_parser().parse_args(["serve", "--feedback", str(store)]))
    assert plain.retry.max_attempts == 2 and plain.retry.threshold == 70.0
    assert plain.adapter_dir is None and not plain.genre_adapters and plain.placement == "fused"

    save_best(store, KIND, {"config": {"threshold": 82.0, "max_attempts": 4, "min_gain": 1.0}})
    (store / "models" / VERSIONS / "v0001").mkdir(parents=True)
    set_current(store / "models", "v0001")
    args = ["serve", "--feedback", str(store), "--retry-attempts", "3", "--gpus", "4"]
    tuned = serving_config(build_parser().parse_args(args))
    assert (tuned.retry.threshold, tuned.retry.min_gain, tuned.retry.max_attempts) == (82.0, 1.0, 3)
    assert tuned.adapter_dir == str(store / "models" / VERSIONS / "v0001")
    assert tuned.genre_adapters and tuned.genre_folder() == tuned.adapter_dir
    assert tuned.max_replicas == 4 and tuned.device == "cuda"  # fused: a replica per GPU
    off = serving_config(
        build_parser().parse_args(["serve", "--feedback", str(store), "--no-retry"])
    )
    assert off.retry.max_attempts == 1 and off.max_attempts_limit == 1
    base = serving_config(
        build_parser().parse_args(["serve", "--feedback", str(store), "--models", "none"])
    )
    assert base.adapter_dir is None and not base.genre_adapters


def test_lacquer_serve_prints_url_serves_and_stops_on_ctrl_c(ray_cluster):
    port = free_port()
    cli = Path(sys.executable).with_name("lacquer")
    proc = subprocess.Popen(
        [
            str(cli),
            "serve",
            "--address",
            ray_cluster.address,
            "--port",
            str(port),
            "--max-replicas",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "LACQUER_API_TOKEN": ""},
    )
    try:
        line = ""
        deadline = time.monotonic() + 240
        while "listening on" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert f"http://127.0.0.1:{port}" in line, line
        url = line.split("listening on ")[1].split()[0]
        assert requests.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}
        assert "genres" in requests.get(f"{url}/v1/presets", timeout=30).json()
        assert requests.get(f"{url}/docs", timeout=30).status_code == 200
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert "stopping" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
