"""``lacquer analyze``: table and JSON output on real files, bad files, exit codes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy import signal as sps

from lacquer.cli import main
from mastering import loudness as L
from mastering.testsignals import music_like, tone_sequence

REPO = Path(__file__).resolve().parents[1]
KEYS = {
    "file",
    "integrated_lufs",
    "lra_lu",
    "true_peak_dbtp",
    "sample_peak_dbfs",
    "momentary_max_lufs",
    "short_term_max_lufs",
    "plr_db",
    "loudness_sone",
    "loudness_phon",
    "loudness_max_sone",
    "full_scale_spl",
    "duration_s",
    "sample_rate",
    "channels",
    "source_sample_rate",
    "source_channels",
    "notes",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("analyze")
    music = music_like(6.0, seed=4).numpy().T  # [samples, 2]
    tone = tone_sequence([(-23.0, 5.0)], channels=1).numpy()[0]
    out = {
        "music": d / "music.wav",
        "tone_mono": d / "tone mono.flac",
        "music_44k": d / "music_44k.wav",
        "silence": d / "silence.wav",
        "short": d / "short.wav",
        "corrupt": d / "corrupt.wav",
        "text": d / "notes.flac",
    }
    sf.write(out["music"], music, 48_000, subtype="PCM_24")
    sf.write(out["tone_mono"], tone, 48_000, subtype="PCM_24")
    sf.write(out["music_44k"], sps.resample_poly(music, 147, 160, axis=0), 44_100, subtype="FLOAT")
    sf.write(out["silence"], np.zeros((48_000 * 2, 2)), 48_000, subtype="PCM_16")
    sf.write(out["short"], music[48_000:96_000], 48_000, subtype="PCM_16")
    # A WAV cut inside its header, and text with an audio extension.
    out["corrupt"].write_bytes(out["music"].read_bytes()[:30])
    out["text"].write_text("not audio\n")
    return out


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_output_matches_measure(files, capsys):
    rc = main(["analyze", "--json", str(files["music"]), str(files["tone_mono"])])
    assert rc == 0
    rows = _json_lines(capsys.readouterr().out)
    assert [r["file"] for r in rows] == [str(files["music"]), str(files["tone_mono"])]
    for r in rows:
        assert set(r) == KEYS
    music, tone = rows
    ref = L.measure(torch.from_numpy(sf.read(files["music"], dtype="float32")[0].T.copy()))
    assert music["integrated_lufs"] == pytest.approx(ref.integrated_lufs, abs=1e-3)
    assert music["true_peak_dbtp"] == pytest.approx(ref.true_peak_dbtp, abs=1e-3)
    assert music["source_sample_rate"] == 48_000 and music["source_channels"] == 2
    # Mono is measured as one channel (BS.1770), not as dual mono: a -23 dBFS 1 kHz sine in
    # one channel reads -26 LUFS (-23 - 3.01).
    assert tone["channels"] == 1 and tone["source_channels"] == 1
    assert tone["integrated_lufs"] == pytest.approx(-26.0, abs=0.1)


def test_resampled_source_reports_source_rate(files, capsys):
    assert main(["analyze", "--json", str(files["music_44k"]), str(files["music"])]) == 0
    resampled, native = _json_lines(capsys.readouterr().out)
    assert resampled["source_sample_rate"] == 44_100 and resampled["sample_rate"] == 48_000
    assert any("44100" in n for n in resampled["notes"])
    assert resampled["integrated_lufs"] == pytest.approx(native["integrated_lufs"], abs=0.02)


def test_undefined_values_are_null(files, capsys):
    assert main(["analyze", "--json", str(files["silence"]), str(files["short"])]) == 0
    silence, short = _json_lines(capsys.readouterr().out)
    for key in ("integrated_lufs", "lra_lu", "true_peak_dbtp", "plr_db", "momentary_max_lufs"):
        assert silence[key] is None
    assert short["integrated_lufs"] is not None  # 1 s: 400 ms blocks but no 3 s window
    assert short["short_term_max_lufs"] is None and short["lra_lu"] is None
    assert short["true_peak_dbtp"] is not None and math.isfinite(short["true_peak_dbtp"])


def test_bad_files_report_one_line_each_and_continue(files, capsys):
    argv = [
        "analyze",
        str(files["corrupt"]),
        str(files["music"]),
        str(files["text"]),
        str(files["music"].with_name("missing.wav")),
    ]
    assert main(argv) == 1
    captured = capsys.readouterr()
    table = captured.out.splitlines()
    assert len(table) == 2 and "I LUFS" in table[0] and str(files["music"]) in table[1]
    errors = captured.err.splitlines()
    assert len(errors) == 3
    for line, name in zip(errors, ("corrupt.wav", "notes.flac", "missing.wav"), strict=True):
        assert line.startswith("lacquer analyze: error: ") and name in line


def test_table_output(files, capsys):
    assert main(["analyze", str(files["music"]), str(files["silence"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].split()[:2] == ["I", "LUFS"]
    assert "48k/2ch" in lines[1] and lines[1].endswith(str(files["music"]))
    assert lines[2].split()[0] == "-"  # silence: integrated undefined


def test_module_entry_point_subprocess(files):
    cmd = [
        sys.executable,
        "-m",
        "lacquer",
        "analyze",
        "--json",
        str(files["music"]),
        str(files["corrupt"]),
        str(files["tone_mono"]),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 1, proc.stderr
    rows = _json_lines(proc.stdout)
    assert [Path(r["file"]).name for r in rows] == ["music.wav", "tone mono.flac"]
    assert proc.stderr.count("\n") == 1 and "corrupt.wav" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_perceived_loudness_is_opt_in(files, capsys):
    """Without ``--perceived`` the sone/phon keys are null; with it, a louder copy of the same
    music reads more sone (ISO 532-1, :mod:`mastering.psychoacoustic`)."""
    assert main(["analyze", "--json", str(files["music"])]) == 0
    (plain,) = _json_lines(capsys.readouterr().out)
    assert plain["loudness_sone"] is None and plain["loudness_phon"] is None
    args = ["analyze", "--json", "--perceived", str(files["music"])]
    assert main(args) == 0
    (quiet,) = _json_lines(capsys.readouterr().out)
    assert main([*args[:-1], "--full-scale-spl", "110", str(files["music"])]) == 0
    (loud,) = _json_lines(capsys.readouterr().out)
    assert 0 < quiet["loudness_sone"] < loud["loudness_sone"]
    assert loud["loudness_phon"] > quiet["loudness_phon"]
