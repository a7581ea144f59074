"""FFT convolution and frequency-sampling FIR filters against numpy/scipy."""

import numpy as np
import pytest
import scipy.signal as ss
import torch

from mastering.dsp import fir
from mastering.dsp.biquad import peaking_sos, sos_magnitude_db
from mastering.dsp.fir import design_frequency_sampled_fir, fft_convolve, frequency_sampled_filter

F64 = torch.float64


def randn(*shape, seed=0, dtype=F64):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape)).to(dtype)


def scipy_convolve(x, ir, mode="full"):
    ir = np.broadcast_to(ir, np.broadcast_shapes(x.shape[:-1], ir.shape[:-1]) + ir.shape[-1:])
    x = np.broadcast_to(x, ir.shape[:-1] + x.shape[-1:])
    return ss.fftconvolve(x, ir, mode=mode, axes=-1)


@pytest.mark.parametrize("mode", ["full", "same"])
@pytest.mark.parametrize("block_size", [None, 37, 500, 4000])
def test_fft_convolve_matches_scipy(mode, block_size):
    x, ir = randn(2, 2, 3001), randn(2, 1, 701, seed=1)
    y = fft_convolve(x, ir, mode, block_size=block_size)
    np.testing.assert_allclose(y.numpy(), scipy_convolve(x.numpy(), ir.numpy(), mode), atol=1e-10)


def test_fft_convolve_broadcasts_one_ir_and_even_lengths():
    x, ir = randn(3, 1000), randn(64, seed=2)
    for mode in ("full", "same"):
        expected = scipy_convolve(x.numpy(), ir.numpy(), mode)
        np.testing.assert_allclose(fft_convolve(x, ir, mode).numpy(), expected, atol=1e-10)


def test_long_signal_uses_bounded_overlap_add(monkeypatch):
    # Force several groups of blocks through the carry between groups.
    monkeypatch.setattr(fir, "_MAX_SPECTRUM_ELEMENTS", 1 << 16)
    x, ir = randn(1, 2, 70_000, dtype=torch.float32), randn(1, 2, 3000, seed=3)
    y = fft_convolve(x, ir.float())
    expected = scipy_convolve(x.double().numpy(), ir.numpy())
    assert y.dtype == torch.float32 and y.shape == (1, 2, 72_999)
    np.testing.assert_allclose(y.numpy(), expected, atol=2e-4)


def test_fft_convolve_gradcheck_through_overlap_add():
    x = randn(1, 2, 90, seed=4).requires_grad_()
    ir = randn(2, 11, seed=5).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: fft_convolve(a, b, block_size=16), (x, ir), fast_mode=True
    )
    assert torch.autograd.gradcheck(
        lambda a, b: fft_convolve(a, b, "same"), (x, ir), fast_mode=True
    )


def reference_fir(magnitude, n_taps):
    n_fft = 2 * (magnitude.shape[-1] - 1)
    zero_phase = np.fft.irfft(magnitude, n_fft)
    half = (n_taps - 1) // 2
    return np.roll(zero_phase, half, axis=-1)[..., :n_taps] * np.hanning(n_taps)


def test_design_matches_windowed_inverse_fft():
    magnitude = np.abs(np.random.default_rng(6).standard_normal((2, 129)))
    taps = design_frequency_sampled_fir(torch.from_numpy(magnitude), 201)
    np.testing.assert_allclose(taps.numpy(), reference_fir(magnitude, 201), atol=1e-14)
    np.testing.assert_allclose(taps.numpy(), taps.flip(-1).numpy(), atol=1e-14)  # linear phase
    with pytest.raises(ValueError):
        design_frequency_sampled_fir(torch.from_numpy(magnitude), 256)


@pytest.mark.parametrize("phase", ["linear", "zero"])
def test_frequency_sampled_filter_matches_reference(phase):
    x = randn(2, 2, 5000, seed=7)
    magnitude = np.abs(np.random.default_rng(8).standard_normal((2, 1, 257))) + 0.1
    y = frequency_sampled_filter(x, torch.from_numpy(magnitude), n_taps=301, phase=phase)
    full = scipy_convolve(x.numpy(), reference_fir(magnitude, 301))
    expected = full[..., 150 : 150 + 5000] if phase == "zero" else full[..., :5000]
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-10)


def test_realised_response_follows_a_smooth_target_in_db():
    n_fft = 8192
    target_db = sos_magnitude_db(
        peaking_sos(torch.tensor(1000.0, dtype=F64), 6.0, 1.0)[None], n_fft
    )
    impulse = torch.zeros(1, n_fft, dtype=F64)
    impulse[0, 0] = 1.0
    response = frequency_sampled_filter(impulse, target_db, in_db=True)  # the taps, delayed
    realised = 20 * torch.log10(torch.fft.rfft(response).abs())
    assert (realised - target_db).abs().max() < 1e-3


def test_frequency_sampled_filter_gradcheck():
    x = randn(1, 1, 60, seed=9).requires_grad_()
    magnitude = (randn(1, 1, 17, seed=10).abs() + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, m: frequency_sampled_filter(a, m, n_taps=15, phase="zero"), (x, magnitude)
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, ir = randn(1, 2, 100_000, dtype=torch.float32), randn(1, 2, 5000, seed=11).float()
    magnitude = randn(2, 1, 513, seed=12).float().abs()
    for fn in (
        lambda u, h, m: fft_convolve(u, h),
        lambda u, h, m: fft_convolve(u, h, block_size=3000),
        lambda u, h, m: frequency_sampled_filter(u, m, n_taps=511),
    ):
        expected = fn(x, ir, magnitude)
        torch.testing.assert_close(
            fn(x.cuda(), ir.cuda(), magnitude.cuda()).cpu(), expected, atol=1e-4, rtol=1e-4
        )
