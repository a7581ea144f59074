"""RBJ cookbook designs and SOS frequency responses against scipy."""

import math

import numpy as np
import pytest
import scipy.signal as ss
import torch

from mastering.dsp.biquad import (
    allpass_sos,
    bandpass_sos,
    cascade_sos,
    high_shelf_sos,
    highpass_sos,
    identity_sos,
    low_shelf_sos,
    lowpass_sos,
    notch_sos,
    peaking_sos,
    rfft_frequencies,
    sos_magnitude_db,
    sos_response,
)

FS = 48_000.0
F64 = torch.float64


def t64(value):
    return torch.tensor(value, dtype=F64)


def analog_reference(kind, f0, gain_db, q, fs=FS):
    """The cookbook's analog prototype in s / w_a (pre-warped), bilinear-transformed by scipy."""
    A = 10 ** (gain_db / 40)
    wa = 2 * fs * math.tan(math.pi * f0 / fs)
    s2, s1 = 1 / wa**2, 1 / wa
    prototypes = {
        "peaking": ([s2, A / q * s1, 1], [s2, 1 / (A * q) * s1, 1]),
        "low_shelf": (
            [A * s2, A * math.sqrt(A) / q * s1, A * A],
            [A * s2, math.sqrt(A) / q * s1, 1],
        ),
        "high_shelf": (
            [A * A * s2, A * math.sqrt(A) / q * s1, A],
            [s2, math.sqrt(A) / q * s1, A],
        ),
        "lowpass": ([0, 0, 1], [s2, s1 / q, 1]),
        "highpass": ([s2, 0, 0], [s2, s1 / q, 1]),
        "bandpass": ([0, s1 / q, 0], [s2, s1 / q, 1]),
        "notch": ([s2, 0, 1], [s2, s1 / q, 1]),
        "allpass": ([s2, -s1 / q, 1], [s2, s1 / q, 1]),
    }
    b, a = ss.bilinear(*prototypes[kind], fs=fs)
    return np.concatenate([b / a[0], a / a[0]])


DESIGNS = {
    "peaking": lambda f, g, q: peaking_sos(f, g, q, FS),
    "low_shelf": lambda f, g, q: low_shelf_sos(f, g, q, FS),
    "high_shelf": lambda f, g, q: high_shelf_sos(f, g, q, FS),
    "lowpass": lambda f, g, q: lowpass_sos(f, q, FS),
    "highpass": lambda f, g, q: highpass_sos(f, q, FS),
    "bandpass": lambda f, g, q: bandpass_sos(f, q, FS),
    "notch": lambda f, g, q: notch_sos(f, q, FS),
    "allpass": lambda f, g, q: allpass_sos(f, q, FS),
}


@pytest.mark.parametrize("kind", sorted(DESIGNS))
def test_designs_match_bilinear_transform_of_cookbook_prototypes(kind):
    rng = np.random.default_rng(1)
    freqs = rng.uniform(30, 18_000, 5)
    gains = rng.uniform(-12, 12, 5)
    qs = rng.uniform(0.3, 4, 5)
    sos = DESIGNS[kind](t64(freqs), t64(gains), t64(qs))
    assert sos.shape == (5, 6)
    for row, f, g, q in zip(sos.numpy(), freqs, gains, qs, strict=True):
        np.testing.assert_allclose(row, analog_reference(kind, f, g, q), rtol=1e-9, atol=1e-11)


def test_butterworth_sections_equal_scipy_butter():
    b, a = ss.butter(2, 1234.0, btype="low", fs=FS)
    np.testing.assert_allclose(lowpass_sos(t64(1234.0)).numpy(), np.r_[b, a], atol=1e-13)
    b, a = ss.butter(2, 1234.0, btype="high", fs=FS)
    np.testing.assert_allclose(highpass_sos(t64(1234.0)).numpy(), np.r_[b, a], atol=1e-13)


def test_characteristic_gains():
    f = t64([0.0, 1000.0, FS / 2])
    peak = sos_magnitude_db(peaking_sos(t64(1000.0), 6.0, 2.0)[None], frequencies_hz=f)
    np.testing.assert_allclose(peak.numpy(), [0, 6, 0], atol=1e-6)
    low = sos_magnitude_db(low_shelf_sos(t64(1000.0), -8.0)[None], frequencies_hz=f)
    np.testing.assert_allclose(low.numpy(), [-8, -4, 0], atol=1e-6)
    high = sos_magnitude_db(high_shelf_sos(t64(1000.0), 5.0)[None], frequencies_hz=f)
    np.testing.assert_allclose(high.numpy(), [0, 2.5, 5], atol=1e-6)


def test_parameters_broadcast_and_default_to_float32():
    sos = peaking_sos(torch.tensor([100.0, 1000.0]), torch.zeros(3, 1), 1.0)
    assert sos.shape == (3, 2, 6) and sos.dtype == torch.float32
    assert peaking_sos(1000.0, 3.0, 1.0).shape == (6,)


def test_response_matches_scipy_sosfreqz_on_the_rfft_grid():
    sos = torch.stack(
        [
            peaking_sos(t64(1000.0), 6.0, 1.0),
            low_shelf_sos(t64(90.0), -3.0),
            high_shelf_sos(t64(8000.0), 4.0, 0.9),
            highpass_sos(t64(30.0), 0.6),
        ]
    )
    n_fft = 1024
    w = 2 * np.pi * np.arange(n_fft // 2 + 1) / n_fft
    _, ref = ss.sosfreqz(sos.numpy(), worN=w)
    response = sos_response(sos, n_fft)
    assert response.shape == (n_fft // 2 + 1,)
    np.testing.assert_allclose(response.numpy(), ref, rtol=1e-10, atol=1e-12)
    db = sos_magnitude_db(sos, n_fft).numpy()
    np.testing.assert_allclose(db[1:], 20 * np.log10(np.abs(ref[1:])), atol=1e-9)
    assert db[0] < -120  # the high-pass zero at DC, floored
    freqs = rfft_frequencies(n_fft, FS, like=sos)
    at_hz = sos_response(sos, sample_rate=FS, frequencies_hz=freqs)
    np.testing.assert_allclose(at_hz.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_batched_response_and_cascade():
    first = peaking_sos(t64([200.0, 2000.0]), t64([3.0, -3.0]), 1.0)  # [2, 6]
    second = lowpass_sos(t64(10_000.0))  # [6]
    cascade = cascade_sos(first.unsqueeze(-2), second.unsqueeze(-2))
    assert cascade.shape == (2, 2, 6)
    response = sos_response(cascade, 256)
    for i in range(2):
        _, ref = ss.sosfreqz(cascade[i].numpy(), worN=2 * np.pi * np.arange(129) / 256)
        np.testing.assert_allclose(response[i].numpy(), ref, rtol=1e-10, atol=1e-12)
    padded = cascade_sos(cascade, identity_sos(2, 1, like=cascade))
    np.testing.assert_allclose(sos_response(padded, 256).numpy(), response.numpy())


def test_allpass_is_flat_and_notch_floor_is_finite():
    assert torch.allclose(sos_magnitude_db(allpass_sos(t64(700.0), 0.8)[None], 512), t64(0.0))
    notch = notch_sos(t64(FS / 4), 1.0)[None]  # a zero exactly on bin 128 of 512
    db = sos_magnitude_db(notch, 512)
    assert torch.isfinite(db).all() and db[128] < -200


def test_gradients_through_designs_and_magnitude():
    def loss(freq, gain, q):
        sos = torch.stack(
            [
                peaking_sos(freq, gain, q),
                low_shelf_sos(freq * 0.1, gain, q),
                high_shelf_sos(freq * 4, -gain, q),
                lowpass_sos(freq * 8, q),
            ]
        )
        return sos_magnitude_db(sos, 64), torch.view_as_real(sos_response(sos, 64))

    params = (t64([900.0, 1500.0]), t64([4.0, -2.0]), t64([0.9, 1.7]))
    params = tuple(p.requires_grad_() for p in params)
    assert torch.autograd.gradcheck(lambda *p: loss(*p)[0], params)
    assert torch.autograd.gradcheck(lambda *p: loss(*p)[1], params)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    params = (torch.tensor([100.0, 5000.0]), torch.tensor([3.0, -6.0]), torch.tensor([0.7, 2.0]))
    sos = torch.stack([peaking_sos(*params), low_shelf_sos(*params), high_shelf_sos(*params)], -2)
    sos_cuda = torch.stack(
        [f(*(p.cuda() for p in params)) for f in (peaking_sos, low_shelf_sos, high_shelf_sos)], -2
    )
    torch.testing.assert_close(sos_cuda.cpu(), sos)
    # float32 dB near DC is sensitive to last-ulp differences in the coefficients
    torch.testing.assert_close(
        sos_magnitude_db(sos_cuda, 512).cpu(), sos_magnitude_db(sos, 512), atol=1e-3, rtol=0
    )
    torch.testing.assert_close(
        sos_response(sos_cuda, 512).cpu(), sos_response(sos, 512), atol=1e-4, rtol=0
    )
