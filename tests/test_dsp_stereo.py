"""Mid/side, inter-channel correlation and side-to-mid ratio."""

import numpy as np
import pytest
import torch

from mastering.dsp.stereo import correlation, from_mid_side, side_to_mid_ratio_db, to_mid_side


def test_mid_side_values_and_exact_inverse():
    x = torch.randn(3, 2, 500)
    ms = to_mid_side(x)
    torch.testing.assert_close(ms[:, 0], (x[:, 0] + x[:, 1]) / 2)
    torch.testing.assert_close(ms[:, 1], (x[:, 0] - x[:, 1]) / 2)
    torch.testing.assert_close(from_mid_side(ms), x, rtol=0, atol=1e-6)
    x64 = x.double()
    assert torch.equal(from_mid_side(to_mid_side(x64)), x64) or torch.allclose(
        from_mid_side(to_mid_side(x64)), x64, rtol=0, atol=1e-15
    )


def test_rejects_non_stereo():
    with pytest.raises(ValueError):
        to_mid_side(torch.zeros(1, 3, 10))


def test_correlation_matches_numpy_and_extremes():
    rng = np.random.default_rng(0)
    left = rng.standard_normal((4, 1000))
    right = 0.6 * left + 0.8 * rng.standard_normal((4, 1000))
    x = torch.from_numpy(np.stack([left, right], axis=1))
    expected = (left * right).sum(-1) / np.sqrt((left**2).sum(-1) * (right**2).sum(-1))
    np.testing.assert_allclose(correlation(x).numpy(), expected, rtol=1e-9)
    mono = torch.from_numpy(np.stack([left, left], axis=1))
    np.testing.assert_allclose(correlation(mono).numpy(), 1.0, rtol=1e-9)
    np.testing.assert_allclose(correlation(mono * torch.tensor([[1.0], [-1.0]])).numpy(), -1.0)
    framed = correlation(x, frame_length=100)
    assert framed.shape == (4, 10)
    l0, r0 = left[0, 200:300], right[0, 200:300]
    assert np.isclose(framed[0, 2].item(), (l0 * r0).sum() / np.sqrt((l0**2).sum() * (r0**2).sum()))
    assert correlation(torch.zeros(2, 100)).item() == 0.0


def test_side_to_mid_ratio_db():
    rng = np.random.default_rng(1)
    left, right = rng.standard_normal((2, 48_000))
    x = torch.from_numpy(np.stack([left, right]))
    mid, side = (left + right) / 2, (left - right) / 2
    expected = 10 * np.log10((side**2).sum() / (mid**2).sum())
    np.testing.assert_allclose(side_to_mid_ratio_db(x).item(), expected, rtol=1e-9)
    assert abs(expected) < 0.2  # unrelated channels: equal mid and side energy
    assert side_to_mid_ratio_db(torch.from_numpy(np.stack([left, left]))).item() < -100
    assert side_to_mid_ratio_db(x, frame_length=4800).shape == (10,)


def test_gradcheck():
    x = torch.randn(2, 2, 64, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(to_mid_side, (x,))
    assert torch.autograd.gradcheck(from_mid_side, (x,))
    assert torch.autograd.gradcheck(correlation, (x,))
    assert torch.autograd.gradcheck(lambda t: side_to_mid_ratio_db(t, 16), (x,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.randn(2, 2, 1000)
    for fn in (to_mid_side, from_mid_side, correlation, side_to_mid_ratio_db):
        torch.testing.assert_close(fn(x.cuda()).cpu(), fn(x), atol=1e-5, rtol=1e-5)
