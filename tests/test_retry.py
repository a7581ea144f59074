"""Auto-retry on the real chain: never worse than the first attempt, every attempt recorded."""

from __future__ import annotations

import json

import pytest
import torch

from lacquer.cli import main
from mastering.chain import Chain
from mastering.conditioning import Conditioning
from mastering.degradations import degrade
from mastering.errors import InvalidParameterError
from mastering.evaluation import SUB_SCORES, Evaluator
from mastering.io import write_audio
from mastering.render import MasterOptions
from mastering.retry import RetryingChain, RetryPolicy, master_with_retry
from mastering.testsignals import music_like
from tuning.store import FeedbackStore


@pytest.fixture(scope="module")
def chain() -> Chain:
    return Chain.pretrained()


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    return Evaluator()


def _song(seed: int, problem: str) -> torch.Tensor:
    return degrade(music_like(2.0, seed=seed).unsqueeze(0), problem, 1.0)[0]


@pytest.mark.parametrize(("seed", "problem", "genre"), [(31, "dull_eq", "pop"),
                                                        (32, "wide_bass", "rock")])  # fmt: skip
def test_never_worse_than_the_first_attempt(chain, evaluator, seed, problem, genre):
    audio = _song(seed, problem)
    options = MasterOptions(conditioning=Conditioning(genre=genre))
    policy = RetryPolicy(threshold=100.0, max_attempts=3)  # forces every retry
    best, out, attempts = master_with_retry(chain, audio, options, policy, evaluator)
    assert [a.number for a in attempts] == [1, 2, 3]
    assert sum(a.best for a in attempts) == 1
    kept = next(a for a in attempts if a.best)
    assert kept.score >= attempts[0].score
    assert kept.score == max(a.score for a in attempts) or kept.number == 1
    # The returned audio is the kept attempt's master (scored again, same score).
    again = evaluator(best.unsqueeze(0), [genre]).item(0)["score"]
    assert again == pytest.approx(kept.score, abs=0.05)
    assert best.shape == audio.shape and torch.isfinite(best).all()
    assert out.audio.shape == (1, *audio.shape)
    for a in attempts:
        assert set(a.sub_scores) == set(SUB_SCORES)
        assert a.timings_s["master"] > 0 and a.timings_s["evaluate"] > 0
        assert set(a.parameters) >= {"eq", "compressor", "limiter", "master_out"}
        json.dumps(a.to_dict())
    assert attempts[0].overrides == {}
    assert all(a.overrides for a in attempts[1:])


def test_no_retry_above_threshold_and_user_overrides_kept(chain, evaluator):
    audio = _song(33, "harsh_eq")
    locked = {"limiter": {"drive_db": 2.0}}
    options = MasterOptions(conditioning=Conditioning(genre="edm"), overrides=locked)
    _, _, once = master_with_retry(chain, audio, options, RetryPolicy(threshold=0.0), evaluator)
    assert len(once) == 1 and once[0].best
    _, out, attempts = master_with_retry(
        chain, audio, options, RetryPolicy(threshold=100.0, max_attempts=2), evaluator
    )
    assert len(attempts) == 2
    assert "drive_db" not in attempts[1].overrides.get("limiter", {})
    assert float(out.params["limiter"]["drive_db"][0]) == pytest.approx(2.0)


def test_policy_errors_are_clear(chain):
    with pytest.raises(InvalidParameterError, match="unknown stage"):
        RetryPolicy(perturbations={"tape.drive": 1.0}).validate(chain)
    with pytest.raises(InvalidParameterError, match="no parameter"):
        RetryPolicy(perturbations={"limiter.wobble": 1.0}).validate(chain)
    with pytest.raises(InvalidParameterError, match="max_attempts"):
        RetryPolicy(max_attempts=0).validate(chain)


def test_retrying_chain_batches_and_records(chain):
    runner = RetryingChain(chain, RetryPolicy(threshold=100.0, max_attempts=2))
    x = torch.stack([_song(34, "muddy_eq"), _song(35, "clipping")])
    out = runner(x, [Conditioning(genre="pop"), Conditioning(genre="jazz")])
    assert out.audio.shape == x.shape
    assert [len(a) for a in runner.last_attempts] == [2, 2]
    assert out.params["eq"]["band_gain_db"].shape[0] == 2
    assert out.cond.genre.shape == (2,)


def test_master_cli_retries_and_records_feedback(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    write_audio(src / "dull.wav", _song(36, "dull_eq"), format="wav24")
    report = tmp_path / "report.json"
    args = ["master", str(src / "dull.wav"), "-o", str(tmp_path / "out"), "--no-progress",
            "--report", str(report), "--feedback", str(tmp_path / "fb"),
            "--retry-threshold", "100", "--retry-attempts", "2"]  # fmt: skip
    assert main(args) == 0
    r = json.loads(report.read_text())["files"][0]
    assert r["evaluation"]["of"] == 2 and len(r["attempts"]) == 2
    assert "score" in capsys.readouterr().out
    rows = FeedbackStore(tmp_path / "fb").read()
    assert rows["attempt"].to_pylist() == [1, 2]
    assert rows["kept"].to_pylist().count(True) == 1
    assert rows["song_id"].to_pylist() == ["dull", "dull"]
    assert len(rows["input_hash"][0].as_py()) == 64
    # --no-retry: no scoring, no attempts.
    assert main([*args[:5], "--report", str(report), "--no-retry"]) == 0
    assert "attempts" not in json.loads(report.read_text())["files"][0]


def test_going_on_from_a_first_attempt_made_elsewhere(chain, evaluator):
    """The farm masters and scores a batch first; the retry goes on from that attempt: the
    same proposals and scores as the whole loop, without mastering attempt 1 again."""
    from mastering.retry import select_output

    audio = degrade(music_like(1.0, seed=37).unsqueeze(0), "over_compression", 1.0)[0]
    options = MasterOptions(conditioning=Conditioning(genre="rock"))
    policy = RetryPolicy(threshold=100.0, max_attempts=2)
    _, _, whole = master_with_retry(chain, audio, options, policy, evaluator)

    # Attempt 1 inside a zero-padded batch of two songs, cut out again.
    other = music_like(1.5, seed=38)
    x = torch.stack([torch.nn.functional.pad(audio, (0, other.shape[-1] - audio.shape[-1])), other])
    with torch.no_grad():
        batch = chain(x, [options.conditioning, Conditioning(genre="pop")])
    one = select_output(batch, 0, audio.shape[-1])
    assert one.audio.shape == (1, *audio.shape)
    frames = batch.params["imager"]["side_gain_db"].shape[-1]
    assert one.params["imager"]["side_gain_db"].shape[-1] == -(-frames * 2 // 3)  # ceil(2/3)
    master = one.audio[0]
    ev = evaluator(master.unsqueeze(0), ["rock"])
    best, _, went_on = master_with_retry(
        chain, audio, options, policy, evaluator, first=(master, one, ev)
    )
    assert [a.number for a in went_on] == [1, 2]
    assert went_on[0].timings_s == {} and went_on[1].timings_s["master"] > 0
    assert went_on[1].overrides.keys() == whole[1].overrides.keys()
    kept = next(a for a in went_on if a.best)
    assert kept.score >= went_on[0].score
    if kept.number == 1:
        assert torch.equal(best, master)
    # A first attempt at or above the threshold needs no audio at all.
    _, _, once = master_with_retry(
        chain, None, options, RetryPolicy(threshold=0.0), evaluator, first=(master, one, ev)
    )
    assert len(once) == 1 and once[0].best and once[0].score == went_on[0].score


def test_attempt_records_round_trip():
    from mastering.retry import Attempt

    small = Attempt.from_dict({"number": 1, "score": 71.5, "sub_scores": {"clarity": 60.0}})
    assert (small.rule, small.parameters, small.best) == (None, {}, False)
    full = Attempt(2, {"limiter": {"drive_db": 1.0}}, 80.0, 79.0, None, {"clarity": 70.0},
                   {"integrated_lufs": -14.0}, {"master": 0.1}, {"eq": {}}, True)  # fmt: skip
    assert "parameters" not in full.brief()
    assert Attempt.from_dict(full.to_dict()) == full
    # Stage and parameter names are checked without building a chain, too.
    with pytest.raises(InvalidParameterError, match="unknown stage"):
        RetryPolicy(perturbations={"tape.drive": 1.0}).validate()
    with pytest.raises(InvalidParameterError, match="no parameter"):
        RetryPolicy(perturbations={"limiter.wobble": 1.0}).validate()
