"""A full improvement cycle on a tiny pair corpus: promote, no-promote, rollback (no Ray)."""

from __future__ import annotations

import json

import pytest

from tuning.improve import (
    POINTER,
    ImproveConfig,
    ImproveError,
    current_adapter_dir,
    current_version,
    improve,
    read_decisions,
    rollback,
    weak_songs,
)
from tuning.store import FeedbackStore


def _row(song: str, score: float) -> dict:
    return {"song_id": song, "input_hash": "0" * 64, "score": score, "attempt": 1, "kept": True,
            "sub_scores": {}, "chain_version": "test"}  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from mastering.training.pool import synthetic_manifest

    root = tmp_path_factory.mktemp("improve")
    manifest = synthetic_manifest(root / "pairs", n_songs=4, seconds=2.0, genres=("pop", "jazz"),
                                  splits=("train", "train", "test", "test"))  # fmt: skip
    store = FeedbackStore(root / "feedback")
    # song000 (pop, train): low score; song001 (jazz, train): good score but rated 1;
    # song002 (pop, test): low score but held out, never trained on.
    store.append([_row("song000_raw", 40.0), _row("song001_raw", 90.0), _row("song002_raw", 30.0)])
    store.rate("song001_raw", 1)
    return root, manifest, store


def test_weak_cases_are_low_scores_and_low_ratings(corpus):
    _, _, store = corpus
    assert weak_songs(store.root, 70.0, 2) == ["song000_raw", "song001_raw", "song002_raw"]
    assert weak_songs(store.root, 35.0, 2) == ["song001_raw", "song002_raw"]
    assert weak_songs(store.root, 35.0, 0) == ["song002_raw"]


def test_improve_cycle_promote_reject_rollback(corpus, capsys):
    from lacquer.cli import main
    from mastering.adapters import read_adapter_file

    _, manifest, store = corpus
    cfg = dict(store=str(store.root), manifest=str(manifest), steps=2, seconds=1.5)
    models = store.root / "models"

    # A margin the candidate always meets: promoted.
    first = improve(ImproveConfig(margin=-100.0, **cfg))
    assert first["action"] == "promote" and first["candidate"] == "v0001"
    assert first["genres"] == ["jazz", "pop"]
    assert first["weak_songs"] == ["song000_raw", "song001_raw"]  # song002 is held out
    assert first["heldout_songs"] == 2
    assert 0 <= first["score_current"] <= 100 and 0 <= first["score_candidate"] <= 100
    assert current_version(models) == "v0001"
    folder = current_adapter_dir(models)
    adapters = sorted(p.name for p in folder.glob("*.safetensors"))
    assert adapters == ["genre-jazz.safetensors", "genre-pop.safetensors"]
    trained = read_adapter_file(folder / "genre-pop.safetensors")
    assert any(
        float(p.detach().abs().sum()) > 0 for p in trained.parameters()
    )  # it learned something
    assert json.loads((folder / "version.json").read_text())["parent"] is None

    # A margin no candidate can meet: not promoted, but kept for the record.
    second = improve(ImproveConfig(margin=100.0, **cfg))
    assert second["action"] == "reject" and second["candidate"] == "v0002"
    assert current_version(models) == "v0001"
    assert (models / "versions" / "v0002" / "genre-pop.safetensors").exists()
    # The candidate started from the current version: its score of "current" is v0001's.
    assert second["score_current"] == pytest.approx(first["score_candidate"], abs=1e-6)

    decisions = read_decisions(store.root)
    assert decisions["action"].to_pylist() == ["promote", "reject"]
    assert decisions["current"].to_pylist() == ["v0001", "v0001"]
    assert decisions["margin"].to_pylist() == [-100.0, 100.0]

    # Roll back in one command: back to the base chain (v0001 had no parent).
    assert main(["improve", "--store", str(store.root), "--rollback"]) == 0
    assert "v0001 -> base chain" in capsys.readouterr().out
    assert current_version(models) is None and current_adapter_dir(models) is None
    assert json.loads((models / POINTER).read_text())["version"] is None
    assert read_decisions(store.root)["action"].to_pylist()[-1] == "rollback"
    with pytest.raises(ImproveError, match="nothing to roll back"):
        rollback(store.root)
    assert main(["improve", "--store", str(store.root), "--rollback"]) == 1
    assert "nothing to roll back" in capsys.readouterr().err

    assert main(["improve", "--store", str(store.root), "--history"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[2] for ln in lines] == ["promote", "reject", "rollback"]


def test_improve_without_weak_training_songs_skips(corpus, tmp_path):
    from lacquer.cli import main

    _, manifest, _ = corpus
    store = FeedbackStore(tmp_path / "fb")
    store.append([_row("song000_raw", 95.0)])
    rc = main(["improve", "--store", str(store.root), "--manifest", str(manifest), "--json"])
    assert rc == 0
    assert read_decisions(store.root)["action"].to_pylist() == ["skip"]
    assert current_version(store.root / "models") is None
    assert main(["improve", "--store", str(store.root), "--manifest", str(tmp_path / "x.csv")]) == 1
