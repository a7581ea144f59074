"""Serving pieces that need no Ray: batching songs of different lengths, the config (one
source of truth for the app and ``serving/config.yaml``), error mapping, replica-death
detection."""

from __future__ import annotations

import pytest
import torch
import yaml
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import RayServeException
from ray.serve.schema import ServeDeploySchema

from mastering.chain import DEFAULT_ORDER, Chain, ChainConfig
from mastering.conditioning import Conditioning
from mastering.errors import AudioReadError, InvalidParameterError, UnsupportedAudioError
from mastering.loudness import measure
from mastering.testsignals import music_like
from serving.batch import SongJob, merge_states, run_group, split_state
from serving.config import CONFIG_YAML, ServingConfig, render_yaml, serve_config
from serving.http import lacquer_error_response, valid_values


@pytest.fixture(scope="module")
def chain() -> Chain:
    return Chain.pretrained()


def test_batched_groups_match_one_song_at_a_time():
    """Two songs of different lengths run through two stage groups as one padded batch (master
    out on equal-length sub-batches) come out at their own lengths with their own parameters,
    and match each song mastered alone: the longest one to float noise; the shorter one at
    the same loudness (0.02 LU) and true peak, while the analysis of the padded stages (the EQ
    most) sees its trailing silence and moves its samples a little.

    The reverb is bypassed here: its IR noise is drawn at the batch's longest tail length, so
    a song's reverb in a batch differs from its reverb alone (a property of the reverb stage,
    not of the batching)."""
    chain = Chain.pretrained(ChainConfig(bypass=("reverb",)))
    songs = [music_like(2.0, seed=1), music_like(1.5, seed=2)[:, :70_001]]
    cond = Conditioning(genre="rock", tempo_bpm=120.0)
    groups = [DEFAULT_ORDER[:3], DEFAULT_ORDER[3:]]
    with torch.no_grad():
        states = [chain.begin(x.unsqueeze(0), cond) for x in songs]
        params = [{}, {}]
        for group in groups:
            states, group_params = run_group(chain, states, group)
            for p, q in zip(params, group_params, strict=True):
                p.update(q)
        outs = [chain.finish(s).audio[0] for s in states]
        alone = [chain(x.unsqueeze(0), cond) for x in songs]
    assert [o.shape[-1] for o in outs] == [96_000, 70_001]
    assert (outs[0] - alone[0].audio[0]).abs().max() < 1e-3
    for i in range(2):
        ref = alone[i].audio[0]
        assert set(params[i]) == set(DEFAULT_ORDER)
        assert torch.corrcoef(torch.stack([outs[i].flatten(), ref.flatten()]))[0, 1] > 0.999
        got, want = measure(outs[i], 48_000), measure(ref, 48_000)
        assert got.integrated_lufs == pytest.approx(want.integrated_lufs, abs=0.02)
        assert got.true_peak_dbtp == pytest.approx(want.true_peak_dbtp, abs=0.05)
    assert params[1]["compressor"]["gain_offset_db"]["frames"] == -(-70_001 // 480)
    alone_params = alone[0].parameters_json(0, chain.stages)
    assert params[0]["limiter"].keys() == alone_params["limiter"].keys()


def test_padded_batch_keeps_song_lengths():
    chain = Chain.pretrained()
    with torch.no_grad():
        songs = [
            chain.begin(music_like(1.2, seed=i).unsqueeze(0)[..., : 50_000 + i], Conditioning())
            for i in range(3)
        ]
        batch = chain.run_stages(merge_states(songs), ["eq"])
    assert batch.audio.shape == (3, 2, 50_002)
    back = split_state(batch, songs)
    assert [s.audio.shape[-1] for s in back] == [50_000, 50_001, 50_002]
    assert torch.equal(back[1].audio[0], batch.audio[1, :, :50_001])


def test_merge_refuses_songs_at_different_stages(chain):
    with torch.no_grad():
        a = chain.begin(music_like(1.0, seed=1).unsqueeze(0), Conditioning())
        b = chain.run_stages(
            chain.begin(music_like(1.0, seed=2).unsqueeze(0), Conditioning()), ["eq"]
        )
    b.params, b.info = {}, {}
    with pytest.raises(InvalidParameterError, match="different stages"):
        merge_states([a, b])


def test_song_job_key_groups_by_chain():
    job = SongJob("dry", -12.0, -1.0, Conditioning(), None)
    assert job.chain_key() == ("dry", -12.0, -1.0)


def test_committed_yaml_is_the_generated_one():
    assert CONFIG_YAML.read_text() == render_yaml(), (
        "serving/config.yaml is stale: python -m serving.config > serving/config.yaml"
    )
    parsed = yaml.safe_load(CONFIG_YAML.read_text())
    ServeDeploySchema.model_validate(parsed)
    assert parsed == serve_config()
    args = parsed["applications"][0]["args"]
    assert "api_token" not in args
    assert ServingConfig.from_args(args) == ServingConfig()
    # What `serve deploy` calls with those args: the app of the same config.
    from ray.serve import Application

    from serving.app import app_builder

    assert isinstance(app_builder(args), Application)


def test_public_bind_requires_a_token(monkeypatch):
    monkeypatch.delenv("LACQUER_API_TOKEN", raising=False)
    with pytest.raises(InvalidParameterError, match="requires a bearer token"):
        ServingConfig(host="0.0.0.0").validate()
    ServingConfig(host="127.0.0.1").validate()
    monkeypatch.setenv("LACQUER_API_TOKEN", "s3cret")
    assert ServingConfig(host="0.0.0.0").validate().token() == "s3cret"
    with pytest.raises(InvalidParameterError, match="unknown serving options"):
        ServingConfig.from_args({"hots": "x"})


def test_stage_groups_follow_the_farm_planner():
    assert ServingConfig().stage_groups() == [DEFAULT_ORDER]
    two = ServingConfig(gpus=2).stage_groups()
    assert len(two) == 2 and sum(two, ()) == DEFAULT_ORDER
    assert ServingConfig(gpus=16).stage_groups() == [(s,) for s in DEFAULT_ORDER]


def test_errors_map_to_4xx_naming_the_upload():
    r = lacquer_error_response(AudioReadError("truncated: ...", "/tmp/x/upload"), "song.wav")
    assert r.status_code == 422 and b'"file":"song.wav"' in r.body and b"/tmp/x" not in r.body
    r = lacquer_error_response(AudioReadError("not readable as audio: ...", "/tmp/u"), "a.txt")
    assert r.status_code == 415
    r = lacquer_error_response(UnsupportedAudioError("sample rate 4000 Hz ...", "/tmp/u"), "a")
    assert r.status_code == 415
    r = lacquer_error_response(InvalidParameterError("unknown genre 'x'; valid: pop, rock"))
    assert r.status_code == 422 and b'"valid":["pop","rock"]' in r.body
    assert valid_values("no list here") is None


def test_replica_death_is_found_through_serve_wrappers():
    from serving.app import replica_died

    died = ActorDiedError()
    wrapped = RayServeException("upstream actor died")
    wrapped.__cause__ = died
    assert replica_died(died) and replica_died(wrapped)
    assert not replica_died(InvalidParameterError("unknown genre"))
