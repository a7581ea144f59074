"""Polyphase oversampling / downsampling (mastering.dsp.resample): passband, stopband, delay."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mastering.dsp.resample import (
    HALF_WIDTH,
    downsample,
    group_delay,
    interpolated_abs_peaks,
    max_abs_oversampled,
    oversample,
    oversampling_scallop_db,
    polyphase_weight,
    prototype_filter,
)

FS = 48_000


def _sine(freq: float, n: int, fs: float = FS, phase: float = 0.0) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float64)
    return torch.sin(2 * math.pi * freq / fs * t + phase)


def _db(x: float) -> float:
    return 20.0 * math.log10(x)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_prototype_response_matches_documented_passband_and_stopband(factor):
    h = prototype_filter(factor) / factor
    n = 1 << 16
    mag = torch.fft.rfft(h, n).abs()
    f = torch.arange(mag.numel(), dtype=torch.float64) / n * factor  # in units of the input fs
    db = 20 * torch.log10(mag.clamp_min(1e-300))
    # Documented: passband 0 .. 0.41 fs within +-0.001 dB, -6.02 dB at fs/2,
    # >= 80 dB attenuation beyond 0.59 fs.
    assert db[f <= 0.41].abs().max() < 0.001
    assert db[(f - 0.5).abs().argmin()] == pytest.approx(-6.02, abs=0.01)
    assert db[f >= 0.59].max() < -80.0


@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("freq", [100.0, 1000.0, 10_000.0, 19_000.0])
def test_sine_amplitude_preserved_in_passband(factor, freq):
    x = _sine(freq, 4800)
    y = oversample(x, factor)
    # Compare with the continuous sine at the high rate, away from the zero-padded ends.
    ref = _sine(freq, 4800 * factor, FS * factor)
    mid = slice(400 * factor, 4400 * factor)
    assert (y[mid] - ref[mid]).abs().max() < 2e-4  # ~0.002 dB of a full-scale sine
    # amplitude: least-squares fit of a sine at freq
    assert _db(y[mid].abs().max().item()) == pytest.approx(0.0, abs=0.002)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_images_rejected_by_stopband_amount(factor):
    # 15 kHz sine, periodic over 0.1 s (bin-exact FFT, no window needed).
    freq, n_in = 15_000.0, 4800
    x = _sine(freq, 3 * n_in)
    y = oversample(x, factor)[n_in * factor : 2 * n_in * factor]  # middle period, steady state
    spec = torch.fft.rfft(y).abs()
    bin_hz = FS * factor / y.numel()
    signal = spec[round(freq / bin_hz)]
    images = [k * FS + s * freq for k in range(1, factor // 2 + 1) for s in (-1, 1)]
    images = [f for f in images if f < FS * factor / 2]
    assert images
    for f in images:
        assert _db((spec[round(f / bin_hz)] / signal).item()) < -80.0, f


def test_phase_zero_is_the_input_and_output_length():
    x = torch.randn(2, 3, 1001, dtype=torch.float64)
    for factor in (2, 4, 8):
        y = oversample(x, factor)
        assert y.shape == (2, 3, 1001 * factor)
        assert torch.equal(y[..., ::factor], x) or (y[..., ::factor] - x).abs().max() < 1e-12


def test_matches_plain_polyphase_conv1d():
    x = torch.randn(3, 777, dtype=torch.float64)
    for factor in (2, 4, 8):
        w = polyphase_weight(factor, dtype=torch.float64)
        ref = F.conv1d(x.unsqueeze(1), w, padding=HALF_WIDTH).transpose(1, 2).reshape(3, -1)
        assert (oversample(x, factor) - ref).abs().max() < 1e-12


def test_delay_compensation_and_causal_mode():
    x = torch.randn(1, 500, dtype=torch.float64)
    factor = 4
    d = group_delay(factor)
    assert d == factor * HALF_WIDTH
    aligned = oversample(x, factor)
    causal = oversample(x, factor, compensate_delay=False)
    # Delayed by d; before that only the pre-ringing of the first samples (small).
    assert torch.allclose(causal[..., d:], aligned[..., :-d])
    assert causal[..., : d // 2].abs().max() < 0.01 * x.abs().max()
    # Causal oversampler == full convolution with the causal prototype, first M*T samples.
    up = torch.zeros(1, 500 * factor, dtype=torch.float64)
    up[..., ::factor] = x
    h = prototype_filter(factor)
    full = F.conv1d(F.pad(up, (h.numel() - 1, 0)).unsqueeze(1), h.flip(0).view(1, 1, -1))
    assert torch.allclose(causal, full.squeeze(1), atol=1e-12)


def test_downsample_round_trip_and_alias_rejection():
    factor = 4
    x = _sine(5000.0, 4800) * 0.5 + _sine(13_000.0, 4800, phase=1.0) * 0.3
    back = downsample(oversample(x, factor), factor)
    assert back.shape == x.shape
    assert (back - x)[200:-200].abs().max() < 2e-4
    # A 30 kHz tone at 192 kHz is above the 48 kHz output's 0.59 fs stopband edge (28.3 kHz):
    # its alias at 18 kHz must be at least 80 dB down.
    hi = _sine(30_000.0, 19_200 * 3, FS * factor)
    low = downsample(hi, factor)[4800:9600]
    assert _db(low.abs().max().item()) < -80.0
    # Causal mode: delayed by half_width output samples.
    y = torch.randn(1, 4000, dtype=torch.float64)
    a, c = downsample(y, factor), downsample(y, factor, compensate_delay=False)
    assert torch.allclose(c[..., HALF_WIDTH:], a[..., :-HALF_WIDTH])
    h = prototype_filter(factor) / factor  # causal decimator: full convolution, every M-th
    full = F.conv1d(F.pad(y, (h.numel() - 1, 0)).unsqueeze(1), h.flip(0).view(1, 1, -1))
    assert torch.allclose(c, full.squeeze(1)[..., ::factor], atol=1e-12)


def test_max_abs_oversampled_matches_full_oversampling():
    x = torch.randn(2, 2, 3000, dtype=torch.float64)
    for factor in (2, 4, 8):
        ref = oversample(x, factor).abs().amax(-1)
        got = max_abs_oversampled(x, factor, chunk=700)
        assert torch.allclose(got, ref, atol=1e-12)


def test_gradients():
    x = torch.randn(1, 1, 20, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: oversample(v, 4), (x,))
    assert torch.autograd.gradcheck(lambda v: downsample(v, 2), (x,))


def test_float32_and_identity():
    x = torch.randn(2, 1000)
    assert oversample(x, 1) is x and downsample(x, 1) is x
    y = oversample(x, 4)
    assert y.dtype == torch.float32
    assert (y.double() - oversample(x.double(), 4)).abs().max() < 1e-5
    with pytest.raises(ValueError):
        oversample(x, 0)


def test_scallop_formula():
    assert oversampling_scallop_db(20_000, FS, 4) == pytest.approx(-0.47, abs=0.01)
    assert oversampling_scallop_db(20_000, FS, 8) == pytest.approx(-0.12, abs=0.01)
    assert oversampling_scallop_db(20_000, FS, 16) == pytest.approx(-0.03, abs=0.01)


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_interpolated_abs_peaks_equal_the_oversampled_signal(factor):
    """Per sample, the largest |value| over the oversampled phases, as a plain one-channel
    polyphase conv1d computes it (valid samples only)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 1000, generator=g, dtype=torch.float64)
    H = HALF_WIDTH
    got = interpolated_abs_peaks(x, factor)
    assert got.shape == (2, 3, 1000 - 2 * H)
    if factor == 1:
        want = x[..., H:-H].abs()
    else:
        w = polyphase_weight(factor, dtype=torch.float64)
        want = F.conv1d(x.reshape(6, 1, -1), w).abs().amax(1).reshape(2, 3, -1)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    # The meter's whole-signal peak is the maximum of these (on the valid part).
    assert float(got.amax()) <= float(max_abs_oversampled(x, factor).amax()) + 1e-12


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_oversampled_apply_is_the_round_trip_away_from_the_edges(factor):
    """Equal to downsample(fn(oversample(x))) except the first and last half_width samples;
    per-row parameters broadcast; gradients flow."""
    from mastering.dsp.resample import oversampled_apply

    g = torch.Generator().manual_seed(5)
    x = (0.5 * torch.randn(2, 3, 3001, generator=g, dtype=torch.float64)).requires_grad_()
    drive = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64).view(1, 3, 1)

    def fn(u):
        return torch.tanh(drive * u) / drive

    got = oversampled_apply(x, fn, factor)
    want = downsample(fn(oversample(x, factor)), factor)
    H = HALF_WIDTH
    assert got.shape == x.shape
    torch.testing.assert_close(got[..., H:-H], want[..., H:-H], atol=1e-12, rtol=0)
    (gx,) = torch.autograd.grad(got[..., H:-H].sum(), x)
    (wx,) = torch.autograd.grad(want[..., H:-H].sum(), x)
    torch.testing.assert_close(gx, wx, atol=1e-10, rtol=0)
