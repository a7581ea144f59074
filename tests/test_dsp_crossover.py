"""Linkwitz-Riley crossovers: against scipy, and bands summing to an all-pass."""

import numpy as np
import pytest
import scipy.signal as ss
import torch

from mastering.dsp.biquad import allpass_sos, sos_magnitude_db, sos_response
from mastering.dsp.crossover import crossover_band_sos, linkwitz_riley_sos, split_bands

FS = 48_000
F64 = torch.float64


def scipy_lr4(freq, btype):
    section = ss.butter(2, freq, btype=btype, fs=FS, output="sos")
    return np.concatenate([section, section])


def scipy_split(x, freqs):
    """The same tree with scipy: band k = HP(f_<k) LP(f_k) AP(f_>k)."""
    bands, rest = [], x
    for k, f in enumerate(freqs):
        low = ss.sosfilt(scipy_lr4(f, "low"), rest, axis=-1)
        rest = ss.sosfilt(scipy_lr4(f, "high"), rest, axis=-1)
        for g in freqs[k + 1 :]:
            low = ss.sosfilt(allpass_sos(torch.tensor(g, dtype=F64))[None].numpy(), low, axis=-1)
        bands.append(low)
    return np.stack([*bands, rest])


def test_lr4_is_squared_butterworth_with_minus_6_db_at_crossover():
    sos = linkwitz_riley_sos(torch.tensor(800.0, dtype=F64), "lowpass")
    np.testing.assert_allclose(sos.numpy(), scipy_lr4(800.0, "low"), atol=1e-12)
    at = torch.tensor([800.0], dtype=F64)
    for kind in ("lowpass", "highpass"):
        db = sos_magnitude_db(linkwitz_riley_sos(800.0, kind).double(), frequencies_hz=at)
        assert abs(db.item() + 6.0206) < 1e-3
    with pytest.raises(ValueError):
        linkwitz_riley_sos(800.0, "bandpass")


@pytest.mark.parametrize("freqs", [[1000.0], [120.0, 2500.0], [80.0, 400.0, 2000.0, 9000.0]])
def test_bands_sum_to_allpass(freqs):
    band_sos = crossover_band_sos(torch.tensor(freqs, dtype=F64))
    assert band_sos.shape[0] == len(freqs) + 1
    total = sos_response(band_sos, 4096).sum(0)
    assert (20 * torch.log10(total.abs())).abs().max() < 0.01
    allpass = sos_response(allpass_sos(torch.tensor(freqs, dtype=F64)), 4096)
    torch.testing.assert_close(total, allpass, atol=1e-9, rtol=0)


def test_split_bands_matches_scipy_and_band_sos():
    freqs = [150.0, 1500.0, 8000.0]
    x = np.random.default_rng(0).standard_normal((2, 2, 3000))
    bands = split_bands(torch.from_numpy(x), freqs)
    assert bands.shape == (4, 2, 2, 3000)
    np.testing.assert_allclose(bands.numpy(), scipy_split(x, freqs), atol=1e-9)
    band_sos = crossover_band_sos(torch.tensor(freqs, dtype=F64))
    for k in range(4):
        expected = ss.sosfilt(band_sos[k].numpy(), x, axis=-1)
        np.testing.assert_allclose(bands[k].numpy(), expected, atol=1e-9)


def test_split_bands_sum_is_flat_in_float32():
    impulse = torch.zeros(1, 2, 1 << 14)
    impulse[..., 0] = 1.0
    total = split_bands(impulse, [100.0, 1000.0, 6000.0]).sum(0)
    magnitude_db = 20 * torch.log10(torch.fft.rfft(total).abs())
    assert magnitude_db.abs().max() < 0.01


def test_per_item_crossovers_broadcast():
    x = torch.randn(2, 2, 500)
    freqs = torch.tensor([[[200.0, 2000.0]], [[300.0, 3000.0]]])  # [batch, 1, N]
    bands = split_bands(x, freqs)
    assert bands.shape == (3, 2, 2, 500)
    torch.testing.assert_close(bands[:, 1], split_bands(x[1], [300.0, 3000.0]))


def test_rejects_unsorted_frequencies():
    with pytest.raises(ValueError):
        split_bands(torch.zeros(1, 100), [2000.0, 200.0])


def test_gradcheck():
    x = torch.randn(1, 2, 200, dtype=F64, requires_grad=True)
    freqs = torch.tensor([500.0, 5000.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(split_bands, (x, freqs), fast_mode=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.randn(2, 2, 20_000)
    on_gpu = split_bands(x.cuda(), [200.0, 2000.0]).cpu()
    # float32 rounding differs between devices (last-ulp cos/sin in the designs, matmul order)
    torch.testing.assert_close(on_gpu, split_bands(x, [200.0, 2000.0]), atol=1e-4, rtol=0)
