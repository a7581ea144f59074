"""Self-supervised "de-mastering" (route a of the issue): take well-mastered audio, undo
mastering at random, and train the chain to restore the original.

:func:`draw_demaster` draws a :class:`DemasterParams` from a generator; :func:`demaster`
applies it, in this order, with the :mod:`mastering.dsp` kernels:

1. **band-limiting**: a 4th-order Butterworth low-pass at ``lowpass_hz`` (or none);
2. **EQ tilt**: a low shelf of ``-tilt_db / 2`` at 200 Hz and a high shelf of ``+tilt_db / 2`` at
   4 kHz (negative tilt: darker);
3. **upward expansion**: where the envelope (decoupled peak detector, 5 ms attack / 80 ms
   release, linked stereo) is above ``threshold_db``, the gain rises by
   ``(expansion_ratio - 1)`` dB per dB above it (at most ``max_expansion_db``), so the
   loud, compressed passages get their peaks back (crest factor and loudness range grow);
4. **narrowing**: the side channel times ``side_gain`` (< 1);
5. **level change**: ``level_db`` (negative: quieter, like an unmastered mix).

The training pair is ``(demaster(x, params), x)``: raw-like input, mastered target. Every
parameter is returned so losses or analyses can use it. :func:`write_demastered_pairs` does
this for the masters of a pair manifest (e.g. the corpus's reference masters, or any
well-mastered music) and writes a pair manifest for :mod:`mastering.data.pairs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mastering.data.pairs import PairRecord, write_pair_manifest
from mastering.dsp import (
    envelope_follower,
    from_mid_side,
    high_shelf_sos,
    low_shelf_sos,
    lowpass_sos,
    sosfilt,
    to_mid_side,
)
from mastering.dsp.dynamics import amplitude_to_db, apply_gain_db
from mastering.io import read_audio, write_audio
from mastering.loudness import integrated_loudness


@dataclass(frozen=True)
class DemasterParams:
    """One random inverse processing (units in the names; see the module docstring).

    Attributes:
        tilt_db: high-minus-low tilt in dB (negative: darker).
        expansion_ratio: upward expansion slope above the threshold (1: none).
        threshold_db: expansion threshold in dBFS of the envelope.
        max_expansion_db: cap on the expansion gain in dB.
        side_gain: side-channel gain (1: unchanged, < 1: narrower).
        lowpass_hz: band-limit corner in Hz, or ``None``.
        level_db: final gain in dB.
    """

    tilt_db: float = 0.0
    expansion_ratio: float = 1.0
    threshold_db: float = -20.0
    max_expansion_db: float = 12.0
    side_gain: float = 1.0
    lowpass_hz: float | None = None
    level_db: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def draw_demaster(rng: np.random.Generator) -> DemasterParams:
    """Random de-mastering parameters: tilt ±6 dB, expansion ratio 1.1-2.0 above a threshold
    8-16 dB under the peak, side gain 0.35-1.0, a 6-16 kHz band limit half of the time, and a
    level change of -12..-2 dB."""
    return DemasterParams(
        tilt_db=float(rng.uniform(-6.0, 6.0)),
        expansion_ratio=float(rng.uniform(1.1, 2.0)),
        threshold_db=float(rng.uniform(-16.0, -8.0)),
        side_gain=float(rng.uniform(0.35, 1.0)),
        lowpass_hz=float(rng.uniform(6000.0, 16000.0)) if rng.random() < 0.5 else None,
        level_db=float(rng.uniform(-12.0, -2.0)),
    )


def expansion_gain_db(x: Tensor, p: DemasterParams) -> Tensor:
    """Upward-expansion gain curve ``[..., T]`` in dB for ``x`` ``[..., 2, T]`` (linked)."""
    detector = x.abs().amax(-2)
    env_db = amplitude_to_db(envelope_follower(detector, 5.0, 80.0, mode="decoupled"))
    over = (env_db - p.threshold_db).clamp_min(0.0)
    return (over * (p.expansion_ratio - 1.0)).clamp_max(p.max_expansion_db)


def demaster(x: Tensor, p: DemasterParams) -> Tensor:
    """Apply ``p`` to mastered audio ``x`` ``[2, T]`` or ``[B, 2, T]`` (48 kHz); same shape.

    The peak level of the expanded signal is restored before the level change, so
    ``level_db`` is the change of the peak-normalized result.
    """
    squeeze = x.dim() == 2
    y = (x.unsqueeze(0) if squeeze else x).to(torch.float64)
    rows = [low_shelf_sos(200.0, -p.tilt_db / 2.0), high_shelf_sos(4000.0, p.tilt_db / 2.0)]
    if p.lowpass_hz is not None:
        rows += [lowpass_sos(p.lowpass_hz, 0.54), lowpass_sos(p.lowpass_hz, 1.31)]
    y = sosfilt(y, torch.stack(rows).to(torch.float64))
    if p.expansion_ratio != 1.0:
        peak = y.abs().amax(dim=(-2, -1), keepdim=True)
        y = apply_gain_db(y, expansion_gain_db(y, p))
        y = y * (peak / y.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12))
    ms = to_mid_side(y)
    y = from_mid_side(torch.stack([ms[:, 0], ms[:, 1] * p.side_gain], dim=1))
    y = y * 10.0 ** (p.level_db / 20.0)
    y = y.to(x.dtype)
    return y[0] if squeeze else y


def write_demastered_pairs(
    masters: Sequence[PairRecord], out: str | Path, manifest: str | Path, *, seed: int = 0
) -> list[PairRecord]:
    """Route (a) as files: de-master each record's ``mastered_path`` into ``out/`` and write a
    pair manifest (de-mastered -> original master).

    Each song gets its own parameters (drawn from ``(seed, index)``), recorded as ``dm_*``
    extras of its row; genre, tempo, balance and split are kept, and ``target_lufs`` is the
    master's measured loudness. The raw side is written as 32-bit float WAV.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, rec in enumerate(masters):
        master, _ = read_audio(rec.mastered_path)
        params = draw_demaster(np.random.default_rng([int(seed), i]))
        raw = demaster(master, params)
        path = write_audio(out / f"{rec.mastered_path.stem}_demastered.wav", raw, format="wav32f")
        extras = {**rec.extras, "route": "demaster"}
        extras.update({f"dm_{k}": v for k, v in params.to_dict().items()})
        records.append(
            replace(
                rec,
                raw_path=path,
                target_lufs=float(integrated_loudness(master)),
                extras=extras,
            )
        )
    write_pair_manifest(records, manifest)
    return records
