"""Serving pieces that need no Ray: batching songs of different lengths, the config (one
source of truth for the app and ``serving/config.yaml``), auto-retry through stage groups,
in-memory encoding, the tensor wire format, error mapping, replica-death detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import RayServeException
from ray.serve.schema import ServeDeploySchema

from mastering.audio.write import WRITE_FORMATS, quantize
from mastering.chain import DEFAULT_ORDER, Chain, ChainConfig
from mastering.conditioning import Conditioning
from mastering.errors import (
    AudioReadError,
    InvalidAudioError,
    InvalidParameterError,
    UnsupportedAudioError,
)
from mastering.evaluation import Evaluator
from mastering.io import write_audio
from mastering.loudness import measure
from mastering.render import MasterOptions
from mastering.retry import RetryPolicy, master_with_retry
from mastering.testsignals import music_like
from serving.api import MasterParams
from serving.attempts import master_song
from serving.batch import SongJob, merge_states, run_group, split_state
from serving.codec import encode_bytes, measurements, pcm_samples
from serving.config import CONFIG_YAML, ServingConfig, render_yaml, serve_config
from serving.http import lacquer_error_response, valid_values
from serving.request import request_policy
from serving.runner import GroupRunner
from serving.wire import array_to_tensor, tensor_to_array


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
            states, group_params, _ = run_group(chain, states, group)
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
    assert params[1]["compressor"]["gain_offset_db"].shape[-1] == -(-70_001 // 480)
    assert params[0]["limiter"].keys() == alone[0].params["limiter"].keys()


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


def test_song_job_key_groups_by_chain_and_overrides():
    job = SongJob("dry", -12.0, -1.0, Conditioning(), None)
    assert job.chain_key()[:3] == ("dry", -12.0, -1.0)
    retry = job.attempt(
        torch.zeros(2, 10), Conditioning(), {"limiter": {"drive_db": 2.0}}, False, True
    )
    assert retry.chain_key()[:3] == job.chain_key()[:3] and retry.chain_key() != job.chain_key()
    again = job.attempt(
        torch.zeros(2, 10), Conditioning(), {"limiter": {"drive_db": 2.0}}, False, True
    )
    assert again.chain_key() == retry.chain_key()
    assert again.params is not retry.params  # fresh containers per attempt


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
    assert ServingConfig(gpus=4).stage_groups() == [DEFAULT_ORDER]  # fused: the whole chain
    two = ServingConfig(placement="split", gpus=2).stage_groups()
    assert len(two) == 2 and sum(two, ()) == DEFAULT_ORDER
    split = ServingConfig(placement="split", gpus=16).stage_groups()
    assert split == [(s,) for s in DEFAULT_ORDER]
    with pytest.raises(InvalidParameterError, match="placement split"):
        ServingConfig(groups=2).validate()
    with pytest.raises(InvalidParameterError, match="valid: fused, split"):
        ServingConfig(placement="scattered").validate()


def test_retry_section_round_trips_and_is_checked():
    config = ServingConfig(retry=RetryPolicy(threshold=80.0, max_attempts=3), max_attempts_limit=3)
    args = yaml.safe_load(yaml.safe_dump(config.to_args()))
    assert args["retry"]["threshold"] == 80.0 and args["retry"]["max_attempts"] == 3
    assert ServingConfig.from_args(args) == config
    assert ServingConfig().retry.max_attempts == 2  # on by default, small cap
    with pytest.raises(InvalidParameterError, match="unknown retry options: tries"):
        ServingConfig.from_args({"retry": {"tries": 3}})
    with pytest.raises(InvalidParameterError, match="no parameter 'nope'"):
        ServingConfig(retry=RetryPolicy(perturbations={"eq.nope": 1.0})).validate()
    with pytest.raises(InvalidParameterError, match="max_attempts_limit"):
        ServingConfig(retry=RetryPolicy(max_attempts=5), max_attempts_limit=4).validate()


def test_request_policy_follows_retry_and_max_attempts():
    policy = RetryPolicy(max_attempts=2)
    assert request_policy(MasterParams(), policy, 4) is policy
    assert request_policy(MasterParams(retry=False), policy, 4).max_attempts == 1
    assert request_policy(MasterParams(max_attempts=4), policy, 4).max_attempts == 4
    with pytest.raises(InvalidParameterError, match=r"outside 1\.\.4"):
        request_policy(MasterParams(max_attempts=5), policy, 4)
    assert policy.max_attempts == 2  # the app's policy is never changed


@pytest.mark.parametrize("fmt", ["wav16", "wav24", "wav32f", "flac16", "flac24"])
def test_masters_are_encoded_in_memory_as_write_audio_writes_them(fmt, tmp_path):
    """The in-memory encoder gives the bytes of mastering.io.write_audio's file at 48 kHz
    (same quantization and dither); another rate goes through write_audio itself."""
    x = music_like(1.5, seed=4) * 0.9
    x[0, 1000] = 1.5  # clipped like write_audio clips
    data = encode_bytes(x, fmt, 48_000, tmp_path)
    assert data == write_audio(tmp_path / f"ref.{fmt}", x, format=fmt).read_bytes()
    resampled = encode_bytes(x, fmt, 44_100, tmp_path)
    ref = write_audio(tmp_path / f"ref44.{fmt}", x, out_rate=44_100, format=fmt)
    assert resampled == ref.read_bytes()
    with pytest.raises(InvalidAudioError, match="NaN"):
        encode_bytes(torch.full((2, 100), float("nan")), fmt, 48_000, tmp_path)


def test_float32_quantization_is_write_audios():
    rng = np.random.default_rng(0)
    frames = (rng.standard_normal((50_000, 2)) * 0.5).astype(np.float32)
    frames[:10] = [[1.0, -1.0]] * 10  # full scale, both signs
    for name in ("wav24", "flac24"):
        spec = WRITE_FORMATS[name]
        assert np.array_equal(pcm_samples(frames, spec), quantize(frames, spec.bits, None))


def test_wire_sends_arrays_and_returns_writable_tensors():
    t = torch.arange(6.0).reshape(2, 3)
    a = tensor_to_array(t)
    assert isinstance(a, np.ndarray) and a.base is not None  # a view, no copy
    ro = a.copy()
    ro.flags.writeable = False  # as the object store hands arrays back
    back = array_to_tensor(ro)
    assert torch.equal(back, t) and back.numpy().flags.writeable


def test_retry_through_split_groups_equals_master_with_retry(chain, monkeypatch):
    """Auto-retry through two stage groups (each attempt sent through both with its
    overrides, scored by the last group) gives the attempts and the master of
    mastering.retry.master_with_retry on the whole chain, and scores nothing twice."""
    audio = music_like(1.5, seed=6)
    song = SongJob("default", -14.0, -1.0, Conditioning(genre="jazz"), None)
    runners = [
        GroupRunner(DEFAULT_ORDER[:4], True, False),
        GroupRunner(DEFAULT_ORDER[4:], False, True),
    ]
    evaluator = Evaluator()
    scored = []

    class CountingEvaluator(Evaluator):
        def __call__(self, *args, **kwargs):
            scored.append(args[0].shape)
            return evaluator(*args, **kwargs)

    runners[1]._evaluator = CountingEvaluator(model=None)

    class NoScoringHere:  # the caller must reuse the group's scores
        def __init__(self, *args, **kwargs):
            raise AssertionError("a master was scored again at the caller")

    monkeypatch.setattr("serving.attempts.Evaluator", NoScoringHere)

    def send(job):
        for r in runners:
            r.run(chain, [job])
        return job

    policy = RetryPolicy(threshold=100.0, max_attempts=3)
    result = master_song(chain, send, song, audio, policy)
    options = MasterOptions(conditioning=song.conditioning)
    with torch.no_grad():
        master, _, attempts = master_with_retry(chain, audio, options, policy, evaluator)
    assert [a.number for a in result.attempts] == [1, 2, 3] and len(scored) == 3
    assert result.rescored == 0
    assert [a.overrides for a in result.attempts] == [a.overrides for a in attempts]
    assert [a.score for a in result.attempts] == pytest.approx(
        [a.score for a in attempts], abs=0.02
    )
    assert sum(a.best for a in result.attempts) == 1
    assert result.kept.score >= result.attempts[0].score
    assert (result.job.audio - master).abs().max() < 1e-4
    assert result.before["integrated_lufs"] == pytest.approx(measure(audio, 48_000).integrated_lufs)
    assert set(result.parameters) == set(DEFAULT_ORDER)


def test_a_batch_is_measured_and_scored_as_each_song_alone(chain):
    """The groups measure and score songs of equal length as one batch: each song's reports
    and score are those of the song alone (a song of another length is measured apart)."""
    songs = [music_like(1.0, seed=7), music_like(1.0, seed=8), music_like(1.2, seed=9)]
    monos = (False, True, False)
    runner = GroupRunner(DEFAULT_ORDER, True, True)
    jobs = [
        SongJob("default", -14.0, -1.0, Conditioning(genre="pop"), x, mono=m)
        for x, m in zip(songs, monos, strict=True)
    ]
    runner.run(chain, jobs)
    evaluator = Evaluator()
    for x, mono, job in zip(songs, monos, jobs, strict=True):
        for got, want in (
            (job.before, measurements(x, mono)),
            (job.after, measurements(job.audio, mono)),
        ):
            for key in ("integrated_lufs", "true_peak_dbtp", "lra_lu", "spectral_tilt_db_oct"):
                assert got[key] == pytest.approx(want[key], abs=1e-3), key
        alone = evaluator(job.audio.unsqueeze(0), ["pop"])
        assert job.evaluation.score.shape == (1,)
        assert job.evaluation.item(0)["score"] == pytest.approx(alone.item(0)["score"], abs=1e-3)
    assert jobs[1].before["integrated_lufs"] != jobs[0].before["integrated_lufs"]


def test_songs_too_short_to_score_are_mastered_once(chain):
    song = SongJob("default", -14.0, -1.0, Conditioning(), None)
    runner = GroupRunner(DEFAULT_ORDER, True, True)
    result = master_song(
        chain,
        lambda job: runner.run(chain, [job]) or job,
        song,
        music_like(0.3, seed=1),
        RetryPolicy(),
    )
    assert result.attempts == [] and result.kept is None and result.evaluation() is None
    assert result.job.audio.shape == (2, 14_400)


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


def _upload(tmp_path, name: str, x: torch.Tensor, rate: int = 48_000):
    import soundfile as sf

    path = tmp_path / name
    sf.write(path, x.T.numpy(), rate, subtype="PCM_24")
    return path


@pytest.mark.parametrize("retry", [False, True])
def test_masters_encoded_on_the_device_are_the_ingress_encoders_bytes(retry, tmp_path):
    """With ``encode_on_device`` the last group sends back the master's 24-bit WAV data and
    the answer is the same file the ingress's encoder makes (one attempt, and two with
    retry, where the retry loop handles stand-ins); other formats, other rates and the
    studio's full report keep the samples."""
    from serving.direct import DirectMaster

    policy = RetryPolicy(threshold=100.0, max_attempts=2)  # always two attempts
    on = DirectMaster(policy=policy, encode_on_device=True)
    off = DirectMaster(policy=policy, encode_on_device=False)
    path = _upload(tmp_path, "a.wav", music_like(1.5, seed=12))
    params = MasterParams(genre="pop", retry=retry)
    got, want = on.master(path, params), off.master(path, params)
    assert got.header["encoded_on_device"] and not want.header["encoded_on_device"]
    assert got.data == want.data
    assert len(got.header["attempts"]) == (2 if retry else 1)
    assert got.report["rescored"] == 0

    at44 = _upload(tmp_path, "b.wav", music_like(1.5, seed=12), 44_100)
    for case, src, p in (
        ("wav32f", path, MasterParams(genre="pop", format="wav32f", retry=retry)),
        ("44.1 kHz", at44, MasterParams(genre="pop", retry=retry)),
    ):
        a, b = on.master(src, p), off.master(src, p)
        assert not a.header["encoded_on_device"], case
        # Samples, not bytes: libsndfile stamps float WAVs with the time (PEAK chunk).
        assert np.array_equal(_samples(a.data), _samples(b.data)), case


def _samples(data: bytes) -> np.ndarray:
    import io

    import soundfile as sf

    return sf.read(io.BytesIO(data), dtype="float32")[0]


def test_a_nan_master_is_not_encoded_on_the_device():
    from serving.codec import device_data

    x = torch.zeros(2, 100)
    assert device_data(x, "wav24").size == 600
    x[1, 7] = float("nan")
    assert device_data(x, "wav24") is None
    with pytest.raises(InvalidParameterError, match="not encoded on the device"):
        device_data(x, "wav16")


def test_an_encoded_attempt_stands_in_as_nan_and_is_never_rescored(chain):
    """The finished job's output carries a NaN view of the master's shape (no memory), and
    the caller's scorer refuses it rather than score it."""
    from serving.attempts import PipelineChain, ReplicaScores

    runner = GroupRunner(DEFAULT_ORDER, True, True, encode=True)
    song = SongJob("default", -14.0, -1.0, Conditioning(genre="pop"), None, encode="wav24")
    pipeline = PipelineChain(chain, lambda job: runner.run(chain, [job]) or job, song)
    out = pipeline(music_like(1.0, seed=3).unsqueeze(0), Conditioning(genre="pop"))
    assert out.audio.shape == (1, 2, 48_000) and torch.isnan(out.audio).all()
    assert out.audio.untyped_storage().nbytes() == 4
    scores = ReplicaScores(pipeline)
    assert scores(out.audio, ["pop"], target_lufs=-14.0, ceiling_dbtp=-1.0) is not None
    with pytest.raises(RuntimeError, match="encoded on the stage group"):
        scores(out.audio.clone(), ["pop"], target_lufs=-14.0, ceiling_dbtp=-1.0)
