"""Stereo imager: mono bass, per-band side gain, and a structural never-out-of-phase guarantee.

DSP body
--------
Mid/side (``M = (L+R)/2``, ``S = (L-R)/2``). The **mid channel is never touched** (vocals and
everything centred stay exactly as they were, only delayed by the look-ahead). The side
channel is

1. high-passed by an LR4 high-pass at ``mono_below_hz`` and split by LR4 crossovers at
   ``mono_below_hz``, 1 kHz and 5 kHz (:func:`mastering.dsp.crossover.crossover_band_sos`);
   the lowest band is dropped, so below the mono crossover the side falls at 48 dB/octave
   (-12 dB at the crossover, about -49 dB an octave below): **the bass is mono**;
2. the three remaining side bands are scaled by ``side_gain_db`` (time-varying, interpolated
   from the 10 ms control frames, no zipper), each **capped** so that, in every 10 ms frame,
   the band's side energy does not exceed the same band's mid energy (the mid is band-split by
   the same crossovers for this measurement only);
3. the bands are summed and a broadband **safety gain** (never above 0 dB) caps the side again
   so that, in every frame, side energy <= mid energy.

Caps are piecewise-linear in dB between frame boundaries (so they never step): the cap at the
boundary between frames ``f-1`` and ``f`` is ``min(cap_{f-1}, cap_f)``, with
``cap_f = 10 log10((E_mid,f + eps) / (E_side,f + eps))`` from the frame energies. Inside frame
``f`` the interpolated cap therefore never exceeds ``cap_f``, hence

    sum over frame f of (g S)^2 <= 10^(cap_f/10) E_side,f <= E_mid,f + eps.

**Guarantee.** Since ``sum L R = sum M^2 - sum S^2`` over any stretch of samples, the safety
gain makes the L/R correlation of **every output frame, and hence of the whole output,
>= 0** (exactly, up to the energy floor ``eps`` = -100 dBFS RMS per frame). Per band the
same holds for the band signals of the split (each band's side <= its mid per frame); the
bands of an LR4 split overlap near the crossovers, so per-band correlations of the *output*
measured with other filters are >= 0 only approximately. The band caps need the energies of
the next frame, the safety those of the band-capped side one frame later, and frames are
finished whole, so the stage has a look-ahead of :data:`LATENCY` samples (3 frames, 30 ms).

Consequences: content that is already at side = mid in a band (hard-panned) cannot be widened
further there, and side-only content over a silent mid band (a polarity-inverted channel) is
removed; both are the price of never going out of phase.

Controller
----------
Prior (physical units; constant over time):

* ``side_gain_db[b] = 6 tanh(0.6 (target_b - measured_b) / 6)`` dB, where ``measured_b`` is
  the input's long-term side/mid energy ratio in band ``b`` (dB) and
  ``target_b = TARGET_BASE_DB[b] + 6 * width`` (highs sit wider than low mids); narrow mixes
  are widened, over-wide ones tamed, 60 % of the way, by at most 6 dB;
* ``mono_below_hz = 120 * 2^(0.3 * punch)`` Hz (punchy genres keep more of the low end mono).

Learned residual: per-frame features (mid and side energies and their ratio in four bands,
dB) plus the conditioning vector, pooled to 100 ms tokens, two small pre-norm transformer
blocks (d = 32, windowed self-attention over 6.4 s windows), a zero-initialized per-token head
giving raw offsets of the three side-gain envelopes (linearly interpolated back to frames) and
a zero-initialized pooled head for the mono crossover.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mastering import SAMPLE_RATE
from mastering.conditioning import ConditioningEncoder
from mastering.dsp.crossover import crossover_band_sos, linkwitz_riley_sos
from mastering.dsp.iir import sosfilt
from mastering.dsp.stereo import from_mid_side, to_mid_side
from mastering.params import ParamSpec
from mastering.stages._nets import BinAttention, MLPHead, cond_concat, pool_mean_max
from mastering.stages.base import FRAME_HOP, Params, Stage, StageContext, frames_to_samples
from mastering.stages.base import n_frames as count_frames

#: Upper crossovers of the side bands, Hz (the lowest one is ``mono_below_hz``).
UPPER_CROSSOVERS_HZ: tuple[float, float] = (1_000.0, 5_000.0)
#: Frequency bands of the analysis features, Hz (edges; the first is a nominal mono crossover).
FEATURE_EDGES_HZ: tuple[float, ...] = (120.0, 1_000.0, 5_000.0)
#: Target side/mid energy ratio per side band at width 0, dB (low mids, presence, air).
TARGET_BASE_DB: tuple[float, float, float] = (-13.0, -10.0, -8.0)
#: Target ratio change per unit of the width macro, dB.
TARGET_PER_WIDTH_DB = 6.0
#: Share of the (target - measured) ratio difference the prior corrects.
STRENGTH = 0.6
#: Soft limit of the prior's side gains, dB.
PRIOR_LIMIT_DB = 6.0
#: Largest side-to-mid energy ratio the caps allow, per band and broadband, dB.
MAX_SIDE_TO_MID_DB = 0.0
#: Upper clamp of a cap (dB); keeps the interpolation finite for side-free frames.
CAP_CEILING_DB = 20.0
#: Energy floor per frame (sum of squares over a frame): -100 dBFS RMS.
FRAME_EPS = FRAME_HOP * 1e-10
#: Look-ahead of :meth:`Imager.process`, samples (3 frames).
LATENCY = 3 * FRAME_HOP
#: Frames per transformer token (100 ms) and tokens per attention window (6.4 s).
TOKEN_FRAMES = 10
WINDOW_TOKENS = 64

IMAGER_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "mono_below_hz", "Hz", 60.0, 200.0,
        doc="side removed below this LR4 crossover (48 dB/octave): mono bass",
    ),
    ParamSpec(
        "side_gain_db", "dB", -12.0, 9.0, size=3, frames=True,
        doc="side gain per band (mono crossover-1 kHz, 1-5 kHz, above 5 kHz), before the "
        "side <= mid caps",
    ),
)  # fmt: skip

_CHANNELS = 7  # buffered per sample: M, M1, M2, M3, S1, S2, S3


def _frame_energy(x: Tensor) -> Tensor:
    """Sum of squares per non-overlapping frame: ``[..., F * hop] -> [..., F]``."""
    return x.unflatten(-1, (-1, FRAME_HOP)).square().sum(-1)


def _cap_db(e_mid: Tensor, e_side: Tensor) -> Tensor:
    """Largest side gain (dB) that keeps side energy <= mid energy (+ the allowed ratio)."""
    ratio = 10.0 * torch.log10((e_mid + FRAME_EPS) / (e_side + FRAME_EPS))
    return (ratio + MAX_SIDE_TO_MID_DB).clamp(max=CAP_CEILING_DB)


def _knots_to_samples(cap_db: Tensor) -> Tensor:
    """Piecewise-linear gain curve from per-frame caps ``[..., F]`` (dB).

    Knot ``k`` (boundary between frames ``k-1`` and ``k``) is ``min(cap[k-1], cap[k])``;
    frame ``k`` (``k = 1 .. F-2``) ramps from knot ``k`` to knot ``k+1``, so it never exceeds
    ``cap[k]``. Returns ``[..., (F - 2) * hop]`` (frames 1 .. F-2)."""
    knots = torch.minimum(cap_db[..., :-1], cap_db[..., 1:])  # [..., F-1]: knots 1 .. F-1
    w = torch.arange(FRAME_HOP, device=cap_db.device, dtype=cap_db.dtype) / FRAME_HOP
    a, b = knots[..., :-1].unsqueeze(-1), knots[..., 1:].unsqueeze(-1)
    return (a + (b - a) * w).flatten(-2)


def _band_frame_power(x: Tensor, n_frames: int) -> Tensor:
    """Mid/side power per frame in the four feature bands: ``[batch, 2, 4, n_frames]``.

    STFT (1024-point Hann, hop :data:`FRAME_HOP`, centred) of mid and side, bins summed per
    band of :data:`FEATURE_EDGES_HZ`; frame ``f`` is centred on sample ``f * FRAME_HOP``.
    """
    ms = to_mid_side(x)
    b, c, n = ms.shape
    n_fft = 1024
    flat = ms.reshape(b * c, n)
    if n < n_fft:
        flat = F.pad(flat, (0, n_fft - n))
    win = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(flat, n_fft, FRAME_HOP, window=win, center=True, return_complex=True)
    power = (spec.real.square() + spec.imag.square()) / win.square().sum()
    freqs = torch.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE).to(x.device)
    edges = [0.0, *FEATURE_EDGES_HZ, SAMPLE_RATE]
    masks = torch.stack([(freqs >= lo) & (freqs < hi) for lo, hi in itertools.pairwise(edges)])
    bands = torch.einsum("kf,bft->bkt", masks.to(x.dtype), power)
    bands = bands.reshape(b, c, len(edges) - 1, -1)
    if bands.shape[-1] < n_frames:
        bands = F.pad(bands, (0, n_frames - bands.shape[-1]), mode="replicate")
    return bands[..., :n_frames]


class FrameTransformer(nn.Module):
    """Tiny transformer over control frames: features ``[batch, in_dim, frames]`` ->
    ``[batch, d, tokens]`` with tokens of :data:`TOKEN_FRAMES` frames (mean-pooled) and
    windowed self-attention (windows of :data:`WINDOW_TOKENS` tokens, each a sequence for
    :class:`mastering.stages._nets.BinAttention`, which adds a position code)."""

    def __init__(self, in_dim: int, d: int = 32, n_layers: int = 2, heads: int = 4):
        super().__init__()
        self.inp = nn.Conv1d(in_dim, d, 1)
        self.blocks = nn.ModuleList(BinAttention(d, heads) for _ in range(n_layers))

    def forward(self, feats: Tensor) -> Tensor:
        h = F.avg_pool1d(self.inp(feats), TOKEN_FRAMES, ceil_mode=True)  # [b, d, tokens]
        b, d, n_tok = h.shape
        win = min(WINDOW_TOKENS, n_tok)
        n_win = -(-n_tok // win)
        h = F.pad(h, (0, n_win * win - n_tok), mode="replicate")
        h = h.reshape(b, d, n_win, win).permute(0, 2, 1, 3).reshape(b * n_win, d, win)
        for block in self.blocks:
            h = block(h)
        h = h.reshape(b, n_win, d, win).permute(0, 2, 1, 3).reshape(b, d, n_win * win)
        return h[..., :n_tok]


class Imager(Stage):
    """Mid/side stereo imager (see the module docstring).

    Args:
        cond_dim: size of ``ctx.cond.vector`` (default: :class:`ConditioningEncoder`'s).
        d: transformer width.
    """

    name = "imager"
    specs = IMAGER_SPECS

    def __init__(self, cond_dim: int | None = None, d: int = 32):
        super().__init__()
        cond_dim = ConditioningEncoder().cond_dim if cond_dim is None else cond_dim
        n_bands = len(FEATURE_EDGES_HZ) + 1
        self.encoder = FrameTransformer(3 * n_bands + cond_dim, d, n_layers=2)
        self.gain_head = MLPHead(d, 3, hidden=32, n_hidden=1)
        self.mono_head = MLPHead(2 * d + cond_dim, 1, hidden=32, n_hidden=1)

    # -- controller ------------------------------------------------------------------------
    def prior(self, x: Tensor, ctx: StageContext) -> Params:
        """Side gains toward a width-dependent side/mid target per band; mono crossover from
        the punch macro (see the module docstring)."""
        nf = count_frames(x.shape[-1])
        p = _band_frame_power(x, nf).sum(-1)  # [b, 2, 4]
        measured = 10.0 * torch.log10((p[:, 1, 1:] + 1e-10) / (p[:, 0, 1:] + 1e-10))  # [b, 3]
        base = torch.tensor(TARGET_BASE_DB, device=x.device, dtype=x.dtype)
        width = ctx.cond.macro("width").to(x.dtype).unsqueeze(-1)
        target = base + TARGET_PER_WIDTH_DB * width
        gain = PRIOR_LIMIT_DB * torch.tanh(STRENGTH * (target - measured) / PRIOR_LIMIT_DB)
        punch = ctx.cond.macro("punch").to(x.dtype)
        mono = 120.0 * torch.pow(2.0, 0.3 * punch)
        return {
            "mono_below_hz": mono.unsqueeze(-1),
            "side_gain_db": gain.unsqueeze(-1).expand(-1, -1, nf),
        }

    def features(self, x: Tensor) -> Tensor:
        """Per-frame residual input ``[batch, 12, frames]``: mid level (re its mean), side
        level (re the mid mean) and side-minus-mid, dB / 20, in four bands."""
        p = _band_frame_power(x, count_frames(x.shape[-1]))
        db = 10.0 * torch.log10(p + 1e-10)  # [b, 2, 4, F]
        ref = 10.0 * torch.log10(p[:, 0].sum(1).mean(-1) + 1e-10).view(-1, 1, 1)
        mid, side = db[:, 0] - ref, db[:, 1] - ref
        ratio = (db[:, 1] - db[:, 0]).clamp(-40.0, 20.0)
        return torch.cat([mid.clamp(min=-80.0), side.clamp(min=-80.0), ratio], dim=1) / 20.0

    def residual(self, x: Tensor, ctx: StageContext) -> Params:
        nf = count_frames(x.shape[-1])
        cond = ctx.cond.vector.to(x.dtype)
        h = self.encoder(cond_concat(self.features(x), cond))  # [b, d, tokens]
        gains = self.gain_head(h.transpose(1, 2)).transpose(1, 2)  # [b, 3, tokens]
        gains = F.interpolate(gains, size=nf, mode="linear", align_corners=False)
        mono = self.mono_head(cond_concat(pool_mean_max(h), cond))
        return {"side_gain_db": gains, "mono_below_hz": mono}

    # -- DSP -------------------------------------------------------------------------------
    def latency(self, params: Params) -> int:
        return LATENCY

    def _split(self, x: Tensor, mono_hz: Tensor, state: dict | None) -> tuple[Tensor, dict]:
        """``[batch, 7, n]`` = M, mid bands 1-3, side bands 1-3 (side high-passed first)."""
        ms = to_mid_side(x)
        if state is None:
            st_hp, st_x = None, None
            freqs = torch.cat(
                [mono_hz, mono_hz.new_tensor(UPPER_CROSSOVERS_HZ).expand(mono_hz.shape[0], 2)],
                -1,
            )
            hp = linkwitz_riley_sos(mono_hz, "highpass")  # [b, 1, 2, 6]
            # Bands 1-3 only (band 0 of the side is dropped; the mid's is not needed).
            bands_sos = crossover_band_sos(freqs.unsqueeze(1))[1:]  # [3, b, 1, sections, 6]
        else:
            # A stream keeps its designs: the IIR engine then reuses their tables too.
            st_hp, st_x = state["hp"], state["xover"]
            hp, bands_sos = state["sos"]
        side, st_hp = sosfilt(ms[:, 1:], hp, st_hp, return_state=True)
        z = torch.cat([ms[:, :1], side], dim=1).unsqueeze(0)  # [1, b, 2, n]
        bands, st_x = sosfilt(z, bands_sos, st_x, return_state=True)
        mids, sides = bands[:, :, 0].transpose(0, 1), bands[:, :, 1].transpose(0, 1)
        out = torch.cat([ms[:, :1], mids, sides], dim=1)
        return out, {"hp": st_hp, "xover": st_x, "sos": (hp, bands_sos)}

    def process(self, x: Tensor, params: Params, state: Any = None) -> tuple[Tensor, Any]:
        """Image ``x [batch, 2, n]``; output delayed by :data:`LATENCY` samples.

        ``state``: IIR states of the split, the buffered band signals from two frames before
        the first frame not yet output, the processed samples waiting to go out, and the
        index of the first frame not yet output (``None`` at the start)."""
        b, _, n = x.shape
        mono_hz = params["mono_below_hz"].to(x.dtype).reshape(b, 1)
        gain_req = params["side_gain_db"].to(x.dtype)  # [b, 3, frames]
        if state is None:
            state = {
                "filters": None,
                "buffer": x.new_zeros(b, _CHANNELS, 2 * FRAME_HOP),
                "queue": x.new_zeros(b, 2, LATENCY),
                "next_frame": 0,
            }
        z, filters = self._split(x, mono_hz, state["filters"])
        buf = torch.cat([state["buffer"].to(x), z], dim=-1)
        first = state["next_frame"]  # absolute index of the first frame not yet output
        buf_start = (first - 2) * FRAME_HOP  # buf[..., 0] is this absolute sample
        complete = buf.shape[-1] // FRAME_HOP
        n_out = max(0, complete - 4)  # frames first .. first + n_out - 1 can be finished
        if n_out > 0:
            y = self._finish(buf[..., : complete * FRAME_HOP], gain_req, buf_start, n_out)
            queue = torch.cat([state["queue"].to(x), y], dim=-1)
        else:
            queue = state["queue"].to(x)
        new_state = {
            "filters": filters,
            "buffer": buf[..., n_out * FRAME_HOP :],
            "queue": queue[..., n:],
            "next_frame": first + n_out,
        }
        return queue[..., :n], new_state

    def _finish(
        self,
        buf: Tensor,
        gain_req: Tensor,
        buf_start: int,
        n_out: int,
        parts: Tensor | None = None,
    ) -> Tensor:
        """Output frames 2 .. 2 + n_out - 1 of ``buf [batch, 7, (n_out + 4) * hop]`` (its frames
        0-1 are context, the last two look-ahead) as left/right ``[batch, 2, n_out * hop]``.

        With ``parts [P, 7, same]`` (band signals of parts summing to a one-song ``buf``), the
        gains computed on ``buf`` are applied to each part instead: ``[P, 2, n_out * hop]``."""
        e = _frame_energy(buf)  # [b, 7, F]
        band_caps = _cap_db(e[:, 1:4], e[:, 4:7])  # [b, 3, F]
        band_gain = _knots_to_samples(band_caps)  # frames 1 .. F-2
        start = buf_start + FRAME_HOP
        length = band_gain.shape[-1]
        requested = frames_to_samples(gain_req, start, length)
        gain = torch.minimum(requested, band_gain)
        side = (torch.pow(10.0, gain / 20.0) * buf[:, 4:7, FRAME_HOP : FRAME_HOP + length]).sum(1)
        mid = buf[:, 0, FRAME_HOP : FRAME_HOP + length]  # frames 1 .. F-2
        safety_caps = _cap_db(_frame_energy(mid), _frame_energy(side)).clamp(max=0.0)
        safety = _knots_to_samples(safety_caps)  # frames 2 .. F-3
        keep = slice(FRAME_HOP, FRAME_HOP + safety.shape[-1])
        if parts is not None:
            side = torch.pow(10.0, gain / 20.0) * parts[:, 4:7, FRAME_HOP : FRAME_HOP + length]
            side = side.sum(1)
            mid = parts[:, 0, FRAME_HOP : FRAME_HOP + length]
        side = torch.pow(10.0, safety / 20.0) * side[:, keep]
        out = from_mid_side(torch.stack([mid[:, keep], side], dim=1))
        return out[..., : n_out * FRAME_HOP]

    def process_shared(self, x: Tensor, parts: Tensor, params: Params) -> Tensor:
        """Offline, latency-compensated imaging of ``parts [P, 2, N]`` with every gain (side
        bands, caps, safety) computed on ``x [1, 2, N]``, their sum; for stem mastering
        (:mod:`mastering.stems`). The outputs sum to ``run_aligned(self, x, params)``."""
        n = x.shape[-1] + LATENCY
        mono_hz = params["mono_below_hz"].to(x.dtype).reshape(1, 1)
        z, _ = self._split(F.pad(x, (0, LATENCY)), mono_hz, None)
        zp, _ = self._split(F.pad(parts, (0, LATENCY)), mono_hz.expand(parts.shape[0], 1), None)
        buf = F.pad(z, (2 * FRAME_HOP, 0))
        bufp = F.pad(zp, (2 * FRAME_HOP, 0))
        complete = buf.shape[-1] // FRAME_HOP
        n_out = max(0, complete - 4)
        end = complete * FRAME_HOP
        y = self._finish(
            buf[..., :end],
            params["side_gain_db"].to(x.dtype),
            -2 * FRAME_HOP,
            n_out,
            parts=bufp[..., :end],
        )
        queue = torch.cat([parts.new_zeros(parts.shape[0], 2, LATENCY), y], dim=-1)
        return queue[..., :n][..., LATENCY:]
