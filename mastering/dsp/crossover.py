"""Linkwitz-Riley 4th-order (24 dB/octave) crossovers with all-pass compensated band sums.

An LR4 low-pass (high-pass) is a second-order Butterworth low-pass (high-pass) applied twice.
At one crossover ``LP^2 + HP^2`` is the second-order all-pass ``AP`` of the same frequency
and ``Q = 1/sqrt(2)`` -- exactly, also after the bilinear transform, since the cookbook LP, HP
and AP share the denominator. With crossovers ``f_0 < f_1 < ... < f_{N-1}`` the signal is
split as a tree, band ``k`` being ``HP(f_0..f_{k-1}) LP(f_k) AP(f_{k+1}..f_{N-1})``: the
all-passes give the lower bands the phase of the splits they skipped, so the bands sum to
``AP(f_0) ... AP(f_{N-1})`` -- flat magnitude, phase of an all-pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mastering import SAMPLE_RATE
from mastering.dsp._util import TensorLike, as_tensors
from mastering.dsp.biquad import (
    BUTTERWORTH_Q,
    allpass_sos,
    cascade_sos,
    highpass_sos,
    identity_sos,
    lowpass_sos,
)
from mastering.dsp.iir import sosfilt


def linkwitz_riley_sos(
    freq_hz: TensorLike, kind: str = "lowpass", sample_rate: float = SAMPLE_RATE
) -> Tensor:
    """LR4 low-pass or high-pass at ``freq_hz`` (-6 dB there, 24 dB/octave).

    Args:
        freq_hz: crossover frequency in Hz (number or ``[...]`` tensor).
        kind: ``"lowpass"`` or ``"highpass"``.
        sample_rate: in Hz.

    Returns:
        ``[..., 2, 6]`` cascade (two identical Butterworth sections).
    """
    designs = {"lowpass": lowpass_sos, "highpass": highpass_sos}
    if kind not in designs:
        raise ValueError(f"kind must be 'lowpass' or 'highpass', got {kind!r}")
    section = designs[kind](freq_hz, BUTTERWORTH_Q, sample_rate)
    return torch.stack([section, section], dim=-2)


def _frequencies(crossover_freqs: Sequence[float] | Tensor, like: Tensor | None) -> Tensor:
    """Crossover frequencies as a tensor ``[..., N]``, checked ascending when concrete."""
    freqs = as_tensors(crossover_freqs, like=like)[0]
    if freqs.dim() == 0 or freqs.shape[-1] == 0:
        raise ValueError("need at least one crossover frequency, as a sequence [..., N]")
    if not freqs.requires_grad and bool((freqs.diff(dim=-1) <= 0).any()):
        raise ValueError("crossover frequencies must be strictly ascending")
    return freqs


def _compensation_sos(freqs: Tensor, band: int, sample_rate: float) -> Tensor | None:
    """All-pass sections ``[..., m, 6]`` for the crossovers above band ``band``'s own."""
    higher = freqs[..., band + 1 :]
    return allpass_sos(higher, BUTTERWORTH_Q, sample_rate) if higher.shape[-1] else None


def crossover_band_sos(
    crossover_freqs: Sequence[float] | Tensor, sample_rate: float = SAMPLE_RATE
) -> Tensor:
    """The cascade of every band of :func:`split_bands`, padded with pass-through sections.

    Args:
        crossover_freqs: ``N`` ascending frequencies in Hz (``[..., N]`` tensor or a sequence).
        sample_rate: in Hz.

    Returns:
        ``[N + 1, ..., 3 N, 6]`` sections, band 0 (lowest) first; for frequency responses
        (:func:`mastering.dsp.biquad.sos_response`) or to filter bands one by one.
    """
    freqs = _frequencies(crossover_freqs, None)
    n = freqs.shape[-1]
    bands = []
    for k in range(n + 1):
        parts = [linkwitz_riley_sos(freqs[..., j], "highpass", sample_rate) for j in range(k)]
        if k < n:
            parts.append(linkwitz_riley_sos(freqs[..., k], "lowpass", sample_rate))
            compensation = _compensation_sos(freqs, k, sample_rate)
            if compensation is not None:
                parts.append(compensation)
        bands.append(cascade_sos(*parts))
    width = max(b.shape[-2] for b in bands)
    padded = [
        cascade_sos(b, identity_sos(width - b.shape[-2], like=b)) if b.shape[-2] < width else b
        for b in bands
    ]
    return torch.stack(torch.broadcast_tensors(*padded))


def split_bands(
    x: Tensor, crossover_freqs: Sequence[float] | Tensor, sample_rate: float = SAMPLE_RATE
) -> Tensor:
    """Split ``x`` into ``N + 1`` LR4 bands that sum to an all-pass-filtered ``x``.

    Args:
        x: ``[..., T]`` signal.
        crossover_freqs: ``N`` ascending crossover frequencies in Hz, a sequence or a tensor
            ``[..., N]`` whose leading dims broadcast with ``x``'s (per-song crossovers);
            differentiable.
        sample_rate: in Hz.

    Returns:
        ``[N + 1, ..., T]``, lowest band first; ``bands.sum(0)`` has a flat magnitude response
        (all-pass ``AP(f_0) ... AP(f_{N-1})``).
    """
    freqs = _frequencies(crossover_freqs, x)
    rest = x
    bands = []
    for k in range(freqs.shape[-1]):
        f = freqs[..., k]
        low = sosfilt(rest, linkwitz_riley_sos(f, "lowpass", sample_rate))
        rest = sosfilt(rest, linkwitz_riley_sos(f, "highpass", sample_rate))
        compensation = _compensation_sos(freqs, k, sample_rate)
        bands.append(low if compensation is None else sosfilt(low, compensation))
    bands.append(rest)
    return torch.stack(torch.broadcast_tensors(*bands))
