"""ISO 532-1 (Zwicker) loudness against the standard's published reference values."""

from __future__ import annotations

import math

import pytest
import torch

from mastering import psychoacoustic as pa
from mastering.errors import InvalidAudioError, InvalidParameterError

SR = 48_000
#: ISO 532-1 Annex B.2, test signal 1: third-octave levels (dB SPL), 25 Hz .. 12.5 kHz.
TEST_SIGNAL_1 = (
    -60, -60, 78, 79, 89, 72, 80, 89, 75, 87, 85, 79, 86, 80, 71, 70, 72, 71, 72, 74, 69, 65,
    67, 77, 68, 58, 45, 30,
)  # fmt: skip
#: The standard's tolerance on total loudness (clause 5.1 / 6.1): 5 %.
ISO_TOLERANCE = 0.05


def tone(freq_hz: float, level_db_spl: float, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return pa.tone_amplitude(level_db_spl) * torch.sin(2 * math.pi * freq_hz * t)


def test_annex_b2_third_octave_levels_give_83_296_sone():
    result = pa.loudness_from_levels(torch.tensor(TEST_SIGNAL_1, dtype=torch.float64))
    assert float(result.sone) == pytest.approx(83.296, rel=ISO_TOLERANCE / 10)
    # the specific loudness on the 0.1 Bark grid integrates to the total
    assert float(result.specific.sum() * 0.1) == pytest.approx(float(result.sone), rel=0.01)
    assert float(result.phon) == pytest.approx(40 + 10 * math.log2(83.296), abs=0.3)


def test_one_sone_is_a_1khz_tone_at_40_db_spl():
    result = pa.loudness_stationary(tone(1000, 40.0).view(1, -1))
    assert float(result.sone) == pytest.approx(1.0, rel=ISO_TOLERANCE)
    assert float(result.phon) == pytest.approx(40.0, abs=1.0)


def test_annex_b3_test_signal_3_1khz_60db():
    result = pa.loudness_stationary(tone(1000, 60.0).view(1, -1))
    assert float(result.sone) == pytest.approx(4.019, rel=ISO_TOLERANCE)


def test_ten_db_more_is_about_twice_as_loud_and_batches_match_singles():
    x = torch.stack([tone(1000, 60.0), tone(1000, 70.0)]).unsqueeze(1)  # [2, 1, T]
    both = pa.loudness_stationary(x).sone
    assert float(both[1] / both[0]) == pytest.approx(2.0, rel=0.1)
    single = pa.loudness_stationary(x[1]).sone
    assert float(single) == pytest.approx(float(both[1]), rel=1e-9)


def test_stereo_is_diotic_a_mono_signal_in_both_channels_reads_as_itself():
    x = tone(500, 55.0)
    mono = pa.loudness_stationary(x.view(1, -1)).sone
    stereo = pa.loudness_stationary(torch.stack([x, x])).sone
    assert float(stereo) == pytest.approx(float(mono), rel=1e-9)


def test_sone_phon_round_trip():
    sone = torch.tensor([0.05, 0.5, 1.0, 4.0, 83.3], dtype=torch.float64)
    phon = pa.sone_to_phon(sone)
    assert float(phon[2]) == pytest.approx(40.0)
    assert float(phon[3]) == pytest.approx(60.0)
    assert torch.allclose(pa.phon_to_sone(phon), sone, rtol=1e-6)


def test_time_varying_steady_tone_matches_stationary():
    x = tone(1000, 60.0, seconds=1.0).view(1, -1)
    tv = pa.loudness_time_varying(x)
    st = pa.loudness_stationary(x)
    assert tv.series is not None and tv.series.shape[-1] == pa.OUTPUT_RATE
    assert float(tv.sone) == pytest.approx(float(st.sone), rel=ISO_TOLERANCE)
    assert float(tv.sone) == pytest.approx(4.019, rel=ISO_TOLERANCE)


def test_time_varying_short_burst_is_quieter_and_decays_gradually():
    """Temporal integration: a 10 ms burst is much less loud than a 500 ms one at the same
    level; after the long burst stops the loudness decays over tens of ms, not at once."""
    long = torch.zeros(SR)
    long[: SR // 2] = tone(1000, 70.0, 0.5).float()
    short = torch.zeros(SR)
    short[: SR // 100] = tone(1000, 70.0, 0.01).float()
    res = pa.loudness_time_varying(torch.stack([long, short]).unsqueeze(1))
    assert float(res.sone_max[1]) < 0.7 * float(res.sone_max[0])
    series = res.series[0]
    rate = pa.OUTPUT_RATE
    steady = float(series[int(0.4 * rate)])
    after_30ms = float(series[int(0.53 * rate)])
    after_200ms = float(series[int(0.7 * rate)])
    assert 0.2 * steady < after_30ms < 0.95 * steady
    assert after_200ms < 0.15 * steady


def test_core_loudness_sum_is_a_differentiable_objective():
    x = (0.1 * torch.randn(1, 2, SR // 2, dtype=torch.float64)).requires_grad_(True)
    value = pa.core_loudness_sum(x)
    value.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    full = pa.loudness_stationary(x.detach()).sone
    assert 0.5 * float(full) < float(value.detach()) <= float(full) * 1.01


def test_bad_input_gives_clear_errors():
    bad = torch.zeros(1, 2, 1000)
    bad[0, 0, 10] = float("nan")
    with pytest.raises(InvalidAudioError, match="NaN"):
        pa.loudness_stationary(bad)
    with pytest.raises(InvalidParameterError, match="120 dB"):
        pa.loudness_from_levels(torch.full((28,), 125.0))
    with pytest.raises(InvalidParameterError, match="sound field"):
        pa.loudness_from_levels(torch.full((28,), 60.0), field="reverberant")
