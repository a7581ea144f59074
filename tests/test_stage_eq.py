"""EQ stage: measured spectral effects, time alignment, streaming, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from mastering.conditioning import Conditioning, ConditioningEncoder
from mastering.dsp.biquad import high_shelf_sos, low_shelf_sos
from mastering.dsp.iir import sosfilt
from mastering.features import stft_power
from mastering.loudness import ungated_loudness
from mastering.stages._nets import n_params
from mastering.stages.base import StageContext
from mastering.stages.eq import BAND_CENTERS_HZ, EQ, balance_distance_db
from mastering.testsignals import music_like

SR = 48_000


@pytest.fixture(scope="module")
def eq() -> EQ:
    torch.manual_seed(0)
    return EQ()


@pytest.fixture(scope="module")
def encoder() -> ConditioningEncoder:
    return ConditioningEncoder()


def _ctx(encoder: ConditioningEncoder, genre: str, **kw) -> StageContext:
    cb = encoder(
        [Conditioning(genre=genre, **kw)],
        tempo_bpm=torch.tensor([120.0]),
        energy=torch.tensor([0.5]),
        vocal_ratio=torch.tensor([0.3]),
    )
    return StageContext(cb)


@pytest.fixture(scope="module")
def dark_boomy() -> torch.Tensor:
    """Music-like audio deliberately tilted: +6 dB below 150 Hz, -9 dB above 2.5 kHz."""
    x = music_like(6.0, seed=1).unsqueeze(0).double()
    sos = torch.stack(
        [low_shelf_sos(150.0, 6.0, sample_rate=SR), high_shelf_sos(2500.0, -9.0, sample_rate=SR)]
    ).double()
    return (sosfilt(x, sos) * 0.5).float()


def _predict(eq: EQ, x: torch.Tensor, ctx: StageContext) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in eq.predict(x, ctx).items()}


def _aligned(eq: EQ, x: torch.Tensor, params) -> torch.Tensor:
    y, _ = eq.process(x, params)
    lat = eq.latency(params)
    return y[..., lat:]


def _band_db(x: torch.Tensor, lo: float, hi: float, channel: int = 0) -> torch.Tensor:
    """Mean power (dB) of the mid (0) or side (1) long-term spectrum between lo and hi Hz."""
    ms = torch.stack([0.5 * (x[:, 0] + x[:, 1]), 0.5 * (x[:, 0] - x[:, 1])], 1)
    p = stft_power(ms).mean(-1)[:, channel]
    f = torch.fft.rfftfreq(4096, 1 / SR)
    sel = (f >= lo) & (f < hi)
    return 10 * torch.log10(p[:, sel].mean(-1) + 1e-20)


def _flat_params(batch: int = 1) -> dict[str, torch.Tensor]:
    z = torch.zeros(batch, 1)
    return {
        "band_gain_db": torch.zeros(batch, 10),
        "q": torch.ones(batch, 1),
        "low_shelf_db": z,
        "high_shelf_db": z,
        "vocal_db": z,
        "gain_db": z,
    }


def test_controller_small_and_untrained_residual_is_prior(eq, encoder, dark_boomy):
    assert n_params(eq) < 300_000
    ctx = _ctx(encoder, "rock")
    prior = eq.prior(dark_boomy, ctx)
    delta = eq.residual(dark_boomy, ctx)
    assert set(delta) == {s.name for s in eq.specs}
    assert all(float(v.detach().abs().max()) == 0.0 for v in delta.values())
    pred = eq.predict(dark_boomy, ctx)
    for s in eq.specs:
        assert pred[s.name].shape == (1, s.size)
        torch.testing.assert_close(pred[s.name], s.clamp(prior[s.name]), atol=1e-3, rtol=0)


def test_moves_spectrum_toward_target(eq, encoder, dark_boomy):
    ctx = _ctx(encoder, "pop")
    params = _predict(eq, dark_boomy, ctx)
    # Dark and boomy input: the prior must cut lows and lift highs.
    assert float(params["high_shelf_db"]) > 2.0 or float(params["band_gain_db"][0, -2:].mean()) > 2
    assert float(params["band_gain_db"][0, 1:3].mean() + params["low_shelf_db"][0, 0]) < -1.0
    y = _aligned(eq, dark_boomy, params)
    before = float(balance_distance_db(dark_boomy, ctx.cond).detach())
    after = float(balance_distance_db(y, ctx.cond).detach())
    assert before > 3.0, before
    assert after < 0.6 * before, (before, after)


def test_loudness_neutral_prior(eq, encoder, dark_boomy):
    """The prior's output gain keeps the (ungated BS.1770) loudness within 1 LU."""
    params = _predict(eq, dark_boomy, _ctx(encoder, "pop"))
    assert abs(float(params["gain_db"])) > 1.0  # it had to compensate something
    y = _aligned(eq, dark_boomy, params)
    x = dark_boomy[..., : y.shape[-1]]
    diff = float(ungated_loudness(y.double()) - ungated_loudness(x.double()))
    assert abs(diff) < 1.0, diff


def test_genre_effects_edm_vs_jazz(eq, encoder):
    x = music_like(6.0, seed=2).unsqueeze(0) * 0.5
    out = {}
    for genre in ("edm", "jazz"):
        y = _aligned(eq, x, _predict(eq, x, _ctx(encoder, genre)))
        mids = _band_db(y, 500, 2000)
        out[genre] = (_band_db(y, 60, 120) - mids, _band_db(y, 8000, 20000) - mids)
    lows = float(out["edm"][0] - out["jazz"][0])
    highs = float(out["edm"][1] - out["jazz"][1])
    assert lows > 1.0, lows
    assert highs > 2.0, highs


def test_buried_vocals_tucks_mid_channel_only(eq, encoder):
    x = music_like(4.0, seed=3).unsqueeze(0) * 0.5
    x = x + 0.05 * torch.randn(1, 2, x.shape[-1], generator=torch.Generator().manual_seed(0))
    plain = _predict(eq, x, _ctx(encoder, "pop"))
    buried = _predict(eq, x, _ctx(encoder, "pop", rule_breaks=("PRODUCTION_BuriedVocals",)))
    assert float(buried["vocal_db"]) < -3.0 and abs(float(plain["vocal_db"])) < 1e-3
    ya, yb = _aligned(eq, x, plain), _aligned(eq, x, buried)
    # Relative to the same song without the rule-break: mid 1-4 kHz down (vs its 200-500 Hz).
    tuck_mid = (_band_db(yb, 1000, 4000) - _band_db(yb, 200, 500)) - (
        _band_db(ya, 1000, 4000) - _band_db(ya, 200, 500)
    )
    tuck_side = (_band_db(yb, 1000, 4000, 1) - _band_db(yb, 200, 500, 1)) - (
        _band_db(ya, 1000, 4000, 1) - _band_db(ya, 200, 500, 1)
    )
    assert float(tuck_mid) < -2.5, float(tuck_mid)
    assert abs(float(tuck_side)) < 0.5, float(tuck_side)


def test_realized_response_matches_design(eq):
    """The FIR realizes the biquad cascade: sines at band centres get the designed gain."""
    params = _flat_params()
    params["band_gain_db"] = torch.tensor([[6.0, -6, 6, -6, 6, -6, 6, -6, 6, -6]])
    designed = eq.magnitude_db(params)[0, 1]  # side = main curve
    n = SR
    t = torch.arange(n) / SR
    for fc in BAND_CENTERS_HZ[1:]:
        f = round(fc)  # integer Hz: whole periods in 1 s
        s = torch.sin(2 * math.pi * f * t).expand(1, 2, n).contiguous()
        s[:, 1] = -s[:, 1]  # pure side
        y = _aligned(eq, s, params)[..., 8192:]
        gain = 10 * math.log10(float(y.square().mean()) / 0.5)
        k = round(f * eq.n_fft / SR)
        assert abs(gain - float(designed[k])) < 0.3, (f, gain, float(designed[k]))


def test_flat_is_pure_delay(eq):
    x = torch.randn(2, 2, 20_000, generator=torch.Generator().manual_seed(1))
    params = _flat_params(2)
    y, _ = eq.process(x, params)
    lat = eq.latency(params)
    assert lat == (eq.n_taps - 1) // 2
    torch.testing.assert_close(y[..., lat:], x[..., :-lat], atol=1e-4, rtol=0)
    assert float(y[..., :lat].abs().max()) < 1e-4


def test_streaming_equals_offline(eq, encoder):
    x = music_like(2.0, seed=4).unsqueeze(0).repeat(2, 1, 1)
    x[1] *= 0.3
    cb = encoder(
        [Conditioning(genre="edm"), Conditioning(genre="jazz")],
        tempo_bpm=torch.tensor([120.0, 90.0]),
        energy=torch.tensor([0.5, 0.4]),
        vocal_ratio=torch.tensor([0.3, 0.2]),
    )
    params = _predict(eq, x, StageContext(cb))
    full, _ = eq.process(x, params)
    state, parts, start = None, [], 0
    for size in (1000, 7777, 480, 30_000, x.shape[-1]):
        chunk = x[..., start : start + size]
        if chunk.shape[-1] == 0:
            break
        y, state = eq.process(chunk, params, state)
        parts.append(y)
        start += size
    torch.testing.assert_close(torch.cat(parts, -1), full, atol=1e-4, rtol=0)


def test_gradients_reach_audio_and_conditioning(encoder):
    eq = EQ()
    x = (music_like(1.5, seed=5).unsqueeze(0) * 0.5).requires_grad_(True)
    cb = encoder(
        [Conditioning(genre="rock")],
        tempo_bpm=torch.tensor([120.0]),
        energy=torch.tensor([0.5]),
        vocal_ratio=torch.tensor([0.3]),
    )
    encoder.zero_grad()
    y, _ = eq(x, StageContext(cb))
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    emb = encoder.genre_embedding.weight.grad
    assert emb is not None and emb.abs().sum() > 0  # through the prior's macros
    assert eq.head.out.weight.grad.abs().sum() > 0  # the residual's zero-init layer trains
    # Once trained (last layer non-zero), the residual passes gradient to the vector itself.
    with torch.no_grad():
        eq.head.out.weight.normal_(0, 0.01)
    cb = encoder(
        [Conditioning(genre="rock")],
        tempo_bpm=torch.tensor([120.0]),
        energy=torch.tensor([0.5]),
        vocal_ratio=torch.tensor([0.3]),
    )
    vec = cb.vector.detach().clone().requires_grad_(True)
    cb.vector = vec
    y, _ = eq(x.detach(), StageContext(cb))
    y.square().mean().backward()
    assert vec.grad is not None and vec.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in eq.parameters() if p.grad is not None)
