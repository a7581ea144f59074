"""Reverb stage and IR synthesis: measured decay, genre priors, tempo sync, exact dry at wet 0,
streaming == offline, gradients."""

import itertools
import math

import pytest
import torch

from mastering.conditioning import Conditioning, ConditioningEncoder
from mastering.dsp.ir import (
    band_edc_loss,
    estimate_rt60_s,
    synthesize_ir,
)
from mastering.stages.base import StageContext
from mastering.stages.reverb import REVERB_SPECS, Reverb, snap_musical
from mastering.testsignals import music_like

FS = 48_000
#: Measurement bands inside each RT60 band (away from the cross-fades), Hz.
MEASURE_BANDS = ((50.0, 150.0), (500.0, 1_000.0), (3_000.0, 4_500.0), (9_000.0, 15_000.0))


def _ctx(genre="pop", bpm=120.0, batch=1, **kw):
    enc = ConditioningEncoder()
    cb = enc(
        [Conditioning(genre=genre, **kw)] * batch,
        tempo_bpm=torch.full((batch,), bpm),
        energy=torch.full((batch,), 0.5),
        vocal_ratio=torch.full((batch,), 0.3),
    )
    return StageContext(cb)


def _impulse(n=FS):
    x = torch.zeros(1, 2, n)
    x[..., 0] = 1.0
    return x


@pytest.fixture(scope="module")
def stage():
    torch.manual_seed(0)
    return Reverb()


def test_measured_decay_follows_rt60(stage):
    rt60 = [1.2, 0.8, 0.5, 0.3]
    over = {"rt60_s": rt60, "pre_delay_ms": 20.0, "tail_s": 1.6, "wet_pct": 20.0}
    x = _impulse(2 * FS)
    params = stage.predict(x, _ctx(), over)
    y, _ = stage.process(x, params)
    wet = (y - x) / 0.2  # the IR itself (mid of the impulse is 1)
    for (lo, hi), target in zip(MEASURE_BANDS, rt60, strict=True):
        measured = float(estimate_rt60_s(wet, lo, hi)[0])
        assert abs(measured / target - 1.0) < 0.15, (lo, hi, measured, target)
    # Nothing before the pre-delay: the tail starts at 20 ms.
    level = wet[0].abs().amax(0)
    start = int(0.02 * FS)
    assert level[: start - 1].max() < 1e-5 * level.max()  # FFT round-off only
    assert level[start : start + int(0.005 * FS)].max() > 0.1 * level.max()  # 5 ms fade-in


def test_ir_unit_energy_causal_and_width():
    rt = torch.tensor([[1.0, 0.8, 0.6, 0.4]] * 3)
    width = torch.tensor([0.0, 0.5, 1.0])
    ir = synthesize_ir(
        rt, torch.full((3,), 10.0), torch.full((3,), 1.0), torch.full((3,), 9e3), width
    )
    energy = ir.square().sum(-1).mean(-1)
    assert torch.allclose(energy, torch.ones(3), atol=1e-4)
    assert ir[..., : int(0.01 * FS)].abs().max() == 0  # exactly zero before the pre-delay
    left, right = ir[:, 0], ir[:, 1]
    corr = (left * right).sum(-1) / (left.square().sum(-1) * right.square().sum(-1)).sqrt()
    expected = torch.cos(width * math.pi / 2)
    assert torch.allclose(corr, expected, atol=0.08), corr
    # Deterministic: the same parameters give the same IR.
    again = synthesize_ir(
        rt, torch.full((3,), 10.0), torch.full((3,), 1.0), torch.full((3,), 9e3), width
    )
    assert torch.equal(ir, again)


def test_genre_priors_tail_lengths_and_wet(stage):
    x = music_like(2.0, seed=3).unsqueeze(0)
    decay, wet = {}, {}
    for genre, bpm in (("pop", 118.0), ("ballad", 72.0), ("ambient", 90.0), ("metal", 160.0),
                       ("hiphop", 92.0)):  # fmt: skip
        p = {k: v.detach() for k, v in stage.predict(x, _ctx(genre, bpm)).items()}
        ir = stage.impulse_response(p)
        decay[genre] = float(estimate_rt60_s(ir, 500.0, 2_000.0)[0])
        wet[genre] = float(p["wet_pct"][0, 0].detach())
    assert decay["ballad"] > 1.5 * decay["pop"]
    assert decay["ambient"] > 1.5 * decay["pop"]
    assert decay["ambient"] > decay["ballad"]
    assert wet["metal"] < 0.4 * wet["pop"] and wet["hiphop"] < 0.4 * wet["pop"]
    assert wet["ambient"] > wet["pop"]


def test_space_macro_scales_wet_and_length(stage):
    x = music_like(1.0, seed=4).unsqueeze(0)
    dry = stage.prior(x, _ctx("unknown", style="dry"))
    lush = stage.prior(x, _ctx("unknown", style="lush"))
    assert lush["wet_pct"][0, 0] > 2.0 * dry["wet_pct"][0, 0]
    assert lush["rt60_s"][0, 1] > 1.4 * dry["rt60_s"][0, 1]


@pytest.mark.parametrize("bpm", [87.0, 120.0, 143.0])
def test_tempo_sync(stage, bpm):
    p = {k: v.detach() for k, v in stage.prior(torch.zeros(1, 2, FS), _ctx("pop", bpm)).items()}
    whole_ms = 240_000.0 / bpm
    for value in (
        float(p["pre_delay_ms"][0, 0]) / whole_ms,
        float(p["rt60_s"][0, 1]) / whole_ms * 1000,
    ):
        k = math.log2(value)
        on_grid = min(abs(k - round(k)), abs(k - math.log2(1.5) - round(k - math.log2(1.5))))
        assert on_grid < 1e-4, (bpm, value)


def test_snap_is_straight_through():
    v = torch.tensor([0.3, 0.7, 1.2, 2.9], requires_grad=True)
    s = snap_musical(v)
    assert torch.allclose(s, torch.tensor([0.25, 0.75, 1.0, 3.0]))
    s.sum().backward()
    assert torch.allclose(v.grad, torch.ones(4))


def test_wet_zero_is_identity(stage):
    x = music_like(1.0, seed=5).unsqueeze(0)
    p = stage.predict(x, _ctx("ambient", 90.0), {"wet_pct": 0.0})
    y, _ = stage.process(x, p)
    assert torch.equal(y, x)


def test_streaming_equals_offline(stage):
    x = music_like(2.0, seed=6).unsqueeze(0).repeat(2, 1, 1)
    x[1] = x[1].flip(-1)
    p = stage.predict(x, _ctx("ballad", 100.0, batch=2), {"tail_s": 0.7})
    y, _ = stage.process(x, p)
    cuts = [0, 1, 777, 4_096, 40_000, 40_001, 70_000, x.shape[-1]]
    state, parts = None, []
    for a, b in itertools.pairwise(cuts):
        out, state = stage.process(x[..., a:b], p, state)
        parts.append(out)
    assert (torch.cat(parts, -1) - y).abs().max() < 1e-4


def test_gradients_reach_audio_params_and_network(stage):
    x = music_like(0.5, seed=7).unsqueeze(0).requires_grad_(True)
    ctx = _ctx("ballad", 80.0)
    params = stage.predict(x, ctx, {"tail_s": 0.4})
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    y, _ = stage.process(x, leaves)
    (y[..., 1000:].square().mean()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for s in REVERB_SPECS:
        assert leaves[s.name].grad is not None, s.name
        if s.name != "tail_s":  # the tail's fade lies beyond 0.5 s here
            assert leaves[s.name].grad.abs().sum() > 0, s.name
    # Through predict: the zero-initialized head's last layer gets a gradient.
    stage.zero_grad()
    y, _ = stage(x.detach(), ctx)
    y.square().mean().backward()
    assert stage.head.out.weight.grad.abs().sum() > 0


def test_untrained_prediction_is_the_prior(stage):
    x = music_like(1.0, seed=8).unsqueeze(0)
    ctx = _ctx("jazz", 130.0)
    prior, pred = stage.prior(x, ctx), stage.predict(x, ctx)
    for s in REVERB_SPECS:
        assert torch.allclose(pred[s.name], s.clamp(prior[s.name]), rtol=1e-3, atol=1e-3), s.name
    assert sum(p.numel() for p in stage.parameters()) < 300_000


def test_band_edc_loss_prefers_the_right_decay():
    pd, tail, damp, width = (torch.tensor([v]) for v in (5.0, 0.6, 1e4, 1.0))
    target = synthesize_ir(torch.tensor([[0.5, 0.4, 0.3, 0.2]]), pd, tail, damp, width)
    near = synthesize_ir(torch.tensor([[0.47, 0.4, 0.3, 0.2]]), pd, tail, damp, width)
    far = synthesize_ir(torch.tensor([[0.2, 0.15, 0.1, 0.05]]), pd, tail, damp, width)
    assert float(band_edc_loss(target, target)) < 1e-4
    assert float(band_edc_loss(near, target)) < 0.3 * float(band_edc_loss(far, target))
