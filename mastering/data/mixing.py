"""Raw mixes the way generators deliver them: random part levels (parts loudness-normalized, then
random gains), uneven tonal balance, odd
stereo width and a loudness anywhere within ±``spread_lu`` of a centre; never limited.

:func:`draw_mix` draws a :class:`MixSettings` from a generator; :func:`mix_stems` applies it
with the :mod:`mastering.dsp` kernels (RBJ shelves/bells/low-pass and a 15 Hz Butterworth
high-pass through :func:`mastering.dsp.sosfilt`, mid/side width through
:mod:`mastering.dsp.stereo`) and levels the result with the BS.1770 meter of
:mod:`mastering.loudness`. The mix is float and may peak above 0 dBFS (raw, not limited).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from mastering.dsp import (
    BUTTERWORTH_Q,
    from_mid_side,
    high_shelf_sos,
    highpass_sos,
    low_shelf_sos,
    lowpass_sos,
    peaking_sos,
    sosfilt,
    to_mid_side,
)
from mastering.loudness import integrated_loudness

#: Nominal part levels in dB before the random offsets.
BASE_LEVELS_DB = {
    "drums": 0.0,
    "bass": -2.0,
    "chords": -5.0,
    "pad": -9.0,
    "lead": -6.0,
    "vocal": -1.0,
}
#: Loudness every part is normalized to before its gain, LUFS.
STEM_LUFS = -23.0
#: The mix's DC/rumble high-pass corner in Hz (FluidR3 presets carry DC offsets).
HIGHPASS_HZ = 15.0


@dataclass(frozen=True)
class MixSettings:
    """One raw mix's processing.

    Attributes:
        stem_gains_db: gain per part in dB. vocal_pan: -1 (left) .. 1 (right) for the mono
            vocal (constant-power law).
        low_shelf_hz, low_shelf_db: low shelf (Hz, dB). mid_hz, mid_db, mid_q: a bell.
        high_shelf_hz, high_shelf_db: high shelf (Hz, dB).
        lowpass_hz: band-limiting corner in Hz (24 dB/octave), or ``None``.
        low_cut_hz: an extra thin-sounding low cut in Hz (12 dB/octave), or ``None``.
        side_gain: side-channel gain (below 1: narrow, above 1: over-wide).
        target_lufs: integrated loudness of the mix in LUFS.
    """

    stem_gains_db: Mapping[str, float]
    vocal_pan: float
    low_shelf_hz: float
    low_shelf_db: float
    mid_hz: float
    mid_db: float
    mid_q: float
    high_shelf_hz: float
    high_shelf_db: float
    lowpass_hz: float | None
    low_cut_hz: float | None
    side_gain: float
    target_lufs: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stem_gains_db"] = dict(self.stem_gains_db)
        return d


def draw_mix(
    rng: np.random.Generator,
    stems: tuple[str, ...],
    *,
    centre_lufs: float = -18.0,
    spread_lu: float = 6.0,
    level_spread_db: float = 6.0,
) -> MixSettings:
    """Random raw-mix settings.

    Args:
        rng: the song's generator.
        stems: part names present.
        centre_lufs: loudness centre in LUFS; the target is uniform in ±``spread_lu``.
        level_spread_db: each part's gain is its :data:`BASE_LEVELS_DB` ± this (uniform).
    """
    gains = {
        s: BASE_LEVELS_DB.get(s, -6.0) + float(rng.uniform(-1, 1)) * level_spread_db for s in stems
    }
    width_kind = rng.choice(["narrow", "natural", "wide"], p=[0.4, 0.2, 0.4])
    side = {
        "narrow": rng.uniform(0.15, 0.6),
        "natural": rng.uniform(0.8, 1.2),
        "wide": rng.uniform(1.5, 2.6),
    }[str(width_kind)]
    return MixSettings(
        stem_gains_db=gains,
        vocal_pan=float(rng.uniform(-0.3, 0.3)),
        low_shelf_hz=float(rng.uniform(80, 250)),
        low_shelf_db=float(rng.uniform(-8, 8)),
        mid_hz=float(math.exp(rng.uniform(math.log(300), math.log(4000)))),
        mid_db=float(rng.uniform(-6, 6)),
        mid_q=float(rng.uniform(0.5, 2.0)),
        high_shelf_hz=float(rng.uniform(3000, 9000)),
        high_shelf_db=float(rng.uniform(-9, 5)),
        lowpass_hz=float(rng.uniform(7000, 16000)) if rng.random() < 0.35 else None,
        low_cut_hz=float(rng.uniform(40, 120)) if rng.random() < 0.2 else None,
        side_gain=float(side),
        target_lufs=float(centre_lufs + rng.uniform(-spread_lu, spread_lu)),
    )


def tone_sos(s: MixSettings) -> Tensor:
    """The mix's filter cascade ``[n_sections, 6]`` (float64): 15 Hz high-pass (2 sections),
    shelves, bell and the optional cuts."""
    rows = [
        highpass_sos(HIGHPASS_HZ),
        highpass_sos(HIGHPASS_HZ),
        low_shelf_sos(s.low_shelf_hz, s.low_shelf_db),
        peaking_sos(s.mid_hz, s.mid_db, s.mid_q),
        high_shelf_sos(s.high_shelf_hz, s.high_shelf_db),
    ]
    if s.lowpass_hz is not None:
        rows += [lowpass_sos(s.lowpass_hz, 0.54), lowpass_sos(s.lowpass_hz, 1.31)]
    if s.low_cut_hz is not None:
        rows.append(highpass_sos(s.low_cut_hz, BUTTERWORTH_Q))
    return torch.stack(rows).to(torch.float64)


def pan_mono(x: Tensor, pan: float) -> Tensor:
    """Constant-power pan of ``[2, T]`` (its mid) to ``pan`` in -1..1; centre keeps the level."""
    mono = x.mean(0)
    angle = (pan + 1.0) * math.pi / 4.0
    return torch.stack([mono * math.cos(angle), mono * math.sin(angle)]) * math.sqrt(2.0)


def normalized_stems(stems: Mapping[str, Tensor], s: MixSettings) -> dict[str, Tensor]:
    """Each part (vocal panned) at :data:`STEM_LUFS` times its gain: ``[2, T]`` float64.

    Parts are loudness-normalized first so that ``stem_gains_db`` are relative part levels
    whatever the renderer's output level; a silent part stays silent.
    """
    names = list(stems)
    x = torch.stack([stems[k].to(torch.float64) for k in names])
    for i, k in enumerate(names):
        if k == "vocal":
            x[i] = pan_mono(x[i], s.vocal_pan)
    lufs = integrated_loudness(x.float())
    out = {}
    for i, k in enumerate(names):
        norm = STEM_LUFS - float(lufs[i]) if math.isfinite(float(lufs[i])) else 0.0
        out[k] = x[i] * 10.0 ** ((norm + s.stem_gains_db[k]) / 20.0)
    return out


def process_bus(total: Tensor, s: MixSettings) -> tuple[Tensor, float]:
    """The mix-bus processing of a summed ``[2, T]`` mix: tone cascade, width, loudness to
    ``s.target_lufs``. Returns ``(mix [2, T] float32, measured LUFS)``."""
    y = sosfilt(total.to(torch.float64).unsqueeze(0), tone_sos(s))[0]
    ms = to_mid_side(y)
    y = from_mid_side(torch.stack([ms[0], ms[1] * s.side_gain]))
    lufs = float(integrated_loudness(y))
    if not math.isfinite(lufs):
        raise ValueError("the mix is silent")
    y = (y * 10.0 ** ((s.target_lufs - lufs) / 20.0)).float()
    return y, float(integrated_loudness(y))


def mix_stems(stems: Mapping[str, Tensor], s: MixSettings) -> tuple[Tensor, float]:
    """Level, sum and bus-process the parts (:func:`normalized_stems`, :func:`process_bus`).

    Args:
        stems: part name -> ``[2, T]`` float (equal lengths) at 48 kHz.
    """
    if not stems:
        raise ValueError("no stems to mix")
    return process_bus(sum(normalized_stems(stems, s).values()), s)
