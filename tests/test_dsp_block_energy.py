"""Per-block energy of a filtered signal (mastering.dsp.block_energy) against scipy's sosfilt."""

import numpy as np
import pytest
import scipy.signal as ss
import torch

from mastering.dsp.block_energy import LANES, sosfilt_block_energy
from mastering.dsp.iir import sosfilt
from mastering.loudness import k_weighting_sos

RNG = np.random.default_rng(3341)
K_WEIGHTING = k_weighting_sos(48_000).numpy()
BANDPASS = ss.butter(4, [100, 2000], btype="band", fs=48_000, output="sos")  # 4 sections
# Odd section count (padded with a pass-through section inside) with a 20 Hz high-pass: poles
# very close to the unit circle.
ODD = np.concatenate([ss.butter(2, 20, "high", fs=48_000, output="sos"), BANDPASS[:2]])


def reference(x: np.ndarray, sos: np.ndarray, block: int) -> np.ndarray:
    """scipy float64 filtering from rest, then the sums of squares per complete block."""
    y = ss.sosfilt(sos, x.astype(np.float64), axis=-1)
    k = x.shape[-1] // block
    return (y[..., : k * block].reshape(*x.shape[:-1], k, block) ** 2).sum(-1)


@pytest.mark.parametrize(
    "sos", [K_WEIGHTING, BANDPASS, ODD, BANDPASS[:1]], ids=["K", "4", "3", "1"]
)
@pytest.mark.parametrize(("block", "length"), [(4800, 48_000 * 3 + 1234), (441, 30_000), (7, 500)])
def test_matches_scipy_float64(sos, block, length):
    x = RNG.standard_normal((2, 3, length))
    got = sosfilt_block_energy(torch.from_numpy(x), torch.from_numpy(sos), block)
    assert got.dtype == torch.float64 and got.shape == (2, 3, length // block)
    np.testing.assert_allclose(got.numpy(), reference(x, sos, block), rtol=1e-10, atol=0)


def test_float32_input_is_filtered_in_float64():
    # The kernel widens float32 samples to float64: the result is the float64 filtering of the
    # same (float32-representable) samples, not a float32 filtering.
    x = (0.3 * RNG.standard_normal((2, 48_000 * 4))).astype(np.float32)
    got = sosfilt_block_energy(torch.from_numpy(x), torch.from_numpy(K_WEIGHTING), 4800)
    np.testing.assert_allclose(got.numpy(), reference(x, K_WEIGHTING, 4800), rtol=1e-11)


def test_agrees_with_torch_sosfilt():
    x = torch.from_numpy(RNG.standard_normal((1, 2, 96_000)))
    sos = torch.from_numpy(ODD)
    y = sosfilt(x, sos)
    ref = y.reshape(1, 2, 20, 4800).square().sum(-1)
    torch.testing.assert_close(sosfilt_block_energy(x, sos, 4800), ref, rtol=1e-9, atol=0)


@pytest.mark.parametrize("rows", [1, LANES - 1, LANES + 1])
def test_any_number_of_blocks_and_rows(rows):
    # Groups of LANES blocks span rows; the last group has idle lanes. Each row starts at rest.
    x = RNG.standard_normal((rows, 5 * 480 + 17))
    got = sosfilt_block_energy(x, torch.from_numpy(BANDPASS), 480)
    np.testing.assert_allclose(got.numpy(), reference(x, BANDPASS, 480), rtol=1e-10)


def test_non_contiguous_input_and_numpy_sos():
    x = RNG.standard_normal((9600, 2)).T  # [2, 9600] view of frame-interleaved audio
    got = sosfilt_block_energy(x, K_WEIGHTING, 960)
    np.testing.assert_allclose(got.numpy(), reference(x, K_WEIGHTING, 960), rtol=1e-10)


def test_shorter_than_a_block_and_empty():
    assert sosfilt_block_energy(torch.ones(2, 100), K_WEIGHTING, 4800).shape == (2, 0)
    assert sosfilt_block_energy(torch.ones(0, 9600), K_WEIGHTING, 4800).shape == (0, 2)
    assert sosfilt_block_energy(torch.ones(9600), K_WEIGHTING, 4800).shape == (2,)


def test_no_drift_over_a_long_signal():
    # 10 minutes of a 1 s periodic signal (a 20 Hz tone: the slowest-decaying part of the
    # K-weighting matters): once settled, every period must give the same energies, to
    # float64 rounding, however far into the signal (no error accumulates block to block).
    fs, seconds = 48_000, 600
    t = np.arange(fs) / fs
    period = (0.5 * np.sin(2 * np.pi * 20 * t) + 0.1 * RNG.standard_normal(fs)).astype(np.float32)
    x = torch.from_numpy(period).repeat(seconds)
    e = sosfilt_block_energy(x, K_WEIGHTING, 4800).numpy().reshape(seconds, 10)
    np.testing.assert_allclose(e[2:], np.broadcast_to(e[1], e[2:].shape), rtol=1e-10)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="block"):
        sosfilt_block_energy(torch.ones(10), K_WEIGHTING, 0)
    with pytest.raises(ValueError, match="one cascade"):
        sosfilt_block_energy(torch.ones(10), np.stack([K_WEIGHTING, K_WEIGHTING]), 5)
    with pytest.raises(ValueError, match="floating"):
        sosfilt_block_energy(torch.ones(10, dtype=torch.int32), K_WEIGHTING, 5)
