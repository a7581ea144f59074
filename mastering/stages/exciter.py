"""Exciter stage: harmonic enhancement of the upper bands, tape soft clipping and LoFi.

DSP body
--------
1. **Bands**: Linkwitz-Riley (LR4) crossovers at 2, 5 and 9 kHz split off three upper bands
   (2-5 kHz, 5-9 kHz, >= 9 kHz) with :func:`mastering.dsp.iir.sosfilt` (chunk state).
2. **Oversampled nonlinearities** (``factor`` x, default 4, :mod:`mastering.dsp.resample`): each
   band is driven by ``drive_db`` into an asymmetric tanh
   ``s(u) = tanh(u + b) - tanh(b) - sech^2(b) u`` (``b = 0.25``: odd and even harmonics; the
   linear part is subtracted, so only generated components remain), scaled back by the drive;
   in parallel the full-band signal goes through the tape soft clip
   ``tape * (tanh(k x) / k - x)`` with ``k = 10^(tape * 12 dB / 20)`` (again only the change
   is kept, so ``tape = 0`` is an exact bypass). Both are downsampled with the anti-aliasing
   filter of :func:`mastering.dsp.resample.downsample`.
3. **Keep the upper harmonics**: each band's generated signal is high-passed (LR4) at 1.5 x the
   band's lower edge (3, 7.5, 13.5 kHz), removing difference tones, then mixed in by
   ``amount``.
4. **LoFi** (``PRODUCTION_LoFi``): ``y + lofi * (LP(Q(y)) - y)`` with ``Q`` a quantizer to
   ``24 - 12 * lofi`` bits (12 bits at 100 %; straight-through gradient) and ``LP`` an 8th-order
   elliptic low-pass at 11 kHz (0.5 dB ripple, -34 dB at 12 kHz, -74 dB at 13 kHz). The tape
   soft clip of the LoFi sound is the ``tape`` parameter (its prior is 60 % with LoFi).

Steps 2-3 are chunk-safe by carrying ``2 * half_width`` input samples of history
(:mod:`mastering.dsp.chunking`); the output is delayed by :data:`LATENCY` = 32 samples
(0.67 ms), the look-ahead of the resampling round trip; the dry path is delayed to match.

Prior
-----
* ``drive_db`` per band: brings the band's long-term RMS to -6 dBFS at the shaper input,
  +6 dB per unit of ``saturation``.
* ``amount`` per band: ``(20 % + 20 % * saturation + 10 % * brightness + 5 %/dB * deficit)``
  times band weights (0.7, 1.0, 0.8), where ``deficit`` (dB, >= 0, soft-limited to ~8 dB) is
  how far the input's mid spectrum above 6 kHz lies under the style's target balance
  (:func:`mastering.stages.eq.target_balance_db`) relative to its 200 Hz-4 kHz body. With
  LoFi the top band is off.
* ``tape``: 15 % per unit of positive ``saturation``, +60 % with ``PRODUCTION_LoFi``.
* ``lofi``: 100 % with ``PRODUCTION_LoFi``, else 0.

Learned residual
----------------
A residual MLP (:class:`mastering.stages._nets.MLPHead`, zero-initialized last layer, ~14k
parameters) over the mid spectrum shape (40 bands), the band levels, the deficit and the
conditioning vector, giving raw offsets for every parameter.
"""

from __future__ import annotations

import itertools
from typing import Any

import scipy.signal
import torch
import torch.nn.functional as F
from torch import Tensor

from mastering.conditioning import ConditioningEncoder
from mastering.dsp.chunking import apply_chunked
from mastering.dsp.crossover import crossover_band_sos, linkwitz_riley_sos
from mastering.dsp.iir import sosfilt
from mastering.dsp.resample import HALF_WIDTH, oversampled_apply
from mastering.dsp.saturation import shaper_harmonics, soft_clip_change
from mastering.features import (
    band_centers,
    mid_side_band_spectrum_db,
    normalized_tilt_db,
    stft_power,
)
from mastering.params import ParamSpec
from mastering.stages._nets import MLPHead, cond_concat
from mastering.stages.base import Params, Stage, StageContext
from mastering.stages.eq import smooth_bands, target_balance_db

#: Lower edges of the three excited bands, Hz (LR4 crossovers).
BAND_EDGES_HZ: tuple[float, ...] = (2_000.0, 5_000.0, 9_000.0)
#: Post high-pass corners (1.5 x the band edges), Hz.
POST_HP_HZ: tuple[float, ...] = tuple(1.5 * f for f in BAND_EDGES_HZ)
#: Asymmetry bias of the harmonic shaper (even harmonics).
SHAPER_BIAS = 0.25
#: Tape soft-clip drive at ``tape = 100 %``, dB.
TAPE_DRIVE_DB = 12.0
#: LoFi low-pass: 8th-order elliptic, 0.5 dB ripple, 80 dB stop band, edge 11 kHz.
LOFI_CUTOFF_HZ = 11_000.0
#: Bits of the LoFi quantizer at ``lofi = 100 %`` (24 bits at 0 %).
LOFI_BITS = 12.0
#: Look-ahead of the oversampled nonlinearity (the resampling round trip), samples.
LATENCY = 2 * HALF_WIDTH

#: Prior constants.
SHAPER_LEVEL_DB = -6.0
BAND_WEIGHTS = (0.7, 1.0, 0.8)

EXCITER_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "amount", "%", 0.0, 100.0, size=3,
        doc="harmonic mix of the 2-5 kHz, 5-9 kHz and >= 9 kHz bands",
    ),
    ParamSpec("drive_db", "dB", 0.0, 48.0, size=3, doc="gain into each band's waveshaper"),
    ParamSpec("tape", "%", 0.0, 100.0, doc="tape soft clipping of the full band"),
    ParamSpec("lofi", "%", 0.0, 100.0, doc="LoFi: 12-bit quantization and 11 kHz bandwidth"),
)  # fmt: skip


def _bypassable(amount: Tensor) -> bool:
    """Whether a path scaled by ``amount`` (every song's) can be skipped exactly: all zero
    and no gradient wanted (a skipped path has no gradient w.r.t. its amount)."""
    wants_grad = torch.is_grad_enabled() and amount.requires_grad
    return not wants_grad and not bool(amount.detach().ne(0).any())


def quantize_ste(x: Tensor, bits: Tensor) -> Tensor:
    """Round ``x`` to a grid of ``2^(1 - bits)`` (full scale +/-1 over ``bits`` bits), with a
    straight-through gradient (identity w.r.t. ``x``). ``bits`` broadcasts against ``x``."""
    step = torch.pow(2.0, 1.0 - bits)
    return x + (torch.round(x / step) * step - x).detach()


class Exciter(Stage):
    """Harmonic exciter, tape soft clip and LoFi (see the module docstring).

    Args:
        factor: oversampling factor of the nonlinearities (>= 2).
        cond_dim: size of ``ctx.cond.vector`` (default: :class:`ConditioningEncoder`'s).
    """

    name = "exciter"
    specs = EXCITER_SPECS

    def __init__(self, factor: int = 4, cond_dim: int | None = None, sample_rate: int = 48_000):
        super().__init__()
        if factor < 2:
            raise ValueError("oversampling factor must be >= 2")
        self.factor = factor
        self.sample_rate = sample_rate
        cond_dim = ConditioningEncoder().cond_dim if cond_dim is None else cond_dim
        band_sos = crossover_band_sos(BAND_EDGES_HZ, sample_rate)[1:]  # [3, S, 6]
        post = torch.stack([linkwitz_riley_sos(f, "highpass", sample_rate) for f in POST_HP_HZ])
        lofi = scipy.signal.ellip(8, 0.5, 80.0, LOFI_CUTOFF_HZ, "low", fs=sample_rate, output="sos")
        self.register_buffer("band_sos", band_sos.float(), persistent=False)
        self.register_buffer("post_sos", post.float(), persistent=False)
        self.register_buffer("lofi_sos", torch.tensor(lofi, dtype=torch.float32), persistent=False)
        n_in = 40 + 3 + 1 + cond_dim
        self.head = MLPHead(n_in, sum(s.size for s in EXCITER_SPECS), hidden=64, n_hidden=3)

    # -- controller ------------------------------------------------------------------------
    def analyze(self, x: Tensor, ctx: StageContext) -> dict[str, Tensor]:
        """Features of ``x [batch, 2, n]``: ``shape`` (mid spectrum shape, dB ``[batch, 40]``),
        ``band_db`` (long-term RMS of the three bands, dBFS ``[batch, 3]``) and ``deficit``
        (high-frequency deficit under the target, dB >= 0, ``[batch]``)."""
        f = band_centers().to(x.device, x.dtype)
        shape = smooth_bands(normalized_tilt_db(mid_side_band_spectrum_db(x)[:, 0]))
        target = normalized_tilt_db(target_balance_db(f, ctx.cond).to(x.dtype))
        d = target - shape
        body = d[:, (f >= 200) & (f <= 4_000)].mean(-1)
        high = d[:, (f >= 6_000) & (f <= 16_000)].mean(-1)
        deficit = 8.0 * torch.tanh(F.softplus(high - body) / 8.0)
        # Band RMS from the STFT: mean square of a band = 2/N * sum of its bins' power.
        p = stft_power(x).mean(-1).mean(1)  # [b, bins]
        n_fft = 2 * (p.shape[-1] - 1)
        freqs = torch.fft.rfftfreq(n_fft, 1.0 / self.sample_rate).to(x.device)
        edges = (*BAND_EDGES_HZ, self.sample_rate / 2 + 1)
        ms = torch.stack(
            [p[:, (freqs >= lo) & (freqs < hi)].sum(-1) for lo, hi in itertools.pairwise(edges)],
            dim=-1,
        ) * (2.0 / n_fft)
        band_db = 10.0 * torch.log10(ms + 1e-12)
        return {"shape": shape, "band_db": band_db, "deficit": deficit}

    def prior(self, x: Tensor, ctx: StageContext) -> Params:
        feats = self.shared("analysis", lambda: self.analyze(x, ctx))
        cond = ctx.cond
        sat = cond.macro("saturation").to(x.dtype)
        bright = cond.macro("brightness").to(x.dtype)
        lofi = cond.flag("PRODUCTION_LoFi").to(x.dtype)
        drive = SHAPER_LEVEL_DB - feats["band_db"] + 6.0 * sat.unsqueeze(-1)
        base = 20.0 + 20.0 * sat + 10.0 * bright + 5.0 * feats["deficit"]  # [b] %
        weights = torch.tensor(BAND_WEIGHTS, device=x.device, dtype=x.dtype)
        amount = base.unsqueeze(-1) * weights
        amount = torch.cat([amount[:, :2], amount[:, 2:] * (1.0 - lofi).unsqueeze(-1)], dim=-1)
        tape = 15.0 * F.relu(sat) + 60.0 * lofi
        return {
            "amount": amount,
            "drive_db": drive,
            "tape": tape.unsqueeze(-1),
            "lofi": 100.0 * lofi.unsqueeze(-1),
        }

    def residual(self, x: Tensor, ctx: StageContext) -> Params:
        feats = self.shared("analysis", lambda: self.analyze(x, ctx))
        h = torch.cat(
            [
                feats["shape"] / 10.0,
                (feats["band_db"] + 30.0) / 20.0,
                feats["deficit"].unsqueeze(-1) / 5.0,
            ],
            dim=-1,
        )
        out = self.head(cond_concat(h, ctx.cond.vector.to(x.dtype)))
        params, i = {}, 0
        for s in EXCITER_SPECS:
            params[s.name] = out[:, i : i + s.size]
            i += s.size
        return params

    # -- DSP -------------------------------------------------------------------------------
    def process(self, x: Tensor, params: Params, state: Any = None) -> tuple[Tensor, Any]:
        """Apply to ``x [batch, 2, n]``; output delayed by :data:`LATENCY` samples.

        ``state``: dict of the crossover, history, post high-pass and LoFi filter states."""
        state = state or {}
        dt = x.dtype
        amount = params["amount"].to(dt).view(-1, 1, 3, 1) / 100.0
        drive = torch.pow(10.0, params["drive_db"].to(dt) / 20.0).view(-1, 1, 3, 1)
        tape = params["tape"].to(dt).view(-1, 1, 1) / 100.0
        lofi = params["lofi"].to(dt).view(-1, 1, 1) / 100.0
        k_tape = torch.pow(10.0, tape * (TAPE_DRIVE_DB / 20.0))

        bands, s_xover = sosfilt(
            x.unsqueeze(2), self.band_sos.to(dt), state.get("xover"), return_state=True
        )  # [b, 2, 3, n]
        stacked = torch.cat([x.unsqueeze(2), bands], dim=2)  # [b, 2, 4, n]
        M = self.factor
        # Without gradients, an all-zero tape (or LoFi) amount makes its path an exact
        # identity: skip it (the full band is then not oversampled: a quarter of the work).
        # A stream decides on its first block (reading the amounts waits for the device).
        if "use" in state:
            use_tape, use_lofi = state["use"]
        else:
            use_tape = not _bypassable(params["tape"])
            use_lofi = not _bypassable(params["lofi"])

        def op(buf: Tensor) -> Tensor:
            # Each oversampled nonlinearity is one blocked round trip (resample.oversampled_apply).
            wet = oversampled_apply(
                buf[:, :, 1:], lambda u: shaper_harmonics(u, drive, SHAPER_BIAS), M
            )
            full = buf[:, :, :1]
            if use_tape:
                t, k = tape.unsqueeze(-1), k_tape.unsqueeze(-1)
                full = full + oversampled_apply(full, lambda u: soft_clip_change(u, t, k), M)
            return torch.cat([full, wet], dim=2)

        out, hist = apply_chunked(
            stacked, state.get("history"), op, past=LATENCY, lookahead=LATENCY
        )
        wet, s_post = sosfilt(
            out[:, :, 1:], self.post_sos.to(dt), state.get("post"), return_state=True
        )
        y = out[:, :, 0] + (amount * wet).sum(2)
        s_lofi = state.get("lofi")
        if use_lofi:
            bits = 24.0 - (24.0 - LOFI_BITS) * lofi
            lp, s_lofi = sosfilt(
                quantize_ste(y, bits), self.lofi_sos.to(dt), s_lofi, return_state=True
            )
            y = y + lofi * (lp - y)
        return y, {
            "xover": s_xover,
            "history": hist,
            "post": s_post,
            "lofi": s_lofi,
            "use": (use_tape, use_lofi),
        }

    def latency(self, params: Params) -> int:
        return LATENCY
