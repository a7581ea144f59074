"""Binaural rendering: interaural cues move the right way, lows stay centred, loudness and true
peak hold on the headphone render, mono compatibility is reported."""

from __future__ import annotations

import math

import pytest
import torch

from mastering import binaural as bn
from mastering.errors import AudioReadError, InvalidParameterError
from mastering.loudness import integrated_loudness, true_peak
from mastering.testsignals import music_like

SR = 48_000
KEMAR = pytest.param(
    "kemar",
    marks=pytest.mark.skipif(
        not bn.kemar_path().exists(), reason="KEMAR HRIRs need Debian's pd-earplug installed"
    ),
)


def panned_noise(seconds: float = 1.0) -> torch.Tensor:
    """[3, 2, T]: the same noise hard left, hard right, centred."""
    src = 0.1 * torch.randn(int(seconds * SR), generator=torch.Generator().manual_seed(0))
    z = torch.zeros_like(src)
    return torch.stack([torch.stack([src, z]), torch.stack([z, src]), torch.stack([src, src])])


@pytest.mark.parametrize("kind", [KEMAR, "spherical"])
def test_interaural_level_and_time_differences_follow_the_pan(kind):
    ears, hrirs = bn.binaural_downmix(panned_noise(), bn.BinauralConfig(hrirs=kind))
    assert hrirs.name == kind
    ild, itd = bn.interaural_differences(ears)
    # hard left: louder and earlier at the left ear; hard right: the mirror image
    assert ild[0] > 3.0 and ild[1] < -3.0
    assert itd[0] > 0.1 and itd[1] < -0.1
    assert float(ild[0]) == pytest.approx(-float(ild[1]), abs=1e-3)
    # centred: no difference
    assert abs(float(ild[2])) < 0.01 and float(itd[2]) == 0.0
    # a wider virtual speaker pair gives a larger ITD for the same pan
    wide, _ = bn.binaural_downmix(
        panned_noise(), bn.BinauralConfig(hrirs=kind, speaker_angle_deg=60.0)
    )
    assert float(bn.interaural_differences(wide)[1][0]) > float(itd[0])


@pytest.mark.parametrize("kind", [KEMAR, "spherical"])
def test_low_end_stays_centred(kind):
    t = torch.arange(SR) / SR
    bass = 0.3 * torch.sin(2 * math.pi * 50.0 * t)
    x = torch.stack([bass, torch.zeros_like(bass)]).unsqueeze(0)  # bass hard left
    ears, _ = bn.binaural_downmix(x, bn.BinauralConfig(hrirs=kind))
    ild, _ = bn.interaural_differences(ears, band_hz=(30.0, 80.0))
    assert abs(float(ild[0])) < 0.5
    # the same pan an octave above the crossover does get a level difference
    treble = 0.3 * torch.sin(2 * math.pi * 2000.0 * t)
    x2 = torch.stack([treble, torch.zeros_like(treble)]).unsqueeze(0)
    ears2, _ = bn.binaural_downmix(x2, bn.BinauralConfig(hrirs=kind))
    assert float(bn.interaural_differences(ears2)[0][0]) > 3.0


def test_render_keeps_loudness_and_true_peak_and_reports_mono_compatibility():
    x = music_like(3.0, seed=4).unsqueeze(0)
    y, reports = bn.render_binaural(x, target_lufs=-14.0, ceiling_dbtp=-1.0)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert float(integrated_loudness(y)[0]) == pytest.approx(-14.0, abs=0.1)
    assert float(true_peak(y)[0]) <= -1.0 + 1e-3
    rep = reports[0]
    assert rep["normalization"]["status"] == "reached"
    mono = rep["mono_compatibility"]
    for key in ("master", "binaural"):
        assert -1.0 <= mono[key]["correlation"] <= 1.0
        assert math.isfinite(mono[key]["mono_loudness_change_lu"])
    # the binaural render is not a copy of the master
    assert float((y - x).abs().max()) > 0.01


def test_mono_compatibility_of_opposite_polarity_is_reported_as_a_loss():
    src = 0.1 * torch.randn(SR, generator=torch.Generator().manual_seed(1))
    rep = bn.mono_compatibility(torch.stack([src, -0.9 * src]).unsqueeze(0))[0]
    assert rep["correlation"] < -0.99 and rep["mono_loudness_change_lu"] < -15.0


def test_spherical_fallback_and_clear_errors(monkeypatch, tmp_path):
    missing = tmp_path / "nope.txt"
    monkeypatch.setenv("LACQUER_KEMAR_HRIR", str(missing))
    hrirs = bn.load_hrirs("auto")
    assert hrirs.name == "spherical" and "not found" in hrirs.notes[0]
    with pytest.raises(AudioReadError, match=r"nope\.txt"):
        bn.load_hrirs("kemar")
    bad = tmp_path / "bad.txt"
    bad.write_text("** File: H0e000a.wav **\n0.1 0.2 0.3\n")
    monkeypatch.setenv("LACQUER_KEMAR_HRIR", str(bad))
    with pytest.raises(AudioReadError, match=r"bad\.txt"):
        bn.load_hrirs("kemar")
    with pytest.raises(InvalidParameterError, match="width"):
        bn.BinauralConfig(width=3.0).validate()
    with pytest.raises(InvalidParameterError, match="HRIR set"):
        bn.BinauralConfig(hrirs="cipic").validate()


def test_cli_master_binaural_writes_a_normalized_headphone_render(tmp_path):
    import soundfile as sf

    from lacquer.cli import main

    song = tmp_path / "song.wav"
    sf.write(str(song), music_like(2.0, seed=6).T.numpy(), SR)
    out = tmp_path / "out"
    rc = main(
        ["master", str(song), "-o", str(out), "--binaural", "--no-retry", "--format", "wav32f"]
    )
    assert rc == 0
    y = torch.from_numpy(sf.read(str(out / "song.binaural.wav"), dtype="float32")[0].T.copy())
    master = torch.from_numpy(sf.read(str(out / "song.wav"), dtype="float32")[0].T.copy())
    assert y.shape == master.shape
    assert float(integrated_loudness(y.unsqueeze(0))[0]) == pytest.approx(-14.0, abs=0.1)
    assert float(true_peak(y.unsqueeze(0))[0]) <= -1.0 + 1e-3
