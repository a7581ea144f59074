"""Inference-time matching: gradient steps on the macros move the master toward the reference,
and the loudness target and true-peak ceiling still hold."""

from __future__ import annotations

import pytest
import torch

from mastering.chain import Chain
from mastering.conditioning import Conditioning
from mastering.errors import InvalidParameterError
from mastering.loudness import measure
from mastering.matching import loudest_excerpt, master_guided, match_reference
from mastering.reference import (
    feature_distance,
    measure_features,
    normalize_loudness,
    reference_features,
)
from mastering.render import MasterOptions
from mastering.testsignals import music_like


@pytest.fixture(scope="module")
def reference():
    """A wide, bright, dense master of another song (EDM settings, extra width)."""
    src = music_like(6.0, seed=31).unsqueeze(0)
    with torch.no_grad():
        out = Chain.pretrained()(src, Conditioning(genre="edm", style="bright wide loud"))
    return reference_features(out.audio[0], name="edm-master")


def test_match_steps_lower_the_distance_and_keep_the_guarantees(reference):
    torch.manual_seed(0)
    x = music_like(3.0, seed=32).unsqueeze(0)
    chain = Chain.pretrained()
    cond = Conditioning(genre="jazz")
    out = master_guided(chain, x, cond, reference=reference, match_steps=2)
    match = out.info["reference"][0]["match"]
    d = match["distances"]
    assert len(d) == 3
    assert match["best_step"] > 0 and min(d[1:]) < d[0] - 0.05, d
    m = measure(out.audio[0])
    assert m.integrated_lufs == pytest.approx(-14.0, abs=0.05)
    assert m.true_peak_dbtp <= -1.0 + 1e-3
    # The whole rendered master is measurably closer to the reference than the jazz master.
    with torch.no_grad():
        plain = chain(x, cond).audio
    target = reference.batch()

    def dist(y: torch.Tensor) -> float:
        with torch.no_grad():
            return float(feature_distance(measure_features(normalize_loudness(y)), target))

    assert dist(out.audio) < dist(plain) - 0.5
    # Matching changed only the conditioning, never the chain's weights.
    assert all(p.grad is None and p.requires_grad for p in chain.parameters())


def test_zero_steps_scores_the_start_only(reference):
    x = music_like(1.5, seed=33).unsqueeze(0)
    chain = Chain.pretrained()
    cond = chain.condition(x, [Conditioning()])
    res = match_reference(chain, x, cond, reference, 0)
    assert res.best_step == 0 and len(res.distances) == 1
    assert torch.equal(res.cond.macros, cond.macros)


def test_loudest_excerpt():
    x = torch.zeros(1, 2, 10 * 48_000)
    x[..., 6 * 48_000 : 7 * 48_000] = 0.5
    clip, start = loudest_excerpt(x, 2.0)
    assert clip.shape[-1] == 2 * 48_000
    assert start <= 6 * 48_000 and start + 2 * 48_000 >= 7 * 48_000
    assert loudest_excerpt(x, None)[0] is x


def test_match_options_are_validated(reference):
    with pytest.raises(InvalidParameterError, match="need a reference"):
        MasterOptions(match_steps=3).validate()
    with pytest.raises(InvalidParameterError, match="within 0"):
        MasterOptions(reference="r.wav", match_steps=-1).validate()
    x = music_like(1.0, seed=1).unsqueeze(0)
    chain = Chain()
    with pytest.raises(InvalidParameterError, match="within 0"):
        match_reference(chain, x, chain.condition(x, [Conditioning()]), reference, 10_000)
