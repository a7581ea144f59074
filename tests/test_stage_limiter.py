"""Limiter stage: ceiling on music and on the Tech 3341 true-peak tones, prior rules, latency,
streaming and gradients."""

from __future__ import annotations

import itertools

import pytest
import torch

from mastering.chain import run_aligned
from mastering.conditioning import Conditioning, ConditioningEncoder
from mastering.features import crest_factor_db
from mastering.loudness import integrated_loudness, true_peak
from mastering.stages._nets import n_params
from mastering.stages.base import StageContext
from mastering.stages.limiter import Limiter, density_features
from mastering.testsignals import fade, music_like, sine


@pytest.fixture(scope="module")
def lim() -> Limiter:
    torch.manual_seed(0)
    return Limiter()


@pytest.fixture(scope="module")
def encoder() -> ConditioningEncoder:
    return ConditioningEncoder()


def _ctx(encoder, genre="unknown", n=1, **kw) -> StageContext:
    cb = encoder(
        [Conditioning(genre=genre, **kw)] * n,
        tempo_bpm=torch.full((n,), 120.0),
        energy=torch.full((n,), 0.5),
        vocal_ratio=torch.full((n,), 0.3),
    )
    return StageContext(cb)


@pytest.fixture(scope="module")
def music() -> torch.Tensor:
    return music_like(4.0, seed=11, peak_dbfs=-6.0).unsqueeze(0)


@pytest.mark.parametrize("drive", [0.0, 6.0, 12.0])
def test_holds_the_ceiling_with_drive(lim, encoder, music, drive):
    with torch.no_grad():
        params = lim.predict(music, _ctx(encoder, "edm"), {"drive_db": drive})
        y = run_aligned(lim, music, params)
    assert float(true_peak(y)) <= -1.0 + 0.1
    assert float(true_peak(y, oversample=8)) <= -1.0 + 0.1
    # Drive makes it louder and denser (peak pinned at the ceiling).
    if drive > 0:
        x_at_ceiling = music * 10 ** (float(params["trim_db"]) / 20)
        gain = float(integrated_loudness(y) - integrated_loudness(x_at_ceiling))
        assert gain > 0.5 * drive
        assert float(crest_factor_db(y)) < float(crest_factor_db(music)) - 0.4 * drive


@pytest.mark.parametrize(
    ("frequency", "phase", "level"),
    [
        (12_000.0, 0.0, 6.0),  # Tech 3341 cases 15/16 (fs/4), 12 dB hotter
        (12_000.0, 45.0, 6.0),
        (8_000.0, 60.0, 6.0),  # case 17 (fs/6)
        (6_000.0, 67.5, 6.0),  # case 18 (fs/8)
        (12_000.0, 45.0, 3.0),  # case 19 (+3 dBTP)
        (19_200.0, 0.0, 0.0),  # fs/2.5 near Nyquist
    ],
)
def test_holds_the_ceiling_on_true_peak_tones(lim, encoder, frequency, phase, level):
    s = fade(sine(frequency, 1.0, level_dbfs=level, phase_deg=phase), 0.02).float()
    x = torch.stack([s, s]).unsqueeze(0)
    with torch.no_grad():
        params = lim.predict(x, _ctx(encoder, "edm"), {"drive_db": 6.0})
        y = run_aligned(lim, x, params)
    assert float(true_peak(y)) <= -1.0 + 0.1


def test_prior_rules(lim, encoder, music):
    with torch.no_grad():
        loud = lim.prior(music, _ctx(encoder, macros={"drive": 1.0}))
        soft = lim.prior(music, _ctx(encoder, macros={"drive": -0.5}))
        safe = lim.prior(
            music, _ctx(encoder, macros={"drive": 1.0}, rule_breaks=("PRODUCTION_ExtremeDynamics",))
        )
        crest = float(density_features(music)[0, 2])
        # An already dense input (hard-clipped: crest ~4 dB lower) is pushed less.
        dense = (music * 8).clamp(-0.5, 0.5)
        dense_p = lim.prior(dense, _ctx(encoder, macros={"drive": 1.0}))
    assert float(loud["drive_db"]) == pytest.approx(min(max(crest - 8.0, 0), 12), abs=1e-4)
    assert float(soft["drive_db"]) < float(loud["drive_db"])
    assert float(safe["drive_db"]) == 0.0
    assert float(dense_p["drive_db"]) < float(loud["drive_db"]) - 2.0
    assert float(loud["release_ms"]) < float(soft["release_ms"])
    assert float(loud["ceiling_dbtp"]) == -1.0
    assert float(loud["trim_db"]) == pytest.approx(-1.0 - float(true_peak(music)), abs=1e-3)


def test_extreme_dynamics_is_safety_only(lim, encoder, music):
    ctx = _ctx(encoder, "metal", rule_breaks=("PRODUCTION_ExtremeDynamics",))
    with torch.no_grad():
        params = lim.predict(music, ctx)
        y = run_aligned(lim, music, params)
    # Only a gain (trim to the ceiling) and a drive of ~0: waveform preserved.
    trimmed = music * 10 ** ((float(params["trim_db"]) + float(params["drive_db"])) / 20)
    assert float(params["drive_db"]) < 0.01
    assert torch.allclose(y, trimmed, atol=2e-3)


def test_latency_is_the_lookahead(lim, encoder):
    x = torch.zeros(1, 2, 2000)
    x[..., 300] = 0.25
    with torch.no_grad():
        params = lim.predict(x, _ctx(encoder), {"drive_db": 0.0, "lookahead_ms": 2.0})
        params["trim_db"] = torch.zeros(1, 1)  # keep the impulse below the ceiling
        y, _ = lim.process(x, params)
    lat = lim.latency(params)
    assert lat == 96
    assert int(y[0, 0].abs().argmax()) == 300 + lat
    assert torch.allclose(y[..., lat:], x[..., :-lat], atol=1e-6)


def test_streaming_equals_offline(lim, encoder):
    x = music_like(0.5, seed=12).unsqueeze(0).repeat(2, 1, 1)
    x[1] *= 0.5
    with torch.no_grad():
        params = lim.predict(x, _ctx(encoder, "edm", n=2), {"drive_db": 9.0})
        params["release_ms"] = torch.tensor([[30.0], [300.0]])
        y_ref, _ = lim.process(x, params)
        state, parts = None, []
        for a, b in itertools.pairwise((0, 1, 100, 4800, 13000, 24000)):
            y, state = lim.process(x[..., a:b], params, state)
            parts.append(y)
    assert torch.allclose(torch.cat(parts, -1), y_ref, atol=1e-5)


def test_gradients_flow(encoder):
    torch.manual_seed(0)
    lim = Limiter()
    x = music_like(0.5, seed=13).unsqueeze(0).requires_grad_(True)
    params = lim.predict(x, _ctx(encoder, "rock"), None)
    y = run_aligned(lim, x, params)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert lim.controller.out.weight.grad.abs().sum() > 0
    assert encoder.genre_embedding.weight.grad.abs().sum() > 0
    encoder.zero_grad()
    assert n_params(lim.controller) < 300_000


def test_untrained_controller_equals_prior(lim, encoder, music):
    with torch.no_grad():
        ctx = _ctx(encoder, "pop")
        prior, pred = lim.prior(music, ctx), lim.predict(music, ctx)
    for s in lim.specs:
        assert torch.allclose(s.clamp(prior[s.name]), pred[s.name], atol=2e-3), s.name
