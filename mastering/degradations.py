"""Known degradations of a good master, for training and testing the evaluator.

Each function takes ``x [batch, 2, samples]`` (48 kHz) and a ``severity`` in ``[0, 1]``
(0: nearly transparent, 1: a gross mistake) and returns the degraded audio, loudness-matched
to the input (same integrated loudness, BS.1770) so level alone never tells them apart.
Built from the chain's own DSP kernels (biquads, the look-ahead limiter, stereo helpers).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mastering.dsp.biquad import (
    high_shelf_sos,
    highpass_sos,
    low_shelf_sos,
    lowpass_sos,
    peaking_sos,
)
from mastering.dsp.dynamics import apply_gain_db, lookahead_limiter
from mastering.dsp.iir import sosfilt
from mastering.dsp.smoothing import envelope_follower
from mastering.dsp.stereo import from_mid_side, to_mid_side
from mastering.errors import InvalidParameterError
from mastering.loudness import integrated_loudness

SAMPLE_RATE = 48_000


def _lerp(severity: float, lo: float, hi: float) -> float:
    if not 0.0 <= severity <= 1.0:
        raise InvalidParameterError(f"severity must be within 0..1, got {severity}")
    return lo + (hi - lo) * severity


def match_loudness(y: Tensor, ref: Tensor) -> Tensor:
    """``y`` scaled so its integrated loudness equals ``ref``'s (per song)."""
    diff = integrated_loudness(ref) - integrated_loudness(y)
    diff = torch.nan_to_num(diff, nan=0.0, posinf=0.0, neginf=0.0)
    return apply_gain_db(y, diff.float())


def _filt(x: Tensor, sos: Tensor) -> Tensor:
    return sosfilt(x, sos.reshape(-1, 6).to(x))


def over_compression(x: Tensor, severity: float) -> Tensor:
    """Pushed into a fast look-ahead limiter: +4..+14 dB drive, 20 ms release (flattened
    transients, PLR collapse)."""
    drive = _lerp(severity, 4.0, 14.0)
    y, _, _ = lookahead_limiter(x, -1.0, 144, 20.0, gain_db=drive)
    return match_loudness(y[..., 144:].contiguous(), x[..., :-144])


def harsh_eq(x: Tensor, severity: float) -> Tensor:
    """+3..+10 dB bell at 3.5 kHz (Q 1) and +2..+8 dB high shelf at 6 kHz."""
    sos = torch.stack(
        [
            peaking_sos(3500.0, _lerp(severity, 3.0, 10.0), 1.0),
            high_shelf_sos(6000.0, _lerp(severity, 2.0, 8.0)),
        ]
    )
    return match_loudness(_filt(x, sos), x)


def dull_eq(x: Tensor, severity: float) -> Tensor:
    """-4..-14 dB high shelf at 2.5 kHz and a 4th-order low-pass at 12..4 kHz."""
    fc = _lerp(severity, 12_000.0, 4_000.0)
    sos = torch.stack(
        [
            high_shelf_sos(2500.0, _lerp(severity, -4.0, -14.0)),
            lowpass_sos(fc, 0.5412),
            lowpass_sos(fc, 1.3066),
        ]
    )
    return match_loudness(_filt(x, sos), x)


def muddy_eq(x: Tensor, severity: float) -> Tensor:
    """+4..+12 dB bell at 250 Hz (Q 0.8) and +2..+6 dB low shelf at 120 Hz."""
    sos = torch.stack(
        [
            peaking_sos(250.0, _lerp(severity, 4.0, 12.0), 0.8),
            low_shelf_sos(120.0, _lerp(severity, 2.0, 6.0)),
        ]
    )
    return match_loudness(_filt(x, sos), x)


def phase_problem(x: Tensor, severity: float) -> Tensor:
    """One channel delayed by 0.3..2 ms and partly polarity-inverted (mix of -R, 0..70 %):
    comb filtering and cancellation in mono."""
    d = round(_lerp(severity, 0.3, 2.0) * SAMPLE_RATE / 1000.0)
    flip = _lerp(severity, 0.0, 0.7)
    right = torch.nn.functional.pad(x[:, 1], (d, 0))[..., : x.shape[-1]]
    right = (1.0 - 2.0 * flip) * right
    return match_loudness(torch.stack([x[:, 0], right], 1), x)


def wide_bass(x: Tensor, severity: float) -> Tensor:
    """Side channel boosted +4..+12 dB with its low end kept, plus the bass (< 150 Hz)
    copied into the side channel at 30..100 %: a wide, mono-unsafe low end."""
    ms = to_mid_side(x)
    bass = _filt(ms[:, :1], torch.stack([lowpass_sos(150.0, 0.7071)] * 2))
    side = (
        ms[:, 1:] * 10.0 ** (_lerp(severity, 4.0, 12.0) / 20.0) + _lerp(severity, 0.3, 1.0) * bass
    )
    return match_loudness(from_mid_side(torch.cat([ms[:, :1], side], 1)), x)


def distortion(x: Tensor, severity: float) -> Tensor:
    """Naive (not oversampled) tanh saturation with +6..+24 dB drive: harmonics and aliasing."""
    g = 10.0 ** (_lerp(severity, 6.0, 24.0) / 20.0)
    peak = x.abs().amax((-1, -2), keepdim=True).clamp(min=1e-9)
    return match_loudness(torch.tanh(g * x / peak) * peak, x)


def clipping(x: Tensor, severity: float) -> Tensor:
    """+2..+12 dB of gain into a hard clip at -1 dBFS (flat tops, aliasing)."""
    g = 10.0 ** (_lerp(severity, 2.0, 12.0) / 20.0)
    c = 10.0 ** (-1.0 / 20.0)
    return match_loudness((x * g).clamp(-c, c), x)


def pumping(x: Tensor, severity: float) -> Tensor:
    """The whole mix ducked by its own bass (< 150 Hz) envelope, 3..12 dB per 6 dB of bass
    level above its median, 1 ms attack / 80 ms release (sidechain pumping)."""
    m = x.mean(1, keepdim=True)
    low = _filt(m, torch.stack([lowpass_sos(150.0, 0.7071)] * 2))[:, 0]
    level = 20.0 * torch.log10(low.abs() + 1e-9)
    over = (level - level.median(-1, keepdim=True).values).clamp(min=0.0)
    duck = over * _lerp(severity, 3.0, 12.0) / 6.0
    b = x.shape[0]
    env = envelope_follower(
        duck, torch.full((b,), 1.0), torch.full((b,), 80.0), SAMPLE_RATE, mode="decoupled"
    )
    return match_loudness(apply_gain_db(x, -env.clamp(max=24.0)), x)


def dc_offset(x: Tensor, severity: float) -> Tensor:
    """A DC offset of -40..-20 dBFS added to both channels (not loudness-matched: DC is
    removed by the K-weighting anyway)."""
    return x + 10.0 ** (_lerp(severity, -40.0, -20.0) / 20.0)


def rumble(x: Tensor, severity: float) -> Tensor:
    """High-passed signal removed: a 2nd-order high-pass at 150..600 Hz (thin, no bass)."""
    return match_loudness(_filt(x, highpass_sos(_lerp(severity, 150.0, 600.0), 0.7071)), x)


#: Name -> degradation, for training and tests.
DEGRADATIONS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "over_compression": over_compression,
    "harsh_eq": harsh_eq,
    "dull_eq": dull_eq,
    "muddy_eq": muddy_eq,
    "thin_eq": rumble,
    "phase_problem": phase_problem,
    "wide_bass": wide_bass,
    "distortion": distortion,
    "clipping": clipping,
    "pumping": pumping,
    "dc_offset": dc_offset,
}


def degrade(x: Tensor, name: str, severity: float) -> Tensor:
    """Apply degradation ``name`` (a key of :data:`DEGRADATIONS`) at ``severity`` 0..1."""
    if name not in DEGRADATIONS:
        raise InvalidParameterError(
            f"unknown degradation {name!r}; valid: {', '.join(DEGRADATIONS)}"
        )
    with torch.no_grad():
        return DEGRADATIONS[name](x, severity)
