"""``lacquer render`` as a separate driver process against the shared cluster: SIGKILL it
part-way, run the same command again, and every song ends up mastered exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.job import METRICS_NAME
from cluster.manifest import DONE, MANIFEST_NAME, Manifest
from mastering.io import read_audio, write_audio
from mastering.testsignals import music_like

pytestmark = pytest.mark.ray
SONGS = 12


def render_command(ray_cluster, src: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lacquer",
        "render",
        str(src),
        "-o",
        str(out),
        "--address",
        ray_cluster.address,
        # One worker (one logical GPU): slow enough that the manifest (checkpointed once a
        # second) shows the job part-way before it finishes.
        "--gpus",
        "1",
        "--no-progress",
    ]


def done_songs(manifest_path: Path) -> dict[str, float]:
    if not manifest_path.exists():
        return {}
    return {r.song_id: r.finished_at for r in Manifest.load(manifest_path) if r.state == DONE}


def test_killed_job_resumes_without_redoing_or_losing_songs(ray_cluster, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(SONGS):
        write_audio(src / f"take {i}.wav", music_like(2.0, seed=i), format="wav16")
    cmd = render_command(ray_cluster, src, out)
    manifest_path = out / MANIFEST_NAME

    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while len(done_songs(manifest_path)) < 2:
            assert driver.poll() is None, driver.stdout.read().decode()
            assert time.monotonic() < deadline, "the first run made no progress"
            time.sleep(0.2)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    before = done_songs(manifest_path)
    assert 2 <= len(before) < SONGS  # killed part-way

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{SONGS}/{SONGS} done ({len(before)} already done)" in rerun.stderr

    after = done_songs(manifest_path)
    assert len(after) == SONGS
    assert {k: after[k] for k in before} == before  # songs done before were not redone
    outputs = sorted(p.name for p in out.iterdir() if p.suffix == ".wav")
    assert outputs == sorted(f"take_{i}.wav" for i in range(SONGS))  # safe names, one each
    for name in outputs:
        audio, _ = read_audio(out / name)  # complete, readable files
        assert audio.shape == (2, 96_000)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no partial files
    metrics = pq.read_table(out / METRICS_NAME).column("song_id").to_pylist()
    assert set(metrics) == set(after)
