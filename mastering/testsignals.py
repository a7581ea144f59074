"""Deterministic test signals: EBU conformance tones and music-like audio.

Used by the loudness tests, the ``analyze`` CLI tests and ``benchmarks/loudness.py``. Levels are
peak levels of the sine in dBFS (a full-scale sine is 0 dBFS), as in EBU Tech 3341/3342.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import signal as sps
from torch import Tensor


def sine(
    frequency_hz: float,
    duration_s: float,
    *,
    sample_rate: int = 48_000,
    level_dbfs: float = 0.0,
    phase_deg: float = 0.0,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """``A sin(2 pi f n / fs + phase)`` with ``A = 10^(level_dbfs / 20)``.

    Returns:
        ``[round(duration_s * sample_rate)]`` samples.
    """
    n = torch.arange(round(duration_s * sample_rate), dtype=torch.float64)
    amp = 10.0 ** (level_dbfs / 20.0)
    w = 2.0 * math.pi * frequency_hz / sample_rate
    return (amp * torch.sin(w * n + math.radians(phase_deg))).to(dtype)


def tone_sequence(
    segments: Sequence[tuple[float, float]],
    *,
    frequency_hz: float = 1000.0,
    sample_rate: int = 48_000,
    channels: int = 2,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Sine segments ``(level_dbfs, duration_s)`` in a row, phase-continuous, on every channel.

    This is how the EBU Tech 3341 / 3342 tone signals are described (e.g. Tech 3341 case 3:
    ``[(-36, 10), (-23, 60), (-36, 10)]`` at 1 kHz, stereo).

    Returns:
        ``[channels, samples]``.
    """
    lengths = [round(d * sample_rate) for _, d in segments]
    gains = torch.cat(
        [
            torch.full((n,), 10.0 ** (lvl / 20.0), dtype=torch.float64)
            for (lvl, _), n in zip(segments, lengths, strict=True)
        ]
    )
    n = torch.arange(gains.numel(), dtype=torch.float64)
    x = gains * torch.sin(2.0 * math.pi * frequency_hz / sample_rate * n)
    return x.to(dtype).unsqueeze(0).expand(channels, -1).contiguous()


def fade(x: Tensor, seconds: float, sample_rate: int = 48_000) -> Tensor:
    """Raised-cosine fade-in and fade-out of ``seconds`` each, along the last axis."""
    n = min(round(seconds * sample_rate), x.shape[-1] // 2)
    if n <= 0:
        return x
    ramp = 0.5 - 0.5 * torch.cos(math.pi * torch.arange(n, dtype=torch.float64) / n)
    env = torch.ones(x.shape[-1], dtype=torch.float64)
    env[:n] = ramp
    env[-n:] = ramp.flip(0)
    return x * env.to(x.dtype)


def _events(rng: np.random.Generator, template: np.ndarray, onsets: np.ndarray, total: int):
    """Sum of ``template`` placed at each onset (sample index), with a random gain per hit."""
    out = np.zeros(total + template.size)
    for onset in onsets:
        out[onset : onset + template.size] += template * rng.uniform(0.7, 1.0)
    return out[:total]


def music_like(
    duration_s: float,
    *,
    sample_rate: int = 48_000,
    channels: int = 2,
    seed: int = 0,
    peak_dbfs: float = -1.0,
    tempo_bpm: float = 120.0,
) -> Tensor:
    """Music-like test audio: chords, bass, filtered-noise drums, sections of varying level.

    * three chord voices (6 harmonics, 1/h amplitudes) changing every bar, re-struck on every beat
      with an exponential decay, panned left/centre/right;
    * a bass voice (root, one octave below) and a kick (pitch-swept sine) on beats 1 and 3;
    * a snare (band-passed noise) on beats 2 and 4 and hi-hats (high-passed noise) on 8ths;
    * 8-bar sections whose level varies by up to 12 dB (cross-faded), and 1 s fades at the ends.

    Deterministic for a given ``seed``; about 1 s of CPU per minute of stereo audio.

    Returns:
        ``[channels, round(duration_s * sample_rate)]`` float32 with sample peak ``peak_dbfs``.
    """
    rng = np.random.default_rng(seed)
    fs = int(sample_rate)
    total = round(duration_s * fs)
    beat = 60.0 / tempo_bpm
    bar_len = round(4 * beat * fs)
    n_bars = -(-total // bar_len)

    # Tonal part, one bar at a time (small arrays, phase-continuous voices): chords on MIDI
    # roots of a I-vi-IV-V-ish progression with random octave per voice, and a bass.
    roots = rng.choice([48, 45, 41, 43, 50, 52], size=n_bars)
    octave = rng.integers(0, 2, size=(n_bars, 3))
    tb = np.arange(bar_len) / fs
    beat_phase = np.mod(tb, beat)
    env = np.exp(-beat_phase / 0.35) * (1.0 - np.exp(-beat_phase / 0.004)) * 0.25
    bass_env = np.exp(-beat_phase / 0.25) * 0.5
    pan_l = [math.cos(p * math.pi / 2) for p in (0.2, 0.5, 0.8)]
    pan_r = [math.sin(p * math.pi / 2) for p in (0.2, 0.5, 0.8)]
    left = np.zeros(n_bars * bar_len)
    right = np.zeros(n_bars * bar_len)
    phase0 = np.zeros(4)
    for b in range(n_bars):
        seg = slice(b * bar_len, (b + 1) * bar_len)
        midis = [roots[b] + iv + 12 * octave[b, v] for v, iv in enumerate((12, 16, 19))]
        for v, midi in enumerate([*midis, roots[b] - 12]):
            freq = 440.0 * 2.0 ** ((midi - 69) / 12.0)
            phase = phase0[v] + 2.0 * np.pi * freq * tb
            phase0[v] = (phase0[v] + 2.0 * np.pi * freq * bar_len / fs) % (2.0 * np.pi)
            if v == 3:
                bass = np.sin(phase) * bass_env
                left[seg] += bass
                right[seg] += bass
                continue
            # Harmonics 1..6 (below 0.45 fs) with 1/h amplitudes by the Chebyshev recurrence
            # sin(h p) = 2 cos(p) sin((h-1) p) - sin((h-2) p).
            two_cos, s_prev, s_cur = 2.0 * np.cos(phase), np.zeros(bar_len), np.sin(phase)
            voice = s_cur.copy()
            for h in range(2, 7):
                if h * freq >= 0.45 * fs:
                    break
                s_prev, s_cur = s_cur, two_cos * s_cur - s_prev
                voice += s_cur / h
            voice *= env
            left[seg] += pan_l[v] * voice
            right[seg] += pan_r[v] * voice
    left, right = left[:total], right[:total]

    # Drums from templates placed at onsets.
    tk = np.arange(int(0.35 * fs)) / fs
    kick = np.sin(2 * np.pi * (45.0 * tk + 60.0 * 0.03 * (1 - np.exp(-tk / 0.03)))) * np.exp(
        -tk / 0.09
    )
    ts = np.arange(int(0.25 * fs)) / fs
    b_snare, a_snare = sps.butter(2, [180.0, 5000.0], btype="bandpass", fs=fs)
    snare = sps.lfilter(b_snare, a_snare, rng.standard_normal(ts.size)) * np.exp(-ts / 0.06)
    th = np.arange(int(0.08 * fs)) / fs
    b_hat, a_hat = sps.butter(2, 7000.0, btype="highpass", fs=fs)
    hat = sps.lfilter(b_hat, a_hat, rng.standard_normal(th.size)) * np.exp(-th / 0.015)
    beats = np.arange(0.0, duration_s, beat)
    beat_no = np.arange(beats.size) % 4
    on = (beats * fs).astype(int)
    drums = 0.9 * _events(rng, kick, on[beat_no % 2 == 0], total)
    drums += 0.6 * _events(rng, snare / np.abs(snare).max(), on[beat_no % 2 == 1], total)
    eighths = (np.arange(0.0, duration_s, beat / 2) * fs).astype(int)
    hats = _events(rng, hat / np.abs(hat).max(), eighths, total)
    left += drums + 0.15 * hats
    right += drums + 0.12 * np.roll(hats, int(0.0007 * fs))

    # Section levels (8 bars each), cross-faded over one beat, and overall fades.
    section = 8 * 4 * beat
    n_sec = math.ceil(duration_s / section) + 1
    levels_db = rng.uniform(-12.0, 0.0, size=n_sec)
    levels_db[0] = 0.0
    xp, fp = [0.0], [levels_db[0]]
    for k in range(1, n_sec):
        xp += [k * section, k * section + beat]
        fp += [levels_db[k - 1], levels_db[k]]
    gain = 10.0 ** (np.interp(np.arange(total) / fs, xp, fp) / 20.0)
    stereo = np.stack([left, right]) * gain
    x = torch.from_numpy(stereo)
    x = fade(x, min(1.0, duration_s / 4), fs)
    if channels == 1:
        x = x.mean(0, keepdim=True)
    elif channels > 2:
        extra = [x.mean(0, keepdim=True) * 0.5 for _ in range(channels - 2)]
        x = torch.cat([x, *extra])
    peak = x.abs().max()
    if peak > 0:
        x = x * (10.0 ** (peak_dbfs / 20.0) / peak)
    return x.to(torch.float32)
