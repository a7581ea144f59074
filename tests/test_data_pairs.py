"""Pair manifest validation, alignment and deterministic crops (mastering.data.pairs)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from mastering.data.pairs import (
    PAIR_COLUMNS,
    CropConfig,
    PairBatch,
    PairChecks,
    PairCrops,
    PairDataError,
    PairRecord,
    PairStream,
    align_pair,
    estimate_lag,
    load_pair,
    read_pair_manifest,
    write_pair_manifest,
)
from mastering.io import write_audio
from mastering.testsignals import music_like

SR = 48_000


def _master(raw: torch.Tensor, delay: int) -> torch.Tensor:
    """A crude 'master': louder, soft-saturated, brighter-ish, delayed by ``delay`` samples."""
    y = torch.tanh(2.5 * raw) * 0.8
    y = y + 0.2 * torch.diff(y, dim=-1, prepend=y[:, :1])
    if delay >= 0:
        return torch.cat([torch.zeros(2, delay), y], dim=-1)
    return y[:, -delay:]


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pairs")
    records = []
    for i, (delay, genre) in enumerate([(480, "rock"), (-96, "jazz"), (0, "edm")]):
        raw = music_like(4.0, seed=i, peak_dbfs=-6.0)
        write_audio(d / f"raw{i}.wav", raw, format="wav32f")
        write_audio(d / f"master{i}.wav", _master(raw, delay), format="wav32f")
        records.append(
            PairRecord(
                raw_path=d / f"raw{i}.wav",
                mastered_path=d / f"master{i}.wav",
                genre=genre,
                bpm=100.0 + 10 * i,
                mix_balance=0.3,
                target_lufs=-10.0,
                split="train" if i < 2 else "val",
                extras={"song_id": f"s{i}"},
            )
        )
    write_pair_manifest(records, d / "pairs.parquet")
    write_pair_manifest(records, d / "pairs.csv")
    return d


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _good_row(d: Path) -> dict:
    return {
        "raw_path": "raw0.wav",
        "mastered_path": "master0.wav",
        "genre": "rock",
        "bpm": "120",
        "mix_balance": "0.4",
        "target_lufs": "-9",
        "split": "train",
    }


def test_manifest_round_trip_parquet_and_csv(pair_dir):
    for name in ("pairs.parquet", "pairs.csv"):
        recs = read_pair_manifest(pair_dir / name)
        assert [r.genre for r in recs] == ["rock", "jazz", "edm"]
        assert recs[0].raw_path == pair_dir / "raw0.wav"
        assert recs[1].bpm == 110.0
        assert recs[2].extras["song_id"] == "s2"
        assert recs[0].conditioning().genre == "rock"
    assert len(read_pair_manifest(pair_dir / "pairs.csv", split="val")) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"genre": "polka"}, "row 2: unknown genre 'polka'"),
        ({"bpm": "fast"}, "row 2: bpm 'fast' is not a number"),
        ({"bpm": "900"}, "row 2: bpm '900' is outside 20..400"),
        ({"mix_balance": "1.5"}, "row 2: mix_balance '1.5' is outside 0..1"),
        ({"target_lufs": "3"}, "row 2: target_lufs '3' is outside -40..0"),
        ({"split": "dev"}, "row 2: split 'dev' is not one of train, val, test"),
        ({"raw_path": ""}, "row 2: raw_path is empty"),
        ({"mastered_path": "nope.wav"}, "row 2: mastered_path 'nope.wav' does not exist"),
        ({"mastered_path": "raw0.wav"}, "row 2: raw_path and mastered_path are the same file"),
    ],
)
def test_manifest_row_errors_name_file_and_row(pair_dir, tmp_path, change, message):
    bad = {**_good_row(pair_dir), **change}
    rows = [_good_row(pair_dir), bad]
    for r in rows:  # manifest lives elsewhere: use absolute paths except the deliberate bad ones
        for col in ("raw_path", "mastered_path"):
            if r[col] and r[col] != "nope.wav":
                r[col] = str(pair_dir / r[col])
    path = _write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(PairDataError) as exc:
        read_pair_manifest(path)
    assert message in str(exc.value)
    assert str(path) in str(exc.value)


def test_manifest_file_level_errors(pair_dir, tmp_path):
    row = _good_row(pair_dir)
    del row["target_lufs"], row["split"]
    path = _write_csv(tmp_path / "m.csv", [row])
    with pytest.raises(PairDataError, match="missing column\\(s\\): target_lufs, split"):
        read_pair_manifest(path)
    (tmp_path / "empty.csv").write_text(",".join(PAIR_COLUMNS) + "\n")
    with pytest.raises(PairDataError, match="no rows"):
        read_pair_manifest(tmp_path / "empty.csv")
    with pytest.raises(PairDataError, match="not found"):
        read_pair_manifest(tmp_path / "absent.parquet")
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(PairDataError, match=r"use \.parquet or \.csv"):
        read_pair_manifest(tmp_path / "m.json")


@pytest.mark.parametrize("delay", [0, 1, 37, 2400, -517])
def test_estimate_lag_recovers_known_offset(delay):
    raw = music_like(2.5, seed=3, peak_dbfs=-6.0)
    mastered = _master(raw, delay)
    assert estimate_lag(raw, mastered, max_lag=SR // 2) == delay
    pair = align_pair(raw, mastered)
    assert pair.lag_samples == delay
    assert pair.correlation > 0.9
    assert pair.raw.shape == pair.mastered.shape


def test_load_pair_reports_lag(pair_dir):
    recs = read_pair_manifest(pair_dir / "pairs.parquet")
    assert load_pair(recs[0]).lag_samples == 480
    assert load_pair(recs[1]).lag_ms == pytest.approx(-2.0)


def test_align_pair_rejects_bad_pairs():
    raw = music_like(3.0, seed=1, peak_dbfs=-6.0)
    with pytest.raises(PairDataError, match=r"m\.wav: silent"):
        align_pair(raw, torch.zeros_like(raw), mastered_name="m.wav")
    clipped = (raw * 20).clamp(-1, 1)
    with pytest.raises(PairDataError, match=r"r\.wav: clipped"):
        align_pair(clipped, raw, raw_name="r.wav")
    with pytest.raises(PairDataError, match=r"does not match the raw mix's 3\.00 s"):
        align_pair(raw, torch.cat([raw, raw], -1), PairChecks(max_length_mismatch_s=1.0))
    other = music_like(3.0, seed=99, peak_dbfs=-6.0).flip(-1)
    with pytest.raises(PairDataError, match="does not match its raw mix"):
        align_pair(raw, other)


def test_stream_batches_shapes_and_determinism(pair_dir):
    cfg = CropConfig(crop_seconds=1.0, batch_size=3)
    a = list(PairStream(pair_dir / "pairs.parquet", cfg, seed=7, steps=2))
    b = list(PairStream(pair_dir / "pairs.parquet", cfg, seed=7, steps=2))
    c = list(PairStream(pair_dir / "pairs.parquet", cfg, seed=8, steps=2))
    assert len(a) == 2
    batch = a[0]
    assert batch.raw.shape == batch.mastered.shape == (3, 2, SR)
    assert batch.raw.dtype == torch.float32
    assert len(batch.conditioning) == 3
    assert set(batch.song.tolist()) <= {0, 1}  # split="train" keeps songs 0 and 1
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.raw, y.raw) and torch.equal(x.mastered, y.mastered)
        assert torch.equal(x.start, y.start)
    assert not all(torch.equal(x.start, y.start) for x, y in zip(a, c, strict=True))
    # Crops are aligned: the crude master is a memoryless function of the raw crop.
    s = int(batch.song[0])
    expected = _master(batch.raw[0], 0)[:, 1:]
    assert torch.allclose(batch.mastered[0][:, 1:], expected, atol=1e-4), s


def test_crops_dataset_deterministic_with_dataloader(pair_dir):
    cfg = CropConfig(crop_seconds=0.5)
    ds = PairCrops(pair_dir / "pairs.csv", cfg, seed=1, split=None, n_crops=5)
    assert len(ds) == 5
    loader = DataLoader(ds, batch_size=5, collate_fn=PairBatch.collate)
    batch = next(iter(loader))
    assert batch.raw.shape == (5, 2, SR // 2)
    assert batch.song.tolist() == [0, 1, 2, 0, 1]
    again = PairCrops(pair_dir / "pairs.csv", cfg, seed=1, split=None, n_crops=5)
    assert torch.equal(again[3].raw, ds[3].raw)
    with pytest.raises(IndexError):
        ds[5]
