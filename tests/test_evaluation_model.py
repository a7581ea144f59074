"""The learned scorer: shipped weights calibrated on held-out songs, reproducible training."""

from __future__ import annotations

import pytest
import torch

from mastering.evaluation import Evaluator
from mastering.evaluation_model import (
    TEST_SEEDS,
    TRAIN_SEEDS,
    WEIGHTS_PATH,
    Bank,
    QualityModel,
    build_bank,
    calibration,
    good_masters,
    pair_accuracy,
    train_model,
)

#: Songs used by neither the training nor the reported calibration.
HELD_OUT = [7001, 7002]


@pytest.fixture(scope="module")
def held_out() -> tuple[Bank, list[str]]:
    audio, genres = good_masters(HELD_OUT, duration_s=2.0)
    return build_bank(audio, genres, severities=(0.4, 0.8)), genres


def test_shipped_weights_are_small_and_load():
    assert WEIGHTS_PATH.exists() and WEIGHTS_PATH.stat().st_size < 64_000
    model = QualityModel.pretrained()
    assert model is not None
    assert Evaluator().model is not None
    assert not set(HELD_OUT) & (set(TRAIN_SEEDS) | set(TEST_SEEDS))


def test_calibration_on_held_out_pairs(held_out):
    bank, genres = held_out
    result = calibration(QualityModel.pretrained(), bank, genres)
    assert result["pairs"] == 2 * 11 * 2
    # The bar: the reference master beats its degraded versions on >= 95 % of pairs.
    assert result["learned"] >= 0.95, result
    assert result["combined"] >= 0.95, result


def test_training_is_seeded_and_learns_the_ranking(held_out):
    bank, _ = held_out
    a = train_model(bank, seed=3, steps=150)
    b = train_model(bank, seed=3, steps=150)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    untrained = QualityModel()
    untrained.mean.copy_(a.mean)
    untrained.std.copy_(a.std)
    trained_acc = pair_accuracy(a.logit(bank.features).detach(), bank.pairs())
    assert trained_acc >= 0.9
    assert trained_acc > pair_accuracy(untrained.logit(bank.features).detach(), bank.pairs())


def test_scores_are_finite_for_silence_and_extremes():
    from mastering.evaluation import measure

    x = torch.zeros(2, 2, 48_000)
    x[1] = 0.99 * torch.sign(torch.randn(2, 48_000))
    s = QualityModel.pretrained().score(measure(x))
    assert torch.isfinite(s).all() and ((s >= 0) & (s <= 100)).all()
