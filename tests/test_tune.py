"""Ray Tune searches on the shared local Ray cluster: tiny spaces, 1-2 s songs."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from tuning.trials import (
    TrialTableError,
    best_path,
    load_best,
    read_trials,
    save_best,
    trial_table,
    write_trials,
)


def test_trial_table_round_trip(tmp_path):
    rows = [
        {"trial_id": "a_00000", "status": "TERMINATED", "config": {"lr": 0.01, "steps": 2},
         "metrics": {"val_loss": 1.5, "crops": 4}, "iterations": 2, "error": None},
        {"trial_id": "a_00001", "status": "ERROR", "config": {"lr": 0.1, "steps": 4},
         "metrics": {}, "iterations": 0, "error": "boom"},
    ]  # fmt: skip
    table = trial_table("exp", rows, ["val_loss", "crops"])
    path = write_trials(tmp_path, "adapters", table)
    assert path.parent.name == "kind=adapters" and not path.name.startswith(".")
    write_trials(tmp_path, "adapters", trial_table("other", rows[:1], ["val_loss"]))
    back = read_trials(tmp_path, "adapters", experiment="exp")
    assert back.num_rows == 2
    assert back["trial_id"].to_pylist() == ["a_00000", "a_00001"]
    assert back["val_loss"].to_pylist() == [1.5, None]
    assert back["config/steps"].to_pylist() == ["2", "4"]
    assert json.loads(back["config"][0].as_py()) == {"lr": 0.01, "steps": 2}
    assert back["error"].to_pylist() == [None, "boom"]
    assert read_trials(tmp_path, "adapters").num_rows == 3
    assert read_trials(tmp_path, "retry").num_rows == 0
    assert back.schema.field("val_loss").type == pa.float64()

    save_best(tmp_path, "retry", {"config": {"threshold": 70.0}, "metrics": {}})
    assert load_best(tmp_path, "retry")["config"] == {"threshold": 70.0}
    assert load_best(tmp_path, "adapters", "pop") is None
    best_path(tmp_path, "retry").write_text("{not json")
    with pytest.raises(TrialTableError, match=r"retry\.json"):
        load_best(tmp_path, "retry")


def test_load_retry_policy_defaults_and_caps(tmp_path):
    from mastering.retry import DEFAULT_PERTURBATIONS, RetryPolicy
    from tuning.tune_retry import load_retry_policy

    assert load_retry_policy(tmp_path).max_attempts == RetryPolicy().max_attempts
    assert load_retry_policy(tmp_path, max_attempts=5).max_attempts == 5
    config = {"threshold": 61.0, "max_attempts": 4, "scale_dynamics": 2.0, "scale_tone": 0.5,
              "scale_stereo": 1.0}  # fmt: skip
    save_best(tmp_path, "retry", {"config": config})
    p = load_retry_policy(tmp_path)
    assert (p.threshold, p.max_attempts) == (61.0, 4)
    steps = DEFAULT_PERTURBATIONS
    assert p.perturbations["limiter.drive_db"] == pytest.approx(2.0 * steps["limiter.drive_db"])
    assert p.perturbations["eq.high_shelf_db"] == pytest.approx(0.5 * steps["eq.high_shelf_db"])
    assert load_retry_policy(tmp_path, max_attempts=2).max_attempts == 2


@pytest.fixture(scope="module")
def retry_run(ray_cluster, tmp_path_factory):
    from tuning.tune_retry import Corpus, RetrySearch

    store = tmp_path_factory.mktemp("tune-retry")
    search = RetrySearch(store=str(store), name="retry-small",
                         corpus=Corpus(synthetic=2, seconds=1.0), num_samples=3, batches=2,
                         batch_size=1, attempt_cost=2.0, attempts=(1, 2))  # fmt: skip
    return store, search, search.run()


@pytest.mark.ray
def test_retry_search_records_every_trial_and_the_best(retry_run):
    from tuning.tune_retry import load_retry_policy

    store, _, best = retry_run
    table = read_trials(store, "retry", experiment="retry-small")
    assert table.num_rows == 3
    assert set(table["status"].to_pylist()) == {"TERMINATED"}
    for row in table.to_pylist():
        cfg = json.loads(row["config"])
        assert cfg["max_attempts"] in (1, 2) and 0.25 <= cfg["scale_tone"] <= 2.0
        assert 1.0 <= row["mean_attempts"] <= cfg["max_attempts"]
        assert row["objective"] == pytest.approx(
            row["mean_score"] - 2.0 * (row["mean_attempts"] - 1)
        )
        assert 0 <= row["mean_score"] <= 100
        if cfg["max_attempts"] == 1:
            assert row["mean_attempts"] == 1.0
    full = [r for r in table.to_pylist() if r["iterations"] == max(table["iterations"].to_pylist())]
    assert best["metrics"]["objective"] == pytest.approx(max(r["objective"] for r in full))
    saved = load_best(store, "retry")
    assert saved["config"] == best["config"] and saved["restored"] is False
    policy = load_retry_policy(store)
    assert policy.threshold == pytest.approx(best["config"]["threshold"])
    assert policy.max_attempts == best["config"]["max_attempts"]


@pytest.mark.ray
def test_tune_cli_resumes_the_experiment_with_restore(retry_run, capsys):
    from lacquer.cli import main

    store, _, best = retry_run
    before = read_trials(store, "retry", experiment="retry-small")
    # Same experiment name: Tuner.restore picks the finished run up; no trial is re-run and
    # the other arguments (a different sample count) do not add trials.
    rc = main(["tune", "retry", "--store", str(store), "--name", "retry-small", "--samples", "5",
               "--songs", "2", "--seconds", "1", "--batches", "2", "--batch-size", "1",
               "--attempts", "1", "2", "--json"])  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["restored"] is True and out["trials"] == 3
    assert out["config"] == best["config"]
    after = read_trials(store, "retry", experiment="retry-small")
    assert after.num_rows == 2 * before.num_rows  # one more table file: the same three trials
    assert sorted(set(after["trial_id"].to_pylist())) == sorted(before["trial_id"].to_pylist())
    assert sorted(after["iterations"].to_pylist()) == sorted(2 * before["iterations"].to_pylist())


@pytest.mark.ray
def test_restore_resumes_an_interrupted_trial_from_its_checkpoint(ray_cluster, tmp_path):
    """A trial that dies after its first checkpointed iteration is resumed by running the
    same experiment again (``Tuner.restore``) from that checkpoint, not from scratch."""
    from tuning.search import experiment_dir, run_experiment

    marker = tmp_path / "crashed-once"

    def flaky(config):
        from tuning.search import load_state, report

        state = load_state() or {"iteration": 0, "starts": []}
        state["starts"].append(state["iteration"])
        while state["iteration"] < 3:
            state["iteration"] += 1
            report({"score": float(state["iteration"]), "first_start": state["starts"][0],
                    "last_start": state["starts"][-1]}, state)  # fmt: skip
            if state["iteration"] == 1 and not marker.exists():
                marker.write_text("x")
                raise RuntimeError("simulated node loss")

    kw = dict(store=tmp_path, name="flaky", metric="score", mode="max", num_samples=1,
              max_iterations=3)  # fmt: skip
    grid, restored = run_experiment(flaky, {"x": 1}, **kw)
    assert not restored and grid[0].error is not None and marker.exists()
    assert grid[0].metrics["training_iteration"] == 1
    grid, restored = run_experiment(flaky, {"x": 1}, **kw)
    assert restored and grid[0].error is None
    m = grid[0].metrics
    assert m["score"] == 3.0 and m["first_start"] == 0 and m["last_start"] == 1
    assert (experiment_dir(tmp_path, "flaky")).is_dir()


@pytest.mark.ray
def test_adapter_search_per_genre(ray_cluster, tmp_path):
    from mastering.adapters import read_adapter_file
    from mastering.errors import InvalidParameterError
    from mastering.training.pool import synthetic_manifest
    from tuning.tune_adapters import AdapterSearch

    manifest = synthetic_manifest(tmp_path / "pairs", n_songs=4, seconds=2.0,
                                  genres=("pop", "jazz"),
                                  splits=("train", "train", "val", "val"))  # fmt: skip
    store = tmp_path / "store"
    results = AdapterSearch(store=str(store), manifest=str(manifest), genres=["pop"],
                            num_samples=2, iterations=2, steps=(1, 2)).run()  # fmt: skip
    assert [r["genre"] for r in results] == ["pop"]
    r = results[0]
    table = read_trials(store, "adapters", experiment="adapters-pop")
    assert table.num_rows == 2
    longest = max(table["iterations"].to_pylist())
    losses = [row["val_loss"] for row in table.to_pylist() if row["iterations"] == longest]
    # Trials ASHA stopped early are not compared with the ones that trained longest.
    assert r["metrics"]["val_loss"] == pytest.approx(min(losses))
    assert r["config"]["steps"] in (1, 2) and 1e-3 <= r["config"]["lr"] <= 5e-2
    assert r["total_steps"] == r["config"]["steps"] * 2
    assert load_best(store, "adapters", "pop")["config"] == r["config"]
    adapter = best_path(store, "adapters", "pop").with_name("genre-pop.safetensors")
    assert adapter.exists() == r["improves"]
    if adapter.exists():
        assert read_adapter_file(adapter).n_params() > 0
    with pytest.raises(InvalidParameterError, match="no training songs of genre rock"):
        AdapterSearch(store=str(store), manifest=str(manifest), genres=["rock"],
                      num_samples=1, iterations=1).run()  # fmt: skip
