"""Standards-exact loudness metering in torch: ITU-R BS.1770-4, EBU Tech 3341 and Tech 3342.

Every function takes audio shaped ``[..., channels, samples]`` (usually ``[batch, channels,
samples]``; ``[channels, samples]`` and mono ``[samples]`` also work) as a float tensor (or a
numpy array) on any device, and returns one value per item (shape ``[...]``), or a series
``[..., n]``. Channel order is L, R, C, (LFE), Ls, Rs; see :func:`channel_weights`.

Definitions (BS.1770-4 Annex 1, EBU Tech 3341 v4 / Tech 3342 v4):

* **K-weighting**: the "pre-filter" (a high shelf, about +4 dB above 2 kHz) followed by the
  "RLB" high-pass (about 38 Hz), :func:`k_weighting_sos`. At 48 kHz the published
  coefficients are used as they are; at other rates they are derived from the analogue
  prototype by the bilinear transform with pre-warping, as libebur128 and ffmpeg do.
* **Loudness** of a stretch of audio: ``-0.691 + 10 log10(sum_i G_i mean(y_i^2))`` LUFS, ``y_i``
  the K-weighted channel ``i`` and ``G_i`` its weight.
* **Integrated loudness** (programme loudness): 400 ms blocks every 100 ms (75 % overlap, built
  from 100 ms sub-block energies; only complete blocks count), absolute gate -70 LUFS, then a
  relative gate 10 LU below the loudness of the blocks above the absolute gate; the result is
  the loudness of the blocks passing both gates. Digital silence (no block above -70 LUFS) and
  signals shorter than one block give ``-inf``.
* **Momentary** loudness: the ungated 400 ms blocks above, one value every 100 ms (10 Hz), from
  the first complete window. **Short-term**: 3 s windows every 100 ms.
* **Loudness range** (LRA, Tech 3342): the short-term series (10 Hz), absolute gate -70 LUFS,
  relative gate 20 LU below the energy mean of the values above the absolute gate, then the
  spread between the 10th and 95th percentiles (nearest rank, as libebur128). ``nan`` when no
  3 s window exists or none passes the gates.
* **Sample peak**: ``20 log10 max |x|`` in dBFS. **True peak** (BS.1770-4 Annex 2): the same on
  the signal oversampled ``4x`` (default; ``8x``/``16x`` on request) by
  :mod:`mastering.dsp.resample`, in dBTP. 4x can under-read by up to ~0.5 dB for content near
  20 kHz at 48 kHz (the crest can fall between two oversampled points:
  :func:`mastering.dsp.resample.oversampling_scallop_db`); 8x bounds that to ~0.12 dB. The
  interpolation filter's passband ends at ~0.41 fs (19.7 kHz at 48 kHz), so content closer to
  Nyquist is under-read too.
* **PLR** (peak-to-loudness ratio): true peak minus integrated loudness, in dB.

On the CPU, when no gradient is needed, the K-weighted 100 ms sub-block energies come from
:func:`mastering.dsp.block_energy.sosfilt_block_energy`: a float64 numba kernel, exact to
float64 rounding (it equals scipy's float64 ``sosfilt`` followed by the sums of squares), that
never materializes the filtered signal; ``precision`` does not apply to it. Elsewhere (CUDA,
autograd, sample rates that are not a multiple of 10 Hz) the K-weighting runs through
:func:`mastering.dsp.iir.sosfilt` in ``precision`` (float32 by default: it agrees with float64
to < 0.001 LU on the EBU signals and on music, tested). Block and gating arithmetic is always
float64. Gradients flow through :func:`ungated_loudness` (the intended training loss),
:func:`integrated_loudness` (through the blocks that pass the gates) and the peak meters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mastering.dsp._util import cached_constant
from mastering.dsp.block_energy import sosfilt_block_energy
from mastering.dsp.iir import sosfilt
from mastering.dsp.resample import full_fp32_precision, max_abs_oversampled
from mastering.errors import InvalidAudioError

#: BS.1770's constant (dB) offsetting the K-filter's gain at 1 kHz: a 0 dBFS 1 kHz sine in
#: one front channel reads -3.01 LUFS.
LUFS_OFFSET = -0.691
#: Absolute gate of the integrated loudness and the LRA (LUFS).
ABSOLUTE_GATE_LUFS = -70.0
#: Relative gate of the integrated loudness (LU below the absolute-gated loudness).
RELATIVE_GATE_LU = -10.0
#: Relative gate of the loudness range (LU below the absolute-gated short-term energy mean).
LRA_RELATIVE_GATE_LU = -20.0
#: Percentiles of the gated short-term distribution whose spread is the LRA.
LRA_PERCENTILES = (0.10, 0.95)
#: Sub-block (hop) length in seconds: 100 ms.
SUBBLOCK_S = 0.1
#: Momentary / gating block: 4 sub-blocks = 400 ms.
MOMENTARY_SUBBLOCKS = 4
#: Short-term window: 30 sub-blocks = 3 s.
SHORT_TERM_SUBBLOCKS = 30

#: BS.1770-4 Table 1: stage 1 "pre-filter" (high shelf) at 48 kHz, ``b0, b1, b2, a0, a1, a2``.
PRE_FILTER_48K = (
    1.53512485958697,
    -2.69169618940638,
    1.19839281085285,
    1.0,
    -1.69065929318241,
    0.73248077421585,
)
#: BS.1770-4 Table 2: stage 2 "RLB" high-pass at 48 kHz, ``b0, b1, b2, a0, a1, a2``.
RLB_FILTER_48K = (1.0, -2.0, 1.0, 1.0, -1.99004745483398, 0.99007225036621)

# Analogue prototype of the K-weighting (the parameters libebur128 and ffmpeg use to derive the
# filters at any rate; they reproduce the 48 kHz tables to ~1e-9).
#: Pre-filter shelf: centre frequency (Hz), high-frequency gain (dB), Q, and the exponent
#: giving the band gain ``Vb = Vh ** exponent`` of the shelf's mid term.
SHELF_F0_HZ = 1681.974450955533
SHELF_GAIN_DB = 3.999843853973347
SHELF_Q = 0.7071752369554196
SHELF_VB_EXPONENT = 0.4996667741545416
#: RLB high-pass: corner frequency (Hz) and Q.
HIGHPASS_F0_HZ = 38.13547087602444
HIGHPASS_Q = 0.5003270373238773


# --------------------------------------------------------------------------------------------
# Filters and weights
# --------------------------------------------------------------------------------------------


def k_weighting_sos(
    sample_rate: float = 48_000,
    *,
    derive: bool = False,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """K-weighting as two second-order sections ``[2, 6]`` (pre-filter, then RLB high-pass).

    Args:
        sample_rate: Hz.
        derive: at 48 kHz, derive from the analogue prototype instead of returning the
            published BS.1770-4 coefficients (other rates are always derived).
        dtype, device: of the returned tensor (computed in float64).

    Returns:
        ``[[b0, b1, b2, 1, a1, a2], [1, -2, 1, 1, a1, a2]]`` (scipy's ``sos`` layout).
    """
    fs = float(sample_rate)
    if fs <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
    if fs == 48_000.0 and not derive:
        rows = [PRE_FILTER_48K, RLB_FILTER_48K]
    else:
        # High shelf: bilinear transform of the prototype, pre-warped at f0.
        k = math.tan(math.pi * SHELF_F0_HZ / fs)
        vh = 10.0 ** (SHELF_GAIN_DB / 20.0)
        vb = vh**SHELF_VB_EXPONENT
        a0 = 1.0 + k / SHELF_Q + k * k
        pre = (
            (vh + vb * k / SHELF_Q + k * k) / a0,
            2.0 * (k * k - vh) / a0,
            (vh - vb * k / SHELF_Q + k * k) / a0,
            1.0,
            2.0 * (k * k - 1.0) / a0,
            (1.0 - k / SHELF_Q + k * k) / a0,
        )
        # RLB high-pass: numerator fixed at (1, -2, 1) as in the standard's table.
        k = math.tan(math.pi * HIGHPASS_F0_HZ / fs)
        a0 = 1.0 + k / HIGHPASS_Q + k * k
        rlb = (1.0, -2.0, 1.0, 1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / HIGHPASS_Q + k * k) / a0)
        rows = [pre, rlb]
    return torch.tensor(rows, dtype=torch.float64).to(dtype=dtype, device=device)


@cached_constant
def _k_weighting_on(sample_rate: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """:func:`k_weighting_sos` as one tensor per rate, dtype and device, so that the IIR
    engine's tables for it are built once (see :mod:`mastering.dsp.iir`). Read-only."""
    return k_weighting_sos(sample_rate, dtype=dtype, device=device)


def channel_weights(channels: int) -> tuple[float, ...]:
    """BS.1770-4 channel weights ``G_i`` for a channel count.

    1: mono (1); 2: L R (1, 1); 3: L R C (1, 1, 1); 5: L R C Ls Rs (1, 1, 1, 1.41, 1.41);
    6: L R C LFE Ls Rs (1, 1, 1, 0, 1.41, 1.41) (the LFE is excluded). Any other count: all 1.
    """
    if channels == 5:
        return (1.0, 1.0, 1.0, 1.41, 1.41)
    if channels == 6:
        return (1.0, 1.0, 1.0, 0.0, 1.41, 1.41)
    return (1.0,) * int(channels)


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------


def _as_audio(audio: Tensor | np.ndarray) -> tuple[Tensor, torch.Size]:
    """``audio`` as a float tensor ``[B, C, T]`` and the leading shape of the results."""
    x = torch.as_tensor(audio)
    if not x.is_floating_point():
        raise InvalidAudioError(f"audio must be floating point, got {x.dtype}")
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() < 2:
        raise InvalidAudioError("audio must be shaped [..., channels, samples]")
    lead = x.shape[:-2]
    return x.reshape(math.prod(lead), x.shape[-2], x.shape[-1]), lead


def _check_finite(x: Tensor) -> None:
    """Raise :class:`InvalidAudioError` if ``x`` holds a NaN or an infinity.

    A per-channel sum is checked first (one cheap pass); only if it is not finite (a NaN/Inf,
    or finite samples so large that the sum overflows) are the samples themselves inspected.
    """
    if x.numel() == 0:
        return
    if bool(torch.isfinite(x.detach().sum(-1)).all()):
        return
    if not bool(torch.isfinite(x.detach()).all()):
        raise InvalidAudioError("audio contains NaN or Inf samples")


def _weights(weights: Sequence[float] | Tensor | None, channels: int, like: Tensor) -> Tensor:
    w = channel_weights(channels) if weights is None else weights
    w = torch.as_tensor(w, dtype=torch.float64, device=like.device)
    if w.shape != (channels,):
        raise ValueError(f"need {channels} channel weights, got shape {tuple(w.shape)}")
    return w


def _to_lufs(power: Tensor) -> Tensor:
    """Weighted mean-square power -> LUFS (``0 -> -inf``)."""
    return LUFS_OFFSET + 10.0 * torch.log10(power)


def _subblock_length(sample_rate: int) -> int | None:
    """Samples per 100 ms sub-block, or ``None`` if the rate is not a multiple of 10 Hz."""
    return sample_rate // 10 if sample_rate % 10 == 0 else None


@dataclass(frozen=True)
class _Energies:
    """K-weighted energies of the complete 100 ms sub-blocks.

    ``sums [B, C, K]`` (float64) are sums of squares; ``counts [K]`` the sample counts.
    """

    sums: Tensor
    counts: Tensor


def _use_block_kernel(x: Tensor) -> bool:
    """Whether the CPU kernel computes the sub-block energies: CPU tensors needing no gradient."""
    return x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad)


def _subblock_energies(
    x: Tensor, sample_rate: int, precision: torch.dtype | None, *, kernel: bool | None = None
) -> _Energies:
    """K-weight ``x [B, C, T]`` and sum the squares per complete 100 ms sub-block (the
    incomplete tail is dropped).

    ``kernel``: use :func:`sosfilt_block_energy` (float64, CPU, no gradient); ``None``: when
    :func:`_use_block_kernel` says so and the rate is a multiple of 10 Hz. Otherwise the signal
    is filtered by :func:`sosfilt` in ``precision`` (``None``: the input's dtype).
    """
    n = _subblock_length(sample_rate)
    if kernel is None:
        kernel = n is not None and _use_block_kernel(x)
    if kernel:
        if n is None:
            raise ValueError(
                f"the block kernel needs a rate that is a multiple of 10 Hz, got {sample_rate}"
            )
        sums = sosfilt_block_energy(x, k_weighting_sos(sample_rate), n)
        counts = torch.full((sums.shape[-1],), float(n), dtype=torch.float64)
        return _Energies(sums, counts)
    dtype = precision or (x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32)
    sos = _k_weighting_on(sample_rate, dtype, x.device)
    with full_fp32_precision(x.device):
        y = sosfilt(x.to(dtype), sos)
    B, C, T = y.shape
    if n is not None:
        K = T // n
        blocks = y[..., : K * n].reshape(B, C, K, n)
        # einsum -> batched dot products: one pass, no y**2 temporary.
        sums = torch.einsum("bckn,bckn->bck", blocks, blocks).to(torch.float64)
        counts = torch.full((K,), float(n), dtype=torch.float64, device=y.device)
    else:
        # Sub-block k holds samples n with floor(10 n / fs) == k (boundaries ceil(k fs / 10)).
        idx = torch.arange(T, device=y.device) * 10 // sample_rate
        K = T * 10 // sample_rate  # sub-block K-1 ends at ceil(K fs / 10) <= T
        sq = (y * y).to(torch.float64).reshape(B * C, T)
        full = sq.new_zeros(B * C, int(idx[-1]) + 1 if T else 0).index_add_(1, idx, sq)
        sums = full[:, :K].reshape(B, C, K)
        counts = torch.bincount(idx, minlength=K)[:K].to(torch.float64)
    return _Energies(sums, counts)


def _window_power(e: _Energies, weights: Tensor, length: int) -> Tensor:
    """Weighted mean-square power of every complete window of ``length`` sub-blocks, hop 1.

    Returns:
        ``[B, J]`` with ``J = max(K - length + 1, 0)``.
    """
    B, _, K = e.sums.shape
    if length > K:
        return e.sums.new_zeros(B, 0)
    win_sum = e.sums.unfold(-1, length, 1).sum(-1)  # [B, C, J]
    win_n = e.counts.unfold(0, length, 1).sum(-1)  # [J]
    return torch.einsum("bcj,c->bj", win_sum / win_n, weights)


def _gated_mean(power: Tensor, keep: Tensor) -> Tensor:
    """Mean of ``power [B, J]`` over ``keep`` per row; 0 where nothing is kept."""
    n = keep.sum(-1)
    total = torch.where(keep, power, torch.zeros_like(power)).sum(-1)
    return torch.where(n > 0, total / n.clamp(min=1), torch.zeros_like(total))


def _integrated_from_blocks(block_power: Tensor) -> Tensor:
    """BS.1770-4 two-stage gating over 400 ms block powers ``[B, J]`` -> LUFS ``[B]``."""
    with torch.no_grad():
        loud = _to_lufs(block_power)
        above_abs = loud > ABSOLUTE_GATE_LUFS
        gate = _to_lufs(_gated_mean(block_power, above_abs)) + RELATIVE_GATE_LU
        keep = above_abs & (loud > gate.unsqueeze(-1))
    return _to_lufs(_gated_mean(block_power, keep))


def _lra_from_short_term(st_power: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Tech 3342 loudness range from short-term powers ``[B, J]``.

    Returns:
        ``(lra, low, high)`` each ``[B]`` (LU, LUFS, LUFS); ``nan`` where undefined.
    """
    loud = _to_lufs(st_power.detach())
    above_abs = loud > ABSOLUTE_GATE_LUFS
    gate = _to_lufs(_gated_mean(st_power.detach(), above_abs)) + LRA_RELATIVE_GATE_LU
    keep = above_abs & (loud > gate.unsqueeze(-1))
    n = keep.sum(-1)
    nan = torch.full_like(gate, float("nan"))
    if loud.shape[-1] == 0:
        return nan, nan, nan
    ordered = torch.where(keep, loud, torch.full_like(loud, float("inf"))).sort(-1).values
    last = (n - 1).clamp(min=0).to(torch.float64)
    lo_i = torch.floor(last * LRA_PERCENTILES[0] + 0.5).long().unsqueeze(-1)
    hi_i = torch.floor(last * LRA_PERCENTILES[1] + 0.5).long().unsqueeze(-1)
    low = ordered.gather(-1, lo_i).squeeze(-1)
    high = ordered.gather(-1, hi_i).squeeze(-1)
    ok = n > 0
    return (
        torch.where(ok, high - low, nan),
        torch.where(ok, low, nan),
        torch.where(ok, high, nan),
    )


def _series_max(series: Tensor) -> Tensor:
    """Max over the last axis; ``-inf`` for an empty series."""
    if series.shape[-1] == 0:
        return series.new_full(series.shape[:-1], float("-inf"))
    return series.amax(-1)


# --------------------------------------------------------------------------------------------
# Public meters
# --------------------------------------------------------------------------------------------


def k_weight(
    audio: Tensor | np.ndarray,
    sample_rate: int = 48_000,
    *,
    precision: torch.dtype | None = None,
) -> Tensor:
    """K-weighted signal (same shape as ``audio``), filtered in ``precision`` (default: input's)."""
    x, _ = _as_audio(audio)
    dtype = precision or x.dtype
    sos = _k_weighting_on(sample_rate, dtype, x.device)
    with full_fp32_precision(x.device):
        y = sosfilt(x.to(dtype), sos)
    return y.reshape(torch.as_tensor(audio).shape)


def ungated_loudness(
    audio: Tensor,
    sample_rate: int = 48_000,
    *,
    weights: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """Ungated loudness of the whole signal, in LUFS: ``-0.691 + 10 log10 sum_i G_i mean(y_i^2)``.

    Differentiable (meant as a training loss); computed in the input's dtype (use float64 for
    ``gradcheck``). Silence gives ``-inf`` (and a non-finite gradient).

    Args:
        audio: ``[..., channels, samples]``.
        sample_rate: Hz.
        weights: channel weights (default :func:`channel_weights`).

    Returns:
        ``[...]`` LUFS.
    """
    x, lead = _as_audio(audio)
    _check_finite(x)
    _, C, T = x.shape
    if T == 0:
        return x.new_full(lead, float("-inf"))
    sos = _k_weighting_on(sample_rate, x.dtype, x.device)
    with full_fp32_precision(x.device):
        y = sosfilt(x, sos)
    ms = (y * y).mean(-1)  # [B, C]
    w = _weights(weights, C, x).to(x.dtype)
    return _to_lufs(ms @ w).reshape(lead)


def integrated_loudness(
    audio: Tensor | np.ndarray,
    sample_rate: int = 48_000,
    *,
    weights: Sequence[float] | Tensor | None = None,
    precision: torch.dtype | None = torch.float32,
) -> Tensor:
    """Gated integrated loudness per BS.1770-4, in LUFS (float64).

    ``-inf`` for digital silence and for signals shorter than one 400 ms block (no complete
    block). Raises :class:`InvalidAudioError` on NaN/Inf samples.

    Args:
        audio: ``[..., channels, samples]``.
        sample_rate: Hz (any; K-weighting derived for rates other than 48 kHz).
        weights: channel weights ``G_i`` (default :func:`channel_weights`).
        precision: dtype of the torch K-weighting path (``None``: the input's); the CPU
            kernel always works in float64 (see the module docstring).

    Returns:
        ``[...]`` LUFS.
    """
    x, lead = _as_audio(audio)
    _check_finite(x)
    e = _subblock_energies(x, int(sample_rate), precision)
    blocks = _window_power(e, _weights(weights, x.shape[1], x), MOMENTARY_SUBBLOCKS)
    return _integrated_from_blocks(blocks).reshape(lead)


def momentary_loudness(
    audio: Tensor | np.ndarray,
    sample_rate: int = 48_000,
    *,
    weights: Sequence[float] | Tensor | None = None,
    precision: torch.dtype | None = torch.float32,
) -> Tensor:
    """Momentary loudness series (400 ms windows every 100 ms), in LUFS.

    Value ``j`` covers ``[0.1 j, 0.1 j + 0.4)`` s; only complete windows.

    Returns:
        ``[..., max(floor(T / 0.1 s) - 3, 0)]`` LUFS.
    """
    x, lead = _as_audio(audio)
    _check_finite(x)
    e = _subblock_energies(x, int(sample_rate), precision)
    p = _window_power(e, _weights(weights, x.shape[1], x), MOMENTARY_SUBBLOCKS)
    return _to_lufs(p).reshape(*lead, p.shape[-1])


def short_term_loudness(
    audio: Tensor | np.ndarray,
    sample_rate: int = 48_000,
    *,
    weights: Sequence[float] | Tensor | None = None,
    precision: torch.dtype | None = torch.float32,
) -> Tensor:
    """Short-term loudness series (3 s windows every 100 ms), in LUFS.

    Value ``j`` covers ``[0.1 j, 0.1 j + 3)`` s; only complete windows.

    Returns:
        ``[..., max(floor(T / 0.1 s) - 29, 0)]`` LUFS.
    """
    x, lead = _as_audio(audio)
    _check_finite(x)
    e = _subblock_energies(x, int(sample_rate), precision)
    p = _window_power(e, _weights(weights, x.shape[1], x), SHORT_TERM_SUBBLOCKS)
    return _to_lufs(p).reshape(*lead, p.shape[-1])


def loudness_range(
    audio: Tensor | np.ndarray,
    sample_rate: int = 48_000,
    *,
    weights: Sequence[float] | Tensor | None = None,
    precision: torch.dtype | None = torch.float32,
) -> Tensor:
    """Loudness range (EBU Tech 3342), in LU; ``nan`` where undefined (no gated 3 s window).

    Returns:
        ``[...]`` LU (float64).
    """
    x, lead = _as_audio(audio)
    _check_finite(x)
    e = _subblock_energies(x, int(sample_rate), precision)
    p = _window_power(e, _weights(weights, x.shape[1], x), SHORT_TERM_SUBBLOCKS)
    return _lra_from_short_term(p)[0].reshape(lead)


def sample_peak(audio: Tensor | np.ndarray) -> Tensor:
    """Largest absolute sample over channels and time, in dBFS (``-inf`` for silence).

    Returns:
        ``[...]`` dBFS.
    """
    x, lead = _as_audio(audio)
    _check_finite(x)
    if x.shape[-1] == 0:
        return x.new_full(lead, float("-inf"))
    return (20.0 * torch.log10(x.abs().amax(dim=(-2, -1)))).reshape(lead)


def true_peak(
    audio: Tensor | np.ndarray,
    sample_rate: int = 48_000,
    *,
    oversample: int = 4,
    per_channel: bool = False,
) -> Tensor:
    """True peak per BS.1770-4 Annex 2, in dBTP: the peak of the ``oversample``-times
    oversampled signal (windowed-sinc polyphase interpolation, :mod:`mastering.dsp.resample`).

    4x (the standard's minimum at 48 kHz) can under-read by up to ~0.5 dB for content near
    20 kHz; use 8x or 16x for a tighter bound (see the module docstring). ``sample_rate`` is
    accepted for symmetry (the factor applies at any rate).

    Returns:
        ``[...]`` (or ``[..., channels]`` if ``per_channel``) dBTP; ``-inf`` for silence.
    """
    del sample_rate
    x, lead = _as_audio(audio)
    _check_finite(x)
    if x.shape[-1] == 0:
        shape = (*lead, x.shape[-2]) if per_channel else lead
        return x.new_full(shape, float("-inf"))
    peak = max_abs_oversampled(x, int(oversample))  # [B, C]
    if per_channel:
        return (20.0 * torch.log10(peak)).reshape(*lead, x.shape[-2])
    return (20.0 * torch.log10(peak.amax(-1))).reshape(lead)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _json_float(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


@dataclass(frozen=True)
class LoudnessReport:
    """Loudness, range and peaks of one signal.

    Loudness values are LUFS, ranges LU, peaks dBTP/dBFS, PLR dB. Undefined values are
    ``-inf`` (silence, too short) or ``nan`` (LRA / PLR without a defined operand); :meth:`to_dict`
    turns every non-finite value into ``None``. ``notes`` explains why values are undefined.
    """

    integrated_lufs: float
    lra_lu: float
    true_peak_dbtp: float
    sample_peak_dbfs: float
    momentary_max_lufs: float
    short_term_max_lufs: float
    plr_db: float
    duration_s: float
    sample_rate: int
    channels: int
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready dict: the fields above (without ``notes``), ``None`` where undefined."""
        return {
            "integrated_lufs": _json_float(self.integrated_lufs),
            "lra_lu": _json_float(self.lra_lu),
            "true_peak_dbtp": _json_float(self.true_peak_dbtp),
            "sample_peak_dbfs": _json_float(self.sample_peak_dbfs),
            "momentary_max_lufs": _json_float(self.momentary_max_lufs),
            "short_term_max_lufs": _json_float(self.short_term_max_lufs),
            "plr_db": _json_float(self.plr_db),
            "duration_s": float(self.duration_s),
            "sample_rate": int(self.sample_rate),
            "channels": int(self.channels),
        }


def measure_batch(
    audio: Tensor | np.ndarray,
    sample_rate: int = 48_000,
    *,
    true_peak_oversample: int = 4,
    weights: Sequence[float] | Tensor | None = None,
    precision: torch.dtype | None = torch.float32,
) -> list[LoudnessReport]:
    """:func:`measure` for every item of ``[batch, channels, samples]`` (one K-weighting pass)."""
    x, _ = _as_audio(audio)
    _check_finite(x)
    B, C, T = x.shape
    sr = int(sample_rate)
    with torch.no_grad():
        e = _subblock_energies(x, sr, precision)
        w = _weights(weights, C, x)
        blocks = _window_power(e, w, MOMENTARY_SUBBLOCKS)
        st = _window_power(e, w, SHORT_TERM_SUBBLOCKS)
        integrated = _integrated_from_blocks(blocks)
        lra = _lra_from_short_term(st)[0]
        m_max = _series_max(_to_lufs(blocks))
        s_max = _series_max(_to_lufs(st))
        if T:
            s_peak = 20.0 * torch.log10(x.abs().amax(dim=(-2, -1)).to(torch.float64))
            t_peak = max_abs_oversampled(x, int(true_peak_oversample)).amax(-1)
            t_peak = 20.0 * torch.log10(t_peak.to(torch.float64))
        else:
            s_peak = t_peak = torch.full((B,), float("-inf"), dtype=torch.float64)
    notes: list[str] = []
    duration = T / sr
    if duration < MOMENTARY_SUBBLOCKS * SUBBLOCK_S:
        notes.append("shorter than one 400 ms block: integrated and momentary loudness undefined")
    if duration < SHORT_TERM_SUBBLOCKS * SUBBLOCK_S:
        notes.append("shorter than 3 s: short-term loudness and loudness range undefined")
    reports = []
    for b in range(B):
        item_notes = list(notes)
        i_lufs = float(integrated[b])
        if not math.isfinite(i_lufs) and duration >= MOMENTARY_SUBBLOCKS * SUBBLOCK_S:
            item_notes.append("no block above the -70 LUFS absolute gate (silence)")
        tp = float(t_peak[b])
        plr = tp - i_lufs if math.isfinite(tp) and math.isfinite(i_lufs) else float("nan")
        reports.append(
            LoudnessReport(
                integrated_lufs=i_lufs,
                lra_lu=float(lra[b]),
                true_peak_dbtp=tp,
                sample_peak_dbfs=float(s_peak[b]),
                momentary_max_lufs=float(m_max[b]),
                short_term_max_lufs=float(s_max[b]),
                plr_db=plr,
                duration_s=duration,
                sample_rate=sr,
                channels=C,
                notes=tuple(item_notes),
            )
        )
    return reports


def measure(
    audio: Tensor | np.ndarray,
    sample_rate: int = 48_000,
    *,
    true_peak_oversample: int = 4,
    weights: Sequence[float] | Tensor | None = None,
    precision: torch.dtype | None = torch.float32,
) -> LoudnessReport:
    """All the meters on one signal ``[channels, samples]`` (or ``[1, channels, samples]``).

    Args:
        audio: the signal, any float dtype/device.
        sample_rate: Hz.
        true_peak_oversample: oversampling factor of the true-peak meter (4 = BS.1770 minimum).
        weights: channel weights (default :func:`channel_weights`).
        precision: dtype of the torch K-weighting path (see the module docstring).

    Raises:
        InvalidAudioError: NaN/Inf samples, non-float or mis-shaped audio.
    """
    x, lead = _as_audio(audio)
    if x.shape[0] != 1:
        raise ValueError(f"measure() takes one signal; use measure_batch() for {tuple(lead)}")
    return measure_batch(
        x,
        sample_rate,
        true_peak_oversample=true_peak_oversample,
        weights=weights,
        precision=precision,
    )[0]
