"""The offline corpus: composition, raw mixes, reference masters and the pair manifest.

Renders a real 2-song corpus (FluidSynth + Festival, Debian packages) with 6-8 s songs.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lacquer.cli import main
from mastering.data import compose, mixing, synth
from mastering.data.corpus import CorpusConfig, assign_splits, generate_corpus, render_song
from mastering.data.pairs import CropConfig, PairStream, clipped_fraction, read_pair_manifest
from mastering.io import read_audio
from mastering.loudness import integrated_loudness, true_peak

pytestmark = pytest.mark.skipif(
    not synth.available_engines()["fluidsynth"],
    reason="needs Debian fluidsynth + fluid-soundfont-gm",
)

CONFIG = dict(seed=3, seconds=(6.0, 8.0), genres=("rock", "ballad"), stems=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    rows = generate_corpus(CorpusConfig(n=2, out=out, **CONFIG))
    return out, rows


def test_songs_manifest_and_files(corpus):
    out, _ = corpus
    table = pq.read_table(out / "songs.parquet").to_pylist()
    assert [r["song_id"] for r in table] == ["song_0000", "song_0001"]
    assert sorted(r["genre"] for r in table) == ["ballad", "rock"]
    assert sorted(r["split"] for r in table) == ["train", "val"]
    vocal = "festival" if synth.available_engines()["festival"] else "gm_voice"
    for r in table:
        assert r["stems"].split(",") == list(compose.STEMS)
        assert r["vocal_engine"] == vocal
        assert 0.0 < r["vocal_ratio"] < 1.0
        assert 4.0 <= r["duration_s"] <= 12.0
        assert r["key"].split()[1] in ("major", "minor")
        style = compose.STYLES[r["genre"]]
        assert style.tempo[0] <= r["tempo_bpm"] <= style.tempo[1]
        for k in compose.STEMS:
            assert math.isfinite(r[f"gain_{k}_db"])
            assert (out / "stems" / r["song_id"] / f"{k}.wav").is_file()
        assert (out / r["midi_path"]).is_file()
        raw, _ = read_audio(out / r["raw_path"])
        assert raw.shape[-1] == round(r["duration_s"] * 48_000)
        # raw: at its drawn loudness (within the ±6 LU spread around -18), not limited
        assert float(integrated_loudness(raw)) == pytest.approx(r["target_lufs_raw"], abs=0.1)
        assert -24.0 <= r["lufs"] <= -12.0
        # 15 Hz high-pass: no DC
        assert abs(float(raw.mean())) < 1e-3


def test_stems_sum_to_the_unprocessed_mix(corpus):
    out, rows = corpus
    r = rows[0]
    parts = [read_audio(out / "stems" / r["song_id"] / f"{k}.wav")[0] for k in compose.STEMS]
    total = sum(parts)
    assert float(integrated_loudness(total)) > -40.0
    vocal = parts[-1]
    share = float(vocal.double().square().sum() / sum(p.double().square().sum() for p in parts))
    assert share == pytest.approx(r["vocal_ratio"], rel=1e-3)


def test_pair_manifest_masters_on_target_and_under_ceiling(corpus):
    out, rows = corpus
    records = read_pair_manifest(out / "pairs.parquet")
    assert len(records) == 2
    for rec, row in zip(records, rows, strict=True):
        assert rec.genre == row["genre"] and rec.split == row["split"]
        master, _ = read_audio(rec.mastered_path)
        assert float(integrated_loudness(master)) == pytest.approx(rec.target_lufs, abs=0.5)
        assert float(true_peak(master)) <= row["ref_ceiling_dbtp"]
        # limited, not clipped: no flat-topped runs at the master's peak
        assert clipped_fraction(master / master.abs().max()) < 1e-4
        assert rec.target_lufs > row["lufs"]  # the reference is louder than the raw mix
    batch = next(iter(PairStream(records, CropConfig(crop_seconds=2.0, batch_size=2), split=None)))
    assert batch.raw.shape == batch.mastered.shape == (2, 2, 96_000)
    assert {c.genre for c in batch.conditioning} <= {"rock", "ballad"}


def test_song_render_is_deterministic(corpus, tmp_path):
    out, rows = corpus
    cfg = CorpusConfig(n=2, out=tmp_path, reference=False, **CONFIG)
    again = render_song(0, cfg, rows[0]["genre"], rows[0]["split"])
    a = read_audio(out / rows[0]["raw_path"])[0]
    b = read_audio(tmp_path / again["raw_path"])[0]
    assert torch.equal(a, b)
    assert again["gain_vocal_db"] == rows[0]["gain_vocal_db"]


def test_compose_every_genre_has_all_parts_and_is_seeded():
    for genre in compose.STYLES:
        song = compose.compose_song(genre, seed=11, duration_s=30.0)
        assert all(len(inst.notes) > 0 for inst in song.parts.values()), genre
        assert song.vocal and 48 <= min(n.pitch for n in song.vocal) <= 64
        assert 20.0 <= song.duration_s <= 31.0
    a, b = (compose.compose_song("jazz", seed=5, duration_s=20.0) for _ in range(2))
    assert a.vocal == b.vocal
    assert [n.start for n in a.parts["drums"].notes] == [n.start for n in b.parts["drums"].notes]
    c = compose.compose_song("jazz", seed=6, duration_s=20.0)
    assert c.vocal != a.vocal


def test_raw_mix_settings_span_the_spread():
    rng = np.random.default_rng(0)
    draws = [mixing.draw_mix(rng, compose.STEMS) for _ in range(400)]
    lufs = np.array([d.target_lufs for d in draws])
    assert lufs.min() >= -24.0 and lufs.max() <= -12.0
    assert lufs.min() < -23.0 and lufs.max() > -13.0
    sides = np.array([d.side_gain for d in draws])
    assert (sides < 0.6).mean() > 0.2 and (sides > 1.5).mean() > 0.2
    assert any(d.lowpass_hz for d in draws) and any(d.lowpass_hz is None for d in draws)
    highs = np.array([d.high_shelf_db for d in draws])
    assert highs.min() < -6.0 and highs.max() > 3.0


def test_splits_by_song():
    assert assign_splits(2, 0).count("val") == 1
    labels = assign_splits(50, 1)
    assert labels.count("val") == 5 and labels.count("test") == 5
    assert labels == assign_splits(50, 1)


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert main(["corpus", "--n", "0", "--out", str(tmp_path)]) == 1
    assert "--n must be at least 1" in capsys.readouterr().err
    assert main(["corpus", "--n", "1", "--out", str(tmp_path), "--genres", "polka"]) == 1
    assert "unknown genre(s) polka" in capsys.readouterr().err
    assert main(["corpus", "--n", "1", "--out", str(tmp_path), "--seconds", "9", "3"]) == 1
    assert "--seconds 9.0 3.0" in capsys.readouterr().err
