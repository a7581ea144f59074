"""Exciter stage: harmonics on a dull input, aliasing, tape, LoFi, streaming, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from mastering.conditioning import Conditioning, ConditioningEncoder
from mastering.dsp.biquad import high_shelf_sos, lowpass_sos
from mastering.dsp.iir import sosfilt
from mastering.features import stft_power
from mastering.stages._nets import n_params
from mastering.stages.base import StageContext
from mastering.stages.exciter import LATENCY, Exciter, quantize_ste
from mastering.testsignals import music_like, sine

SR = 48_000


@pytest.fixture(scope="module")
def ex() -> Exciter:
    torch.manual_seed(0)
    return Exciter()


@pytest.fixture(scope="module")
def encoder() -> ConditioningEncoder:
    return ConditioningEncoder()


def _ctx(encoder: ConditioningEncoder, genre: str = "pop", **kw) -> StageContext:
    cb = encoder(
        [Conditioning(genre=genre, **kw)],
        tempo_bpm=torch.tensor([120.0]),
        energy=torch.tensor([0.5]),
        vocal_ratio=torch.tensor([0.3]),
    )
    return StageContext(cb)


@pytest.fixture(scope="module")
def music() -> torch.Tensor:
    return music_like(4.0, seed=1).unsqueeze(0)


@pytest.fixture(scope="module")
def dull(music) -> torch.Tensor:
    """The music with its top removed (4th-order low-pass at 4 kHz): a dull mix."""
    sos = torch.stack([lowpass_sos(4000.0, 0.7071, SR)] * 2).double()
    return sosfilt(music.double(), sos).float()


def _detached(params):
    return {k: v.detach() for k, v in params.items()}


def _band_db(x: torch.Tensor, lo: float, hi: float) -> float:
    """Long-term power (dB) of ``x`` between ``lo`` and ``hi`` Hz, both channels."""
    p = stft_power(x).mean(-1).mean(1)[0]
    f = torch.fft.rfftfreq(4096, 1 / SR)
    return 10 * math.log10(float(p[(f >= lo) & (f < hi)].sum()) * 2 / 4096 + 1e-30)


def _run(ex: Exciter, x: torch.Tensor, params) -> torch.Tensor:
    y, _ = ex.process(x, params)
    return y[..., LATENCY:]


def _params(amount=0.0, drive=12.0, tape=0.0, lofi=0.0, batch=1):
    return {
        "amount": torch.full((batch, 3), amount),
        "drive_db": torch.full((batch, 3), drive),
        "tape": torch.full((batch, 1), tape),
        "lofi": torch.full((batch, 1), lofi),
    }


def test_controller_small_and_untrained_residual_is_prior(ex, encoder, dull):
    assert n_params(ex) < 300_000
    ctx = _ctx(encoder, "rock")
    prior = ex.prior(dull, ctx)
    delta = ex.residual(dull, ctx)
    assert set(delta) == {s.name for s in ex.specs}
    assert all(float(v.detach().abs().max()) == 0.0 for v in delta.values())
    pred = ex.predict(dull, ctx)
    for s in ex.specs:
        assert pred[s.name].shape == (1, s.size)
        torch.testing.assert_close(pred[s.name], s.clamp(prior[s.name]), atol=1e-2, rtol=0)


def test_prior_rules(ex, encoder, music, dull):
    neutral = ex.prior(dull, _ctx(encoder, "unknown"))
    saturated = ex.prior(dull, _ctx(encoder, "unknown", macros={"saturation": 1.0}))
    assert (saturated["amount"] > neutral["amount"] + 10).all()
    assert float(saturated["tape"]) > float(neutral["tape"]) + 10
    assert (saturated["drive_db"] > neutral["drive_db"] + 5).all()
    # The high-frequency deficit of the dull mix asks for more harmonics than a bright one.
    shelf = high_shelf_sos(3000.0, 12.0, sample_rate=SR).view(1, 6).double()
    bright_mix = sosfilt(music.double(), shelf).float()
    deficit_dull = float(ex.analyze(dull, _ctx(encoder))["deficit"])
    deficit_bright = float(ex.analyze(bright_mix, _ctx(encoder))["deficit"])
    assert deficit_dull > deficit_bright + 3.0, (deficit_dull, deficit_bright)
    bright = ex.prior(bright_mix, _ctx(encoder, "unknown"))
    assert (neutral["amount"] > bright["amount"] + 10).all()
    lofi = ex.prior(dull, _ctx(encoder, "lofi", rule_breaks=("PRODUCTION_LoFi",)))
    assert float(lofi["lofi"]) == 100.0 and float(lofi["tape"]) >= 60.0
    assert float(neutral["lofi"]) == 0.0


def test_raises_high_band_on_dull_input(ex, encoder, dull):
    params = _detached(ex.predict(dull, _ctx(encoder, "pop")))
    assert (params["amount"] <= 70).all()  # default-ish amounts, not maxed out
    y = _run(ex, dull, params)
    x = dull[..., : y.shape[-1]]
    gain_hf = _band_db(y, 6000, 20000) - _band_db(x, 6000, 20000)
    gain_full = _band_db(y, 20, 20000) - _band_db(x, 20, 20000)
    assert gain_hf > 1.0, gain_hf
    assert abs(gain_full) < 0.3, gain_full  # it adds harmonics, not level


@pytest.mark.parametrize("override", [None, (100.0, 24.0), (100.0, 48.0)])
def test_no_aliasing_on_high_sine(ex, encoder, override):
    """A 7 kHz sine: harmonics above it, but nothing (>= 60 dB down) below 6 kHz."""
    x = sine(7000.0, 1.5, level_dbfs=-6.0, dtype=torch.float32).expand(1, 2, -1).contiguous()
    params = _detached(ex.predict(x, _ctx(encoder, "rock")))
    if override is not None:
        params["amount"] = torch.full((1, 3), override[0])
        params["drive_db"] = torch.full((1, 3), override[1])
    y = _run(ex, x, params)[0, 0, -SR:].double()
    spec = torch.fft.rfft(y * torch.blackman_window(SR, periodic=False, dtype=torch.float64))
    p = spec.abs().square()
    f = torch.fft.rfftfreq(SR, 1 / SR)

    def around(fc: float) -> float:
        return float(p[(f > fc - 50) & (f < fc + 50)].sum())

    fund = around(7000.0)
    below = float(p[(f > 20) & (f < 6000)].sum())
    harmonics = max(around(14_000.0), around(21_000.0))
    assert 10 * math.log10(harmonics / fund) > -50  # it did generate harmonics
    assert 10 * math.log10(below / fund) < -60, 10 * math.log10(below / fund)


def test_bypass_is_exact_delay(ex):
    x = music_like(1.0, seed=2).unsqueeze(0)
    y, _ = ex.process(x, _params(amount=0.0, tape=0.0, lofi=0.0))
    torch.testing.assert_close(y[..., LATENCY:], x[..., :-LATENCY], atol=1e-6, rtol=0)
    assert float(y[..., :LATENCY].abs().max()) < 1e-6


def test_zero_tape_and_lofi_are_skipped_exactly_without_gradients(ex):
    """Inference skips an all-zero tape or LoFi path (no full-band oversampling, no LoFi
    filter); the output equals the full computation's, which runs when gradients are wanted."""
    x = music_like(1.0, seed=4).unsqueeze(0).repeat(2, 1, 1)
    params = _params(amount=50.0, tape=0.0, lofi=0.0, batch=2)
    with torch.no_grad():
        skipped, state = ex.process(x, params)
    assert state["lofi"] is None  # the LoFi filter did not run
    wanted = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    full, state = ex.process(x, wanted)
    assert state["lofi"] is not None
    torch.testing.assert_close(skipped, full.detach(), atol=2e-7, rtol=0)
    full.sum().backward()
    assert wanted["tape"].grad is not None and wanted["lofi"].grad is not None


def test_tape_soft_clips(ex):
    x = sine(440.0, 1.0, level_dbfs=-1.0, dtype=torch.float32).expand(1, 2, -1).contiguous()
    y = _run(ex, x, _params(tape=100.0))[0, 0, -SR // 2 :].double()
    assert float(y.abs().max()) < 0.8 * float(x.abs().max())  # peaks rounded off
    spec = torch.fft.rfft(y * torch.hann_window(y.numel(), dtype=torch.float64)).abs()
    k = round(440 * y.numel() / SR)
    third = float(spec[3 * k - 2 : 3 * k + 3].max() / spec[k - 2 : k + 3].max())
    assert 20 * math.log10(third) > -30  # odd harmonics of a soft clip


def test_lofi_bandwidth_and_quantizer(ex, encoder, music):
    ctx = _ctx(encoder, "lofi", rule_breaks=("PRODUCTION_LoFi",))
    params = _detached(ex.predict(music, ctx))
    y = _run(ex, music, params)
    x = music[..., : y.shape[-1]]
    drop = _band_db(x, 12_000, 24_000) - _band_db(y, 12_000, 24_000)
    assert drop > 20.0, drop
    assert abs(_band_db(y, 200, 8000) - _band_db(x, 200, 8000)) < 1.5  # the body stays
    # 12-bit grid with a straight-through gradient.
    v = torch.linspace(-1, 1, 1001, requires_grad=True)
    q = quantize_ste(v, torch.tensor(12.0))
    steps = q.detach() * 2048
    assert torch.allclose(steps, steps.round(), atol=1e-4)
    assert float((q.detach() - v.detach()).abs().max()) <= 0.5 / 2048 + 1e-7
    q.sum().backward()
    assert torch.allclose(v.grad, torch.ones_like(v))


def test_streaming_equals_offline(ex, encoder):
    x = music_like(1.5, seed=3).unsqueeze(0).repeat(2, 1, 1)
    x[1] *= 0.4
    cb = encoder(
        [Conditioning(genre="rock"), Conditioning(genre="lofi", rule_breaks=("PRODUCTION_LoFi",))],
        tempo_bpm=torch.tensor([120.0, 80.0]),
        energy=torch.tensor([0.5, 0.3]),
        vocal_ratio=torch.tensor([0.3, 0.1]),
    )
    params = _detached(ex.predict(x, StageContext(cb)))
    params["tape"] = torch.tensor([[40.0], [70.0]])
    full, _ = ex.process(x, params)
    state, parts, start = None, [], 0
    for size in (10, 4800, 333, 20_000, x.shape[-1]):
        chunk = x[..., start : start + size]
        if chunk.shape[-1] == 0:
            break
        y, state = ex.process(chunk, params, state)
        parts.append(y)
        start += size
    torch.testing.assert_close(torch.cat(parts, -1), full, atol=1e-4, rtol=0)


def test_gradients_reach_audio_and_conditioning(encoder):
    ex = Exciter()
    x = (music_like(1.0, seed=4).unsqueeze(0) * 0.7).requires_grad_(True)
    encoder.zero_grad()
    y, _ = ex(x, _ctx(encoder, "rock"))
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    emb = encoder.genre_embedding.weight.grad
    assert emb is not None and torch.isfinite(emb).all() and emb.abs().sum() > 0
    assert ex.head.out.weight.grad.abs().sum() > 0
    with torch.no_grad():
        ex.head.out.weight.normal_(0, 0.01)
    ctx = _ctx(encoder, "rock")
    vec = ctx.cond.vector.detach().clone().requires_grad_(True)
    ctx.cond.vector = vec
    y, _ = ex(x.detach(), ctx)
    y.square().mean().backward()
    assert vec.grad is not None and vec.grad.abs().sum() > 0


def test_prior_and_residual_share_one_analysis_per_prediction(ex, encoder, music, monkeypatch):
    """Stage.shared: the exciter's STFT analysis runs once per predict (prior and residual
    read it), and afresh in every prediction."""
    calls = []
    analyze = ex.analyze
    monkeypatch.setattr(ex, "analyze", lambda x, ctx: calls.append(1) or analyze(x, ctx))
    ctx = _ctx(encoder, "rock")
    with torch.no_grad():
        ex.predict(music, ctx)
        assert len(calls) == 1
        ex.predict(music, ctx)
        assert len(calls) == 2
        ex.prior(music, ctx)  # outside a prediction: computed each time
        assert len(calls) == 3
