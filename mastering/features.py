"""Audio features the controllers, the conditioning estimators and the reports read.

All functions take ``x [batch, 2, samples]`` at 48 kHz (float32) and are differentiable unless
noted. Spectra are power averages over time on logarithmically spaced bands.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Inter-channel correlation is the stereo kernel's, re-exported for controllers and reports.
from mastering.dsp.stereo import correlation as correlation
from mastering.dsp.stereo import to_mid_side
from mastering.stages.base import FRAME_HOP

N_FFT = 4096
HOP = 2048
N_BANDS = 40
F_MIN, F_MAX = 30.0, 18_000.0
_TINY = 1e-10


def band_centers(n_bands: int = N_BANDS, fmin: float = F_MIN, fmax: float = F_MAX) -> Tensor:
    """Log-spaced band centre frequencies in Hz: ``[n_bands]``."""
    return torch.logspace(math.log10(fmin), math.log10(fmax), n_bands, dtype=torch.float64)


def band_matrix(n_fft: int = N_FFT, sample_rate: int = 48_000, n_bands: int = N_BANDS) -> Tensor:
    """Triangular (in log frequency) weights mapping rfft bins to bands: ``[n_bands, bins]``,
    rows normalized to sum 1 (so the result is a mean power per band)."""
    freqs = torch.fft.rfftfreq(n_fft, 1.0 / sample_rate).double()
    centers = band_centers(n_bands)
    logc = centers.log2()
    step = float(logc[1] - logc[0])
    logf = freqs.clamp(min=1.0).log2()
    w = (1.0 - (logf.view(1, -1) - logc.view(-1, 1)).abs() / step).clamp(min=0.0)
    w[:, 0] = 0.0
    return (w / w.sum(-1, keepdim=True).clamp(min=_TINY)).float()


def stft_power(x: Tensor, n_fft: int = N_FFT, hop: int = HOP) -> Tensor:
    """Power spectrogram ``[batch, channels, bins, frames]`` (Hann window, no centring)."""
    b, c, n = x.shape
    flat = x.reshape(b * c, n)
    if n < n_fft:
        flat = torch.nn.functional.pad(flat, (0, n_fft - n))
    win = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(flat, n_fft, hop, window=win, center=False, return_complex=True)
    p = spec.real.square() + spec.imag.square()
    return p.reshape(b, c, *p.shape[-2:]) / win.square().sum()


def mid_side_band_spectrum_db(x: Tensor, n_bands: int = N_BANDS) -> Tensor:
    """Long-term mid and side spectra in dB per log band: ``[batch, 2 (mid, side), n_bands]``."""
    p = stft_power(to_mid_side(x)).mean(-1)  # [b, 2 (mid, side), bins]
    bands = p @ band_matrix(n_bands=n_bands).to(x.device, x.dtype).T
    return 10.0 * torch.log10(bands + _TINY)


def normalized_tilt_db(spectrum_db: Tensor) -> Tensor:
    """A band spectrum with its power-weighted mean level removed (so only the shape remains)."""
    ref = 10.0 * torch.log10(torch.pow(10.0, spectrum_db / 10.0).mean(-1, keepdim=True) + _TINY)
    return spectrum_db - ref


def spectral_tilt_db_per_octave(x: Tensor) -> Tensor:
    """Slope of the mid long-term spectrum over 100 Hz-10 kHz, dB per octave: ``[batch]``."""
    spec = mid_side_band_spectrum_db(x)[:, 0]
    octv = band_centers().log2().to(x.device, x.dtype)
    sel = (band_centers() > 100) & (band_centers() < 10_000)
    o = octv[sel.to(x.device)]
    s = spec[:, sel.to(x.device)]
    o = o - o.mean()
    return (s - s.mean(-1, keepdim=True)) @ o / o.square().sum()


def spectral_centroid_hz(x: Tensor) -> Tensor:
    """Power-weighted mean frequency of the mono sum, Hz: ``[batch]``."""
    p = stft_power(x.mean(1, keepdim=True)).mean(-1)[:, 0]  # [b, bins]
    f = torch.fft.rfftfreq(N_FFT, 1 / 48_000).to(x.device, x.dtype)
    return (p * f).sum(-1) / p.sum(-1).clamp(min=_TINY)


def frame_rms_db(x: Tensor, hop: int = FRAME_HOP) -> Tensor:
    """RMS of the channel mean in non-overlapping frames of ``hop`` samples, dBFS:
    ``[batch, frames]`` (a last partial frame is padded with zeros)."""
    m = x.mean(1)
    pad = (-m.shape[-1]) % hop
    m = torch.nn.functional.pad(m, (0, pad))
    ms = m.reshape(m.shape[0], -1, hop).square().mean(-1)
    return 10.0 * torch.log10(ms + _TINY)


def crest_factor_db(x: Tensor) -> Tensor:
    """Peak over RMS of the whole signal, dB: ``[batch]``."""
    peak = x.abs().amax(dim=(1, 2))
    rms = x.square().mean(dim=(1, 2)).sqrt()
    return 20.0 * torch.log10((peak + _TINY) / (rms + _TINY))


# -- estimators for missing conditioning (not differentiable, run under no_grad) ----------


def onset_envelope(x: Tensor, hop: int = FRAME_HOP) -> Tensor:
    """Spectral-flux onset strength of the mono sum at ``48000/hop`` Hz: ``[batch, frames]``."""
    mono = x.mean(1)
    n_fft = 2048
    if mono.shape[-1] < n_fft:
        mono = torch.nn.functional.pad(mono, (0, n_fft - mono.shape[-1]))
    win = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(mono, n_fft, hop, window=win, center=True, return_complex=True).abs()
    bands = band_matrix(n_fft, n_bands=24).to(x.device, x.dtype) @ spec
    logb = torch.log1p(1000.0 * bands)
    flux = (logb[..., 1:] - logb[..., :-1]).clamp(min=0).sum(1)
    flux = flux - flux.mean(-1, keepdim=True)
    return torch.nn.functional.pad(flux, (1, 0))


@torch.no_grad()
def estimate_tempo(x: Tensor, hop: int = FRAME_HOP) -> Tensor:
    """Tempo in BPM by onset-envelope autocorrelation: ``[batch]``.

    The autocorrelation over lags of 60-200 BPM is weighted by a log-normal prior centred at
    120 BPM (one octave wide) to settle octave ambiguity; the peak lag is refined by parabolic
    interpolation. Signals shorter than ~3 s or without onsets give 120 BPM.
    """
    env = onset_envelope(x, hop)
    fps = 48_000 / hop
    n = env.shape[-1]
    out = torch.full((x.shape[0],), 120.0, device=x.device)
    if n < 3 * fps:
        return out
    spec = torch.fft.rfft(env, 2 * n)
    ac = torch.fft.irfft(spec.abs().square(), 2 * n)[..., :n]
    lags = torch.arange(n, device=x.device, dtype=x.dtype)
    bpm = 60.0 * fps / lags.clamp(min=1)
    valid = (bpm >= 60) & (bpm <= 200)
    weight = torch.exp(-0.5 * (torch.log2(bpm / 120.0) / 1.0) ** 2) * valid
    score = ac * weight
    best = score.argmax(-1)
    for i in range(x.shape[0]):
        k = int(best[i])
        if ac[i, 0] <= 0 or not valid[k]:
            continue
        a, b, c = (float(score[i, j]) for j in (k - 1, k, k + 1))
        denom = a - 2 * b + c
        shift = 0.5 * (a - c) / denom if denom != 0 else 0.0
        out[i] = 60.0 * fps / (k + max(-0.5, min(0.5, shift)))
    return out


@torch.no_grad()
def estimate_energy(x: Tensor) -> Tensor:
    """Perceived energy 0..1: ``[batch]``. Mean of two ramps: short-term loudness level
    (RMS −35..−8 dBFS → 0..1) and onset density (flux per second, saturating)."""
    rms = frame_rms_db(x)
    level = ((rms.quantile(0.9, dim=-1) + 35.0) / 27.0).clamp(0, 1)
    env = onset_envelope(x).clamp(min=0)
    density = (env.mean(-1) / (env.std(-1) + _TINY)).clamp(0, 1)
    return 0.5 * (level + density)


@torch.no_grad()
def estimate_vocal_ratio(x: Tensor) -> Tensor:
    """Share of energy that is centre-panned and in the vocal band (200 Hz-4 kHz) of the
    mid channel, 0..1: ``[batch]``. A heuristic (no source separation): centred vocals and
    other centred mid-range instruments both count."""
    spec = stft_power(to_mid_side(x)).mean(-1)
    f = torch.fft.rfftfreq(N_FFT, 1 / 48_000).to(x.device)
    vocal = (f > 200) & (f < 4000)
    centre = (spec[:, 0] - spec[:, 1]).clamp(min=0)
    return (centre[:, vocal].sum(-1) / spec.sum((1, 2)).clamp(min=_TINY)).clamp(0, 1)
