"""Dynamics kernels (mastering.dsp.dynamics): static curve against the published formula,
the look-ahead limiter's guarantee, ceiling, delay, streaming and gradients."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mastering.dsp.dynamics import (
    active_frames,
    apply_gain_db,
    frame_peak_db,
    gain_computer_db,
    intersample_peak,
    limiter_geometry,
    lookahead_limiter,
    masked_quantile,
)
from mastering.loudness import true_peak
from mastering.testsignals import fade, music_like, sine

RNG = np.random.default_rng(2012)


def _giannoulis_eq4(x: np.ndarray, T: float, R: float, W: float) -> np.ndarray:
    """Static output level y_G of Giannoulis, Massberg & Reiss (JAES 2012), eq. 4."""
    y = np.where(2 * (x - T) < -W, x, T + (x - T) / R)
    if W > 0:
        knee = np.abs(2 * (x - T)) <= W
        y = np.where(knee, x + (1 / R - 1) * (x - T + W / 2) ** 2 / (2 * W), y)
    return y


@pytest.mark.parametrize(
    ("T", "R", "W"), [(-20.0, 4.0, 6.0), (-10.0, 2.0, 0.0), (-30.0, 10.0, 20.0), (-6.0, 1.0, 6.0)]
)
def test_gain_computer_matches_published_curve(T, R, W):
    x = np.linspace(-80.0, 10.0, 2001)
    g = gain_computer_db(
        torch.from_numpy(x), torch.tensor(T), torch.tensor(R), torch.tensor(W)
    ).numpy()
    np.testing.assert_allclose(g, _giannoulis_eq4(x, T, R, W) - x, atol=2e-4)


def test_gain_computer_is_smooth_at_the_knee_edges():
    T, R, W = torch.tensor(-20.0), torch.tensor(4.0), torch.tensor(8.0)
    for edge in (-24.0, -16.0):
        x = torch.tensor([edge - 1e-6, edge + 1e-6], dtype=torch.float64, requires_grad=True)
        g = gain_computer_db(x, T, R, W)
        (slope,) = torch.autograd.grad(g.sum(), x)
        assert abs(float(g[1].detach() - g[0].detach())) < 1e-5  # continuous value
        assert abs(float(slope[1] - slope[0])) < 1e-5  # and slope


def test_ratio_one_and_levels_below_the_knee_are_exact_unity():
    x = torch.linspace(-100.0, 20.0, 500)
    assert torch.equal(gain_computer_db(x, torch.tensor(-10.0), torch.tensor(1.0), 6.0), x * 0)
    below = x[x < -13.0]
    assert torch.equal(
        gain_computer_db(below, torch.tensor(-10.0), torch.tensor(4.0), 6.0), below * 0
    )


def test_apply_gain_shapes():
    x = torch.ones(2, 2, 5)
    assert torch.allclose(apply_gain_db(x, torch.tensor([0.0, -20.0]))[1], 0.1 * x[1])
    curve = torch.tensor([[0.0] * 5, [-6.0206] * 5])
    assert torch.allclose(apply_gain_db(x, curve)[1], 0.5 * x[1], atol=1e-4)


def test_level_statistics():
    x = torch.zeros(1, 2, 480 * 4)
    x[0, 1, 480 + 7] = 0.5  # frame 1 peak -6 dBFS on the right channel
    x[0, 0, 960:1440] = 0.001  # frame 2 at -60 dBFS
    peaks = frame_peak_db(x, 480)
    assert peaks.shape == (1, 4)
    assert float(peaks[0, 1]) == pytest.approx(-6.0206, abs=1e-3)
    active = active_frames(peaks, range_db=40.0)
    assert active.tolist() == [[False, True, False, False]]
    q = masked_quantile(
        torch.tensor([[1.0, 2.0, 100.0]]), torch.tensor([[True, True, False]]), 0.5, 0.0
    )
    assert float(q) == pytest.approx(1.5)


# ---------------------------------------------------------------------------------------------
# Look-ahead limiter
# ---------------------------------------------------------------------------------------------


def _aligned_limit(x, ceiling=-1.0, lookahead=144, release=80.0, **kw):
    y, g, _ = lookahead_limiter(F.pad(x, (0, lookahead)), ceiling, lookahead, release, **kw)
    return y[..., lookahead:], g[..., lookahead:]


def test_geometry_guarantee_brute_force():
    """Every output sample gets at least the reduction each input sample within +-margin of
    the one it plays requires (checked directly, over random bursts)."""
    D = 60
    geo = limiter_geometry(D)
    x = torch.from_numpy(RNG.standard_normal((1, 2, 6000))).float() * 0.05
    for start in (500, 1700, 3000, 3100, 4500):  # bursts of a few samples, up to +14 dBFS
        x[..., start : start + 3] *= 100.0
    ceiling = -1.0
    _, g, _ = lookahead_limiter(F.pad(x, (0, D)), ceiling, D, 50.0)
    reduction = -g[0, D:]  # aligned with x
    xp = F.pad(x, (geo.half_width, geo.half_width))
    need = (20 * torch.log10(intersample_peak(xp)[0] + 1e-12) - ceiling).clamp(min=0)
    M = geo.margin
    # required over [m - M, m + M] for every m
    worst = F.max_pool1d(need.view(1, 1, -1), 2 * M + 1, 1, M).view(-1)
    assert bool((reduction >= worst - 1e-4).all())
    assert float(need.max()) > 10.0  # the test exercises heavy limiting


@pytest.mark.parametrize("gain_db", [0.0, 6.0, 12.0])
def test_holds_the_ceiling_on_music(gain_db):
    x = music_like(4.0, seed=4, peak_dbfs=-1.0).unsqueeze(0) * 10 ** (gain_db / 20)
    y, g = _aligned_limit(x, ceiling=-1.0)
    assert float(true_peak(y)) <= -1.0 + 0.01
    assert float(true_peak(y, oversample=8)) <= -1.0 + 0.1
    if gain_db >= 6.0:
        assert float(g.min()) < -gain_db + 1.0  # it really limited


@pytest.mark.parametrize(
    ("frequency", "phase", "level"),
    [
        (12_000.0, 0.0, 6.0),  # Tech 3341 case 15 / 16 tones (fs/4), pushed to +6 dBFS
        (12_000.0, 45.0, 6.0),
        (8_000.0, 60.0, 6.0),  # case 17 (fs/6)
        (6_000.0, 67.5, 6.0),  # case 18 (fs/8)
        (12_000.0, 45.0, 3.0),  # case 19 (+3 dBTP)
        (19_200.0, 0.0, 0.0),  # fs/2.5, near Nyquist: the 4x grid's worst case
        (997.0, 0.0, 12.0),
    ],
)
def test_holds_the_ceiling_on_tech3341_true_peak_tones(frequency, phase, level):
    s = fade(sine(frequency, 1.0, level_dbfs=level, phase_deg=phase), 0.02).float()
    x = torch.stack([s, s]).unsqueeze(0)
    y, _ = _aligned_limit(x, ceiling=-1.0)
    assert float(true_peak(y)) <= -1.0 + 0.01


def test_eight_times_sidechain_bounds_the_near_nyquist_overshoot():
    s = fade(sine(19_200.0, 1.0, level_dbfs=0.0), 0.02).float()
    x = torch.stack([s, s]).unsqueeze(0)
    y4, _ = _aligned_limit(x, ceiling=-1.0)
    y8, _ = _aligned_limit(x, ceiling=-1.0, oversample=8)
    # The 4x sidechain (like a 4x meter) misses the crest between its points: a 16x meter
    # reads up to ~0.44 dB more; an 8x sidechain bounds that to ~0.11 dB.
    assert float(true_peak(y8, oversample=16)) <= -1.0 + 0.12
    assert float(true_peak(y4, oversample=16)) > float(true_peak(y8, oversample=16))


def test_below_the_ceiling_is_a_pure_delay():
    x = music_like(1.0, seed=5, peak_dbfs=-6.0).unsqueeze(0)
    D = 100
    y, g, _ = lookahead_limiter(x, -1.0, D, 50.0)
    assert torch.equal(g, torch.zeros_like(g))
    assert torch.equal(y[..., D:], x[..., :-D])
    assert torch.equal(y[..., :D], torch.zeros_like(y[..., :D]))


@pytest.mark.parametrize("cuts", [(0, 1, 77, 5000, 12000), (0, 4800, 9600, 12000)])
def test_streaming_equals_offline(cuts):
    x = music_like(0.25, seed=6).unsqueeze(0).repeat(2, 1, 1) * torch.tensor([4.0, 2.0]).view(
        2, 1, 1
    )
    ceiling = torch.tensor([-1.0, -3.0])
    release = torch.tensor([40.0, 200.0])
    y_ref, g_ref, _ = lookahead_limiter(x, ceiling, 144, release)
    state, parts, gains = None, [], []
    for a, b in itertools.pairwise(cuts):
        y, g, state = lookahead_limiter(x[..., a:b], ceiling, 144, release, state)
        parts.append(y)
        gains.append(g)
    assert torch.allclose(torch.cat(parts, -1), y_ref, atol=1e-5)
    assert torch.allclose(torch.cat(gains, -1), g_ref, atol=1e-4)


def test_gradients_reach_signal_ceiling_and_release():
    x = (music_like(0.3, seed=7).unsqueeze(0) * 4.0).double().requires_grad_(True)
    ceiling = torch.tensor([-2.0], dtype=torch.float64, requires_grad=True)
    release = torch.tensor([60.0], dtype=torch.float64, requires_grad=True)
    y, _ = _aligned_limit(x, ceiling, 144, release)
    y.square().sum().backward()
    for t in (x, ceiling, release):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    assert float(ceiling.grad) > 0  # a higher ceiling gives a louder output


def test_rejects_too_short_lookahead():
    with pytest.raises(ValueError):
        limiter_geometry(10)
    assert math.isclose(limiter_geometry(144).window, 144 + 4 - 16 + 1)


@pytest.mark.parametrize("T", [1, 4096, 4097, 50_000])
def test_running_sum_is_a_float64_cumsum(T):
    from mastering.dsp.dynamics import _running_sum

    x = torch.rand(3, T) * 20.0
    got = _running_sum(x)
    want = F.pad(torch.cumsum(x.double(), -1), (1, 0))
    assert got.dtype == torch.float64 and got.shape == (3, T + 1)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-13)


def test_renders_at_several_gains_share_the_sidechain_scans():
    """A chunk rendered at several gains and ceilings (master out's search) shifts scans made
    once; the result equals scanning each shifted sidechain anew (a per-song tensor release
    takes that path), and a subset of songs keeps the cached scans."""
    from mastering.dsp.dynamics import limit, limiter_chunk

    x = torch.stack([music_like(1.0, seed=s) for s in (1, 2, 3)]).float() * 0.9
    d = 144
    shared = limiter_chunk(F.pad(x, (0, d)), d)
    for gain, ceiling in ((0.0, -1.0), (6.0, -1.0), (12.0, -3.0)):
        g = torch.full((3,), gain)
        c = torch.full((3,), ceiling)
        fresh = limiter_chunk(F.pad(x, (0, d)), d)
        y1, r1, s1 = limit(shared, c, 100.0, g)
        y2, r2, s2 = limit(fresh, c, torch.full((3,), 100.0), g)
        torch.testing.assert_close(r1, r2, atol=1e-4, rtol=0)
        torch.testing.assert_close(y1, y2, atol=1e-5, rtol=0)
        torch.testing.assert_close(s1["release"], s2["release"], atol=1e-4, rtol=0)
    sub = shared.rows([2, 0])
    assert sub is not shared and shared.rows([0, 1, 2]) is shared
    y_sub, _, _ = limit(sub, torch.full((2,), -1.0), 100.0, torch.full((2,), 6.0))
    y_all, _, _ = limit(shared, torch.full((3,), -1.0), 100.0, torch.full((3,), 6.0))
    torch.testing.assert_close(y_sub, y_all[[2, 0]], atol=1e-6, rtol=0)
