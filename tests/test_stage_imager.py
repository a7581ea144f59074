"""Stereo imager: widening with mono bass, untouched mid, correlation never negative, streaming
== offline, gradients."""

import itertools

import pytest
import torch

from mastering.conditioning import Conditioning, ConditioningEncoder
from mastering.dsp.stereo import correlation, from_mid_side, to_mid_side
from mastering.stages.base import FRAME_HOP, StageContext
from mastering.stages.imager import IMAGER_SPECS, LATENCY, Imager
from mastering.testsignals import music_like

FS = 48_000


def _ctx(genre="pop", batch=1, **kw):
    enc = ConditioningEncoder()
    cb = enc(
        [Conditioning(genre=genre, **kw)] * batch,
        tempo_bpm=torch.full((batch,), 120.0),
        energy=torch.full((batch,), 0.5),
        vocal_ratio=torch.full((batch,), 0.3),
    )
    return StageContext(cb)


def _offline(stage, x, params):
    """Latency-compensated offline output (as the chain does it)."""
    y, _ = stage.process(torch.nn.functional.pad(x, (0, LATENCY)), params)
    return y[..., LATENCY:]


def _band_energy(x, lo, hi):
    """Energy of ``x [..., T]`` between ``lo`` and ``hi`` Hz (FFT): ``[...]``."""
    spec = torch.fft.rfft(x)
    f = torch.fft.rfftfreq(x.shape[-1], 1.0 / FS)
    keep = (f >= lo) & (f < hi)
    return spec[..., keep].abs().square().sum(-1)


def _side_with_bass(seconds=3.0, side_scale=0.2, seed=1):
    """A narrow music-like mix whose side also carries 25-55 Hz rumble."""
    x = music_like(seconds, seed=seed).unsqueeze(0)
    ms = to_mid_side(x)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape[-1], generator=g)
    spec = torch.fft.rfft(noise)
    f = torch.fft.rfftfreq(x.shape[-1], 1.0 / FS)
    rumble = torch.fft.irfft(spec * ((f > 25) & (f < 55)), n=x.shape[-1])
    rumble = 0.3 * rumble / rumble.abs().max()
    ms[:, 1] = side_scale * ms[:, 1] + rumble
    return from_mid_side(ms)


@pytest.fixture(scope="module")
def stage():
    torch.manual_seed(0)
    return Imager()


def test_widens_narrow_mix_with_mono_bass_and_exact_mid(stage):
    x = _side_with_bass()
    params = stage.predict(x, _ctx("pop", style="wide"), {"mono_below_hz": 120.0})
    assert (params["side_gain_db"] > 3.0).all()  # the prior widens a narrow mix
    y = _offline(stage, x, params).detach()
    mid_in, side_in = to_mid_side(x).unbind(1)
    mid_out, side_out = to_mid_side(y).unbind(1)
    # Mid untouched.
    assert (mid_out - mid_in).abs().max() < 1e-5
    # Wider above the mono crossover: side/mid energy up by more than 3 dB over 250 Hz-16 kHz.
    before = _band_energy(side_in, 250, 16_000) / _band_energy(mid_in, 250, 16_000)
    after = _band_energy(side_out, 250, 16_000) / _band_energy(mid_out, 250, 16_000)
    assert 10 * torch.log10(after / before) > 3.0
    # Mono bass: the side rumble (25-55 Hz) falls by more than 40 dB.
    drop = _band_energy(side_out, 20, 60) / _band_energy(side_in, 20, 60)
    assert 10 * torch.log10(drop) < -40.0


def test_over_wide_mix_is_never_out_of_phase(stage):
    # L/R correlation about -0.5: side energy three times the mid energy.
    x = music_like(3.0, seed=2).unsqueeze(0)
    ms = to_mid_side(x)
    other = music_like(3.0, seed=9).mean(0)
    ms[:, 1] = other * (3.0 * ms[:, 0].square().sum() / other.square().sum()).sqrt()
    x = from_mid_side(ms)
    assert float(correlation(x)) < -0.45
    for gain in (None, 9.0):  # the prior, and the widest setting
        over = {"side_gain_db": gain} if gain is not None else None
        params = stage.predict(x, _ctx("ambient"), over)
        y, _ = stage.process(x, params)
        y = y.detach()
        assert float(correlation(y)) >= 0.0
        per_frame = correlation(y, FRAME_HOP)  # frames line up: LATENCY is 3 frames
        assert per_frame.min() > -1e-3
        assert (to_mid_side(y)[:, 0, LATENCY:] - ms[:, 0, :-LATENCY]).abs().max() < 1e-5


def test_prior_tames_over_wide_and_follows_width_macro(stage):
    x = music_like(2.0, seed=3).unsqueeze(0)
    ms = to_mid_side(x)
    ms[:, 1] *= 3.0
    wide_mix = from_mid_side(ms)
    assert (stage.prior(wide_mix, _ctx("unknown"))["side_gain_db"] < 0).all()
    narrow = stage.prior(x, _ctx("unknown", style="narrow"))["side_gain_db"]
    wide = stage.prior(x, _ctx("unknown", style="wide"))["side_gain_db"]
    assert (wide > narrow + 2.0).all()


def test_streaming_equals_offline(stage):
    x = _side_with_bass(2.0, side_scale=1.5).repeat(2, 1, 1)
    x[1] = x[1].flip(-1)
    params = stage.predict(x, _ctx("edm", batch=2))
    y, _ = stage.process(x, params)
    cuts = [0, 1, 7, 479, 481, 5_000, 5_001, 33_333, 60_000, x.shape[-1]]
    state, parts = None, []
    for a, b in itertools.pairwise(cuts):
        out, state = stage.process(x[..., a:b], params, state)
        assert out.shape[-1] == b - a
        parts.append(out)
    assert (torch.cat(parts, -1) - y).abs().max() < 1e-4


def test_gradients_reach_audio_params_and_network(stage):
    x = _side_with_bass(1.0).requires_grad_(True)
    ctx = _ctx("pop")
    params = stage.predict(x, ctx)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    y, _ = stage.process(x, leaves)
    side = to_mid_side(y)[:, 1]
    side.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for s in IMAGER_SPECS:
        assert leaves[s.name].grad is not None and leaves[s.name].grad.abs().sum() > 0, s.name
    stage.zero_grad()
    y, _ = stage(x.detach(), ctx)
    to_mid_side(y)[:, 1].square().mean().backward()
    assert stage.gain_head.out.weight.grad.abs().sum() > 0
    assert stage.mono_head.out.weight.grad.abs().sum() > 0


def test_untrained_prediction_is_the_prior_and_small(stage):
    x = music_like(1.0, seed=4).unsqueeze(0)
    ctx = _ctx("rock")
    prior, pred = stage.prior(x, ctx), stage.predict(x, ctx)
    for s in IMAGER_SPECS:
        assert pred[s.name].shape == prior[s.name].shape
        assert torch.allclose(pred[s.name], s.clamp(prior[s.name]), atol=1e-3), s.name
    assert pred["side_gain_db"].shape[-1] == -(-x.shape[-1] // FRAME_HOP)
    assert sum(p.numel() for p in stage.parameters()) < 300_000


def test_band_caps_tame_only_the_over_wide_band(stage):
    # Highs (above 6 kHz) 10 dB wider than their mid; low mids narrow. Side gains 0 dB, so
    # only the per-band caps act: the top band comes down to side <= mid, the low mids stay.
    x = music_like(2.0, seed=5).unsqueeze(0)
    ms = to_mid_side(x)
    other = music_like(2.0, seed=11).mean(0)
    spec = torch.fft.rfft(other)
    f = torch.fft.rfftfreq(other.shape[-1], 1.0 / FS)
    highs = torch.fft.irfft(spec * (f > 6_000), n=other.shape[-1])
    scale = 10.0 * _band_energy(ms[0, 0], 6_000, 20_000) / _band_energy(highs, 6_000, 20_000)
    ms[:, 1] = 0.3 * ms[:, 1] + scale.sqrt() * highs
    x = from_mid_side(ms)
    params = stage.predict(x, _ctx("unknown"), {"side_gain_db": 0.0, "mono_below_hz": 100.0})
    y = _offline(stage, x, params).detach()

    def ratio_db(sig, lo, hi):
        mid, side = to_mid_side(sig).unbind(1)
        return float(10 * torch.log10(_band_energy(side, lo, hi) / _band_energy(mid, lo, hi)))

    # Measured over the imager's top band (above its 5 kHz crossover; LR4 skirts overlap).
    assert ratio_db(x, 5_000, 20_000) > 5.0
    assert ratio_db(y, 5_000, 20_000) < 1.0
    assert abs(ratio_db(y, 300, 800) - ratio_db(x, 300, 800)) < 0.5
