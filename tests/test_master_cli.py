"""``lacquer master`` end to end: real files in, masters on target out, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

from mastering.io import read_audio, write_audio
from mastering.loudness import integrated_loudness, true_peak
from mastering.testsignals import music_like

REPO = Path(__file__).resolve().parents[1]


def lacquer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lacquer.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def mixes(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("mixes")
    write_audio(d / "quiet song.wav", music_like(4.0, seed=11) * 0.05, format="wav24")
    x44 = music_like(4.0, seed=12) * 0.4
    write_audio(d / "loud.flac", x44, out_rate=44_100, format="flac24")
    (d / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return d


def test_master_two_files_hits_target_and_ceiling(mixes, tmp_path):
    out = tmp_path / "out"
    r = lacquer(
        "master",
        str(mixes / "quiet song.wav"),
        str(mixes / "loud.flac"),
        "-o",
        str(out),
        "--genre",
        "rock",
        "--target-lufs",
        "-12",
        "--ceiling-dbtp",
        "-1",
        "--report",
        str(tmp_path / "report.json"),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    masters = sorted(out.iterdir())
    assert [p.name for p in masters] == ["loud.wav", "quiet_song.wav"]
    for p in masters:
        audio, info = read_audio(p)
        assert info.frames > 0
        x = audio.unsqueeze(0).double()
        assert abs(float(integrated_loudness(x)[0]) + 12.0) < 0.15
        assert float(true_peak(x)[0]) <= -1.0 + 0.05
    # The 44.1 kHz source is written back at 44.1 kHz.
    assert sf.info(out / "loud.wav").samplerate == 44_100
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["files"]) == 2 and report["failures"] == []
    for item in report["files"]:
        assert item["parameters"].keys() >= {"eq", "compressor", "limiter", "master_out"}


def test_missing_and_corrupt_files_give_one_line_errors(mixes, tmp_path):
    for bad in (mixes / "nope.wav", mixes / "broken.wav"):
        r = lacquer("master", str(bad), "-o", str(tmp_path / "o"), "--no-progress")
        assert r.returncode != 0
        assert "Traceback" not in r.stderr
        assert bad.name in r.stderr
    assert not any((tmp_path / "o").glob("*.wav*")) if (tmp_path / "o").exists() else True


def test_unknown_genre_lists_valid_ones(mixes, tmp_path):
    r = lacquer("master", str(mixes / "loud.flac"), "-o", str(tmp_path), "--genre", "polka-metal")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "rock" in r.stderr  # the valid genres are listed


def test_demo_masters_raw_mixes_on_the_render_farm(tmp_path):
    """README's main job: raw demo mixes mastered by ``lacquer render`` on embedded Ray."""
    r = lacquer("demo", "-o", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stderr
    raw = sorted((tmp_path / "demo" / "raw").glob("*.wav"))
    masters = sorted((tmp_path / "demo" / "mastered").glob("*.wav"))
    assert len(raw) == 3
    assert [p.name for p in masters] == [p.name for p in raw]
    assert (tmp_path / "demo" / "mastered" / "lacquer-manifest.parquet").exists()
    for p in masters:
        audio, _ = read_audio(p)
        assert torch.isfinite(audio).all()
        assert abs(float(integrated_loudness(audio.unsqueeze(0).double())[0]) + 14.0) < 0.15
