"""Integer-factor polyphase oversampling and downsampling (windowed-sinc FIR via ``conv1d``).

Used by the true-peak meter (:func:`mastering.loudness.true_peak`) and the limiter.

Filter
------
One linear-phase low-pass prototype per ``(factor, half_width, stopband_db)``: a Kaiser-windowed
sinc at the high rate, ``h[t] = sinc(t / factor) * kaiser(t)`` for ``|t| <= factor * half_width``
(``2 * half_width + 1`` taps per phase). Its cut-off is the *input* Nyquist frequency, so it is a
Nyquist (M-th band) filter: phase 0 is a unit impulse, the oversampled signal passes exactly
through the original samples (true peak >= sample peak), and every phase is normalised to unit
DC gain. The Kaiser ``beta`` comes from ``stopband_db`` (Kaiser's formula). With the defaults
(``half_width=16``, ``stopband_db=80``) the response, measured by ``tests/test_resample.py``
and identical for factors 2, 4 and 8, is, in fractions of the *input* rate ``fs`` (and in Hz at
48 kHz):

* passband ``0 .. 0.41 fs`` (0 .. 19.7 kHz): ripple within +-0.001 dB;
* transition ``0.41 fs .. 0.59 fs``, -6.02 dB at ``0.5 fs`` (24 kHz);
* stopband ``>= 0.59 fs`` (>= 28.3 kHz): attenuation >= 80 dB, so the images of passband
  content (which land at ``k fs +- f``) are rejected by >= 80 dB.

Content between 0.41 fs and 0.5 fs is interpolated with some loss (-6 dB at Nyquist); a wider
``half_width`` narrows the transition band (it is ~ ``2.8 / half_width`` fs wide at 80 dB).

Delay
-----
The prototype is symmetric, so its group delay is constant: :func:`group_delay` high-rate
samples, i.e. exactly ``half_width`` input samples. With ``compensate_delay=True`` (the default)
it is removed: ``oversample(x, M)[..., M * n] == x[..., n]`` and ``y[m]`` is the band-limited
interpolation of ``x`` at time ``m / M`` input samples (zero-padded at both ends). With
``compensate_delay=False`` the output is exactly what the causal (real-time) FIR produces from
rest: the interpolation delayed by :func:`group_delay` output samples (its pre-ringing
included), cut to the same length. ``downsample(oversample(x, M), M)`` returns ``x``
(band-limited content) with no shift when both compensate.

Everything is differentiable (it is ``conv1d``) and runs on any device/dtype.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

#: Default half width of the prototype, in input samples (taps per phase = 2 * half_width + 1).
HALF_WIDTH = 16
#: Default stopband attenuation of the prototype (dB) used to choose the Kaiser window.
STOPBAND_DB = 80.0


@contextlib.contextmanager
def full_fp32_precision(device: torch.device | str) -> Iterator[None]:
    """Run the block with IEEE float32 matmuls and cuDNN convolutions on CUDA (no TF32).

    cuDNN convolutions default to TF32 (10-bit mantissa), which moves a true-peak reading by
    ~0.003 dB and a loudness reading by more; measurement code runs under this guard. The
    global settings are restored on exit. No effect on other devices.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    matmul = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with cudnn.flags(
            enabled=cudnn.enabled,
            benchmark=cudnn.benchmark,
            deterministic=cudnn.deterministic,
            allow_tf32=False,
        ):
            yield
    finally:
        torch.set_float32_matmul_precision(matmul)


def kaiser_beta(stopband_db: float) -> float:
    """Kaiser window ``beta`` for a stopband attenuation of ``stopband_db`` dB (Kaiser 1974)."""
    a = float(stopband_db)
    if a > 50.0:
        return 0.1102 * (a - 8.7)
    if a >= 21.0:
        return 0.5842 * (a - 21.0) ** 0.4 + 0.07886 * (a - 21.0)
    return 0.0


def _check(factor: int, half_width: int) -> None:
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    if int(half_width) != half_width or half_width < 1:
        raise ValueError(f"half_width must be a positive integer, got {half_width!r}")


@functools.lru_cache(maxsize=32)
def _prototype(factor: int, half_width: int, stopband_db: float) -> Tensor:
    """Centred prototype ``h[t]``, ``t = -factor*half_width .. factor*half_width`` (float64, CPU).

    Each polyphase branch ``h[p::factor]`` is scaled to unit DC gain, so the full filter has
    DC gain ``factor`` (the interpolation gain).
    """
    _check(factor, half_width)
    c = factor * half_width
    t = torch.arange(-c, c + 1, dtype=torch.float64)
    window = torch.kaiser_window(
        2 * c + 1, periodic=False, beta=kaiser_beta(stopband_db), dtype=torch.float64
    )
    h = torch.sinc(t / factor) * window
    # Unit DC gain per phase: a constant input gives a constant oversampled output.
    for p in range(factor):
        branch = (t - p) % factor == 0
        h[branch] = h[branch] / h[branch].sum()
    return h


def prototype_filter(
    factor: int, *, half_width: int = HALF_WIDTH, stopband_db: float = STOPBAND_DB
) -> Tensor:
    """The interpolation prototype as a causal FIR at the high rate.

    Returns:
        ``[2 * factor * half_width + 1]`` float64 taps (DC gain ``factor``); its delay is
        :func:`group_delay` samples.
    """
    return _prototype(int(factor), int(half_width), float(stopband_db)).clone()


def group_delay(factor: int, *, half_width: int = HALF_WIDTH) -> int:
    """Group delay of the (causal) prototype, in samples of the *high* rate.

    Equal to ``half_width`` samples of the low rate, for every frequency (linear phase).
    """
    _check(factor, half_width)
    return int(factor) * int(half_width)


def _phase_taps(factor: int, half_width: int, stopband_db: float) -> Tensor:
    """Polyphase taps ``[factor, 2*half_width+1]`` (float64) of the delay-compensated oversampler.

    Phase ``p`` of the output is ``y[n*factor + p] = sum_j x[j] h[(n-j)*factor + p]``; as a
    correlation over ``x`` padded by ``half_width`` on the left, tap ``k`` is
    ``h[(half_width - k) * factor + p]``.
    """
    h = _prototype(factor, half_width, stopband_db)
    c = factor * half_width
    k = torch.arange(2 * half_width + 1)
    p = torch.arange(factor).unsqueeze(1)
    t = (half_width - k).unsqueeze(0) * factor + p  # [factor, taps] offsets from the centre
    valid = t.abs() <= c
    return torch.where(valid, h[(t + c).clamp(0, 2 * c)], torch.zeros((), dtype=h.dtype))


def polyphase_weight(
    factor: int,
    *,
    half_width: int = HALF_WIDTH,
    stopband_db: float = STOPBAND_DB,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Polyphase ``conv1d`` weight ``[factor, 1, 2*half_width+1]`` of :func:`oversample`.

    ``conv1d(x[:, None], w, padding=half_width)`` gives the ``factor`` phases of the
    delay-compensated oversampled signal as channels (phase 0 equals ``x``). :func:`oversample`
    computes the same thing with a faster blocked layout.
    """
    _check(factor, half_width)
    w = _phase_taps(int(factor), int(half_width), float(stopband_db))
    return w.unsqueeze(1).to(device=device, dtype=dtype)


#: Output positions computed per ``conv1d`` step by :func:`_fir_bank` (see there).
_BLOCK = 32


@functools.lru_cache(maxsize=64)
def _blocked_weight(kind: str, factor: int, half_width: int, stopband_db: float) -> Tensor:
    """Weight ``[F * P, P * S, K2]`` of :func:`_fir_bank` for the oversampler's phases
    (``kind="up"``: ``F = factor``, ``S = 1``; ``kind="peak"``: phases 1.. only, phase 0 being
    the input itself) or the decimator (``kind="down"``: ``F = 1``, ``S = factor``), float64
    on the CPU."""
    if kind in ("up", "peak"):
        taps, stride = _phase_taps(factor, half_width, stopband_db), 1
        if kind == "peak":
            taps = taps[1:]
    else:
        taps, stride = (_prototype(factor, half_width, stopband_db) / factor).unsqueeze(0), factor
    n_filters, length = taps.shape
    P = _BLOCK
    D = P * stride
    K2 = ((P - 1) * stride + length - 1) // D + 1
    q = torch.arange(P).view(P, 1)
    k = torch.arange(length).view(1, length)
    kb, p = torch.div(q * stride + k, D, rounding_mode="floor"), (q * stride + k) % D
    w = torch.zeros(n_filters, P, D, K2, dtype=torch.float64)
    w[:, q.expand(P, length), p, kb] = taps.unsqueeze(1).expand(n_filters, P, length)
    return w.reshape(n_filters * P, D, K2)


def _fir_bank(x: Tensor, weight: Tensor, n_filters: int, stride: int, n_out: int) -> Tensor:
    """``y[:, f, n] = sum_k taps[f, k] x[:, n * stride + k]`` for ``n < n_out``.

    A single-channel ``conv1d`` is slow on CPUs, so the time axis is blocked: ``P`` consecutive
    outputs are computed together from the ``D = P * stride`` input phases as channels, with
    the taps scattered into a ``[F * P, D, K2]`` kernel (:func:`_blocked_weight`). Same
    arithmetic, an order of magnitude faster. ``x`` is zero-extended on the right as needed.

    Args:
        x: ``[N, T]``.

    Returns:
        ``[N, n_filters, n_out]``.
    """
    N = x.shape[0]
    P = weight.shape[0] // n_filters
    y = _fir_bank_blocked(x, weight, n_out)  # [N, F*P, R]
    R = y.shape[-1]
    y = y.reshape(N, n_filters, P, R).transpose(2, 3).reshape(N, n_filters, R * P)
    return y[..., :n_out]


def _fir_bank_blocked(x: Tensor, weight: Tensor, n_out: int) -> Tensor:
    """The convolution of :func:`_fir_bank` before its output is put in time order:
    ``[N, F * P, R]`` with ``R = ceil(n_out / P)`` blocks of ``P`` outputs per filter."""
    N, T = x.shape
    D = weight.shape[1]
    K2 = weight.shape[2]
    R = -(-n_out // _BLOCK)
    need = (R + K2 - 1) * D
    x = F.pad(x, (0, need - T)) if need > T else x[:, :need]
    xb = x.reshape(N, R + K2 - 1, D).transpose(1, 2)  # [N, D, R+K2-1]: xb[p, r] = x[r D + p]
    with full_fp32_precision(x.device):
        return F.conv1d(xb, weight)  # [N, F*P, R]


def oversample(
    x: Tensor,
    factor: int,
    *,
    half_width: int = HALF_WIDTH,
    stopband_db: float = STOPBAND_DB,
    compensate_delay: bool = True,
) -> Tensor:
    """Oversample ``x`` by an integer ``factor`` (2, 4, 8, ...) with the polyphase sinc filter.

    Args:
        x: ``[..., T]`` at rate ``fs`` (float32 or float64, any device).
        factor: oversampling factor ``M``; 1 returns ``x``.
        half_width: prototype half width in input samples (filter length and sharpness).
        stopband_db: designed stopband attenuation (dB).
        compensate_delay: remove the ``half_width``-input-sample delay (see module docstring).

    Returns:
        ``[..., M * T]`` at rate ``M * fs``.
    """
    factor = int(factor)
    _check(factor, half_width)
    if factor == 1:
        return x
    lead, T = x.shape[:-1], x.shape[-1]
    w = _blocked_weight("up", factor, int(half_width), float(stopband_db))
    w = w.to(device=x.device, dtype=x.dtype)
    # Causal: the aligned output half_width input samples earlier, i.e. more left padding.
    left = half_width if compensate_delay else 2 * half_width
    xp = F.pad(x.reshape(-1, T), (left, half_width))
    phases = _fir_bank(xp, w, factor, 1, T)  # [N, factor, T]
    return phases.transpose(1, 2).reshape(*lead, T * factor)


def downsample(
    x: Tensor,
    factor: int,
    *,
    half_width: int = HALF_WIDTH,
    stopband_db: float = STOPBAND_DB,
    compensate_delay: bool = True,
) -> Tensor:
    """Low-pass ``x`` (at rate ``M * fs``) with the same prototype; keep every M-th sample.

    Args:
        x: ``[..., L]`` at the high rate.
        factor: decimation factor ``M``; 1 returns ``x``.
        half_width, stopband_db: as for :func:`oversample` (the cut-off is the *output*
            Nyquist frequency, so content above ``0.59 fs_out`` is rejected by ``stopband_db``
            and content in ``0.41 .. 0.59 fs_out`` aliases partially).
        compensate_delay: remove the filter delay (``half_width`` output samples); if false,
            the output is the causal decimator's (the compensated one, delayed).

    Returns:
        ``[..., ceil(L / M)]``; sample ``n`` is the filtered signal at high-rate index ``n M``.
    """
    factor = int(factor)
    _check(factor, half_width)
    if factor == 1:
        return x
    lead, L = x.shape[:-1], x.shape[-1]
    c = factor * half_width
    w = _blocked_weight("down", factor, int(half_width), float(stopband_db))
    w = w.to(device=x.device, dtype=x.dtype)
    n_out = -(-L // factor)
    left = c if compensate_delay else 2 * c
    y = _fir_bank(F.pad(x.reshape(-1, L), (left, c)), w, 1, factor, n_out)
    return y.reshape(*lead, n_out)


@functools.lru_cache(maxsize=64)
def _interleaved_up_weight(factor: int, half_width: int, stopband_db: float) -> Tensor:
    """The ``"up"`` blocked weight with its output channels reordered from (phase, position)
    to (position, phase): channel ``p * factor + f`` of block ``r`` is then high-rate sample
    ``r * P * factor + p * factor + f``, the input layout of the ``"down"`` filter bank."""
    w = _blocked_weight("up", factor, half_width, stopband_db)  # [F * P, P, K2]
    n_in, k2 = w.shape[1], w.shape[2]
    return w.reshape(factor, _BLOCK, n_in, k2).transpose(0, 1).reshape(-1, n_in, k2)


def oversampled_apply(
    x: Tensor,
    fn: Callable[[Tensor], Tensor],
    factor: int,
    *,
    half_width: int = HALF_WIDTH,
    stopband_db: float = STOPBAND_DB,
) -> Tensor:
    """``downsample(fn(oversample(x, factor)), factor)`` for a memoryless ``fn``, without the
    high-rate signal ever being reordered into time order.

    The oversampler's filter bank writes the high-rate samples in blocks already laid out as
    the decimator's filter bank reads them, so the round trip is two convolutions with ``fn``
    between them (an oversampled nonlinearity: a saturator, a clipper): no transposes or
    paddings of the high-rate signal, which is ``factor`` times the input's size and
    dominates the memory traffic.

    ``fn`` receives ``[..., L]`` (the leading dims of ``x``; ``L >= factor * T``) whose last
    dim holds high-rate samples in an unspecified order, so it must act sample by sample
    (per-row parameters broadcast as ``[..., 1]``).

    The result equals the composition except in the first and last ``half_width`` samples:
    there the composition's decimator reads zeros beyond the high-rate signal's ends, this one
    reads ``fn`` of the interpolated zero-padded input (a gentler edge). A caller that works
    in chunks with history (:mod:`mastering.dsp.chunking`) discards those samples anyway.

    Args:
        x: ``[..., T]`` at rate ``fs``.
        fn: the operation at rate ``factor * fs``.

    Returns:
        ``[..., T]`` at rate ``fs``.
    """
    factor = int(factor)
    _check(factor, half_width)
    lead, T = x.shape[:-1], x.shape[-1]
    if factor == 1 or T == 0:
        return fn(x.reshape(*lead, T)) if T else x
    down = _blocked_weight("down", factor, int(half_width), float(stopband_db))
    up = _interleaved_up_weight(factor, int(half_width), float(stopband_db))
    down = down.to(device=x.device, dtype=x.dtype)
    up = up.to(device=x.device, dtype=x.dtype)
    P, K2 = down.shape[0], down.shape[2]
    R = -(-T // P)  # output blocks
    # The decimator reads high-rate samples from -factor*half_width on, i.e. low-rate
    # positions from -half_width: start the interpolation there (half_width more zeros).
    flat = F.pad(x.reshape(-1, T), (2 * half_width, half_width))
    hi = _fir_bank_blocked(flat, up, (R + K2 - 1) * P)  # [N, D, R + K2 - 1]
    shaped = fn(hi.reshape(*lead, -1)).reshape(hi.shape)
    with full_fp32_precision(x.device):
        y = F.conv1d(shaped, down)  # [N, P, R]
    y = y.transpose(1, 2).reshape(-1, R * P)[:, :T]
    return y.reshape(*lead, T)


def max_abs_oversampled(
    x: Tensor,
    factor: int,
    *,
    half_width: int = HALF_WIDTH,
    stopband_db: float = STOPBAND_DB,
    chunk: int = 1 << 18,
) -> Tensor:
    """``oversample(x, factor).abs().amax(-1)`` without holding the oversampled signal.

    Processed in chunks of ``chunk`` input samples (with ``half_width`` samples of context on
    each side); phase 0 of the oversampled signal is the input itself (Nyquist prototype), so
    only the other phases are computed. Differentiable like ``amax``.

    Args:
        x: ``[..., T]``.

    Returns:
        ``[...]``, the largest absolute value of the oversampled signal (linear).
    """
    factor = int(factor)
    _check(factor, half_width)
    lead, T = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, T)
    if T == 0:
        return flat.new_zeros(flat.shape[0]).reshape(lead)
    if factor == 1:
        return flat.abs().amax(-1).reshape(lead)
    w = _blocked_weight("peak", factor, int(half_width), float(stopband_db))
    w = w.to(device=x.device, dtype=x.dtype)
    padded = F.pad(flat, (half_width, half_width))
    chunk = max(int(chunk), 1)
    peak = flat.abs().amax(-1)
    for start in range(0, T, chunk):
        stop = min(start + chunk, T)
        seg = padded[:, start : stop + 2 * half_width]
        peak = torch.maximum(peak, _phase_peaks(seg, w, factor - 1, stop - start).amax(-1))
    return peak.reshape(lead)


def interpolated_abs_peaks(
    x: Tensor,
    factor: int,
    *,
    half_width: int = HALF_WIDTH,
    stopband_db: float = STOPBAND_DB,
) -> Tensor:
    """Per input sample ``m``, the largest ``|x(m + k / factor)|``, ``k = 0 .. factor-1``, of the
    oversampled signal (:func:`oversample`'s interpolation, the one the true-peak meter
    reads), for every ``m`` whose interpolation context ``x[m-H .. m+H]`` lies inside ``x``.

    The same blocked filter bank as :func:`max_abs_oversampled` (phase 0 is the input itself),
    so the values agree with the meter's sample for sample; a plain one-channel ``conv1d``
    would be several times slower on CPUs and GPUs alike.

    Args:
        x: ``[..., T]`` with ``T > 2 * half_width``.

    Returns:
        ``[..., T - 2 H]`` linear; entry ``i`` belongs to sample ``i + H``.
    """
    factor = int(factor)
    _check(factor, half_width)
    lead, T = x.shape[:-1], x.shape[-1]
    n_out = T - 2 * half_width
    flat = x.reshape(-1, T)
    centre = flat[:, half_width : half_width + n_out].abs()
    if factor == 1:
        return centre.reshape(*lead, n_out)
    w = _blocked_weight("peak", factor, int(half_width), float(stopband_db))
    w = w.to(device=x.device, dtype=x.dtype)
    others = _phase_peaks(flat, w, factor - 1, n_out)
    return torch.maximum(centre, others).reshape(*lead, n_out)


def _phase_peaks(x: Tensor, weight: Tensor, n_filters: int, n_out: int) -> Tensor:
    """``max_f |_fir_bank(x, weight, n_filters, 1, n_out)[:, f, n]|`` ``[N, n_out]``: the
    maximum over the filters is taken in the blocked layout, so only ``1 / n_filters`` of the
    filter bank's output is put back in time order."""
    y = _fir_bank_blocked(x, weight, n_out)  # [N, F * P, R]
    N, R = y.shape[0], y.shape[-1]
    blocks = y.reshape(N, n_filters, _BLOCK, R)
    if torch.is_grad_enabled() and y.requires_grad:  # aminmax has no backward
        m = blocks.abs().amax(1)
    else:
        low, high = torch.aminmax(blocks, dim=1)  # one read of y
        m = torch.maximum(high, -low)  # [N, P, R]
    return m.transpose(1, 2).reshape(N, R * _BLOCK)[:, :n_out]


def oversampling_scallop_db(frequency_hz: float, sample_rate: float, factor: int) -> float:
    """Worst-case under-read (dB, <= 0) of a peak read from the ``factor``-times oversampled grid.

    A sine of frequency ``f`` whose crest falls half-way between two high-rate samples reads
    ``cos(pi f / (factor fs))`` of its amplitude: at 48 kHz and 20 kHz that is -0.47 dB for 4x,
    -0.12 dB for 8x and -0.03 dB for 16x (BS.1770 Annex 2 notes 4x can under-read by ~0.5 dB).
    """
    ratio = math.pi * float(frequency_hz) / (float(factor) * float(sample_rate))
    return 20.0 * math.log10(max(math.cos(min(ratio, math.pi / 2)), 1e-300))
