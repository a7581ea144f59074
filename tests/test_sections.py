"""Section detection and section-aware mastering on synthetic songs with known sections."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from lacquer.cli import main
from mastering.chain import Chain
from mastering.conditioning import Conditioning
from mastering.dsp.stereo import side_to_mid_ratio_db
from mastering.features import stft_power
from mastering.loudness import measure
from mastering.sections import (
    Section,
    SectionAnalysis,
    SectionPolicy,
    detect_sections,
    level_weights,
    master_with_sections,
)
from mastering.testsignals import music_like

SR = 48_000
BEAT_S = 0.5  # music_like's default 120 BPM


def part(seed: int, gain_db: float, bars: int, side_scale: float = 1.0) -> torch.Tensor:
    """``bars`` bars of music_like (seed ``seed``), cut on a bar line away from its fades and
    level changes, at ``gain_db`` with its side channel scaled by ``side_scale``."""
    x = music_like(2.0 * bars + 4.0, seed=seed)[..., 2 * SR : 2 * SR + bars * 2 * SR]
    mid, side = 0.5 * (x[0] + x[1]), 0.5 * (x[0] - x[1]) * side_scale
    return torch.stack([mid + side, mid - side]) * 10.0 ** (gain_db / 20.0)


def song(bars: int, levels_db=(-9.0, 0.0, -9.0, 0.0), seeds=(1, 2, 3, 4)) -> torch.Tensor:
    """Verse / chorus / verse / chorus: each part a different seed (other chords and drums)
    and level; boundaries every ``2 * bars`` seconds."""
    return torch.cat([part(s, g, bars) for s, g in zip(seeds, levels_db, strict=True)], -1)


def test_boundaries_found_within_a_beat():
    x = song(bars=4)  # 32 s, boundaries at 8, 16, 24 s
    a = detect_sections(x)
    assert abs(a.tempo_bpm - 120.0) < 2.0
    assert len(a.boundaries_s) == 3, a.boundaries_s
    for found, true in zip(a.boundaries_s, (8.0, 16.0, 24.0), strict=True):
        assert abs(found - true) <= BEAT_S, (found, true)
    # Every boundary is on the beat grid.
    for b in a.boundaries_s:
        assert min(abs(b - t) for t in a.beats_s) < 1e-6
    levels = [s.level for s in a.sections]
    assert levels[1] == levels[3] == 1 and levels[0] < 1 and levels[2] < 1
    assert [s.label for s in a.sections][1] == "chorus"
    # Offsets are centred: the duration-weighted mean offset of each macro is zero.
    dur = np.array([s.end_s - s.start_s for s in a.sections])
    for name in ("width", "brightness"):
        off = np.array([s.offsets[name] for s in a.sections])
        assert abs(float((off * dur).sum() / dur.sum())) < 1e-6
        assert off[1] > off[0]


def test_uneven_sections_at_another_tempo():
    # 100 BPM: 2 bars (4.8 s), then 5 bars, then 3; every boundary within a beat.
    beat = 0.6
    parts, t, bounds = [], 0.0, []
    for seed, bars, gain in ((5, 4, -10.0), (6, 5, 0.0), (7, 4, -10.0)):
        x = music_like(4 * beat * bars + 4.0, seed=seed, tempo_bpm=100.0)
        cut = round(4 * beat * SR)  # one bar in, away from the fade-in
        parts.append(x[..., cut : cut + round(4 * beat * bars * SR)] * 10 ** (gain / 20))
        t += 4 * beat * bars
        bounds.append(t)
    a = detect_sections(torch.cat(parts, -1))
    assert len(a.boundaries_s) == 2, a.boundaries_s
    for found, true in zip(a.boundaries_s, bounds[:-1], strict=True):
        assert abs(found - true) <= beat, (found, true)


def test_homogeneous_song_is_one_section():
    a = detect_sections(part(9, 0.0, bars=6))
    assert a.boundaries_s == [] and len(a.sections) == 1
    assert all(v == 0.0 for v in a.sections[0].offsets.values())


def test_crossfade_weights_are_smooth_and_sum_to_one():
    sections = [
        Section(0.0, 4.0, 0, "verse", -20.0),
        Section(4.0, 8.0, 1, "chorus", -14.0),
        Section(8.0, 12.0, -1, "outro", -30.0),
    ]
    analysis = SectionAnalysis(120.0, [], [4.0, 8.0], sections, [])
    levels, w = level_weights(analysis, 12 * SR)
    assert levels == [-1, 0, 1]
    assert torch.allclose(w.sum(0), torch.ones(w.shape[-1]), atol=1e-6)
    # One-beat raised cosine: largest change per 10 ms frame = (pi / 2) / 50 frames.
    assert float(w.diff(dim=-1).abs().max()) <= np.pi / 2 / 50 + 1e-3
    assert float(w[2, 600]) == pytest.approx(1.0)  # 6 s: inside the chorus
    assert float(w[1, 399]) == pytest.approx(0.5, abs=0.05)  # 4 s: mid-crossfade


def _hf_db(x: torch.Tensor) -> float:
    """Share of the power above 4 kHz, dB."""
    p = stft_power(x.unsqueeze(0).mean(1, keepdim=True)).mean(-1)[0, 0]
    f = torch.fft.rfftfreq(4096, 1 / SR)
    return float(10 * torch.log10(p[f > 4000].sum() / p.sum()))


def _width_db(x: torch.Tensor) -> float:
    return float(side_to_mid_ratio_db(x.unsqueeze(0))[0])


@pytest.fixture(scope="module")
def rendered():
    torch.manual_seed(0)
    x = song(bars=2)  # 16 s, boundaries at 4, 8, 12 s
    policy = SectionPolicy(kernel_beats=4, min_section_beats=4)
    analysis = detect_sections(x, policy)
    chain = Chain.pretrained()
    cond = Conditioning(genre="pop")
    with torch.no_grad():
        on = master_with_sections(chain, x.unsqueeze(0), cond, analysis, policy).audio[0]
        off = chain(x.unsqueeze(0), cond).audio[0]
    return x, analysis, on, off


def test_section_policy_chorus_wider_and_brighter(rendered):
    x, analysis, on, off = rendered
    assert [round(b) for b in analysis.boundaries_s] == [4, 8, 12]
    assert [s.level for s in analysis.sections] == [-1, 1, -1, 1]

    def deltas(y):  # (width change, HF change) of the master over its input, per section
        out = []
        for s in analysis.sections:
            a, b = int((s.start_s + 0.5) * SR), int((s.end_s - 0.5) * SR)
            out.append(
                (_width_db(y[:, a:b]) - _width_db(x[:, a:b]), _hf_db(y[:, a:b]) - _hf_db(x[:, a:b]))
            )
        return np.array(out)

    d_on, d_off = deltas(on), deltas(off)
    # Chorus minus verse, with sections on vs one setting (policy: +0.4 width, +0.3 brightness
    # per level unit; measured about +2.3 dB of width and +1.4 dB of highs).
    lift_on = d_on[[1, 3]].mean(0) - d_on[[0, 2]].mean(0)
    lift_off = d_off[[1, 3]].mean(0) - d_off[[0, 2]].mean(0)
    assert lift_on[0] - lift_off[0] > 1.0, (lift_on, lift_off)
    assert lift_on[1] - lift_off[1] > 0.5, (lift_on, lift_off)


def test_sections_keep_loudness_and_true_peak(rendered):
    _, _, on, off = rendered
    for y in (on, off):
        m = measure(y)
        assert m.integrated_lufs == pytest.approx(-14.0, abs=0.05)
        assert m.true_peak_dbtp <= -1.0 + 1e-3
        assert torch.isfinite(y).all()
    # No clicks: the largest sample step is not beyond what the one-setting master has.
    assert float(on.diff(dim=-1).abs().max()) <= 1.5 * float(off.diff(dim=-1).abs().max())


def test_one_level_equals_one_setting():
    x = part(3, 0.0, bars=1).unsqueeze(0)  # 2 s
    chain = Chain.pretrained()
    cond = Conditioning(genre="rock")
    one = SectionAnalysis(120.0, [], [], [Section(0.0, 2.0, 0, "verse", -14.0)], [])
    with torch.no_grad():
        a = master_with_sections(chain, x, cond, one).audio
        b = chain(x, cond).audio
    assert torch.equal(a, b)


def test_cli_sections_on_reports_them_and_off_does_not(tmp_path):
    src = tmp_path / "song.wav"
    sf.write(src, song(bars=1, levels_db=(-9.0, 0.0, -9.0, 0.0)).T.numpy(), SR, subtype="FLOAT")
    for flag in ("on", "off"):
        rep = tmp_path / f"r_{flag}.json"
        rc = main(
            ["master", str(src), "-o", str(tmp_path / flag), "--sections", flag,
             "--no-retry", "--no-progress", "--report", str(rep)]
        )  # fmt: skip
        assert rc == 0
        r = json.loads(rep.read_text())["files"][0]
        assert r["after"]["integrated_lufs"] == pytest.approx(-14.0, abs=0.05)
        if flag == "on":
            assert "boundaries_s" in r["sections"] and r["sections"]["sections"]
        else:
            assert "sections" not in r
