"""FFT convolution and frequency-sampling FIR filters.

:func:`fft_convolve` convolves long signals with long impulse responses (a reverb IR of
several seconds, a matching-EQ FIR) by overlap-add in blocks, so memory stays bounded.
:func:`frequency_sampled_filter` turns a magnitude response sampled on an rfft grid into a
linear-phase (or zero-phase) FIR by a windowed inverse FFT and applies it with
:func:`fft_convolve`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mastering.dsp._util import next_fast_fft_length, next_power_of_two

#: Smallest overlap-add FFT size; IRs longer than a quarter of it get a larger one.
_MIN_OLA_FFT = 1 << 15
#: Complex spectrum elements processed at once by overlap-add (bounds peak memory).
_MAX_SPECTRUM_ELEMENTS = 1 << 24

_WINDOWS = {
    "hann": torch.hann_window,
    "hamming": torch.hamming_window,
    "blackman": torch.blackman_window,
}


def _broadcast_leading(x: Tensor, ir: Tensor) -> tuple[Tensor, Tensor]:
    """Expand ``x [..., T]`` and ``ir [..., L]`` to common leading dims."""
    lead = torch.broadcast_shapes(x.shape[:-1], ir.shape[:-1])
    return x.expand(*lead, x.shape[-1]), ir.expand(*lead, ir.shape[-1])


def _convolve_one_fft(x: Tensor, ir: Tensor) -> Tensor:
    """Full linear convolution with one FFT of the whole output length."""
    n_full = x.shape[-1] + ir.shape[-1] - 1
    n_fft = next_fast_fft_length(n_full)
    spectrum = torch.fft.rfft(x, n=n_fft) * torch.fft.rfft(ir, n=n_fft)
    return torch.fft.irfft(spectrum, n=n_fft)[..., :n_full]


def _overlap_add_fft_size(ir_length: int) -> int:
    """FFT size for overlap-add: a power of two ``>= 2 * ir_length`` (so each block's output
    spans at most two hops) and at least ``_MIN_OLA_FFT``."""
    return max(_MIN_OLA_FFT, next_power_of_two(2 * ir_length))


def _overlap_add(out: Tensor, hop: int) -> Tensor:
    """Sum block outputs ``out [..., n, n_fft]`` placed ``hop`` samples apart.

    Returns ``[..., (n + m - 1) * hop]`` with ``m = ceil(n_fft / hop)`` hops per block output.
    """
    n_fft = out.shape[-1]
    m = -(-n_fft // hop)
    parts = F.pad(out, (0, m * hop - n_fft)).unflatten(-1, (m, hop))
    total = F.pad(parts[..., 0, :].flatten(-2), (0, (m - 1) * hop))
    for j in range(1, m):
        total = total + F.pad(parts[..., j, :].flatten(-2), (j * hop, (m - 1 - j) * hop))
    return total


def _convolve_overlap_add(x: Tensor, ir: Tensor, hop: int | None) -> Tensor:
    """Full linear convolution by overlap-add: blocks of ``hop`` samples, a bounded group of
    blocks at a time. ``x`` and ``ir`` already share leading dims."""
    T, L = x.shape[-1], ir.shape[-1]
    n_fft = _overlap_add_fft_size(L) if hop is None else next_power_of_two(hop + L - 1)
    hop = n_fft - L + 1 if hop is None else hop
    n_blocks = -(-T // hop)
    blocks = F.pad(x, (0, n_blocks * hop - T)).unflatten(-1, (n_blocks, hop))
    ir_spectrum = torch.fft.rfft(ir, n=n_fft).unsqueeze(-2)
    rows = max(1, math.prod(x.shape[:-1]))
    group = max(1, _MAX_SPECTRUM_ELEMENTS // (rows * (n_fft // 2 + 1)))

    pieces, carry = [], None
    for start in range(0, n_blocks, group):
        spectrum = torch.fft.rfft(blocks[..., start : start + group, :], n=n_fft) * ir_spectrum
        segment = _overlap_add(torch.fft.irfft(spectrum, n=n_fft), hop)
        if carry is not None:
            overlap = carry.shape[-1]
            segment = torch.cat([segment[..., :overlap] + carry, segment[..., overlap:]], -1)
        done = min(segment.shape[-1], blocks[..., start : start + group, :].shape[-2] * hop)
        pieces.append(segment[..., :done])
        carry = segment[..., done:]
    pieces.append(carry)
    return torch.cat(pieces, dim=-1)[..., : T + L - 1]


def fft_convolve(x: Tensor, ir: Tensor, mode: str = "full", *, block_size: int | None = None):
    """Linear convolution ``x * ir`` by FFT (like ``scipy.signal.fftconvolve`` on the last axis).

    Short problems use one FFT; long ones (a 3-minute song with a 5 s IR) use overlap-add with
    blocks of about ``FFT size - L + 1`` samples, FFT size a power of two ``>= 2 L``
    (at least 32768), processing a bounded number of blocks at a time.

    Args:
        x: signal ``[..., T]``.
        ir: impulse response ``[..., L]``; leading dims broadcast with ``x``'s (e.g. a stereo
            IR ``[batch, 2, L]`` or one IR ``[L]`` for everything).
        mode: ``"full"`` (``T + L - 1`` samples) or ``"same"`` (``T`` samples centred on the
            full output, starting at ``(L - 1) // 2``, as scipy).
        block_size: force overlap-add with this many input samples per block (``None``:
            automatic).

    Returns:
        ``[..., T + L - 1]`` or ``[..., T]``; differentiable w.r.t. ``x`` and ``ir``.
    """
    if mode not in ("full", "same"):
        raise ValueError(f"mode must be 'full' or 'same', got {mode!r}")
    x, ir = _broadcast_leading(x, ir)
    T, L = x.shape[-1], ir.shape[-1]
    n_full, single_fft_limit = T + L - 1, 2 * _overlap_add_fft_size(L)
    if block_size is None and n_full <= single_fft_limit:
        y = _convolve_one_fft(x, ir)
    else:
        y = _convolve_overlap_add(x, ir, block_size)
    if mode == "same":
        start = (L - 1) // 2
        y = y[..., start : start + T]
    return y


def _taper(n_taps: int, window: str | Tensor | None, like: Tensor) -> Tensor | None:
    """Symmetric window of ``n_taps`` samples (``None`` or ``"rectangular"``: no window)."""
    if window is None or (isinstance(window, str) and window == "rectangular"):
        return None
    if isinstance(window, Tensor):
        return window.to(like)
    if window not in _WINDOWS:
        raise ValueError(f"window must be one of {[*_WINDOWS, 'rectangular']} or a tensor")
    return _WINDOWS[window](n_taps, periodic=False, dtype=like.dtype, device=like.device)


def design_frequency_sampled_fir(
    magnitude: Tensor, n_taps: int | None = None, window: str | Tensor | None = "hann"
) -> Tensor:
    """Linear-phase FIR whose response approximates a magnitude sampled on an rfft grid.

    The zero-phase impulse response ``irfft(magnitude)`` (length ``n_fft``, centred on sample
    0 and wrapped around) is rotated so its centre sits at tap ``(n_taps - 1) / 2``, cut to
    ``n_taps`` samples and tapered by a symmetric ``window``.

    Args:
        magnitude: linear magnitude ``[..., n_bins]`` at ``k * fs / n_fft`` for
            ``k = 0 .. n_bins - 1``, ``n_fft = 2 * (n_bins - 1)``.
        n_taps: odd FIR length ``<= n_fft - 1`` (default ``n_fft - 1``).
        window: ``"hann"``, ``"hamming"``, ``"blackman"``, ``"rectangular"``/``None`` or a
            tensor of ``n_taps`` samples.

    Returns:
        ``[..., n_taps]`` FIR taps (delay ``(n_taps - 1) / 2`` samples), differentiable.
    """
    n_fft = 2 * (magnitude.shape[-1] - 1)
    n_taps = n_fft - 1 if n_taps is None else n_taps
    if n_taps % 2 == 0 or not 1 <= n_taps <= n_fft - 1:
        raise ValueError(f"n_taps must be odd and at most n_fft - 1 = {n_fft - 1}, got {n_taps}")
    zero_phase = torch.fft.irfft(magnitude, n=n_fft)
    half = (n_taps - 1) // 2
    taps = torch.cat([zero_phase[..., n_fft - half :], zero_phase[..., : half + 1]], dim=-1)
    taper = _taper(n_taps, window, taps)
    return taps if taper is None else taps * taper


def frequency_sampled_filter(
    x: Tensor,
    magnitude: Tensor,
    *,
    n_taps: int | None = None,
    phase: str = "linear",
    window: str | Tensor | None = "hann",
    in_db: bool = False,
) -> Tensor:
    """Filter ``x`` by a magnitude response sampled on an rfft grid (frequency sampling).

    The response is made into an FIR with :func:`design_frequency_sampled_fir` and applied by
    FFT convolution (overlap-add for long signals).

    Trade-off: a response sampled on ``n_bins`` points has an exact inverse only as a
    *circular* impulse response of ``n_fft = 2 (n_bins - 1)`` samples; any detail narrower than
    about ``fs / n_fft`` Hz corresponds to a longer true impulse response, which the inverse FFT
    folds back (time aliasing). Cutting to ``n_taps`` and windowing removes the folded tails
    but smooths the realised response: features narrower than about ``2 fs / n_taps`` Hz (Hann
    main lobe) are blurred and deep notches fill in. So: sample the response no finer than the
    detail you need, and use ``n_taps`` close to ``n_fft`` for detailed curves, small
    ``n_taps`` for smooth tonal curves (less latency and cost). Low-frequency detail needs
    long filters: resolving 20 Hz at 48 kHz takes several thousand taps.

    Args:
        x: signal ``[..., T]``.
        magnitude: ``[..., n_bins]`` linear magnitude (or dB with ``in_db=True``); leading dims
            broadcast with ``x``'s (e.g. ``[batch, 1, n_bins]`` for one curve per song).
        n_taps: odd FIR length (default ``n_fft - 1``).
        phase: ``"linear"``: causal, output delayed by ``(n_taps - 1) / 2`` samples;
            ``"zero"``: the same filter with that delay removed (non-causal, aligned).
        window: taper, see :func:`design_frequency_sampled_fir`.
        in_db: ``magnitude`` is in dB (``20 log10`` of the amplitude).

    Returns:
        ``[..., T]`` filtered signal; differentiable w.r.t. ``x`` and ``magnitude``.
    """
    if phase not in ("linear", "zero"):
        raise ValueError(f"phase must be 'linear' or 'zero', got {phase!r}")
    amplitude = torch.pow(10.0, magnitude / 20.0) if in_db else magnitude
    taps = design_frequency_sampled_fir(amplitude.to(x.dtype), n_taps, window)
    if phase == "zero":
        return fft_convolve(x, taps, mode="same")
    return fft_convolve(x, taps, mode="full")[..., : x.shape[-1]]
