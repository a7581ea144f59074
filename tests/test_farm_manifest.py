"""Job manifests and inputs (no Ray): persistence, resume rules, input manifests."""

from __future__ import annotations

import pytest

from cluster.inputs import SongInput, songs_from_files, songs_from_manifest
from cluster.manifest import (
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    Manifest,
    SongRecord,
    file_sha256,
)
from mastering.conditioning import Conditioning
from mastering.errors import InvalidParameterError


def record(tmp_path, sid: str, **kw) -> SongRecord:
    src = tmp_path / f"{sid}.wav"
    if not src.exists():
        src.write_bytes(sid.encode() * 10)
    return SongRecord(
        song_id=sid,
        input_path=str(src),
        input_hash=file_sha256(src),
        output_path=str(tmp_path / "out" / f"{sid}.wav"),
        **kw,
    )


def test_manifest_round_trips_atomically(tmp_path):
    path = tmp_path / "m.parquet"
    m = Manifest(
        path, [record(tmp_path, "a", conditioning={"genre": "rock"}), record(tmp_path, "b")]
    )
    m["a"].state, m["a"].attempts, m["a"].gpu_ids = DONE, 2, "0,1"
    m.save()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    back = Manifest.load(path)
    assert back["a"] == m["a"] and back["b"] == m["b"]
    assert back.counts() == {PENDING: 1, RUNNING: 0, DONE: 1, FAILED: 0}


def test_resume_rules(tmp_path):
    (tmp_path / "out").mkdir()
    old = {
        "done": record(tmp_path, "done", state=DONE, attempts=1),
        "done_missing": record(tmp_path, "done_missing", state=DONE, attempts=1),
        "done_changed": record(tmp_path, "done_changed", state=DONE, attempts=1),
        "running": record(tmp_path, "running", state=RUNNING, attempts=1),
        "poison": record(tmp_path, "poison", state=FAILED, error="x: NaN", error_kind="input"),
        "crashed": record(tmp_path, "crashed", state=FAILED, error="lost", error_kind="crash"),
    }
    for sid in ("done", "done_changed"):
        (tmp_path / "out" / f"{sid}.wav").write_bytes(b"master")
    (tmp_path / "done_changed.wav").write_bytes(b"new bytes")  # the input changed since
    fresh = [record(tmp_path, sid) for sid in [*old, "new"]]
    merged = Manifest(tmp_path / "m.parquet", old.values()).merge(fresh)
    states = {r.song_id: r.state for r in merged}
    assert states == {
        "done": DONE,
        "done_missing": PENDING,
        "done_changed": PENDING,
        "running": PENDING,
        "poison": FAILED,
        "crashed": PENDING,
        "new": PENDING,
    }
    assert merged["running"].attempts == 1
    assert merged["done_changed"].attempts == 0


def test_duplicate_song_ids_are_refused(tmp_path):
    with pytest.raises(InvalidParameterError, match="twice"):
        Manifest(tmp_path / "m.parquet", [record(tmp_path, "a"), record(tmp_path, "a")])
    with pytest.raises(InvalidParameterError, match="twice"):
        songs_from_files([tmp_path / "x.wav", tmp_path / "x.wav"])


def test_input_manifest_with_per_song_conditioning(tmp_path):
    (tmp_path / "songs").mkdir()
    csv = tmp_path / "songs" / "list.csv"
    csv.write_text(
        "input_path,genre,tempo_bpm,rule_breaks\n"
        "a.wav,rock,128,\n"
        '/abs/b.wav,,,"PRODUCTION_LoFi,PRODUCTION_BuriedVocals"\n'
    )
    a, b = songs_from_manifest(csv)
    assert a.path == tmp_path / "songs" / "a.wav"
    assert str(b.path) == "/abs/b.wav"
    default = Conditioning(genre="jazz", energy=0.4)
    ca = a.resolve_conditioning(default)
    assert (ca.genre, ca.tempo_bpm, ca.energy) == ("rock", 128, 0.4)
    cb = b.resolve_conditioning(default)
    assert cb.genre == "jazz"
    assert cb.rule_breaks == ("PRODUCTION_LoFi", "PRODUCTION_BuriedVocals")
    with pytest.raises(InvalidParameterError, match="polka"):
        SongInput("x", tmp_path / "x.wav", {"genre": "polka"}).resolve_conditioning(default)


def test_unreadable_input_manifest_is_a_clear_error(tmp_path):
    bad = tmp_path / "list.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(InvalidParameterError, match=r"list\.parquet"):
        songs_from_manifest(bad)
    csv = tmp_path / "list.csv"
    csv.write_text("path\na.wav\n")
    with pytest.raises(InvalidParameterError, match="input_path"):
        songs_from_manifest(csv)
