"""Compressor stage: measured dynamics effects, prior rules, bypass, attack/release timing,
streaming and gradients."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mastering.conditioning import Conditioning, ConditioningEncoder
from mastering.dsp.dynamics import gain_computer_db
from mastering.features import crest_factor_db
from mastering.loudness import integrated_loudness, momentary_loudness
from mastering.stages._nets import n_params
from mastering.stages.base import FRAME_HOP, StageContext, n_frames
from mastering.stages.compressor import Compressor
from mastering.testsignals import music_like, sine

SR = 48_000


@pytest.fixture(scope="module")
def comp() -> Compressor:
    torch.manual_seed(0)
    return Compressor()


@pytest.fixture(scope="module")
def encoder() -> ConditioningEncoder:
    return ConditioningEncoder()


def _ctx(encoder, genre="unknown", tempo=120.0, **kw) -> StageContext:
    cb = encoder(
        [Conditioning(genre=genre, **kw)],
        tempo_bpm=torch.tensor([tempo]),
        energy=torch.tensor([0.5]),
        vocal_ratio=torch.tensor([0.3]),
    )
    return StageContext(cb)


@pytest.fixture(scope="module")
def dynamic() -> torch.Tensor:
    """8 s of music-like audio with 1 s sections at 0/-12/-3/-15/-6/0/-9/-2 dB."""
    x = music_like(8.0, seed=3)
    levels = torch.tensor([0.0, -12.0, -3.0, -15.0, -6.0, 0.0, -9.0, -2.0])
    env = 10 ** (torch.repeat_interleave(levels, SR) / 20)
    env = F.avg_pool1d(env.view(1, 1, -1), 2401, 1, 1200, count_include_pad=False).view(-1)
    return (x * env).unsqueeze(0)


def _momentary_std(x: torch.Tensor) -> float:
    m = momentary_loudness(x)[0]
    return float(m[m > -70].std())


def test_compresses_a_dynamic_input(comp, encoder, dynamic):
    ctx = _ctx(encoder, macros={"glue": 1.0, "punch": -1.0})
    with torch.no_grad():
        y, params = comp(dynamic, ctx)
    # Measured (seed 3): crest 19.1 -> 17.6 dB, momentary std 5.0 -> 3.4 LU.
    assert float(crest_factor_db(y)) < float(crest_factor_db(dynamic)) - 1.0
    assert _momentary_std(y) < _momentary_std(dynamic) - 1.2
    # Auto make-up keeps the programme loudness within ~1 LU.
    assert abs(float(integrated_loudness(y) - integrated_loudness(dynamic))) < 1.0
    assert float(params["ratio"]) == pytest.approx(4.0, abs=0.01)


def test_punch_lets_transients_through(comp, encoder, dynamic):
    crests = []
    for punch in (-1.0, 1.0):
        with torch.no_grad():
            y, p = comp(dynamic, _ctx(encoder, macros={"glue": 1.0, "punch": punch}))
        crests.append(float(crest_factor_db(y)))
        assert float(p["attack_ms"]) == pytest.approx(10 * 2 ** (1.5 * punch), rel=1e-3)
    # Slow attack (punch +1, 28 ms) keeps ~2.5 dB more crest than fast attack (3.5 ms).
    assert crests[1] > crests[0] + 1.5


@torch.no_grad()
def test_prior_documented_amount(comp, encoder, dynamic):
    """The static curve reduces the 95th-percentile frame peak by 3 (glue + 1) dB."""
    from mastering.dsp.dynamics import active_frames, frame_peak_db, masked_quantile
    from mastering.dsp.iir import sosfilt
    from mastering.stages.compressor import _sidechain_sos

    peaks = frame_peak_db(sosfilt(dynamic, _sidechain_sos(dynamic)), FRAME_HOP)
    l95 = masked_quantile(peaks, active_frames(peaks), 0.95, -100.0)
    for glue in (-0.5, 0.0, 0.8):
        p = comp.prior(dynamic, _ctx(encoder, macros={"glue": glue}))
        assert float(p["ratio"]) == pytest.approx(1 + 1.5 * (glue + 1), rel=1e-4)
        gr = -gain_computer_db(l95, p["threshold_db"][:, 0], p["ratio"][:, 0], p["knee_db"][:, 0])
        assert float(gr) == pytest.approx(3 * (glue + 1), abs=0.05)
        assert float(p["makeup_db"]) > 0.0


@torch.no_grad()
def test_prior_rules(comp, encoder, dynamic):
    base = comp.prior(dynamic, _ctx(encoder, "rock"))
    fast = comp.prior(dynamic, _ctx(encoder, "rock", tempo=180.0))
    buried = comp.prior(dynamic, _ctx(encoder, "rock", rule_breaks=("PRODUCTION_BuriedVocals",)))
    glued = comp.prior(dynamic, _ctx(encoder, "rock", macros={"glue": 0.5}))
    assert float(fast["release_ms"]) == pytest.approx(
        float(base["release_ms"]) * 120 / 180, rel=1e-4
    )
    assert float(buried["ratio"]) < float(base["ratio"])
    assert float(buried["threshold_db"]) > float(base["threshold_db"])
    assert float(glued["ratio"]) > float(base["ratio"])
    assert float(glued["release_ms"]) > float(base["release_ms"])
    assert base["gain_offset_db"].shape == (1, 1, n_frames(dynamic.shape[-1]))


def test_extreme_dynamics_bypasses(comp, encoder, dynamic):
    ctx = _ctx(encoder, "metal", rule_breaks=("PRODUCTION_ExtremeDynamics",))
    with torch.no_grad():
        y, params = comp(dynamic, ctx)
    assert abs(float(params["makeup_db"])) < 1e-4
    assert torch.allclose(y, dynamic, atol=1e-5, rtol=0)


@torch.no_grad()
def test_untrained_controller_equals_prior(comp, encoder, dynamic):
    ctx = _ctx(encoder, "pop")
    prior = comp.prior(dynamic, ctx)
    pred = comp.predict(dynamic, ctx)
    for s in comp.specs:
        assert torch.allclose(s.clamp(prior[s.name]), pred[s.name], atol=1e-3), s.name
    assert n_params(comp.controller) < 300_000


def _step_params(attack: float, release: float, n: int) -> dict[str, torch.Tensor]:
    one = lambda v: torch.tensor([[v]])  # noqa: E731
    return {
        "threshold_db": one(-30.0),
        "ratio": one(4.0),
        "knee_db": one(0.0),
        "attack_ms": one(attack),
        "release_ms": one(release),
        "makeup_db": one(0.0),
        "gain_offset_db": torch.zeros(1, 1, n_frames(n)),
    }


def test_attack_and_release_on_a_level_step(comp):
    attack, release = 10.0, 100.0
    t_up, t_down = 0.3, 0.7
    n = int(1.4 * SR)
    s = sine(1000.0, 1.4, dtype=torch.float32)
    level = torch.full((n,), -40.0)
    level[int(t_up * SR) : int(t_down * SR)] = -10.0
    x = (s * 10 ** (level / 20)).expand(1, 2, n)
    with torch.no_grad():
        gain, _ = comp.gain_db(x, _step_params(attack, release, n))
    gr = -gain[0]
    up, down = int(t_up * SR), int(t_down * SR)
    steady = float(gr[down - 960 : down].mean())
    assert steady == pytest.approx(0.75 * 20.0, abs=0.2)  # static: (1 - 1/4) (-10 + 30)
    reach = int(torch.nonzero(gr[up:] >= (1 - math.exp(-1)) * steady)[0])
    assert reach / SR * 1000 == pytest.approx(attack, abs=1.0)
    # Release: the release stage decays with tau_R, then the attack one-pole smooths it:
    # y(t) = (tau_R e^(-t/tau_R) - tau_A e^(-t/tau_A)) / (tau_R - tau_A), 1/e at ~110.5 ms.
    t = torch.arange(0, 0.4, 1 / SR, dtype=torch.float64) * 1000
    model = (release * torch.exp(-t / release) - attack * torch.exp(-t / attack)) / (
        release - attack
    )
    expected = float(t[torch.nonzero(model <= math.exp(-1))[0]])
    fall = int(torch.nonzero(gr[down:] <= math.exp(-1) * float(gr[down - 1]))[0])
    assert fall / SR * 1000 == pytest.approx(expected, abs=3.0)


def test_streaming_equals_offline(comp, encoder):
    x = music_like(1.0, seed=8).unsqueeze(0).repeat(2, 1, 1)
    x[1] *= 0.3
    cb = encoder(
        [Conditioning(genre="rock"), Conditioning(genre="edm")],
        tempo_bpm=torch.tensor([120.0, 128.0]),
        energy=torch.tensor([0.5, 0.8]),
        vocal_ratio=torch.tensor([0.3, 0.1]),
    )
    with torch.no_grad():
        params = comp.predict(x, StageContext(cb))
        # A non-trivial learned curve: +-3 dB swings across frames.
        f = params["gain_offset_db"].shape[-1]
        params["gain_offset_db"] = 3 * torch.sin(torch.arange(f) / 7.0).expand(2, 1, f).clone()
        y_ref, _ = comp.process(x, params)
        state, parts = None, []
        for a, b in itertools.pairwise((0, 1, 480, 5000, 5001, 30000, 48000)):
            y, state = comp.process(x[..., a:b], params, state)
            parts.append(y)
    assert torch.allclose(torch.cat(parts, -1), y_ref, atol=1e-4)
    assert comp.latency(params) == 0


def test_gradients_flow(encoder):
    torch.manual_seed(0)
    comp = Compressor()
    x = (music_like(0.5, seed=9).unsqueeze(0)).requires_grad_(True)
    ctx = _ctx(encoder, "pop")
    params = comp.predict(x, ctx)
    y, _ = comp.process(x, params)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert comp.controller.curve.weight.grad.abs().sum() > 0
    assert comp.controller.scalars.out.weight.grad.abs().sum() > 0
    emb = encoder.genre_embedding.weight.grad
    assert emb is not None and emb.abs().sum() > 0  # through the prior's macros
    encoder.zero_grad()


def test_long_songs_run_the_gru_in_calls_with_the_state_carried(monkeypatch):
    """cuDNN refuses GRU sequences over 65,535 steps (a 60-minute song has 72,000): the
    controller runs it in calls with the hidden state carried, which is the same recurrence."""
    from mastering.stages import compressor

    gru = torch.nn.GRU(4, 6, batch_first=True).double()
    x = torch.randn(2, 1000, 4, dtype=torch.float64)
    whole = gru(x)[0]
    monkeypatch.setattr(compressor, "GRU_STEPS_PER_CALL", 97)
    torch.testing.assert_close(compressor._recurrent(gru, x), whole, atol=1e-12, rtol=0)
