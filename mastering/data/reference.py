"""Reference masters by a strong conventional chain (route b of the issue): raw corpus songs
mastered with pedalboard's EQ and compressor and a look-ahead true-peak limiter, set per genre
and per song, level-matched to the genre's target loudness, true-peak safe.

The chain (:func:`master_reference`):

1. **Corrective EQ** (pedalboard low shelf 150 Hz, bell 2.5 kHz, high shelf 6 kHz): the raw
   mix's long-term spectrum is measured in four bands (pink-compensated levels relative to
   500 Hz-2 kHz) and 80% of the difference to a target balance is applied (clamped to ±9 dB).
   The target is a typical commercial balance (:data:`TARGET_BANDS_DB`) shifted by the genre's
   ``warmth``/``mids``/``brightness`` macros.
2. **Width**: the side channel is scaled so the side-to-mid ratio reaches
   ``-12 + 4·width`` dB (genre ``width`` macro), within ×0.25..×4.
3. **Compressor** (pedalboard): threshold relative to the mix's loudness, ratio from the
   genre's ``glue``, attack from its ``punch``.
4. **Limiter**: the look-ahead true-peak limiter of :mod:`mastering.dsp.dynamics` (3 ms
   look-ahead, 4x oversampled sidechain, ceiling 0.1 dB under ``ceiling_dbtp``, release from
   the genre's ``drive``), its input gain found by secant iteration so the integrated
   loudness lands on the target (within 0.05 LU). Both are measured with
   :mod:`mastering.loudness`. pedalboard's ``Limiter`` is not used: it is JUCE's limiter
   without look-ahead followed by a hard clip at 0 dBFS, and on the corpus it left 1-2.5% of
   the samples of loud masters in flat-topped runs, with true peaks up to 4 dB over the
   sample peaks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mastering import SAMPLE_RATE
from mastering.conditioning import GENRE_MACROS, MACRO_INDEX
from mastering.dsp import from_mid_side, side_to_mid_ratio_db, to_mid_side
from mastering.dsp.dynamics import limit, limiter_chunk, lookahead_samples
from mastering.errors import LacquerError
from mastering.loudness import integrated_loudness, true_peak

#: Integrated loudness targets of the reference masters, LUFS.
GENRE_TARGET_LUFS: dict[str, float] = {
    "pop": -10.0, "rock": -10.0, "metal": -9.0, "edm": -8.5, "hiphop": -9.5, "jazz": -15.0,
    "lofi": -13.0, "ambient": -16.0, "synthwave": -11.0, "ballad": -13.0, "classical": -18.0,
    "cinematic": -14.0, "folk": -14.0, "unknown": -12.0,
}  # fmt: skip
#: True-peak ceiling of the reference masters, dBTP.
CEILING_DBTP = -1.0
#: Look-ahead of the reference limiter, ms; largest input gain it is driven with, dB.
LOOKAHEAD_MS = 3.0
MAX_LIMITER_GAIN_DB = 30.0
#: Bands (Hz) of the balance measurement; levels are relative to the 500 Hz-2 kHz band.
BANDS_HZ = {
    "low": (40.0, 150.0),
    "mid": (500.0, 2000.0),
    "presence": (2000.0, 5000.0),
    "air": (5000.0, 14000.0),
}
#: Target pink-compensated band levels relative to "mid", dB (before the genre macros).
TARGET_BANDS_DB = {"low": 2.0, "presence": -3.0, "air": -6.0}


class ReferenceError(LacquerError):
    """The reference chain cannot master this audio (silent, or the target is unreachable)."""


@dataclass(frozen=True)
class ReferenceSettings:
    """What :func:`master_reference` did to one song (dB, Hz, ms, LUFS, dBTP)."""

    genre: str
    low_shelf_db: float
    presence_db: float
    high_shelf_db: float
    side_gain: float
    comp_threshold_db: float
    comp_ratio: float
    comp_attack_ms: float
    comp_release_ms: float
    limiter_gain_db: float
    limiter_release_ms: float
    target_lufs: float
    ceiling_dbtp: float
    measured_lufs: float
    measured_true_peak_dbtp: float

    def to_dict(self) -> dict:
        return asdict(self)


def band_levels_db(x: Tensor, n_fft: int = 4096) -> dict[str, float]:
    """Pink-compensated mean levels (dB) of :data:`BANDS_HZ`, relative to the ``mid`` band.

    Args:
        x: ``[2, T]`` at 48 kHz (the channel sum is measured).
    """
    mono = x.to(torch.float64).sum(0)
    frames = mono[: mono.shape[-1] // n_fft * n_fft].reshape(-1, n_fft)
    if frames.shape[0] == 0:
        raise ReferenceError("too short to measure its spectrum")
    win = torch.hann_window(n_fft, dtype=torch.float64)
    power = torch.fft.rfft(frames * win).abs().square().mean(0)
    freqs = torch.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE, dtype=torch.float64)
    level = 10.0 * torch.log10(power * freqs.clamp_min(1.0) + 1e-30)
    out = {}
    for name, (lo, hi) in BANDS_HZ.items():
        sel = (freqs >= lo) & (freqs < hi)
        out[name] = float(level[sel].mean())
    mid = out["mid"]
    return {k: v - mid for k, v in out.items() if k != "mid"}


def _macro(genre: str, name: str) -> float:
    return GENRE_MACROS.get(genre, GENRE_MACROS["unknown"])[MACRO_INDEX[name]]


def _run_board(board, x: np.ndarray) -> np.ndarray:
    return board(x, SAMPLE_RATE, reset=True).astype(np.float32)


def limit_to_target(
    pre: Tensor, target_lufs: float, ceiling_dbtp: float, release_ms: float
) -> tuple[float, Tensor]:
    """Input gain (dB) and output of the look-ahead true-peak limiter whose integrated
    loudness is ``target_lufs`` (within 0.05 LU): secant iteration on the gain; the
    oversampled sidechain is prepared once (:func:`limiter_chunk`), so each step is cheap."""
    D = lookahead_samples(LOOKAHEAD_MS)
    chunk = limiter_chunk(F.pad(pre, (0, D)).unsqueeze(0), D, None)

    def run(gain_db: float) -> tuple[Tensor, float]:
        y = limit(chunk, ceiling_dbtp, release_ms, gain_db)[0][0, :, D:]
        return y, float(integrated_loudness(y))

    gain = target_lufs - float(integrated_loudness(pre))
    y, lufs = run(gain)
    prev: tuple[float, float] | None = None
    for _ in range(12):
        err = target_lufs - lufs
        if abs(err) < 0.05:
            return gain, y
        slope = 1.0
        if prev is not None and abs(gain - prev[0]) > 1e-6:
            slope = min(1.0, max(0.05, (lufs - prev[1]) / (gain - prev[0])))
        prev = (gain, lufs)
        gain = gain + err / slope
        if gain > MAX_LIMITER_GAIN_DB:
            break
        y, lufs = run(gain)
    raise ReferenceError(
        f"cannot reach {target_lufs} LUFS under {ceiling_dbtp} dBTP (reached {lufs:.2f} LUFS)"
    )


def master_reference(
    raw: Tensor,
    genre: str,
    target_lufs: float | None = None,
    *,
    ceiling_dbtp: float = CEILING_DBTP,
) -> tuple[Tensor, ReferenceSettings]:
    """Master ``raw`` ``[2, T]`` (48 kHz) with the per-genre reference chain.

    Args:
        raw: the raw mix.
        genre: a :data:`mastering.conditioning.GENRES` name (sets EQ/width/compression).
        target_lufs: integrated loudness of the result (default :data:`GENRE_TARGET_LUFS`).
        ceiling_dbtp: true-peak ceiling in dBTP (4x oversampled meter).

    Returns:
        ``(master [2, T] float32, settings)``; the master's loudness is ``target_lufs``
        (within 0.1 LU) and its true peak at most ``ceiling_dbtp``.

    Raises:
        ReferenceError: silent input, or the target cannot be reached under the ceiling.
    """
    import pedalboard as pb

    target = GENRE_TARGET_LUFS.get(genre, -12.0) if target_lufs is None else float(target_lufs)
    x = raw.to(torch.float32)
    lufs_in = float(integrated_loudness(x))
    if not math.isfinite(lufs_in):
        raise ReferenceError("the raw mix is silent")
    # 1. corrective EQ toward the genre's balance
    bands = band_levels_db(x)
    want = {
        "low": TARGET_BANDS_DB["low"] + 3.0 * _macro(genre, "warmth"),
        "presence": TARGET_BANDS_DB["presence"] + 2.0 * _macro(genre, "mids"),
        "air": TARGET_BANDS_DB["air"] + 3.0 * _macro(genre, "brightness"),
    }
    gain = {k: float(np.clip(0.8 * (want[k] - bands[k]), -9.0, 9.0)) for k in want}
    # 2. width toward the genre's side/mid ratio
    ratio_db = float(side_to_mid_ratio_db(x))
    width_target = -12.0 + 4.0 * _macro(genre, "width")
    side_gain = float(np.clip(10.0 ** ((width_target - ratio_db) / 20.0), 0.25, 4.0))
    ms = to_mid_side(x)
    x = from_mid_side(torch.stack([ms[0], ms[1] * side_gain]))
    # 3. EQ + compressor at a normalized level (-18 LUFS in) so thresholds are relative
    x = x * 10.0 ** ((-18.0 - float(integrated_loudness(x))) / 20.0)
    glue, punch = _macro(genre, "glue"), _macro(genre, "punch")
    release_ms = 150.0 - 60.0 * _macro(genre, "drive")
    comp = {
        "threshold_db": -18.0 + 6.0 - 6.0 * max(glue, 0.0),
        "ratio": 1.5 + 2.5 * max(glue, 0.0),
        "attack_ms": 10.0 + 25.0 * (punch + 1.0) / 2.0,
        "release_ms": 150.0,
    }
    board = pb.Pedalboard(
        [
            pb.LowShelfFilter(cutoff_frequency_hz=150.0, gain_db=gain["low"]),
            pb.PeakFilter(cutoff_frequency_hz=2500.0, gain_db=gain["presence"], q=0.7),
            pb.HighShelfFilter(cutoff_frequency_hz=6000.0, gain_db=gain["air"]),
            pb.Compressor(**comp),
        ]
    )
    pre = torch.from_numpy(_run_board(board, x.numpy()))
    # 4. true-peak limiter, input gain found by secant iteration to land on the target
    drive, master = limit_to_target(pre, target, ceiling_dbtp - 0.1, release_ms)
    m_lufs, m_tp = float(integrated_loudness(master)), float(true_peak(master))
    if m_tp > ceiling_dbtp:  # the limiter guarantees its ceiling; never ship an over
        raise ReferenceError(f"true peak {m_tp:.2f} dBTP above the {ceiling_dbtp} ceiling")
    settings = ReferenceSettings(
        genre=genre,
        low_shelf_db=gain["low"],
        presence_db=gain["presence"],
        high_shelf_db=gain["air"],
        side_gain=side_gain,
        comp_threshold_db=comp["threshold_db"],
        comp_ratio=comp["ratio"],
        comp_attack_ms=comp["attack_ms"],
        comp_release_ms=comp["release_ms"],
        limiter_gain_db=drive,
        limiter_release_ms=release_ms,
        target_lufs=target,
        ceiling_dbtp=ceiling_dbtp,
        measured_lufs=m_lufs,
        measured_true_peak_dbtp=m_tp,
    )
    return master.float(), settings
