"""Saturation curves (mastering.dsp.saturation): the formulas they stand for, gradients,
exact silence, and the fused CUDA kernel against the eager form."""

from __future__ import annotations

import math

import pytest
import torch

from mastering.dsp.saturation import shaper_harmonics, soft_clip_change, tanh_curve

BIAS = 0.25


def _harmonics_reference(u, d):
    v = d * u
    return (torch.tanh(v + BIAS) - math.tanh(BIAS) - (1 - math.tanh(BIAS) ** 2) * v) / d


def test_shaper_harmonics_is_the_shaper_minus_its_linear_part_with_gradients():
    u = (torch.randn(2, 3, 500, dtype=torch.float64) * 0.4).requires_grad_()
    d = torch.tensor([[[0.5]], [[8.0]]], dtype=torch.float64).requires_grad_()
    got = shaper_harmonics(u, d, BIAS)
    torch.testing.assert_close(got, _harmonics_reference(u, d), atol=1e-14, rtol=0)
    ga = torch.autograd.grad(got.square().sum(), (u, d))
    gb = torch.autograd.grad(_harmonics_reference(u, d).square().sum(), (u, d))
    for a, r in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-10)


def test_soft_clip_change_and_a_zero_amount_row():
    """tape * (tanh(k u) / k - u), rows with a zero amount give exactly zero (no NaN)."""
    u = torch.randn(3, 1, 400, dtype=torch.float64)
    amount = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64).view(3, 1, 1)
    k = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64).view(3, 1, 1)
    got = soft_clip_change(u, amount, k)
    torch.testing.assert_close(got, amount * (torch.tanh(k * u) / k - u), atol=1e-14, rtol=0)
    assert torch.equal(got[0], torch.zeros_like(got[0]))


def test_silence_stays_exactly_silent():
    z = torch.zeros(2, 3, 64)
    d = torch.full((2, 3, 1), 3.0)
    assert torch.equal(shaper_harmonics(z, d, BIAS), z)
    assert torch.equal(soft_clip_change(z, d / 3, d), z)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_cuda_kernel_matches_the_eager_form(monkeypatch):
    from mastering.dsp import saturation

    if saturation._kernel() is None:
        pytest.skip("Triton not importable")
    g = torch.Generator().manual_seed(0)
    u = (torch.randn(4, 2, 3, 10_007, generator=g) * 0.5).cuda()
    a, b, c, e = (torch.rand(4, 1, 3, 1, generator=g).cuda() + 0.1 for _ in range(4))
    b = b - 0.6  # |b| < 1, either sign
    fused = tanh_curve(u, a, b, c, e)
    monkeypatch.setenv("LACQUER_FUSED", "0")
    eager = tanh_curve(u, a, b, c, e)
    torch.testing.assert_close(fused, eager, atol=2e-6, rtol=1e-5)
    assert torch.equal(tanh_curve(torch.zeros_like(u), a, b, c, e), torch.zeros_like(u))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_kernel_that_fails_falls_back_to_the_eager_form(monkeypatch):
    from mastering.dsp import saturation

    if not saturation.warm_up("cuda"):
        pytest.skip("Triton not importable")
    u = torch.randn(2, 3, 1000, device="cuda")
    ones = torch.ones(2, 3, 1, device="cuda")
    monkeypatch.setenv("LACQUER_FUSED", "0")
    eager = tanh_curve(u, ones, 0.5 * ones, ones, ones)
    monkeypatch.delenv("LACQUER_FUSED")

    def broken(*args):
        raise RuntimeError("no compiler here")

    from mastering.dsp import _fused

    monkeypatch.setattr(saturation, "_fused", broken)
    monkeypatch.setattr(_fused, "broken", {})
    assert torch.equal(tanh_curve(u, ones, 0.5 * ones, ones, ones), eager)
    assert "saturation" in _fused.broken and not saturation.warm_up("cuda")
