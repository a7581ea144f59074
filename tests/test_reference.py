"""Reference features (rate/length/level invariance, errors), the reference encoder, and
``lacquer master --reference`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from scipy import signal as sps

from lacquer.cli import main
from mastering.chain import Chain
from mastering.conditioning import MACRO_INDEX, Conditioning
from mastering.errors import AudioReadError, InvalidAudioError
from mastering.io import read_audio
from mastering.reference import (
    REFERENCE_MACROS,
    ReferenceEncoder,
    feature_distance,
    load_reference,
    measure_features,
    normalize_loudness,
    reference_features,
    song_features,
    with_macros,
)
from mastering.testsignals import music_like

SR = 48_000


def band_limited(seed: int, seconds: float) -> torch.Tensor:
    """music_like low-passed at 18 kHz, so every tested rate (>= 44.1 kHz) carries all of it."""
    x = music_like(seconds, seed=seed).double().numpy()
    sos = sps.butter(8, 18_000, fs=SR, output="sos")
    return torch.from_numpy(sps.sosfiltfilt(sos, x, axis=-1).copy()).float()


def resampled(x: torch.Tensor, rate: int) -> np.ndarray:
    return soxr.resample(x.T.double().numpy(), SR, rate)


def shaped(x: torch.Tensor, side: float = 1.0, treble_db: float = 0.0) -> torch.Tensor:
    """``x`` with its side channel scaled and a first-order treble tilt above 3 kHz."""
    y = x.double().numpy()
    if treble_db:
        b, a = sps.butter(1, 3000, btype="highpass", fs=SR)
        y = y + (10 ** (treble_db / 20) - 1) * sps.lfilter(b, a, y, axis=-1)
    m, s = 0.5 * (y[0] + y[1]), 0.5 * (y[0] - y[1]) * side
    return torch.from_numpy(np.stack([m + s, m - s])).float()


def test_features_ignore_rate_length_and_level(tmp_path):
    x = band_limited(11, 6.0)
    base = reference_features(x).batch()
    variants = {
        "quieter by 20 dB": reference_features(0.1 * x),
        "twice as long": reference_features(torch.cat([x, x], -1)),
        "44.1 kHz": reference_features(resampled(x, 44_100).T, 44_100),
        "96 kHz": reference_features(resampled(x, 96_000).T, 96_000),
    }
    path = tmp_path / "ref.flac"
    sf.write(path, resampled(x, 44_100), 44_100, subtype="PCM_24")
    variants["44.1 kHz FLAC file"] = load_reference(path)
    assert variants["44.1 kHz FLAC file"].source_rate == 44_100
    other = float(feature_distance(reference_features(shaped(x, 2.0, 6.0)).batch(), base))
    for name, f in variants.items():
        d = float(feature_distance(f.batch(), base))
        assert d < 0.15, (name, d)
        assert d < other / 10, (name, d, other)
    # The reference's own loudness is reported, not used: -20 dB shows in loudness only.
    assert variants["quieter by 20 dB"].loudness_lufs == pytest.approx(
        reference_features(x).loudness_lufs - 20.0, abs=0.05
    )


def test_bad_references_fail_clearly(tmp_path):
    with pytest.raises(InvalidAudioError, match=r"ref\.wav.*at least 3 s"):
        p = tmp_path / "ref.wav"
        sf.write(p, music_like(1.0, seed=1).T.numpy(), SR)
        load_reference(p)
    with pytest.raises(InvalidAudioError, match="silent"):
        reference_features(torch.zeros(2, 4 * SR), name="quiet.wav")
    with pytest.raises(InvalidAudioError, match="NaN"):
        reference_features(torch.full((2, 4 * SR), float("nan")))
    with pytest.raises(AudioReadError, match=r"missing\.flac"):
        load_reference(tmp_path / "missing.flac")


def test_encoder_follows_the_reference():
    song = band_limited(3, 6.0).unsqueeze(0)
    src = band_limited(4, 6.0)
    enc = ReferenceEncoder()
    own = song_features(song)

    def macros(ref: torch.Tensor) -> dict[str, float]:
        m = enc.reference_macros(reference_features(ref).batch(), own)[0]
        return dict(zip(REFERENCE_MACROS, m.tolist(), strict=True))

    wide, narrow = macros(shaped(src, side=2.0)), macros(shaped(src, side=0.4))
    assert wide["width"] > narrow["width"] + 0.5
    bright, dark = macros(shaped(src, treble_db=6.0)), macros(shaped(src, treble_db=-6.0))
    assert bright["brightness"] > dark["brightness"] + 0.5
    dense = torch.tanh(4.0 * src / src.abs().max()) * 0.9  # heavily clipped: low crest
    assert macros(dense)["drive"] > macros(src)["drive"] + 0.5


def test_with_macros_updates_the_controller_vector():
    chain = Chain()
    x = music_like(2.0, seed=2).unsqueeze(0)
    cond = chain.condition(x, [Conditioning(genre="pop")])
    m = cond.macros.clone()
    m[0, MACRO_INDEX["width"]] = 1.25
    new = with_macros(cond, m)
    n = new.macros.shape[-1]
    e = chain.encoder.genre_embedding.embedding_dim
    assert torch.equal(new.vector[:, e : e + n], m)
    assert torch.equal(new.vector[:, :e], cond.vector[:, :e])
    assert torch.equal(new.vector[:, e + n :], cond.vector[:, e + n :])


def test_cli_master_with_reference(tmp_path):
    song = music_like(4.0, seed=21)
    ref = shaped(band_limited(22, 8.0), side=1.8, treble_db=5.0)
    sf.write(tmp_path / "song.wav", song.T.numpy(), SR, subtype="FLOAT")
    sf.write(tmp_path / "ref.flac", resampled(ref, 44_100), 44_100, subtype="PCM_24")
    rep = tmp_path / "r.json"
    rc = main(
        ["master", str(tmp_path / "song.wav"), "--reference", str(tmp_path / "ref.flac"),
         "-o", str(tmp_path / "out"), "--no-progress", "--report", str(rep)]
    )  # fmt: skip
    assert rc == 0
    r = json.loads(rep.read_text())["files"][0]
    assert r["after"]["integrated_lufs"] == pytest.approx(-14.0, abs=0.05)
    assert r["after"]["true_peak_dbtp"] <= -1.0 + 1e-3
    assert r["reference"]["features"]["source_rate"] == 44_100
    assert r["reference"]["macros"]["width"] > r["reference"]["macros_before"]["width"]
    # The referenced master is closer to the reference than the plain one.
    master, _ = read_audio(r["output"])
    with torch.no_grad():
        plain = Chain.pretrained()(song.unsqueeze(0), Conditioning()).audio
    target = reference_features(ref).batch()

    def dist(y: torch.Tensor) -> float:
        with torch.no_grad():
            return float(feature_distance(measure_features(normalize_loudness(y)), target))

    assert dist(master.unsqueeze(0)) < dist(plain) - 0.5
