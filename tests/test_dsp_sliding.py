"""Sliding max/min against scipy.ndimage."""

import numpy as np
import pytest
import torch
from scipy.ndimage import maximum_filter1d, minimum_filter1d

from mastering.dsp.sliding import sliding_max, sliding_min

#: scipy ``origin`` giving each alignment for a window of W samples.
ORIGINS = {
    "causal": lambda W: (W - 1) // 2,
    "centered": lambda W: 0,
    "anticausal": lambda W: -(W // 2),
}


@pytest.mark.parametrize("alignment", sorted(ORIGINS))
@pytest.mark.parametrize("window", [1, 2, 7, 64, 240, 999, 1500])
def test_matches_scipy_filters(alignment, window):
    x = np.random.default_rng(window).standard_normal((2, 3, 1000)).astype(np.float32)
    origin = ORIGINS[alignment](window)
    expected_max = maximum_filter1d(x, window, axis=-1, origin=origin, mode="nearest")
    expected_min = minimum_filter1d(x, window, axis=-1, origin=origin, mode="nearest")
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(sliding_max(t, window, alignment).numpy(), expected_max)
    np.testing.assert_array_equal(sliding_min(t, window, alignment).numpy(), expected_min)


def test_lookahead_limiter_usage():
    # A 5 ms causal max of |x| covers every sample of the audio delayed by W - 1.
    x = torch.randn(1, 2, 4800)
    W = 240
    peak = sliding_max(x.abs(), W)
    delayed = torch.nn.functional.pad(x, (W - 1, 0))[..., : x.shape[-1]]
    assert (peak >= delayed.abs()).all()
    assert (peak[..., W - 1 :] == x.abs().unfold(-1, W, 1).amax(-1)).all()


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        sliding_max(torch.zeros(10), 0)
    with pytest.raises(ValueError):
        sliding_max(torch.zeros(10), 3, "future")


def test_gradcheck():
    x = torch.randn(2, 200, dtype=torch.float64, requires_grad=True)
    for alignment in ORIGINS:
        assert torch.autograd.gradcheck(lambda t, a=alignment: sliding_max(t, 9, a), (x,))
    assert torch.autograd.gradcheck(lambda t: sliding_min(t, 16, "centered"), (x,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.randn(2, 2, 10_000)
    for alignment in ORIGINS:
        assert torch.equal(
            sliding_max(x.cuda(), 240, alignment).cpu(), sliding_max(x, 240, alignment)
        )
