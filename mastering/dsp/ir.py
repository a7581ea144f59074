"""Functional synthesis and analysis of stereo reverb impulse responses.

:func:`synthesize_ir` builds a stereo IR from a handful of physical parameters, differentiably:

1. two fixed-seed white noises ``n1, n2`` (deterministic: the same IR on every call, device
   and chunk);
2. each noise is split into frequency bands by amplitude-complementary masks on the rfft grid
   (raised-cosine cross-fades one octave wide in log frequency, summing to exactly 1), and
   tilted by a first-order low-pass magnitude ``1 / sqrt(1 + (f / damping_hz)^2)`` (the tone
   of the tail);
3. band ``b`` is multiplied by its envelope ``exp(-6.91 (t - pre_delay) / RT60_b)`` (amplitude;
   the energy falls 60 dB in ``RT60_b``), gated to zero before the pre-delay, with a
   raised-cosine fade-in of ``fade_in_ms`` after it and a raised-cosine fade-out over the last
   quarter of ``tail_s``;
4. the channels are ``L = cos(a) r1 + sin(a) r2``, ``R = cos(a) r1 - sin(a) r2`` with
   ``a = width * pi / 4`` (``r1, r2`` the enveloped noises), so the L/R correlation of the
   tail is ``cos(width * pi / 2)``: 1 (mono) at width 0, 0 (fully decorrelated) at width 1;
5. the IR is normalized to unit energy per channel (``sum(L^2 + R^2) / 2 = 1``), so a
   broadband input comes out of the wet path at about its own level.

Because the noise is filtered circularly before the envelopes are applied, the IR is exactly
causal (zero before the pre-delay). The analysis side (:func:`schroeder_edc_db`,
:func:`estimate_rt60_s`, :func:`band_edc_loss`) measures decay times by Schroeder backward
integration, for tests and for matching a target IR in training.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mastering import SAMPLE_RATE

#: ``ln(1000)``: the amplitude of ``exp(-DECAY_60DB * t / RT60)`` is -60 dB at ``t = RT60``.
DECAY_60DB = 3.0 * math.log(10.0)
#: Default band edges (Hz) of the per-band decay times: 4 bands.
DEFAULT_BAND_EDGES_HZ: tuple[float, ...] = (250.0, 2000.0, 6000.0)
#: Fixed seed of the IR noise.
NOISE_SEED = 20_240_917
#: Fraction of ``tail_s`` over which the IR fades out.
TAIL_FADE_FRACTION = 0.25
_TINY = 1e-12


@functools.lru_cache(maxsize=8)
def _noise_spectrum(length: int, device: str, dtype: torch.dtype) -> Tensor:
    """rfft of two fixed-seed white noises of ``length`` samples: ``[2, length // 2 + 1]``."""
    g = torch.Generator().manual_seed(NOISE_SEED)
    noise = torch.randn(2, length, generator=g, dtype=torch.float64)
    return torch.fft.rfft(noise).to(device=torch.device(device), dtype=_complex(dtype))


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def band_masks(
    freqs_hz: Tensor, edges_hz: Sequence[float], transition_octaves: float = 1.0
) -> Tensor:
    """Amplitude-complementary band masks on a frequency grid.

    Band ``k`` passes ``edges[k-1] .. edges[k]``; each edge is a raised-cosine cross-fade
    ``transition_octaves`` wide (centred on the edge, in log frequency). The masks sum to 1 at
    every frequency.

    Args:
        freqs_hz: ``[K]`` frequencies in Hz (e.g. an rfft grid; 0 Hz belongs to band 0).
        edges_hz: ``N`` ascending band edges in Hz.
        transition_octaves: width of each cross-fade in octaves (edges must be further apart).

    Returns:
        ``[N + 1, K]`` masks in ``[0, 1]``, lowest band first.
    """
    logf = torch.log2(freqs_hz.clamp(min=1e-3))
    highs = []  # fraction of each frequency above edge k
    for edge in edges_hz:
        u = ((logf - math.log2(edge)) / transition_octaves + 0.5).clamp(0.0, 1.0)
        highs.append(0.5 - 0.5 * torch.cos(math.pi * u))
    above = [torch.ones_like(logf), *highs, torch.zeros_like(logf)]
    return torch.stack([above[k] - above[k + 1] for k in range(len(edges_hz) + 1)])


def ir_length(
    pre_delay_ms: Tensor, tail_s: Tensor, sample_rate: int = SAMPLE_RATE, multiple: int = 4096
) -> int:
    """Samples needed for the longest IR of a batch (pre-delay + tail), rounded up to a
    ``multiple`` (a Python int, from detached values)."""
    seconds = float((pre_delay_ms.detach() / 1000.0 + tail_s.detach()).max())
    n = math.ceil(seconds * sample_rate) + 1
    return max(multiple, -(-n // multiple) * multiple)


def synthesize_ir(
    rt60_s: Tensor,
    pre_delay_ms: Tensor,
    tail_s: Tensor,
    damping_hz: Tensor,
    width: Tensor,
    *,
    length: int | None = None,
    band_edges_hz: Sequence[float] = DEFAULT_BAND_EDGES_HZ,
    fade_in_ms: float = 5.0,
    sample_rate: int = SAMPLE_RATE,
) -> Tensor:
    """Stereo reverb impulse response from physical parameters (see the module docstring).

    Args:
        rt60_s: ``[batch, n_bands]`` decay time (-60 dB) per band in seconds,
            ``n_bands = len(band_edges_hz) + 1``, lowest band first.
        pre_delay_ms: ``[batch]`` or ``[batch, 1]`` silence before the tail starts, in ms.
        tail_s: ``[batch]`` or ``[batch, 1]`` tail duration after the pre-delay in seconds (the
            last quarter of it fades out).
        damping_hz: ``[batch]`` or ``[batch, 1]`` corner of the first-order low-pass tilt of the
            tail, in Hz (high-frequency damping: lower is darker).
        width: ``[batch]`` or ``[batch, 1]`` L/R decorrelation in ``[0, 1]``.
        length: IR length in samples (default :func:`ir_length`).
        band_edges_hz: band edges in Hz.
        fade_in_ms: raised-cosine fade-in after the pre-delay, in ms.
        sample_rate: in Hz.

    Returns:
        ``[batch, 2, length]`` IR with unit energy per channel; differentiable w.r.t. every
        parameter tensor.
    """
    rt60_s = rt60_s.reshape(rt60_s.shape[0], -1)
    n_bands = len(band_edges_hz) + 1
    if rt60_s.shape[-1] != n_bands:
        raise ValueError(f"rt60_s needs {n_bands} bands, got {rt60_s.shape[-1]}")
    dtype, device = rt60_s.dtype, rt60_s.device
    pre_delay_ms, tail_s, damping_hz, width = (
        p.reshape(-1, 1).to(dtype) for p in (pre_delay_ms, tail_s, damping_hz, width)
    )
    if length is None:
        length = ir_length(pre_delay_ms, tail_s, sample_rate)

    # Band-split, damped noise: [batch, 2 noises, n_bands, length].
    spectrum = _noise_spectrum(length, str(device), dtype)
    freqs = torch.fft.rfftfreq(length, 1.0 / sample_rate, device=device, dtype=dtype)
    masks = band_masks(freqs, band_edges_hz)  # [n_bands, K]
    damping = torch.rsqrt(1.0 + (freqs / damping_hz).square())  # [batch, K]
    shaped = spectrum[None, :, None, :] * (masks[None, None] * damping[:, None, None, :])
    bands = torch.fft.irfft(shaped, n=length)

    # Envelopes: [batch, n_bands, length].
    t = torch.arange(length, device=device, dtype=dtype) / sample_rate
    u = t - pre_delay_ms / 1000.0  # [batch, length] time since the pre-delay, s
    fade_in = 0.5 - 0.5 * torch.cos(math.pi * (u / (fade_in_ms / 1000.0)).clamp(0.0, 1.0))
    fade_start = (1.0 - TAIL_FADE_FRACTION) * tail_s
    v = ((u - fade_start) / (TAIL_FADE_FRACTION * tail_s)).clamp(0.0, 1.0)
    fade_out = 0.5 + 0.5 * torch.cos(math.pi * v)
    decay = torch.exp(-DECAY_60DB * u.clamp(min=0.0).unsqueeze(1) / rt60_s.unsqueeze(-1))
    envelope = decay * (fade_in * fade_out).unsqueeze(1)

    r = (bands * envelope.unsqueeze(1)).sum(2)  # [batch, 2, length]
    angle = width * (math.pi / 4.0)
    c, s = torch.cos(angle), torch.sin(angle)
    ir = torch.stack([c * r[:, 0] + s * r[:, 1], c * r[:, 0] - s * r[:, 1]], dim=1)
    energy = ir.square().sum(-1).mean(-1, keepdim=True)  # [batch, 1]
    return ir * torch.rsqrt(energy + _TINY).unsqueeze(-1)


def _band_filter(ir: Tensor, low_hz: float | None, high_hz: float | None, sample_rate: int):
    """Zero-phase brick-wall band-pass of ``ir [..., T]`` (FFT masking, zero-padded 2x)."""
    n = ir.shape[-1]
    spec = torch.fft.rfft(ir, n=2 * n)
    f = torch.fft.rfftfreq(2 * n, 1.0 / sample_rate, device=ir.device)
    keep = torch.ones_like(f, dtype=torch.bool)
    if low_hz is not None:
        keep &= f >= low_hz
    if high_hz is not None:
        keep &= f <= high_hz
    return torch.fft.irfft(spec * keep, n=2 * n)[..., :n]


def schroeder_edc_db(
    ir: Tensor,
    low_hz: float | None = None,
    high_hz: float | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> Tensor:
    """Energy decay curve by Schroeder backward integration, in dB re its start.

    ``EDC(t) = 10 log10(sum_{t' >= t} h(t')^2 / sum h^2)``, optionally of the IR band-passed to
    ``low_hz .. high_hz`` (zero-phase FFT mask), channels summed.

    Args:
        ir: ``[..., 2, T]`` (or ``[..., T]``) impulse response.
        low_hz, high_hz: band limits in Hz (``None``: open).
        sample_rate: in Hz.

    Returns:
        ``[..., T]`` decay curve in dB (0 at ``t = 0``, falling).
    """
    h = ir if low_hz is None and high_hz is None else _band_filter(ir, low_hz, high_hz, sample_rate)
    energy = h.square()
    if energy.dim() >= 2 and ir.dim() >= 2 and ir.shape[-2] == 2:
        energy = energy.sum(-2)
    remaining = energy.flip(-1).cumsum(-1).flip(-1)
    return 10.0 * torch.log10(remaining / remaining[..., :1].clamp(min=_TINY) + _TINY)


def estimate_rt60_s(
    ir: Tensor,
    low_hz: float | None = None,
    high_hz: float | None = None,
    *,
    fit_db: tuple[float, float] = (-5.0, -25.0),
    sample_rate: int = SAMPLE_RATE,
) -> Tensor:
    """Decay time (RT60, seconds) by a least-squares line through the Schroeder curve.

    The slope of the EDC between ``fit_db[0]`` and ``fit_db[1]`` (default -5..-25 dB: T20) is
    extrapolated to 60 dB. Not differentiable in a useful way (selects samples by threshold).

    Args:
        ir: ``[..., 2, T]`` or ``[..., T]`` impulse response.
        low_hz, high_hz: band to measure (``None``: broadband).
        fit_db: upper and lower EDC levels of the fit, dB.
        sample_rate: in Hz.

    Returns:
        ``[...]`` RT60 in seconds.
    """
    edc = schroeder_edc_db(ir, low_hz, high_hz, sample_rate).detach()
    t = torch.arange(edc.shape[-1], device=edc.device, dtype=edc.dtype) / sample_rate
    sel = ((edc <= fit_db[0]) & (edc >= fit_db[1])).to(edc.dtype)
    n = sel.sum(-1).clamp(min=2.0)
    tm = (sel * t).sum(-1) / n
    em = (sel * edc).sum(-1) / n
    cov = (sel * (t - tm.unsqueeze(-1)) * (edc - em.unsqueeze(-1))).sum(-1)
    var = (sel * (t - tm.unsqueeze(-1)).square()).sum(-1).clamp(min=_TINY)
    slope = cov / var  # dB per second (negative)
    return -60.0 / slope.clamp(max=-1e-6)


def band_edc_loss(
    ir: Tensor,
    target: Tensor,
    band_edges_hz: Sequence[float] = DEFAULT_BAND_EDGES_HZ,
    floor_db: float = -60.0,
    sample_rate: int = SAMPLE_RATE,
) -> Tensor:
    """IR-matching loss: mean absolute difference of per-band Schroeder decay curves (dB,
    floored at ``floor_db``) plus of the per-band energy shares (dB). Differentiable w.r.t.
    ``ir`` (for fitting :func:`synthesize_ir` parameters to a measured IR).

    Args:
        ir, target: ``[batch, 2, T]`` impulse responses (the shorter is zero-padded).
        band_edges_hz: band edges in Hz.
        floor_db: EDC values below this are clipped (the noise floor of a measurement).
        sample_rate: in Hz.

    Returns:
        ``[]`` scalar loss in dB.
    """
    n = max(ir.shape[-1], target.shape[-1])
    ir = torch.nn.functional.pad(ir, (0, n - ir.shape[-1]))
    target = torch.nn.functional.pad(target, (0, n - target.shape[-1]))
    edges = [None, *band_edges_hz, None]
    loss = ir.new_zeros(())
    shares = []
    for lo, hi in itertools.pairwise(edges):
        a = schroeder_edc_db(ir, lo, hi, sample_rate).clamp(min=floor_db)
        b = schroeder_edc_db(target, lo, hi, sample_rate).clamp(min=floor_db)
        loss = loss + (a - b).abs().mean()
        ea = _band_filter(ir, lo, hi, sample_rate).square().sum((-1, -2))
        eb = _band_filter(target, lo, hi, sample_rate).square().sum((-1, -2))
        shares.append((ea, eb))
    total_a = sum(s[0] for s in shares)
    total_b = sum(s[1] for s in shares)
    for ea, eb in shares:
        ra = 10.0 * torch.log10(ea / total_a + _TINY)
        rb = 10.0 * torch.log10(eb / total_b + _TINY)
        loss = loss + (ra - rb).abs().mean()
    return loss / (len(edges) - 1)
