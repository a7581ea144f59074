"""The reference mastering chain (route b) on synthetic mixes: on target, under the ceiling,
not clipped, and its corrective EQ and width move toward the genre's balance."""

from __future__ import annotations

import pytest
import torch

from mastering.data.pairs import clipped_fraction
from mastering.data.reference import (
    GENRE_TARGET_LUFS,
    ReferenceError,
    band_levels_db,
    limit_to_target,
    master_reference,
)
from mastering.dsp import lowpass_sos, side_to_mid_ratio_db, sosfilt
from mastering.loudness import integrated_loudness, true_peak
from mastering.testsignals import music_like


@pytest.fixture(scope="module")
def raw() -> torch.Tensor:
    """A dull, narrow, quiet raw mix: music-like audio low-passed at 5 kHz, nearly mono."""
    x = music_like(5.0, seed=8, peak_dbfs=-8.0).double()
    x = sosfilt(x, torch.stack([lowpass_sos(5000.0), lowpass_sos(5000.0)]).double())
    mid = x.mean(0, keepdim=True)
    return (0.85 * mid + 0.15 * x).float()


@pytest.mark.parametrize("genre", ["edm", "classical"])
def test_on_target_under_ceiling_not_clipped(raw, genre):
    master, settings = master_reference(raw, genre)
    assert master.shape == raw.shape
    lufs = float(integrated_loudness(master))
    assert lufs == pytest.approx(GENRE_TARGET_LUFS[genre], abs=0.1)
    assert settings.measured_lufs == pytest.approx(lufs)
    assert float(true_peak(master)) <= settings.ceiling_dbtp
    assert clipped_fraction(master / master.abs().max()) < 1e-4
    # the corrective EQ brightens the dull mix and the width stage widens the narrow one
    assert settings.high_shelf_db > 3.0
    assert band_levels_db(master)["air"] > band_levels_db(raw)["air"] + 3.0
    assert float(side_to_mid_ratio_db(master)) > float(side_to_mid_ratio_db(raw)) + 3.0


def test_explicit_target_and_silence(raw):
    master, settings = master_reference(raw, "jazz", target_lufs=-20.0)
    assert float(integrated_loudness(master)) == pytest.approx(-20.0, abs=0.1)
    assert settings.target_lufs == -20.0
    with pytest.raises(ReferenceError, match="silent"):
        master_reference(torch.zeros(2, 48_000), "pop")


def test_limiter_stage_is_time_aligned(raw):
    """The limiter's look-ahead delay is compensated: below the ceiling it is an exact gain."""
    quiet = raw * 0.1
    target = float(integrated_loudness(quiet)) + 3.0
    gain, y = limit_to_target(quiet, target, -1.1, 100.0)
    assert gain == pytest.approx(3.0, abs=0.05)
    assert torch.allclose(y, quiet * 10.0 ** (gain / 20.0), atol=1e-6)
