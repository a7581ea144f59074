"""Feedback tables: round trip, filters, ratings, many writers, a writer killed mid-write."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lacquer.cli import main
from mastering.errors import InvalidParameterError
from tuning.store import (
    ATTEMPT_SCHEMA,
    SCHEMA_VERSION,
    FeedbackStore,
    check_integrity,
)


def row(song: str, score: float, attempt: int = 1, **extra) -> dict:
    return {
        "song_id": song,
        "input_hash": "ab" * 32,
        "conditioning": {"genre": "pop", "tempo_bpm": 120.0},
        "params": {"overrides": {}, "parameters": {"limiter": {"drive_db": {"value": 3.0}}}},
        "metrics_before": {"integrated_lufs": -20.0},
        "metrics_after": {"integrated_lufs": -14.0},
        "score": score,
        "rule_score": score,
        "learned_score": None,
        "sub_scores": {"clarity": 90.0, "dynamics": 80.0, "balance": 70.0, "loudness": 100.0,
                       "stereo": 95.0, "artifacts": 99.0},
        "attempt": attempt,
        "kept": attempt == 1,
        "chain_version": "0.1.0+priors",
        "adapter_version": "",
        "timings": {"master": 0.5, "evaluate": 0.1},
        "node": "node-a",
        "gpu": "",
        **extra,
    }  # fmt: skip


def test_round_trip_filters_and_json(tmp_path):
    store = FeedbackStore(tmp_path)
    old = dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC)
    store.append([row("a", 55.0, created_at=old), row("a", 75.0, attempt=2, created_at=old)])
    store.append([row("b", 91.5)])
    t = store.read()
    assert t.num_rows == 3
    assert set(t.column_names) >= {f.name for f in ATTEMPT_SCHEMA} | {"date", "rating"}
    assert t["schema_version"].to_pylist() == [SCHEMA_VERSION] * 3
    first = t.to_pylist()[0]
    assert first["date"] == "2026-01-02" and first["song_id"] == "a"
    assert json.loads(first["params"])["parameters"]["limiter"]["drive_db"]["value"] == 3.0
    assert first["sub_scores"]["balance"] == 70.0 and first["learned_score"] is None
    assert (tmp_path / "attempts" / "date=2026-01-02").is_dir()
    assert store.read(song="a").num_rows == 2
    assert store.read(min_score=70).column("score").to_pylist() == [75.0, 91.5]
    assert store.read(max_score=60).num_rows == 1
    assert store.read(since="2026-01-03").column("song_id").to_pylist() == ["b"]
    assert store.read(until=dt.date(2026, 1, 2)).num_rows == 2
    assert store.read(kept_only=True).num_rows == 2
    # Every file carries the schema version in its metadata.
    for f in tmp_path.glob("attempts/*/*.parquet"):
        assert pq.read_schema(f).metadata[b"lacquer_schema_version"] == b"1"


def test_ratings_are_appended_and_the_latest_is_joined(tmp_path):
    store = FeedbackStore(tmp_path)
    store.append([row("a", 60.0), row("b", 80.0)])
    assert store.read()["rating"].to_pylist() == [None, None]
    store.rate("a", 2, rater="ed")
    store.rate("a", 4)
    assert dict(zip(*store.read().select(["song_id", "rating"]).to_pydict().values(),
                    strict=True)) == {"a": 4, "b": None}  # fmt: skip
    assert store.ratings().num_rows == 2
    with pytest.raises(InvalidParameterError, match="1-5"):
        store.rate("a", 6)
    with pytest.raises(InvalidParameterError, match="unknown attempts columns"):
        store.append([{**row("a", 1.0), "colour": "red"}])
    with pytest.raises(InvalidParameterError, match="not a date"):
        store.read(since="yesterday")


def test_empty_store_reads_empty(tmp_path):
    t = FeedbackStore(tmp_path / "nothing").read()
    assert t.num_rows == 0 and "rating" in t.column_names


def _writer(root: str, name: str, batches: int, rows_per_batch: int) -> None:
    store = FeedbackStore(root)
    for b in range(batches):
        store.append([row(f"{name}-{b}-{i}", float(i)) for i in range(rows_per_batch)])


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), f"w{k}", 8, 5)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    counts = check_integrity(FeedbackStore(tmp_path))
    assert counts == {"files": 32, "rows": 160}
    songs = FeedbackStore(tmp_path).read()["song_id"].to_pylist()
    assert sorted(songs) == sorted(f"w{k}-{b}-{i}" for k in range(4) for b in range(8)
                                   for i in range(5))  # fmt: skip


def _acking_writer(root: str, ack: str, pause_before_rename: bool) -> None:
    """Append batches forever; after each append returns, record its song ids in ``ack``.
    With ``pause_before_rename``, the third commit stops between the fsynced temp file and
    its rename (and says so in ``ack``), to be killed there."""
    import tuning.store as store_mod

    store = FeedbackStore(root)
    real_replace = os.replace
    commits = 0

    def slow_replace(src, dst):
        nonlocal commits
        commits += 1
        if pause_before_rename and commits == 3:
            with open(ack, "a") as f:
                f.write("PAUSED\n")
            time.sleep(600)
        real_replace(src, dst)

    store_mod.os.replace = slow_replace
    b = 0
    while True:
        ids = [f"k-{b}-{i}" for i in range(20)]
        store.append([row(s, 50.0) for s in ids])
        with open(ack, "a") as f:
            f.write(" ".join(ids) + "\n")
            f.flush()
        b += 1


def _wait_for(path: Path, predicate, timeout: float = 120.0) -> list[str]:
    t0 = time.time()
    while time.time() - t0 < timeout:
        lines = path.read_text().splitlines() if path.exists() else []
        if predicate(lines):
            return lines
        time.sleep(0.02)
    raise AssertionError(f"writer did not get there in {timeout} s")


@pytest.mark.parametrize("where", ["before_rename", "anywhere"])
def test_writer_killed_mid_write(tmp_path, where):
    ack = tmp_path / "ack.txt"
    root = tmp_path / "store"
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_acking_writer, args=(str(root), str(ack), where == "before_rename"))
    p.start()
    if where == "before_rename":
        _wait_for(ack, lambda lines: "PAUSED" in lines)
        assert list(root.glob("attempts/*/.*.tmp")), "the temp file is written"
    else:
        _wait_for(ack, lambda lines: len(lines) >= 3)
        time.sleep(0.05)  # lands anywhere in a later append
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    acked = [s for line in ack.read_text().splitlines() if line != "PAUSED" for s in line.split()]
    store = FeedbackStore(root)
    counts = check_integrity(store)  # every visible file complete, no duplicated record
    songs = store.read()["song_id"].to_pylist()
    assert set(acked) <= set(songs), "an acknowledged row was lost"
    assert len(songs) == len(set(songs)), "a row was duplicated"
    assert counts["rows"] % 20 == 0, "a partial batch became visible"
    # Only the one batch in flight may be visible without its acknowledgement.
    assert len(songs) - len(acked) in (0, 20)
    if where == "before_rename":
        assert len(songs) == len(acked) == 40
        assert store.cleanup(older_than_s=0)
        assert not list(root.glob("attempts/*/.*.tmp"))


def test_feedback_cli_query_and_rate(tmp_path, capsys):
    store = FeedbackStore(tmp_path)
    store.append([row("song-1", 62.0), row("song-1", 71.0, attempt=2), row("song-2", 88.0)])
    assert main(["feedback", "--store", str(tmp_path), "rate", "song-1", "3"]) == 0
    capsys.readouterr()
    assert main(["feedback", "--store", str(tmp_path), "query", "--min-score", "70", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["song_id"], r["score"], r["rating"]) for r in lines] == [
        ("song-1", 71.0, 3),
        ("song-2", 88.0, None),
    ]
    assert lines[0]["params"]["overrides"] == {}
    assert main(["feedback", "--store", str(tmp_path), "query", "--song", "song-2"]) == 0
    out = capsys.readouterr().out
    assert "song-2" in out and "song-1" not in out
    with pytest.raises(SystemExit):
        main(["feedback", "--store", str(tmp_path), "rate", "song-1", "9"])
