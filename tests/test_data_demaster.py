"""Self-supervised de-mastering: parameters recorded, each one moves the audio the way it says
(so the restoration a model learns points the opposite way)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mastering.data.demaster import (
    DemasterParams,
    demaster,
    draw_demaster,
    write_demastered_pairs,
)
from mastering.data.reference import band_levels_db
from mastering.dsp import side_to_mid_ratio_db
from mastering.loudness import integrated_loudness, loudness_range
from mastering.testsignals import music_like

SR = 48_000


@pytest.fixture(scope="module")
def mastered() -> torch.Tensor:
    """Loud, compressed-sounding stereo material: music-like audio through a soft clipper,
    with decorrelated channels (so it has width to narrow)."""
    x = music_like(6.0, seed=4, peak_dbfs=-1.0)
    other = music_like(6.0, seed=5, peak_dbfs=-1.0)
    x = torch.stack([x[0] + 0.4 * other[1], x[1] + 0.4 * other[0]])
    return torch.tanh(3.0 * x) * 0.85


def _crest_db(x: torch.Tensor) -> float:
    return float(20 * torch.log10(x.abs().max() / x.square().mean().sqrt()))


def test_draws_are_recorded_and_seeded():
    a = draw_demaster(np.random.default_rng(3))
    b = draw_demaster(np.random.default_rng(3))
    assert a == b and a.to_dict() == b.to_dict()
    assert set(a.to_dict()) == {
        "tilt_db", "expansion_ratio", "threshold_db", "max_expansion_db", "side_gain",
        "lowpass_hz", "level_db",
    }  # fmt: skip
    draws = [draw_demaster(np.random.default_rng(s)) for s in range(200)]
    assert all(-12.0 <= d.level_db <= -2.0 and 0.35 <= d.side_gain <= 1.0 for d in draws)
    assert any(d.lowpass_hz for d in draws) and any(d.lowpass_hz is None for d in draws)
    assert min(d.tilt_db for d in draws) < -4 and max(d.tilt_db for d in draws) > 4


def test_level_change(mastered):
    y = demaster(mastered, DemasterParams(level_db=-7.5))
    delta = float(integrated_loudness(y) - integrated_loudness(mastered))
    assert delta == pytest.approx(-7.5, abs=0.05)


def test_narrowing(mastered):
    y = demaster(mastered, DemasterParams(side_gain=0.5))
    delta = float(side_to_mid_ratio_db(y) - side_to_mid_ratio_db(mastered))
    assert delta == pytest.approx(20 * np.log10(0.5), abs=0.05)


@pytest.mark.parametrize("tilt", [-6.0, 6.0])
def test_tilt_direction(mastered, tilt):
    before, after = band_levels_db(mastered), band_levels_db(demaster(mastered, DemasterParams(
        tilt_db=tilt)))  # fmt: skip
    d_air, d_low = after["air"] - before["air"], after["low"] - before["low"]
    assert np.sign(d_air - d_low) == np.sign(tilt)
    assert abs(d_air - d_low) > 0.7 * abs(tilt)


def test_band_limiting(mastered):
    y = demaster(mastered, DemasterParams(lowpass_hz=6000.0))
    spec = lambda x: torch.fft.rfft(x.sum(0).double()).abs().square()  # noqa: E731
    f = torch.fft.rfftfreq(mastered.shape[-1], 1 / SR)
    hi = f > 12_000
    ratio = float(spec(y)[hi].sum() / spec(mastered)[hi].sum())
    assert 10 * np.log10(ratio) < -20.0


def test_expansion_restores_dynamics(mastered):
    p = DemasterParams(expansion_ratio=1.8, threshold_db=-12.0)
    y = demaster(mastered, p)
    assert _crest_db(y) > _crest_db(mastered) + 1.0
    assert float(loudness_range(y)) > float(loudness_range(mastered))
    assert float(y.abs().max()) == pytest.approx(float(mastered.abs().max()), rel=1e-4)


def test_batched_and_finite(mastered):
    rng = np.random.default_rng(0)
    p = draw_demaster(rng)
    batch = torch.stack([mastered, mastered * 0.5])
    y = demaster(batch, p)
    assert y.shape == batch.shape and torch.isfinite(y).all()
    assert torch.allclose(y[0], demaster(mastered, p), atol=1e-5)


def test_write_demastered_pairs_manifest(mastered, tmp_path):
    from mastering.data.pairs import PairRecord, load_pair, read_pair_manifest
    from mastering.io import write_audio

    recs = []
    for i in range(2):
        path = write_audio(tmp_path / f"m{i}.wav", mastered * (0.5 + 0.5 * i), format="wav32f")
        recs.append(PairRecord(path, path, "pop", 120.0, 0.3, -10.0, "train", {"song_id": i}))
    written = write_demastered_pairs(recs, tmp_path / "dm", tmp_path / "dm.csv", seed=2)
    back = read_pair_manifest(tmp_path / "dm.csv")
    assert [r.raw_path for r in back] == [r.raw_path for r in written]
    assert back[0].extras["route"] == "demaster"
    assert float(back[0].extras["dm_level_db"]) == pytest.approx(written[0].extras["dm_level_db"])
    expected = float(integrated_loudness(mastered * 0.5))
    assert back[0].target_lufs == pytest.approx(expected, abs=0.01)
    pair = load_pair(back[1])  # the loader accepts it (filter group delay: a sample or two)
    assert abs(pair.lag_samples) <= 2 and pair.correlation > 0.5
    again = write_demastered_pairs(recs, tmp_path / "dm2", tmp_path / "dm2.csv", seed=2)
    assert [r.extras for r in again] == [r.extras for r in written]
