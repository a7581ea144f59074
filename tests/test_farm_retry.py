"""Auto-retry and promoted adapters on the render farm (real local Ray, real files, short
clips): weak songs are re-mastered on the pipeline's last worker (replicated and pipeline
mode), every attempt reaches the metrics table and the feedback store, ``--no-retry`` makes
one attempt, and ``lacquer master`` / ``lacquer render`` use the adapters ``lacquer improve``
promoted."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from cluster.inputs import songs_from_files
from cluster.job import RenderConfig, RenderJob
from lacquer.cli import main
from mastering.degradations import degrade
from mastering.evaluation import Evaluator
from mastering.io import read_audio, write_audio
from mastering.render import MasterOptions
from mastering.retry import RetryPolicy
from mastering.testsignals import music_like
from tuning.store import FeedbackStore

#: Every song retries (no master scores 99), two attempts in all.
ALWAYS = ("--retry-threshold", "99", "--retry-attempts", "2")


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    """Two 1 s songs (one with a dull EQ) and a 1.5 s one (different lengths pad a batch)."""
    folder = tmp_path_factory.mktemp("songs")
    write_audio(folder / "a_dull.wav", degrade(music_like(1.0, seed=61)[None], "dull_eq", 1.0)[0])
    write_audio(folder / "b_clean.wav", music_like(1.0, seed=62))
    write_audio(folder / "c_long.wav", music_like(1.5, seed=63))
    return folder


@pytest.fixture(scope="module")
def promoted(tmp_path_factory) -> Path:
    """A feedback store whose ``models`` has a promoted version with a ``genre-pop`` adapter
    that changes the master (lifted macros): promoted the way ``lacquer improve`` does."""
    from mastering.adapters import StyleAdapter
    from tuning.improve import _new_version, current_adapter_dir, set_current

    store = tmp_path_factory.mktemp("store")
    adapter = StyleAdapter("genre-pop", "genre", "pop")
    with torch.no_grad():
        for stage in adapter.stages.values():
            stage.macro_offset.fill_(1.0)
    version = _new_version(store / "models", None, {"pop": adapter}, {"test": True})
    set_current(store / "models", version)
    assert current_adapter_dir(store / "models").name == version
    return store


def render(src: Path, out: Path, *flags: str) -> list[dict]:
    assert main(["render", str(src), "-o", str(out), "--gpus", "1", "--no-progress",
                 "--genre", "pop", *flags]) == 0  # fmt: skip
    return sorted(pq.read_table(out / "lacquer-metrics.parquet").to_pylist(),
                  key=lambda m: m["song_id"])  # fmt: skip


def masters(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("lacquer-"))


def two_songs(songs: Path, tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a_dull.wav", "b_clean.wav"):
        (src / name).write_bytes((songs / name).read_bytes())
    return src


@pytest.mark.ray
def test_render_retries_weak_songs_and_records_every_attempt(ray_cluster, songs, tmp_path, capsys):
    src, out, fb = two_songs(songs, tmp_path), tmp_path / "out", tmp_path / "fb"
    metrics = render(src, out, *ALWAYS, "--feedback", str(fb), "--models", "none")
    assert [m["song_id"] for m in metrics] == ["a_dull.wav", "b_clean.wav"]
    for m in metrics:
        assert m["attempts"] == 2 and m["tries"] == 1
        assert m["score"] >= m["first_score"]
        assert m["t_retry_s"] > 0
    assert "auto-retry: 2 of 2 songs re-mastered, 2.00 attempts per song" in capsys.readouterr().err
    assert masters(out) == ["a_dull.wav", "b_clean.wav"]  # once each, no temp files

    # Every attempt is in the feedback tables (from the driver), one kept per song, and the
    # kept score is the metrics table's and the written file's.
    rows = FeedbackStore(fb).read().to_pylist()
    assert sorted((r["song_id"], r["attempt"]) for r in rows) == [
        ("a_dull", 1), ("a_dull", 2), ("b_clean", 1), ("b_clean", 2)]  # fmt: skip
    evaluator = Evaluator()
    for m in metrics:
        mine = [r for r in rows if r["song_id"] == Path(m["song_id"]).stem]
        kept = [r for r in mine if r["kept"]]
        assert len(kept) == 1 and kept[0]["score"] == pytest.approx(m["score"], abs=0.01)
        assert kept[0]["score"] == max(r["score"] for r in mine) or kept[0]["attempt"] == 1
        assert json.loads(mine[1]["params"])["overrides"]  # attempt 2 altered parameters
        assert mine[0]["node"] and mine[0]["gpu"]
        audio, _ = read_audio(out / m["song_id"])
        written = evaluator(audio[None], ["pop"]).item(0)["score"]
        assert written == pytest.approx(m["score"], abs=1.0)


@pytest.mark.ray
def test_no_retry_makes_one_attempt_and_render_uses_the_promoted_adapter(
    ray_cluster, songs, promoted, tmp_path
):
    src = tmp_path / "in"
    src.mkdir()
    (src / "b_clean.wav").write_bytes((songs / "b_clean.wav").read_bytes())
    fb = str(promoted)
    metrics = render(src, tmp_path / "farm", "--no-retry", "--feedback", fb)
    assert [(m["attempts"], m["score"]) for m in metrics] == [(1, metrics[0]["first_score"])]
    rows = FeedbackStore(promoted).read().to_pylist()
    assert [(r["attempt"], r["kept"], r["adapter_version"]) for r in rows] == [(1, True, "v0001")]

    # lacquer master on this machine: the promoted adapter of the song's genre is used...
    def master(out: str, *flags: str) -> dict:
        report = tmp_path / f"{out}.json"
        args = ["master", str(src / "b_clean.wav"), "-o", str(tmp_path / out), "--no-progress",
                "--no-retry", "--report", str(report), *flags]  # fmt: skip
        assert main(args) == 0
        return json.loads(report.read_text())["files"][0]

    adapted = master("adapted", "--genre", "pop", "--feedback", fb)
    assert adapted["adapter"] == {"name": "genre-pop", "version": "v0001"}
    base = master("base", "--genre", "pop", "--feedback", fb, "--models", "none")
    assert "adapter" not in base
    # ... and none for a genre the version has no adapter for.
    assert "adapter" not in master("jazz", "--genre", "jazz", "--feedback", fb)

    farm, _ = read_audio(tmp_path / "farm" / "b_clean.wav")
    here, _ = read_audio(adapted["output"])
    plain, _ = read_audio(base["output"])
    assert (here - plain).abs().max() > 1e-2  # the adapter changes the master
    assert (farm - here).abs().max() < 1e-3  # the farm used it too


@pytest.mark.ray
def test_pipeline_mode_retries_on_the_last_worker(ray_cluster, songs, tmp_path):
    files = [songs / "a_dull.wav", songs / "c_long.wav"]
    config = RenderConfig(
        tmp_path / "out",
        MasterOptions(),
        gpus=2,
        mode="pipeline",
        batch=2,
        max_padding=1.0,  # one batch, the 1 s song zero-padded to the 1.5 s one
        progress=False,
        retry=RetryPolicy(threshold=99.0, max_attempts=2),
    )
    results = {}
    summary = RenderJob(songs_from_files(files), config).run(
        on_song=lambda rec, r: results.setdefault(rec.song_id, r)
    )
    assert (summary.done, summary.songs_retried, summary.mean_attempts) == (2, 2, 2.0)
    assert len(summary.plan["pipelines"][0]) == 2  # two stage groups
    for sid, r in results.items():
        assert [a["number"] for a in r.attempts] == [1, 2]
        assert sum(a["best"] for a in r.attempts) == 1
        kept = next(a for a in r.attempts if a["best"])
        assert kept["score"] >= r.attempts[0]["score"]
        assert r.scores["score"] == pytest.approx(kept["score"], abs=0.01)
        audio, _ = read_audio(r.output_path)
        assert audio.shape[-1] == read_audio(songs / sid)[0].shape[-1]  # its own length
        assert torch.isfinite(audio).all()
    metrics = pq.read_table(summary.metrics_path).to_pylist()
    assert sorted(m["attempts"] for m in metrics) == [2, 2]
    assert masters(tmp_path / "out") == ["a_dull.wav", "c_long.wav"]
