"""Dynamics kernels shared by the compressor, the limiter and master out (plain functions).

* :func:`gain_computer_db`: the static soft-knee compressor curve of Giannoulis, Massberg &
  Reiss, "Digital dynamic range compressor design — a tutorial and analysis" (JAES 60(6),
  2012), eq. 4, written as ``(1/R - 1) * knee(level - threshold)`` so that a zero-width knee
  and a ratio of 1 are exact (no division by the knee width outside the knee).
* :func:`lookahead_limiter`: a look-ahead true-peak limiter built only from sliding maxima and
  LTI/max-affine smoothers (the idea of matchering's "Hyrax" limiter, written anew): the
  required gain reduction is read from the 4x-oversampled sidechain, spread over the
  look-ahead window by a sliding maximum, given an exponential release, and smoothed by a
  moving average short enough that the gain reaches its target *before* the peak leaves the
  delay line. Chunk-safe: feed the returned state to the next call.
* :func:`apply_gain_db`, :func:`frame_peak_db`, :func:`active_frames`: small helpers.

Conventions: audio ``[batch, channels, samples]`` at 48 kHz; gains and levels in dB; a gain
*reduction* is a non-negative number of dB.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mastering import SAMPLE_RATE
from mastering.dsp.resample import HALF_WIDTH, interpolated_abs_peaks
from mastering.dsp.sliding import sliding_max
from mastering.dsp.smoothing import peak_hold_db

#: Floor added to linear magnitudes before taking dB (-240 dB): silence stays finite.
_TINY = 1e-12
#: Samples the limiter's guarantee extends either side of each output sample, so that the
#: interpolating true-peak meter (whose kernel spans a few samples around a peak) reads the
#: output at a nearly constant gain.
LIMITER_MARGIN = 4


# --------------------------------------------------------------------------------------------
# Static curve and gain application
# --------------------------------------------------------------------------------------------


def soft_knee(over_db: Tensor, knee_db: Tensor) -> Tensor:
    """The knee function ``phi(d)`` of the static curve: ``0`` for ``d <= -W/2``,
    ``(d + W/2)^2 / (2W)`` inside the knee, ``d`` for ``d >= W/2`` (continuous with a
    continuous slope). ``knee_db`` is clamped to >= 1e-3 dB (a hard knee in practice).

    Args:
        over_db: level minus threshold, dB (any shape).
        knee_db: knee width ``W`` in dB (broadcasts with ``over_db``).

    Returns:
        ``phi`` in dB, broadcast shape, ``>= 0``.
    """
    w = knee_db.clamp(min=1e-3) if isinstance(knee_db, Tensor) else max(float(knee_db), 1e-3)
    u = (over_db + 0.5 * w).clamp(min=0.0)
    return torch.where(u < w, u.square() / (2.0 * w), u - 0.5 * w)


def gain_computer_db(
    level_db: Tensor, threshold_db: Tensor, ratio: Tensor, knee_db: Tensor
) -> Tensor:
    """Static compressor gain (Giannoulis et al. 2012, eq. 4), in dB (``<= 0``).

    ``gain = (1/R - 1) * phi(level - threshold)`` with :func:`soft_knee` ``phi``: no gain
    change below the knee, a quadratic knee of width ``knee_db`` centred on the threshold,
    slope ``1/R`` above. ``ratio = 1`` (and any level below ``threshold - knee/2``) gives
    exactly 0 dB.

    Args:
        level_db: detector level in dBFS, e.g. ``[batch, T]``.
        threshold_db, ratio, knee_db: broadcast with ``level_db`` (e.g. ``[batch, 1]``);
            ``ratio >= 1``.

    Returns:
        Gain in dB, broadcast shape. Differentiable w.r.t. every argument.
    """
    return (1.0 / ratio - 1.0) * soft_knee(level_db - threshold_db, knee_db)


def db_to_amplitude(gain_db: Tensor) -> Tensor:
    """``10^(gain_db / 20)``."""
    return torch.pow(10.0, gain_db / 20.0)


def amplitude_to_db(amplitude: Tensor) -> Tensor:
    """``20 log10(|a| + 1e-12)`` (finite for silence: -240 dB)."""
    return 20.0 * torch.log10(amplitude.abs() + _TINY)


def apply_gain_db(x: Tensor, gain_db: Tensor) -> Tensor:
    """Multiply audio by a gain in dB.

    Args:
        x: ``[batch, channels, T]``.
        gain_db: ``[batch]`` or ``[batch, 1]`` (one gain per song), ``[batch, T]`` (a gain
            curve shared by the channels, i.e. linked stereo) or ``[batch, channels, T]``.

    Returns:
        ``[batch, channels, T]``.
    """
    if gain_db.dim() == 1:
        gain_db = gain_db.view(-1, 1, 1)
    elif gain_db.dim() == 2:
        gain_db = gain_db.unsqueeze(1)
    return x * db_to_amplitude(gain_db.to(x.dtype))


# --------------------------------------------------------------------------------------------
# Level statistics used by the dynamics priors
# --------------------------------------------------------------------------------------------


def frame_peak_db(x: Tensor, hop: int) -> Tensor:
    """Linked (max over channels) sample peak per frame of ``hop`` samples, dBFS.

    Args:
        x: ``[batch, channels, T]``; a last partial frame is padded with zeros.

    Returns:
        ``[batch, ceil(T / hop)]`` dBFS (-240 for digital silence).
    """
    m = x.abs().amax(dim=1)
    m = F.pad(m, (0, (-m.shape[-1]) % hop))
    return amplitude_to_db(m.reshape(m.shape[0], -1, hop).amax(-1))


def active_frames(level_db: Tensor, range_db: float = 40.0, floor_db: float = -80.0) -> Tensor:
    """Frames that carry programme: within ``range_db`` of the loudest frame and above
    ``floor_db`` (fades, silence and count-ins are left out of level statistics).

    Args:
        level_db: ``[batch, frames]`` frame levels in dB.

    Returns:
        ``[batch, frames]`` bool (detached).
    """
    level = level_db.detach()
    return (level > level.amax(-1, keepdim=True) - range_db) & (level > floor_db)


def masked_quantile(values: Tensor, mask: Tensor, q: float, fallback: float) -> Tensor:
    """``q``-quantile of ``values [batch, n]`` over ``mask`` per row (``fallback`` where the
    mask is empty). Differentiable w.r.t. ``values``."""
    filled = torch.where(mask, values, torch.full_like(values, float("nan")))
    out = torch.nanquantile(filled, q, dim=-1)
    return torch.where(mask.any(-1), out, torch.full_like(out, fallback))


# --------------------------------------------------------------------------------------------
# Look-ahead true-peak limiter
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LimiterGeometry:
    """Integer windows of :func:`lookahead_limiter` for a look-ahead of ``lookahead`` samples.

    With ``H`` the oversampler's half width (the sidechain can read the inter-sample peak
    around sample ``m`` only once ``x[m + H]`` has arrived) and ``M`` the margin:

    * ``window = D + M - H + 1``: sliding maximum of the required reduction;
    * ``average = D - M - H + 1``: moving average that ramps the gain;
    * ``history = D + M + H``: input samples kept from one chunk to the next.

    Every output sample ``n`` (which plays ``x[n - D]``) then gets at least the reduction that
    every input sample in ``[n - D - M, n - D + M]`` requires. Proof: the held value is
    ``s[n] = max r[n-H-W+1 .. n-H]`` (the newest inter-sample peak known at time ``n`` is that
    of sample ``n - H``) and the moving average at ``n`` mixes ``s[n-j]``, ``j = 0 .. K-1``.
    Each of those windows contains ``[n-D-M, n-D+M]`` iff ``n-(K-1)-H >= n-D+M`` and
    ``n-H-W+1 <= n-D-M``, which the two lengths above satisfy with equality. The release
    stage only raises values, so every averaged term, hence the mean, is at least ``r[m]``
    for every ``m`` in that range.
    """

    lookahead: int
    margin: int
    half_width: int
    window: int
    average: int
    history: int


def limiter_geometry(
    lookahead: int, margin: int = LIMITER_MARGIN, half_width: int = HALF_WIDTH
) -> LimiterGeometry:
    """Windows for a look-ahead of ``lookahead`` samples (>= ``margin + half_width``)."""
    lookahead = int(lookahead)
    if lookahead < margin + half_width:
        raise ValueError(f"look-ahead must be >= {margin + half_width} samples, got {lookahead}")
    return LimiterGeometry(
        lookahead=lookahead,
        margin=margin,
        half_width=half_width,
        window=lookahead + margin - half_width + 1,
        average=lookahead - margin - half_width + 1,
        history=lookahead + margin + half_width,
    )


def intersample_peak(x: Tensor, factor: int = 4, half_width: int = HALF_WIDTH) -> Tensor:
    """Linked inter-sample peak: ``max_c max_{k<factor} |x_c(m + k/factor)|`` for every sample
    ``m`` whose interpolation context ``x[m-H .. m+H]`` lies inside ``x`` (valid part only).

    The interpolation is :func:`mastering.dsp.resample.oversample`'s polyphase filter, computed
    by the same blocked filter bank :func:`mastering.loudness.true_peak` meters with
    (:func:`mastering.dsp.resample.interpolated_abs_peaks`), so a sidechain read here agrees
    with the meter sample for sample.

    Args:
        x: ``[batch, channels, T]`` with ``T > 2 H``.

    Returns:
        ``[batch, T - 2 H]`` linear peak; entry ``i`` belongs to sample ``i + H``.
    """
    return interpolated_abs_peaks(x, factor, half_width=half_width).amax(dim=1)


#: Samples per row of :func:`_running_sum` (rows are summed in parallel).
_SUM_ROW = 4096


def _running_sum(x: Tensor) -> Tensor:
    """Float64 ``cumsum`` along the last dim with a leading zero: ``[..., T]`` -> ``[..., T+1]``.

    Computed row-parallel: the signal is cut into rows of :data:`_SUM_ROW` samples, each row
    is summed on its own and the rows' totals are carried by a second, short ``cumsum``. A
    GPU scans one row per thread block, so a single long row (a song) would leave it idle.
    """
    T = x.shape[-1]
    x = x.to(torch.float64)
    if T <= _SUM_ROW:
        return F.pad(torch.cumsum(x, dim=-1), (1, 0))
    rows = -(-T // _SUM_ROW)
    blocks = F.pad(x, (0, rows * _SUM_ROW - T)).unflatten(-1, (rows, _SUM_ROW))
    local = torch.cumsum(blocks, dim=-1)
    carried = torch.cumsum(local[..., -1], dim=-1) - local[..., -1]  # sum before each row
    total = (local + carried.unsqueeze(-1)).flatten(-2)[..., :T]
    return F.pad(total, (1, 0))


def _moving_average(h: Tensor, previous: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Causal mean of the last ``length`` values of ``h [B, N]`` preceded by ``previous
    [B, length - 1]``; returns the means ``[B, N]`` and the new ``previous``.

    A float64 running sum (box filter as a difference of cumulative sums): O(1) per sample.
    """
    ext = torch.cat([previous, h], dim=-1)
    if length == 1:
        return h, previous
    c = _running_sum(ext)
    mean = (c[..., length:] - c[..., :-length]) / length
    return mean.to(h.dtype), ext[..., ext.shape[-1] - (length - 1) :]


@dataclass
class LimiterChunk:
    """A chunk made ready for :func:`limit`: the input with its history and its sidechain.

    Everything here is independent of the gain and the ceiling, which only shift the
    sidechain: ``max(peak + c, 0)`` commutes with the sliding maximum, and with the release
    from rest (``peak_hold(max(s + c, 0)) = max(peak_hold(s) + c, 0)``), so a caller that
    renders one chunk at several gains (master out's search) pays for those scans once.

    Attributes:
        ext: ``[batch, channels, history + N]`` the previous ``history`` input samples and the
            chunk (un-gained).
        peak_db: ``[batch, window - 1 + N]`` inter-sample peak (dB) of the input samples the
            chunk's output depends on.
        geometry: the windows.
        state: the incoming state (``None`` at the start).
        held_db: ``[batch, N]`` the sliding maximum of ``peak_db`` over ``window``.
    """

    ext: Tensor
    peak_db: Tensor
    geometry: LimiterGeometry
    state: dict[str, Tensor] | None
    held_db: Tensor | None = None
    _released: dict[float, Tensor] | None = None

    def held(self) -> Tensor:
        """:attr:`held_db`, computed on first use."""
        if self.held_db is None:
            w = self.geometry.window
            self.held_db = sliding_max(self.peak_db, w, "causal")[..., w - 1 :]
        return self.held_db

    def released_from_rest(self, release_ms: float, sample_rate: float) -> Tensor:
        """``peak_hold_db(held)`` with no history, ``[batch, N]`` dB, cached per release."""
        if self._released is None:
            self._released = {}
        key = float(release_ms)
        if key not in self._released:
            self._released[key] = peak_hold_db(self.held(), key, sample_rate)
        return self._released[key]

    def rows(self, rows: list[int]) -> LimiterChunk:
        """The chunk of the songs ``rows`` (itself when that is every song in order)."""
        if rows == list(range(self.ext.shape[0])):
            return self
        index = torch.tensor(rows, device=self.ext.device)
        released = None
        if self._released is not None:
            released = {k: v[index] for k, v in self._released.items()}
        held = None if self.held_db is None else self.held_db[index]
        return LimiterChunk(
            self.ext[index], self.peak_db[index], self.geometry, None, held, released
        )


def limiter_chunk(
    x: Tensor,
    lookahead: int,
    state: dict[str, Tensor] | None = None,
    *,
    oversample: int = 4,
    margin: int = LIMITER_MARGIN,
) -> LimiterChunk:
    """Prepend the history and read the ``oversample``-x inter-sample peaks of a chunk.

    The sidechain does not depend on the gain, the ceiling or the release, so a caller that
    tries several of those on one signal (master out's loudness search) computes it once.
    """
    geo = limiter_geometry(lookahead, margin)
    B, C, _ = x.shape
    history = x.new_zeros(B, C, geo.history) if state is None else state["history"]
    ext = torch.cat([history, x], dim=-1)
    peak_db = amplitude_to_db(intersample_peak(ext, oversample, geo.half_width))
    return LimiterChunk(ext, peak_db, geo, state)


def limit(
    chunk: LimiterChunk,
    ceiling_db: Tensor | float,
    release_ms: Tensor | float,
    gain_db: Tensor | float = 0.0,
    sample_rate: float = SAMPLE_RATE,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Limit a prepared chunk; see :func:`lookahead_limiter` (same arguments and returns)."""
    geo, ext = chunk.geometry, chunk.ext
    B, L = ext.shape[0], ext.shape[-1]
    N = L - geo.history
    like = dict(dtype=ext.dtype, device=ext.device)
    state = chunk.state or {
        "release": ext.new_zeros(B, 1),
        "average": ext.new_zeros(B, geo.average - 1),
    }
    gain = torch.as_tensor(gain_db, **like).reshape(-1, 1)
    ceiling = torch.as_tensor(ceiling_db, **like).reshape(-1, 1)
    if chunk.state is None and isinstance(release_ms, int | float):
        # From rest at one release time: shift the scans done once (see LimiterChunk).
        released = (chunk.released_from_rest(release_ms, sample_rate) + gain - ceiling).clamp(
            min=0.0
        )
        rel_state = released[..., -1:] if N else state["release"]
    else:
        held = (chunk.held() + gain - ceiling).clamp(min=0.0)  # [B, N]
        release = torch.as_tensor(release_ms, **like).reshape(-1).expand(B)
        released, rel_state = peak_hold_db(
            held, release, sample_rate, state["release"], return_state=True
        )
    reduction, avg_state = _moving_average(released, state["average"], geo.average)
    start = geo.history - geo.lookahead
    y = apply_gain_db(ext[..., start : start + N], gain - reduction)
    new_state = {
        "history": ext[..., L - geo.history :],
        "release": rel_state,
        "average": avg_state,
    }
    return y, -reduction, new_state


def lookahead_limiter(
    x: Tensor,
    ceiling_db: Tensor | float,
    lookahead: int,
    release_ms: Tensor | float,
    state: dict[str, Tensor] | None = None,
    *,
    gain_db: Tensor | float = 0.0,
    oversample: int = 4,
    margin: int = LIMITER_MARGIN,
    sample_rate: float = SAMPLE_RATE,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Look-ahead true-peak limiter (linked stereo); output delayed by ``lookahead`` samples.

    The input is multiplied by ``10^(gain_db/20)`` first (the sidechain is read on the
    un-gained input and offset by ``gain_db``). Sidechain, in dB of gain reduction ``>= 0``:

    1. ``r[m] = max(0, peak_db[m] + gain_db - ceiling)``, ``peak`` from
       :func:`intersample_peak` (``oversample`` x);
    2. sliding maximum over ``window`` samples (the look-ahead, see :class:`LimiterGeometry`);
    3. release: ``h[n] = max(s[n], h[n-1] - 8.69 dB / (release fs))`` (instant attack; the
       reduction factor ``10^(h/20)`` recovers exponentially with time constant ``release``,
       i.e. by one neper = 8.69 dB per ``release_ms``; :func:`peak_hold_db`);
    4. moving average over ``average`` samples: a linear-in-dB attack ramp that ends on the
       peak, and a rounded release onset.

    Each stage only raises the reduction at the samples it must protect, so the output
    ``y[n] = x[n - D] 10^((gain - GR[n])/20)`` stays under the ceiling at every oversampled
    point of the input's interpolation around ``n`` (up to the gain's variation over the
    interpolator's few-sample kernel, which the margin keeps small).

    Args:
        x: ``[batch, channels, N]`` chunk.
        ceiling_db: true-peak ceiling in dBTP, a number or ``[batch]``.
        lookahead: ``D`` in samples (>= 20; 3 ms = 144).
        release_ms: release time constant in ms, a number or ``[batch]``.
        state: returned by the previous chunk (``None``: at rest, zero history).
        gain_db: input gain in dB, a number or ``[batch]``.
        oversample: sidechain oversampling factor.
        margin: samples of protection either side (see :data:`LIMITER_MARGIN`).
        sample_rate: Hz.

    Returns:
        ``(y [batch, channels, N], -GR [batch, N] (dB, <= 0, aligned with y), new_state)``.
        Differentiable w.r.t. ``x``, ``gain_db``, ``ceiling_db`` and ``release_ms``.
    """
    chunk = limiter_chunk(x, lookahead, state, oversample=oversample, margin=margin)
    return limit(chunk, ceiling_db, release_ms, gain_db, sample_rate)


def lookahead_samples(lookahead_ms: float, sample_rate: float = SAMPLE_RATE) -> int:
    """Look-ahead in whole samples (rounded), at least ``LIMITER_MARGIN + HALF_WIDTH``."""
    return max(round(float(lookahead_ms) * sample_rate / 1000.0), LIMITER_MARGIN + HALF_WIDTH)


__all__ = [
    "LIMITER_MARGIN",
    "LimiterChunk",
    "LimiterGeometry",
    "active_frames",
    "amplitude_to_db",
    "apply_gain_db",
    "db_to_amplitude",
    "frame_peak_db",
    "gain_computer_db",
    "intersample_peak",
    "limit",
    "limiter_chunk",
    "limiter_geometry",
    "lookahead_limiter",
    "lookahead_samples",
    "masked_quantile",
    "soft_knee",
]
