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
