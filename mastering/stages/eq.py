"""EQ stage: a spectral balancer that moves the song's long-term spectrum toward a style target.

Target balance
--------------
:func:`target_balance_db` defines, per song, the long-term mid-channel power spectral density
(dB, shape only) a master of the requested style should have: a reference commercial-master
tilt (about -1 dB/octave below ~200 Hz, -4.5 dB/octave above, rolling off below ~35 Hz and
above ~14 kHz) modified by the macros and rule-breaks:

* ``brightness``: tilt of the top, up to about +/-5 dB at 16 kHz (progressive above ~1.5 kHz);
* ``warmth``: a +/-4 dB lift below ~250 Hz;
* ``mids``: a +/-3 dB presence bump centred at 1.2 kHz (about 500 Hz-3 kHz);
* ``punch``: kick/bass clarity, +2.5 dB around 85 Hz (60-120 Hz) and a -2 dB mud cut around
  300 Hz (200-400 Hz) per unit (so EDM, punch 0.6, gets both; jazz, punch 0, neither);
* ``PRODUCTION_LoFi``: roll-off above ~11 kHz (about -12 dB/octave);
* ``PRODUCTION_BuriedVocals``: -4 dB around 2 kHz (1-4 kHz) of the **mid channel** only.

Genre-specific balances (EDM's clarity and brightness, jazz's and lofi's softer highs and
warmer lows) come through their genre macro presets.

Parameters
----------
Ten peaking bands at fixed log-spaced centres (32 Hz-16 kHz, about an octave apart, shared Q),
a low shelf at 100 Hz, a high shelf at 8 kHz, a mid-channel-only "vocal" bell at 2 kHz (Q 0.7),
and an output gain; see :data:`EQ_SPECS`.

Prior
-----
On the 40 analysis bands of :func:`mastering.features.band_centers`:
``d = STRENGTH * (reference - smoothed measured) + style``, where ``measured`` is the song's
mid long-term spectrum shape (smoothed over ~2/3 octave: broad balance, not single notes),
``reference`` the reference tilt and ``style = target - reference`` the macro/rule-break
offsets (applied in full; the song's own character is corrected only ``STRENGTH`` = 75 %).
The weighted mean of ``d`` is removed and differences beyond 9 dB saturate softly (at 15 dB).
A ridge least-squares fit (second-difference smoothness penalty across the bands, a larger
penalty on the shelves, a free overall level that is dropped) turns ``d`` into band and shelf
gains, which pass unchanged up to 5 dB and saturate softly toward 8.5 dB. The vocal bell is
-5 dB with ``PRODUCTION_BuriedVocals`` (else 0), ``q`` is 1.0, and the output gain keeps the
K-weighted power (an approximation of loudness) of the song unchanged.

Learned residual
----------------
A light convolutional encoder-decoder over the 40 analysis bands (measured mid and side shapes,
target, difference, per-frame spread), FiLM-conditioned on ``ctx.cond.vector``, with one
attention block at the bottleneck, pooled into a zero-initialized MLP head that outputs raw
offsets for every parameter (~44k parameters).

DSP body
--------
The magnitude response of the whole cascade (RBJ biquads, :func:`sos_magnitude_db`) is sampled
on an FFT grid and realized as a linear-phase FIR by frequency sampling (``n_taps`` taps, Hann
window), applied to mid and side (the vocal bell on mid only) with FFT convolution, chunk by
chunk with an input history. Latency: ``(n_taps - 1) / 2`` samples (4095 = 85.3 ms at the
default 8191 taps); :meth:`EQ.process` returns the output delayed by that much.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mastering.conditioning import ConditioningBatch, ConditioningEncoder
from mastering.dsp.biquad import (
    high_shelf_sos,
    low_shelf_sos,
    peaking_sos,
    sos_magnitude_db,
)
from mastering.dsp.chunking import apply_with_history
from mastering.dsp.fir import design_frequency_sampled_fir, fft_convolve
from mastering.dsp.stereo import from_mid_side, to_mid_side
from mastering.features import (
    band_centers,
    band_matrix,
    mid_side_band_spectrum_db,
    normalized_tilt_db,
    stft_power,
)
from mastering.loudness import k_weighting_sos
from mastering.params import ParamSpec
from mastering.stages._nets import (
    BandConvEncoder,
    BinAttention,
    MLPHead,
    cond_concat,
    pool_mean_max,
)
from mastering.stages.base import Params, Stage, StageContext

#: Peaking band centres in Hz (log-spaced, 32 Hz - 16 kHz, ~1 octave apart).
BAND_CENTERS_HZ: tuple[float, ...] = tuple(
    float(f)
    for f in torch.logspace(math.log10(32.0), math.log10(16_000.0), 10, dtype=torch.float64)
)
LOW_SHELF_HZ = 100.0
HIGH_SHELF_HZ = 8_000.0
VOCAL_HZ = 2_000.0
VOCAL_Q = 0.7
#: Share of the (reference - measured) difference the prior corrects (style offsets: in full).
STRENGTH = 0.75
#: Soft limit of the prior's band and shelf gains, dB.
PRIOR_LIMIT_DB = 8.5
#: The prior's gains pass unchanged up to this magnitude (dB), then saturate softly.
PRIOR_KNEE_DB = 5.0
#: Differences up to this magnitude (dB) are fitted unchanged.
DIFF_KNEE_DB = 9.0
#: Differences beyond this (dB) are soft-limited before fitting (empty bands are not chased).
DIFF_LIMIT_DB = 15.0
#: Ridge penalty of the prior's least-squares fit (per dB^2 of each gain).
RIDGE = 0.1
#: Ridge penalty of the two shelves (larger: broad moves, no fighting with the end bands).
SHELF_RIDGE = 0.3
#: Penalty on the second difference of adjacent peaking-band gains (smooth curves).
SMOOTHNESS = 0.05
#: Vocal-bell gain of the BuriedVocals rule-break, dB.
BURIED_VOCALS_DB = -5.0

EQ_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "band_gain_db", "dB", -9.0, 9.0, size=10,
        doc="peaking gains at " + ", ".join(f"{f:.0f}" for f in BAND_CENTERS_HZ) + " Hz",
    ),
    ParamSpec("q", "ratio", 0.5, 3.0, doc="Q of the ten peaking bands (1.0 ~ 1.4 octaves)"),
    ParamSpec("low_shelf_db", "dB", -9.0, 9.0, doc=f"low shelf at {LOW_SHELF_HZ:.0f} Hz"),
    ParamSpec("high_shelf_db", "dB", -9.0, 9.0, doc=f"high shelf at {HIGH_SHELF_HZ:.0f} Hz"),
    ParamSpec(
        "vocal_db", "dB", -9.0, 6.0,
        doc=f"mid-channel-only bell at {VOCAL_HZ:.0f} Hz, Q {VOCAL_Q} (1-4 kHz): vocal tuck/lift",
    ),
    ParamSpec("gain_db", "dB", -12.0, 12.0, doc="output gain (prior: loudness-neutral makeup)"),
)  # fmt: skip

#: Prior Q of the peaking bands.
PRIOR_Q = 1.0


# -- target balance ------------------------------------------------------------------------


def soft_limit(v: Tensor, limit: float, knee: float) -> Tensor:
    """Identity for ``|v| <= knee``, then a smooth (C1) saturation toward ``+/-limit``."""
    a = v.abs()
    span = limit - knee
    over = knee + span * torch.tanh((a - knee).clamp(min=0.0) / span)
    return torch.where(a <= knee, v, torch.sign(v) * over)


def _ramp(o: Tensor, o0: float, s: float) -> Tensor:
    """Smooth ``max(0, o - o0)`` (softplus over ~``s`` octaves)."""
    return s * F.softplus((o - o0) / s)


def _bump(o: Tensor, o0: float, sigma: float) -> Tensor:
    """Gaussian bump in octaves, 1 at ``o0``."""
    return torch.exp(-0.5 * ((o - o0) / sigma) ** 2)


def _oct(f_hz: float) -> float:
    """Octaves re 1 kHz."""
    return math.log2(f_hz / 1000.0)


def reference_balance_db(freqs_hz: Tensor) -> Tensor:
    """Reference commercial-master long-term PSD shape, dB (arbitrary offset): ``[F]``.

    -1 dB/octave below ~200 Hz, -4.5 dB/octave above, -6 dB/octave extra below ~35 Hz and
    -8 dB/octave extra above ~14 kHz (transitions smoothed over about half an octave)."""
    o = torch.log2(freqs_hz.clamp(min=1.0) / 1000.0)
    o200 = _oct(200.0)
    return (
        -1.0 * (o - o200)
        - 3.5 * _ramp(o, o200, 0.5)
        - 6.0 * _ramp(-o, -_oct(35.0), 0.3)
        - 8.0 * _ramp(o, _oct(14_000.0), 0.3)
    )


def target_balance_db(
    freqs_hz: Tensor, cond: ConditioningBatch, *, vocal_tuck: bool = True
) -> Tensor:
    """Target long-term mid-channel PSD shape of each song's style, dB: ``[batch, F]``.

    Args:
        freqs_hz: ``[F]`` frequencies in Hz (e.g. :func:`mastering.features.band_centers`).
        cond: the batch's conditioning (macros and rule-break flags; differentiable w.r.t.
            the macros).
        vocal_tuck: include the mid-channel-only ``PRODUCTION_BuriedVocals`` tuck.

    Returns:
        ``[batch, F]`` in dB with an arbitrary offset (compare after
        :func:`mastering.features.normalized_tilt_db`). See the module docstring for the rules.
    """
    macros = cond.macros
    f = freqs_hz.to(macros.device, macros.dtype)
    o = torch.log2(f.clamp(min=1.0) / 1000.0).unsqueeze(0)  # [1, F]

    def m(name: str) -> Tensor:
        return cond.macro(name).to(f.dtype).unsqueeze(-1)  # [batch, 1]

    t = reference_balance_db(f).unsqueeze(0)
    t = t + m("brightness") * 1.5 * _ramp(o, _oct(1_500.0), 0.7)
    t = t + m("warmth") * 4.0 * torch.sigmoid((_oct(250.0) - o) / 0.4)
    t = t + m("mids") * 3.0 * _bump(o, _oct(1_200.0), 0.9)
    punch = m("punch")
    t = t + punch * (3.5 * _bump(o, _oct(85.0), 0.5) - 2.5 * _bump(o, _oct(300.0), 0.45))
    lofi = cond.flag("PRODUCTION_LoFi").to(f.dtype).unsqueeze(-1)
    t = t - lofi * 12.0 * _ramp(o, _oct(11_000.0), 0.25)
    if vocal_tuck:
        t = t + buried_vocals_tuck_db(f, cond)
    return t


def buried_vocals_tuck_db(freqs_hz: Tensor, cond: ConditioningBatch) -> Tensor:
    """The ``PRODUCTION_BuriedVocals`` part of the target, mid channel only: ``[batch, F]`` dB
    (-4 dB around 2 kHz, covering 1-4 kHz)."""
    f = freqs_hz.to(cond.macros.device, cond.macros.dtype)
    o = torch.log2(f.clamp(min=1.0) / 1000.0).unsqueeze(0)
    flag = cond.flag("PRODUCTION_BuriedVocals").to(f.dtype).unsqueeze(-1)
    return -4.0 * flag * _bump(o, _oct(2_000.0), 0.7)


def smooth_bands(s: Tensor) -> Tensor:
    """Smooth a band spectrum ``[..., n_bands]`` (dB) along frequency with the binomial kernel
    ``[1, 4, 6, 4, 1] / 16`` (about 2/3 octave wide on the 40 analysis bands), edges replicated.
    Mastering decisions follow the broad balance, not single harmonics or gaps between notes."""
    shape = s.shape
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=s.dtype, device=s.device) / 16.0
    flat = F.pad(s.reshape(-1, 1, shape[-1]), (2, 2), mode="replicate")
    return F.conv1d(flat, k.view(1, 1, 5)).reshape(shape)


def balance_distance_db(
    x: Tensor, cond: ConditioningBatch, lo_hz: float = 40.0, hi_hz: float = 16_000.0
):
    """RMS distance (dB) between the smoothed (:func:`smooth_bands`) mid long-term spectrum
    shape of ``x`` and the target shape over ``lo_hz .. hi_hz``, after removing the mean
    offset: ``[batch]``. A diagnostic (and what the EQ prior reduces)."""
    f = band_centers().to(x.device, x.dtype)
    sel = (f >= lo_hz) & (f <= hi_hz)
    meas = normalized_tilt_db(mid_side_band_spectrum_db(x)[:, 0])
    tgt = normalized_tilt_db(target_balance_db(f, cond))
    d = (tgt - smooth_bands(meas))[:, sel]
    d = d - d.mean(-1, keepdim=True)
    return d.square().mean(-1).sqrt()


# -- the stage ------------------------------------------------------------------------------


def _cascade(params: Params, sample_rate: float) -> tuple[Tensor, Tensor]:
    """``(main [batch, 12, 6], vocal [batch, 1, 6])`` SOS cascades of the parameters."""
    gains = params["band_gain_db"]  # [b, 10]
    centers = torch.tensor(BAND_CENTERS_HZ, dtype=gains.dtype, device=gains.device)
    peaks = peaking_sos(centers, gains, params["q"], sample_rate)  # [b, 10, 6]
    low = low_shelf_sos(LOW_SHELF_HZ, params["low_shelf_db"], sample_rate=sample_rate)  # [b,1,6]
    high = high_shelf_sos(HIGH_SHELF_HZ, params["high_shelf_db"], sample_rate=sample_rate)
    vocal = peaking_sos(VOCAL_HZ, params["vocal_db"], VOCAL_Q, sample_rate)  # [b, 1, 6]
    return torch.cat([peaks, low, high], dim=-2), vocal


class EQ(Stage):
    """Spectral balancer (see the module docstring).

    Args:
        n_taps: odd FIR length (latency ``(n_taps - 1) / 2`` samples).
        cond_dim: size of ``ctx.cond.vector`` (default: :class:`ConditioningEncoder`'s).
        channels: width of the residual network.
    """

    name = "eq"
    specs = EQ_SPECS

    def __init__(self, n_taps: int = 8191, cond_dim: int | None = None, channels: int = 32):
        super().__init__()
        if n_taps % 2 != 1:
            raise ValueError("n_taps must be odd")
        self.n_taps = n_taps
        self.n_fft = 1 << (n_taps - 1).bit_length()  # >= n_taps + 1
        cond_dim = ConditioningEncoder().cond_dim if cond_dim is None else cond_dim
        self._build_prior_tables()
        # Residual: conv encoder -> strided down -> attention -> up (+skip) -> pooled MLP head.
        n_out = sum(s.size for s in EQ_SPECS)
        self.encoder = BandConvEncoder(5, channels, n_blocks=2, kernel=5, cond_dim=cond_dim)
        self.down = nn.Conv1d(channels, channels, 4, stride=2, padding=1)
        self.attention = BinAttention(channels, heads=4)
        self.up = nn.ConvTranspose1d(channels, channels, 4, stride=2, padding=1)
        self.head = MLPHead(2 * channels + cond_dim, n_out, hidden=64, n_hidden=2)

    # -- prior tables ----------------------------------------------------------------------
    def _build_prior_tables(self, sample_rate: float = 48_000.0) -> None:
        """Fixed matrices of the prior: the per-dB response of each band/shelf on the analysis
        bands (``basis [40, 12]``), the ridge fit ``fit [13, 40]`` (last row: free level) and
        the K-weighting-like loudness weights per analysis band."""
        f = band_centers().double()  # [40]
        unit = 6.0
        centers = torch.tensor(BAND_CENTERS_HZ, dtype=torch.float64)
        peaks = peaking_sos(centers, unit, PRIOR_Q, sample_rate)  # [10, 6]
        u = torch.tensor(unit, dtype=torch.float64)
        shelves = torch.stack(
            [low_shelf_sos(LOW_SHELF_HZ, u, sample_rate=sample_rate),
             high_shelf_sos(HIGH_SHELF_HZ, u, sample_rate=sample_rate)]
        )  # fmt: skip
        secs = torch.cat([peaks, shelves]).unsqueeze(-2)  # [12, 1, 6]
        basis = sos_magnitude_db(secs, frequencies_hz=f, sample_rate=sample_rate).T / unit
        vocal = peaking_sos(VOCAL_HZ, u, VOCAL_Q, sample_rate).view(1, 6)
        vocal_basis = sos_magnitude_db(vocal, frequencies_hz=f, sample_rate=sample_rate) / unit
        # Weights: de-emphasize the extremes where music often has little energy.
        w = torch.ones_like(f)
        w[(f < 35.0) | (f > 16_500.0)] = 0.3
        phi = torch.cat([basis, torch.ones(f.numel(), 1, dtype=f.dtype)], dim=1)  # [40, 13]
        ridge = torch.full((13,), RIDGE, dtype=f.dtype)
        ridge[10:12] = SHELF_RIDGE
        ridge[-1] = 0.0
        d2 = torch.zeros(8, 13, dtype=f.dtype)
        for i in range(8):
            d2[i, i : i + 3] = torch.tensor([1.0, -2.0, 1.0], dtype=f.dtype)
        lhs = phi.T @ (w.unsqueeze(1) * phi) + torch.diag(ridge) + SMOOTHNESS * d2.T @ d2
        fit = torch.linalg.solve(lhs, phi.T * w.unsqueeze(0))  # [13, 40]
        # K-weighting (BS.1770) power per band times its width (~ f for log-spaced bands).
        kw = sos_magnitude_db(
            k_weighting_sos(sample_rate), frequencies_hz=f, sample_rate=sample_rate
        )
        loud_w = torch.pow(10.0, kw / 10.0) * f
        self.register_buffer("prior_fit", fit.float(), persistent=False)
        self.register_buffer("prior_basis", basis.float(), persistent=False)
        self.register_buffer("vocal_basis", vocal_basis.float(), persistent=False)
        self.register_buffer("diff_weight", w.float(), persistent=False)
        self.register_buffer("loudness_weight", loud_w.float(), persistent=False)

    # -- controller ------------------------------------------------------------------------
    def prior(self, x: Tensor, ctx: StageContext) -> Params:
        """Gains that move the mid long-term spectrum toward the target: ``STRENGTH`` of the way
        from the song to the reference balance, plus the style's offsets in full."""
        spec = mid_side_band_spectrum_db(x)  # [b, 2, 40]
        f = band_centers().to(x.device, x.dtype)
        measured = smooth_bands(normalized_tilt_db(spec[:, 0]))
        reference = reference_balance_db(f)
        style = target_balance_db(f, ctx.cond, vocal_tuck=False).to(x.dtype) - reference
        w = self.diff_weight.to(x.dtype)
        d = STRENGTH * (normalized_tilt_db(reference) - measured) + style
        d = d - (d * w).sum(-1, keepdim=True) / w.sum()
        d = soft_limit(d, DIFF_LIMIT_DB, DIFF_KNEE_DB)
        g = d @ self.prior_fit.to(x.dtype).T  # [b, 13]; the last is a free level (dropped)
        g = soft_limit(g[:, :12], PRIOR_LIMIT_DB, PRIOR_KNEE_DB)
        flag = ctx.cond.flag("PRODUCTION_BuriedVocals").to(x.dtype)
        vocal = BURIED_VOCALS_DB * flag.unsqueeze(-1)  # [b, 1]
        # Loudness-neutral output gain: K-weighted band powers before/after the (linearized)
        # response on the analysis bands.
        curve = g @ self.prior_basis.to(x.dtype).T  # [b, 40] dB
        curve_mid = curve + vocal * self.vocal_basis.to(x.dtype)
        p = torch.pow(10.0, spec / 10.0) * self.loudness_weight.to(x.dtype)  # [b, 2, 40]
        after = (p[:, 0] * torch.pow(10.0, curve_mid / 10.0)).sum(-1) + (
            p[:, 1] * torch.pow(10.0, curve / 10.0)
        ).sum(-1)
        gain = -10.0 * torch.log10(after / p.sum((1, 2)).clamp(min=1e-20))
        return {
            "band_gain_db": g[:, :10],
            "q": torch.full_like(gain, PRIOR_Q).unsqueeze(-1),
            "low_shelf_db": g[:, 10:11],
            "high_shelf_db": g[:, 11:12],
            "vocal_db": vocal,
            "gain_db": gain.unsqueeze(-1),
        }

    def features(self, x: Tensor, ctx: StageContext) -> Tensor:
        """Residual-network input ``[batch, 5, 40]``: mid shape, side-minus-mid, target shape,
        target - mid, and the per-frame standard deviation of the mid band levels (all /10 dB)."""
        ms = torch.stack([0.5 * (x[:, 0] + x[:, 1]), 0.5 * (x[:, 0] - x[:, 1])], dim=1)
        frames = stft_power(ms)  # [b, 2, bins, frames]
        bm = band_matrix().to(x.device, x.dtype)
        per_frame = torch.einsum("kf,bcft->bckt", bm, frames)  # [b, 2, 40, frames]
        mean_db = 10.0 * torch.log10(per_frame.mean(-1) + 1e-10)
        frame_db = 10.0 * torch.log10(per_frame[:, 0] + 1e-10)
        spread = frame_db.std(-1, unbiased=False) if frame_db.shape[-1] > 1 else frame_db * 0
        mid = normalized_tilt_db(mean_db[:, 0])
        side = mean_db[:, 1] - mean_db[:, 0]
        f = band_centers().to(x.device, x.dtype)
        target = normalized_tilt_db(target_balance_db(f, ctx.cond).to(x.dtype))
        feats = torch.stack([mid, side.clamp(-40, 20), target, target - mid, spread], dim=1)
        return feats / 10.0

    def residual(self, x: Tensor, ctx: StageContext) -> Params:
        cond = ctx.cond.vector.to(x.dtype)
        h = self.encoder(self.features(x, ctx), cond)  # [b, C, 40]
        z = self.attention(self.down(h))  # [b, C, 20]
        h = h + self.up(z)  # [b, C, 40]
        out = self.head(cond_concat(pool_mean_max(h), cond))
        params, i = {}, 0
        for s in EQ_SPECS:
            params[s.name] = out[:, i : i + s.size]
            i += s.size
        return params

    # -- DSP -------------------------------------------------------------------------------
    def magnitude_db(self, params: Params, sample_rate: float = 48_000.0) -> Tensor:
        """Designed magnitude response in dB on the FFT grid: ``[batch, 2 (mid, side), bins]``."""
        main, vocal = _cascade(params, sample_rate)
        side = sos_magnitude_db(main, self.n_fft) + params["gain_db"]
        mid = side + sos_magnitude_db(vocal, self.n_fft)
        return torch.stack([mid, side], dim=1)

    def taps(self, params: Params) -> Tensor:
        """Linear-phase FIR taps ``[batch, 2 (mid, side), n_taps]``."""
        amp = torch.pow(10.0, self.magnitude_db(params) / 20.0)
        return design_frequency_sampled_fir(amp, self.n_taps, "hann")

    def process(self, x: Tensor, params: Params, state: Any = None) -> tuple[Tensor, Any]:
        """Filter ``x [batch, 2, n]``; output delayed by :meth:`latency` samples.

        ``state``: the last ``n_taps - 1`` mid/side input samples and the taps, designed on
        the first block and kept (``None`` at the start)."""
        if state is None:
            taps, hist = self.taps({k: v.to(x.dtype) for k, v in params.items()}), None
        else:
            taps, hist = state["taps"], state["history"]

        def op(buf: Tensor) -> Tensor:
            return fft_convolve(buf, taps)[..., : buf.shape[-1]]

        y, hist = apply_with_history(to_mid_side(x), hist, op, past=self.n_taps - 1)
        return from_mid_side(y), {"history": hist, "taps": taps}

    def latency(self, params: Params) -> int:
        return (self.n_taps - 1) // 2
