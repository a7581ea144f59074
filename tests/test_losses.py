"""The training losses: zero for identical inputs, growing with the degradation each is named
after, finite gradients."""

from __future__ import annotations

import pytest
import torch

from mastering import losses as L
from mastering.dsp.ir import synthesize_ir
from mastering.testsignals import music_like


@pytest.fixture(scope="module")
def x():
    return torch.stack([music_like(1.0, seed=s) for s in (1, 2)])


def _db(v: float) -> float:
    return 10.0 ** (v / 20.0)


def _tilt(x: torch.Tensor, db_at_nyquist: float) -> torch.Tensor:
    """A smooth spectral tilt (first-order shelf by FFT masking)."""
    spec = torch.fft.rfft(x.double(), dim=-1)
    f = torch.linspace(0.0, 1.0, spec.shape[-1], dtype=torch.float64)
    gain = torch.pow(10.0, db_at_nyquist * f / 20.0)
    return torch.fft.irfft(spec * gain, n=x.shape[-1]).float()


def _narrow(x: torch.Tensor, amount: float) -> torch.Tensor:
    mid = x.mean(1, keepdim=True)
    return (1.0 - amount) * x + amount * mid


def _squash(x: torch.Tensor, drive: float) -> torch.Tensor:
    """Instantaneous compression: more drive, flatter envelope and lower crest."""
    y = torch.tanh(drive * x) / drive
    return y * (x.square().mean().sqrt() / y.square().mean().sqrt())


PAIRWISE = [
    L.perceptual_spectral_loss,
    L.mel_distance_db,
    L.mrstft_distance,
    L.dynamic_loss,
    L.image_loss,
    L.harmonic_loss,
]


@pytest.mark.parametrize("fn", PAIRWISE, ids=lambda f: f.__name__)
def test_zero_for_identical_inputs(fn, x):
    assert float(fn(x, x)) == pytest.approx(0.0, abs=1e-5)
    per_song = fn(x, x, reduction="none")
    assert per_song.shape == (2,)


def test_spectral_grows_with_tilt_and_level(x):
    values = [float(L.perceptual_spectral_loss(_tilt(x, d), x)) for d in (1.0, 3.0, 9.0)]
    assert values[0] < values[1] < values[2]
    levels = [float(L.mrstft_distance(x * _db(d), x)) for d in (0.5, 2.0, 6.0)]
    assert levels[0] < levels[1] < levels[2]
    mel = [float(L.mel_distance_db(x * _db(d), x)) for d in (1.0, 3.0)]
    # dB for dB where the reference has content (bins under its floor in both count 0).
    assert 0.5 < mel[0] <= 1.0 and mel[1] == pytest.approx(3.0 * mel[0], rel=0.05)


def test_spectral_sees_the_side_channel(x):
    assert float(L.perceptual_spectral_loss(_narrow(x, 0.7), x)) > 0.1


def test_dynamic_grows_with_compression_not_with_level(x):
    assert float(L.dynamic_loss(x * _db(-6.0), x)) < 1e-3
    values = [float(L.dynamic_loss(_squash(x, d), x)) for d in (2.0, 6.0, 20.0)]
    assert values[0] < values[1] < values[2]
    assert values[2] > 1.0


def test_image_grows_with_narrowing_and_punishes_phase(x):
    values = [float(L.image_loss(_narrow(x, a), x)) for a in (0.2, 0.5, 0.9)]
    assert values[0] < values[1] < values[2]
    flipped = x * torch.tensor([1.0, -1.0]).view(1, 2, 1)
    assert float(L.image_loss(flipped, x)) > 3.0 * values[2]
    assert float(L.image_loss(x * _db(-6.0), x)) < 1e-4


def test_loudness_loss(x):
    lufs = L.k_loudness(x)
    assert float(L.loudness_loss(x, lufs)) == pytest.approx(0.0, abs=1e-6)
    # Within a few tenths of a LU of the gated BS.1770 meter on music.
    from mastering.loudness import integrated_loudness

    assert (lufs.double() - integrated_loudness(x)).abs().max() < 1.5
    errs = [float(L.loudness_loss(x * _db(d), lufs)) for d in (0.5, 2.0, 6.0)]
    assert errs[0] < errs[1] < errs[2]
    assert errs[2] == pytest.approx(6.0 - 0.5, abs=0.05)  # linear beyond 1 LU
    silent = torch.zeros(1, 2, 4800, requires_grad=True)
    L.loudness_loss(silent, -14.0).backward()
    assert torch.isfinite(silent.grad).all()


def test_harmonic_grows_with_brightness_difference(x):
    assert float(L.harmonic_loss(x * _db(-10.0), x)) < 1e-4
    values = [float(L.harmonic_loss(_tilt(x, d), x)) for d in (2.0, 6.0, 12.0)]
    assert values[0] < values[1] < values[2]
    assert float(L.harmonic_loss(_tilt(x, -6.0), x)) > values[0]


def _ir(rt: float) -> torch.Tensor:
    torch.manual_seed(0)
    rt60 = torch.tensor([[rt * 1.2, rt, rt * 0.8, rt * 0.6]])
    return synthesize_ir(
        rt60,
        torch.tensor([[10.0]]),
        torch.tensor([[1.5 * rt]]),
        torch.tensor([[8_000.0]]),
        torch.tensor([[0.8]]),
        length=int(48_000 * (0.01 + 1.5 * rt)) + 1,
    )


def test_ir_and_rt60_losses():
    a = _ir(0.4)
    assert float(L.ir_loss(a, a)) == pytest.approx(0.0, abs=1e-4)
    values = [float(L.ir_loss(_ir(r), a)) for r in (0.5, 0.7, 1.0)]
    assert values[0] < values[1] < values[2]
    t = torch.tensor([[1.0, 0.8, 0.6, 0.5]])
    assert float(L.rt60_loss(t, t)) == 0.0
    assert float(L.rt60_loss(2 * t, t)) == pytest.approx(1.0)


def test_total_has_finite_gradients(x):
    y = (_tilt(_narrow(_squash(x, 3.0), 0.3), 3.0) * 0.8).requires_grad_(True)
    total, parts = L.MasteringLoss()(y, x, target_lufs=-14.0)
    assert set(parts) == {"spectral", "dynamic", "image", "loudness", "harmonic"}
    assert all(v > 0 for v in parts.values())
    total.backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    ident, _ = L.MasteringLoss()(x, x)
    assert float(ident) == pytest.approx(0.0, abs=1e-4)


def test_shape_errors(x):
    with pytest.raises(ValueError, match=r"\[batch, 2, samples\]"):
        L.dynamic_loss(x, x[..., :100])
