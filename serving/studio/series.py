"""The series the studio page plots: long-term spectrum and loudness over time of the input
and of the master, measured with the :mod:`mastering` kernels (:func:`stft_power` and
:func:`band_matrix` of :mod:`mastering.features`, :func:`momentary_loudness` of
:mod:`mastering.loudness`)."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from mastering import SAMPLE_RATE
from mastering.features import band_centers, band_matrix, stft_power
from mastering.loudness import momentary_loudness

#: Log-spaced bands of the long-term spectrum (30 Hz .. 18 kHz).
SPECTRUM_BANDS = 64
#: FFT frame of the spectrum, samples (2.9 Hz bins: every low band holds some).
SPECTRUM_FFT = 16384
#: Momentary loudness: 400 ms windows every 100 ms (BS.1770); value j is centred here.
MOMENTARY_HOP_S, MOMENTARY_WINDOW_S = 0.1, 0.4
#: Most points of a loudness curve (longer songs are decimated).
MAX_POINTS = 1200


def _rounded(values: Tensor, digits: int = 2) -> list[float | None]:
    """JSON-safe floats (``None`` where not finite, e.g. silence at -inf LUFS)."""
    return [round(v, digits) if math.isfinite(v) else None for v in values.tolist()]


@functools.cache
def _band_weights() -> Tensor:
    """rfft bins to spectrum bands, ``[SPECTRUM_BANDS, bins]``."""
    return band_matrix(SPECTRUM_FFT, SAMPLE_RATE, SPECTRUM_BANDS)


def long_term_spectrum_db(audio: Tensor) -> list[float | None]:
    """Long-term power spectrum of ``audio [2, samples]`` (48 kHz), dB per band (mean power of
    both channels, Hann-windowed frames averaged over time) on :func:`spectrum_hz`'s bands."""
    with torch.no_grad():
        p = (
            stft_power(audio.unsqueeze(0).float(), SPECTRUM_FFT, SPECTRUM_FFT // 2).mean(-1).mean(1)
        )  # [1, bins]
        bands = p @ _band_weights().to(p.device).T
        return _rounded(10.0 * torch.log10(bands[0] + 1e-12).cpu())


def spectrum_hz() -> list[float]:
    """Centre frequencies of the spectrum bands, Hz."""
    return [round(f, 1) for f in band_centers(SPECTRUM_BANDS).tolist()]


def loudness_over_time(audio: Tensor, mono: bool = False) -> dict[str, list]:
    """Momentary loudness (LUFS) of ``audio [2, samples]`` (48 kHz) against window centre
    times (seconds). ``mono``: measured on one channel, as BS.1770 does for a mono source."""
    with torch.no_grad():
        x = audio[:1] if mono else audio
        lufs = momentary_loudness(x.float(), SAMPLE_RATE).cpu()
    step = max(1, math.ceil(lufs.numel() / MAX_POINTS))
    idx = torch.arange(0, lufs.numel(), step)
    t = idx.double() * MOMENTARY_HOP_S + MOMENTARY_WINDOW_S / 2
    return {"t_s": [round(v, 2) for v in t.tolist()], "lufs": _rounded(lufs[idx])}


def studio_series(before: Tensor, after: Tensor, mono: bool = False) -> dict[str, Any]:
    """Spectra (dB on ``hz`` bands) and momentary loudness (LUFS over seconds) of the input
    ``before`` and the master ``after``, both ``[2, samples]`` at 48 kHz."""
    return {
        "spectrum_hz": spectrum_hz(),
        **{
            name: {
                "spectrum_db": long_term_spectrum_db(audio),
                "loudness": loudness_over_time(audio, mono),
            }
            for name, audio in (("before", before.detach().cpu()), ("after", after.detach().cpu()))
        },
    }
