"""Exact IIR filtering (mastering.dsp.iir) against scipy.signal.sosfilt."""

import itertools

import numpy as np
import pytest
import scipy.signal as ss
import torch

from mastering.dsp.iir import linear_recurrence, sosfilt

RNG = np.random.default_rng(1770)
BANDPASS = ss.butter(4, [100, 2000], btype="band", fs=48000, output="sos")
# A 38 Hz high-pass: poles close to the unit circle, the hard case for float32.
LOW_HP = np.concatenate([ss.butter(2, 38, "high", fs=48000, output="sos"), BANDPASS[:1]])


@pytest.mark.parametrize("length", [1, 15, 17, 64, 100, 4097, 70_003])
def test_matches_scipy_float64(length):
    x = RNG.standard_normal((2, 3, length))
    y = sosfilt(torch.from_numpy(x), torch.from_numpy(BANDPASS))
    np.testing.assert_allclose(y.numpy(), ss.sosfilt(BANDPASS, x), atol=1e-9, rtol=0)


def test_float32_as_accurate_as_direct_form():
    x = RNG.standard_normal((1, 2, 200_000)).astype(np.float32)
    y = sosfilt(torch.from_numpy(x), torch.from_numpy(LOW_HP).float())
    ref = ss.sosfilt(LOW_HP, x.astype(np.float64))
    # No worse than direct-form filtering in float32 itself (scipy's, run on the same input).
    direct_f32 = ss.sosfilt(LOW_HP.astype(np.float32), x)
    assert np.abs(y.numpy() - ref).max() <= 2 * np.abs(direct_f32 - ref).max()


@pytest.mark.parametrize("cuts", [(0, 1, 2, 500), (0, 100, 333, 1000, 9000)])
def test_chunked_equals_one_shot(cuts):
    x = torch.from_numpy(RNG.standard_normal((2, 2, cuts[-1])))
    sos = torch.from_numpy(LOW_HP)
    state, parts = None, []
    for a, b in itertools.pairwise(cuts):
        y, state = sosfilt(x[..., a:b], sos, state, return_state=True)
        parts.append(y)
    np.testing.assert_allclose(torch.cat(parts, -1).numpy(), sosfilt(x, sos).numpy(), atol=1e-10)


def test_per_channel_filters_broadcast():
    freqs = (200.0, 1000.0, 5000.0)
    sos = np.stack([ss.butter(2, f, fs=48000, output="sos") for f in freqs])  # [3, 1, 6]
    x = RNG.standard_normal((2, 3, 3000))
    y = sosfilt(torch.from_numpy(x), torch.from_numpy(sos)).numpy()
    for i in range(3):
        np.testing.assert_allclose(y[:, i], ss.sosfilt(sos[i], x[:, i]), atol=1e-10)


def test_empty_signal_keeps_state():
    sos = torch.from_numpy(BANDPASS)
    state = torch.randn(1, 8, dtype=torch.float64)
    y, out = sosfilt(torch.zeros(1, 0, dtype=torch.float64), sos, state, return_state=True)
    assert y.shape == (1, 0)
    torch.testing.assert_close(out, state)


def test_linear_recurrence_matches_loop():
    M = torch.tensor([[0.9, 0.2], [-0.1, 0.8]], dtype=torch.float64)
    u = torch.randn(3, 1000, 2, dtype=torch.float64)
    s0 = torch.randn(3, 2, dtype=torch.float64)
    states, final = linear_recurrence(u, M, s0)
    s = s0
    for k in range(1000):
        torch.testing.assert_close(states[:, k], s)
        s = s @ M.T + u[:, k]
    torch.testing.assert_close(final, s)


def test_gradcheck_signal_and_coefficients():
    x = torch.randn(1, 2, 150, dtype=torch.float64, requires_grad=True)
    sos = torch.from_numpy(BANDPASS[:2].copy()).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: sosfilt(a, b, block=16), (x, sos))


def test_memoized_tables_give_the_same_output_as_fresh_ones():
    """One sos tensor reused over many calls (lengths, dtypes, block-by-block streaming)
    gives exactly what a fresh copy of it gives each time, and matches scipy."""
    sos = torch.from_numpy(LOW_HP)
    x = RNG.standard_normal((1, 2, 9000))
    for length in (64, 4096, 9000, 100, 4096):
        for dtype in (torch.float64, torch.float32):
            xt = torch.from_numpy(x[..., :length]).to(dtype)
            kept = sosfilt(xt, sos)
            fresh = sosfilt(xt, sos.clone())
            assert torch.equal(kept, fresh), (length, dtype)
    np.testing.assert_allclose(
        sosfilt(torch.from_numpy(x), sos).numpy(), ss.sosfilt(LOW_HP, x), atol=1e-9, rtol=0
    )
    state, parts = None, []
    for a in range(0, 9000, 1000):
        y, state = sosfilt(torch.from_numpy(x[..., a : a + 1000]), sos, state, return_state=True)
        parts.append(y)
    np.testing.assert_allclose(torch.cat(parts, -1).numpy(), ss.sosfilt(LOW_HP, x), atol=1e-9)


def test_memo_keeps_a_float64_design_for_float64_signals():
    """float32 coefficients filter a float32 signal in float32, a float64 signal in float64:
    the memo does not hand the float32 design to the float64 call."""
    sos32 = torch.from_numpy(LOW_HP).float()
    x = torch.from_numpy(RNG.standard_normal((1, 1, 20_000)))
    sosfilt(x.float(), sos32)  # memoizes the float32 design
    kept = sosfilt(x, sos32)
    assert torch.equal(kept, sosfilt(x, sos32.clone()))


def test_memo_follows_in_place_changes_of_the_coefficients():
    sos = torch.from_numpy(LOW_HP.copy())
    x = torch.from_numpy(RNG.standard_normal((1, 1, 5000)))
    sosfilt(x, sos)
    sos.copy_(torch.from_numpy(BANDPASS[:2]))
    np.testing.assert_allclose(
        sosfilt(x, sos).numpy(), ss.sosfilt(BANDPASS[:2], x.numpy()), atol=1e-9, rtol=0
    )


def test_coefficients_that_want_gradients_get_them_on_every_call():
    sos = torch.from_numpy(BANDPASS.copy()).requires_grad_(True)
    x = torch.from_numpy(RNG.standard_normal((1, 1, 3000)))
    grads = []
    for _ in range(2):
        (g,) = torch.autograd.grad(sosfilt(x, sos).square().sum(), sos)
        grads.append(g)
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0


def test_tables_made_in_inference_mode_do_not_break_a_later_backward():
    sos = torch.from_numpy(BANDPASS.copy())
    x = torch.from_numpy(RNG.standard_normal((1, 1, 3000)))
    with torch.inference_mode():
        sosfilt(x, sos)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(sosfilt(xg, sos).square().sum(), xg)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_a_fixed_design_first_built_in_inference_mode_serves_a_later_backward():
    from mastering.loudness import _k_weighting_on, ungated_loudness

    with torch.inference_mode():
        k = _k_weighting_on(32_000, torch.float64, torch.device("cpu"))
    assert not k.is_inference()
    x = torch.from_numpy(RNG.standard_normal((1, 2, 32_000))).requires_grad_(True)
    (g,) = torch.autograd.grad(ungated_loudness(x, 32_000).sum(), x)
    assert torch.isfinite(g).all()
