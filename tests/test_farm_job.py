"""Render jobs on the shared multi-node test cluster (logical GPUs, real actors, real files):
end to end, poison songs, a stage worker SIGKILLed mid-job, a node removed mid-job."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from cluster.inputs import SongInput, songs_from_files
from cluster.job import RenderConfig, RenderJob
from cluster.manifest import DONE, Manifest
from mastering.errors import InvalidParameterError
from mastering.io import read_audio, write_audio
from mastering.loudness import integrated_loudness
from mastering.render import MasterOptions
from mastering.testsignals import music_like

pytestmark = pytest.mark.ray


def write_songs(folder: Path, n: int, seconds: float = 2.0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"song{i:02d}.wav"
        write_audio(p, music_like(seconds + 0.5 * (i % 3), seed=i), format="wav16")
        paths.append(p)
    return paths


def outputs_of(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.suffix == ".wav")


def assert_no_partial_files(out: Path) -> None:
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_job_masters_every_song_to_target_on_separate_gpus(ray_cluster, tmp_path):
    songs = songs_from_files(write_songs(tmp_path / "in", 3), root=tmp_path / "in")
    config = RenderConfig(
        tmp_path / "out", MasterOptions(target_lufs=-14.0), gpus=2, batch=1, mode="pipeline"
    )
    job = RenderJob(songs, config)
    summary = job.run(keep_workers=True)
    try:
        (pipeline,) = job.worker_info()
        assert [w["stages"] for w in pipeline] == [list(g) for g in summary.plan["pipelines"][0]]
        assert len({tuple(w["gpu_ids"]) for w in pipeline}) == 2  # one GPU id per stage group
        assert all(len(w["gpu_ids"]) == 1 for w in pipeline)
        assert len({w["node_id"] for w in pipeline}) == 1  # the pipeline stays on one node
    finally:
        job.stop()
    assert (summary.done, summary.failed, summary.total) == (3, 0, 3)
    outs = outputs_of(tmp_path / "out")
    assert [p.name for p in outs] == [s.path.name for s in songs]
    for p in outs:
        audio, _ = read_audio(p)
        lufs = float(integrated_loudness(audio.unsqueeze(0))[0])
        assert lufs == pytest.approx(-14.0, abs=0.5), (p.name, lufs)
    manifest = Manifest.load(summary.manifest_path)
    assert {r.state for r in manifest} == {DONE}
    assert all(r.input_hash and r.node_id and r.gpu_ids for r in manifest)
    metrics = pq.read_table(summary.metrics_path).to_pylist()
    assert sorted(m["song_id"] for m in metrics) == sorted(s.song_id for s in songs)
    assert all(m["t_exciter_s"] > 0 and m["duration_s"] >= 2.0 for m in metrics)
    # Every master is scored by the evaluation model (0-100, with its sub-scores).
    assert all(0.0 <= m["score"] <= 100.0 and 0.0 <= m["score_loudness"] <= 100.0 for m in metrics)
    assert_no_partial_files(tmp_path / "out")

    # The same job again: nothing redone.
    again = RenderJob(songs, config).run()
    assert (again.skipped, again.rendered, again.done) == (3, 0, 3)

    # Ray Direct Transport (gloo on CPU) between the stage workers: the same masters, bit for bit.
    rdt = RenderConfig(tmp_path / "rdt", config.options, gpus=2, transport="gloo", mode="pipeline")
    assert RenderJob(songs, rdt).run().done == 3
    for p in outs:
        assert (tmp_path / "rdt" / p.name).read_bytes() == p.read_bytes()

    # Replicated workers overlap decoding and writing with the device (three batches held at
    # once, the default) or run them one after another: the same masters either way.
    for overlap in (3, 1):
        folder = tmp_path / f"overlap{overlap}"
        cfg = RenderConfig(folder, config.options, gpus=1, overlap=overlap, max_in_flight=3)
        assert RenderJob(songs, cfg).run().done == 3
        for p in outs:
            assert (folder / p.name).read_bytes() == p.read_bytes(), (overlap, p.name)


def test_batches_hold_songs_of_one_length_so_a_master_does_not_depend_on_its_batch(
    ray_cluster, tmp_path
):
    """By default a batch holds only songs of the same length (the driver looks ahead in the
    queue for them): each master then equals the song mastered alone. Allowing padding puts
    the 1.5 s song in a batch with 2 s songs, and its controllers hear the silence."""
    folder = tmp_path / "in"
    folder.mkdir()
    lengths = {"a.wav": 2.0, "b.wav": 1.5, "c.wav": 2.0, "d.wav": 2.0}
    for i, (name, seconds) in enumerate(lengths.items()):
        write_audio(folder / name, music_like(seconds, seed=20 + i), format="wav24")
    songs = songs_from_files(sorted(folder.iterdir()), root=folder)

    def render(name: str, sizes: dict[str, int], **kwargs) -> dict[str, torch.Tensor]:
        cfg = RenderConfig(tmp_path / name, gpus=1, max_in_flight=4, progress=False, **kwargs)
        summary = RenderJob(songs, cfg).run()
        assert summary.done == 4
        rows = pq.read_table(summary.metrics_path).to_pylist()
        assert {r["song_id"]: r["batch_size"] for r in rows} == sizes
        return {s.path.name: read_audio(tmp_path / name / s.path.name)[0] for s in songs}

    alone = render("alone", dict.fromkeys(lengths, 1), batch=1)
    grouped = render("grouped", {"a.wav": 3, "b.wav": 1, "c.wav": 3, "d.wav": 3}, batch=4)
    padded = render("padded", dict.fromkeys(lengths, 4), batch=4, max_padding=1.0)
    for name in lengths:  # batched kernels round differently: 4e-4 measured
        assert (grouped[name] - alone[name]).abs().max() < 1e-3, name
    assert (padded["b.wav"] - alone["b.wav"]).abs().max() > 1e-2


def test_poison_songs_fail_alone_with_their_errors(ray_cluster, tmp_path):
    folder = tmp_path / "in"
    good = write_songs(folder, 3)
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(200))
    nan = folder / "nan.wav"
    data = music_like(2.0, seed=7).T.numpy().copy()
    data[5000:5010, 1] = np.nan
    sf.write(nan, data, 48_000, subtype="FLOAT")
    songs = songs_from_files([good[0], corrupt, good[1], nan, good[2]], root=folder)
    # A per-song conditioning value that is invalid fails that song only, too.
    songs.append(SongInput("bad-genre", good[0], {"genre": "polka"}))
    config = RenderConfig(tmp_path / "out", gpus=2, batch=2, max_restarts=1, mode="pipeline")
    summary = RenderJob(songs, config).run()
    assert summary.done == 3
    failures = dict(summary.failures)
    assert set(failures) == {"corrupt.wav", "nan.wav", "bad-genre"}
    assert "corrupt.wav" in failures["corrupt.wav"]
    assert "nan.wav" in failures["nan.wav"] and "NaN" in failures["nan.wav"]
    assert "polka" in failures["bad-genre"]
    manifest = Manifest.load(summary.manifest_path)
    assert all(manifest[s].error_kind == "input" for s in failures)
    assert all(manifest[s].attempts <= 1 for s in failures)  # no retries burnt on them
    assert [p.name for p in outputs_of(tmp_path / "out")] == [p.name for p in good]


def test_io_in_tasks_writes_the_same_files_and_names_a_bad_one(ray_cluster, tmp_path):
    """``io="tasks"``: the first worker's decoding and the last's writing run as Ray tasks in
    the workers' bundles; the masters are byte-identical to the threads' and a corrupt file
    still fails alone with its name."""
    folder = tmp_path / "in"
    good = write_songs(folder, 3)
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(200))
    songs = songs_from_files([good[0], corrupt, good[1], good[2]], root=folder)
    outs = {}
    for io in ("threads", "tasks"):
        config = RenderConfig(
            tmp_path / io, gpus=2, batch=2, mode="pipeline", cpus_per_group=2, io=io
        ).validate()
        summary = RenderJob(songs, config).run()
        assert (summary.done, summary.failed) == (3, 1), io
        assert "corrupt.wav" in dict(summary.failures)["corrupt.wav"]
        outs[io] = {p.name: p.read_bytes() for p in outputs_of(tmp_path / io)}
        assert_no_partial_files(tmp_path / io)
    assert sorted(outs["tasks"]) == [p.name for p in good]
    assert outs["tasks"] == outs["threads"]
    with pytest.raises(InvalidParameterError, match="cpus_per_group >= 2"):
        RenderConfig(tmp_path / "x", io="tasks").validate()


def test_stage_worker_killed_mid_job_restarts_and_every_song_is_done_once(ray_cluster, tmp_path):
    songs = songs_from_files(write_songs(tmp_path / "in", 6), root=tmp_path / "in")
    killed: list[int] = []

    def kill_last_worker_once(job: RenderJob, manifest: Manifest) -> None:
        if not killed:
            pid = job.pipelines[0].pids[-1]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    config = RenderConfig(
        tmp_path / "out", gpus=2, batch=1, max_in_flight=4, max_restarts=2, mode="pipeline"
    )
    job = RenderJob(songs, config)
    summary = job.run(keep_workers=True, on_result=kill_last_worker_once)
    try:
        infos = job.worker_info()[0]
    finally:
        job.stop()
    assert killed
    assert infos[-1]["pid"] != killed[0]  # the actor was restarted in a new process
    assert (summary.done, summary.failed) == (6, 0)
    assert summary.retries >= 1
    manifest = Manifest.load(summary.manifest_path)
    assert {r.state for r in manifest} == {DONE}
    assert any(r.attempts > 1 for r in manifest)
    assert [p.name for p in outputs_of(tmp_path / "out")] == [s.path.name for s in songs]
    metrics = pq.read_table(summary.metrics_path).to_pylist()
    assert sorted(m["song_id"] for m in metrics) == sorted(s.song_id for s in songs)  # once each
    assert_no_partial_files(tmp_path / "out")


def test_node_removed_mid_job_the_job_completes_on_the_remaining_nodes(ray_cluster, tmp_path):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    node = ray_cluster.add_node(num_cpus=2, num_gpus=2)
    ray_cluster.wait_for_nodes()
    # Hold every GPU of the original nodes so the job's pipeline must go to the new node.
    holders = [placement_group([{"GPU": 4}], strategy="STRICT_PACK") for _ in range(2)]
    ray.get([h.ready() for h in holders], timeout=60)
    songs = songs_from_files(write_songs(tmp_path / "in", 6), root=tmp_path / "in")
    placed_on: list[set[str]] = []

    def remove_node_once(job: RenderJob, manifest: Manifest) -> None:
        if not placed_on:
            placed_on.append({w["node_id"] for w in job.worker_info()[0]})
            for h in holders:
                remove_placement_group(h)  # room on the remaining nodes
            ray_cluster.remove_node(node)

    config = RenderConfig(
        tmp_path / "out",
        gpus=2,
        batch=1,
        max_in_flight=4,
        max_restarts=3,
        max_attempts=4,
        mode="pipeline",
    )
    job = RenderJob(songs, config)
    try:
        summary = job.run(keep_workers=True, on_result=remove_node_once)
        after = job.worker_info()[0]
    finally:
        job.stop()
        if not placed_on:
            for h in holders:
                remove_placement_group(h)
    assert placed_on == [{node.node_id}]  # the job ran on the node that was then removed
    assert (summary.done, summary.failed) == (6, 0)
    assert node.node_id not in {w["node_id"] for w in after}
    manifest = Manifest.load(summary.manifest_path)
    assert {r.state for r in manifest} == {DONE}
    assert [p.name for p in outputs_of(tmp_path / "out")] == [s.path.name for s in songs]
