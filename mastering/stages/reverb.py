"""Reverb and ambience: a generated stereo impulse response sent from the mid channel.

DSP body
--------
The controller's parameters describe an impulse response, which
:func:`mastering.dsp.ir.synthesize_ir` generates (differentiably) from fixed-seed stereo noise:
per-band exponential decays ``exp(-6.91 t / RT60_b)`` in four bands (below 250 Hz, 250 Hz-2 kHz,
2-6 kHz, above 6 kHz), a pre-delay with a 5 ms fade-in, a tail length (the last quarter fades
out), a first-order high-frequency damping of the tail, and the L/R decorrelation ``width``;
unit energy per channel. The mid channel ``(L + R) / 2`` is convolved with it
(:func:`mastering.dsp.fir.fft_convolve`, overlap-add for long signals) -- mono in, stereo
out, like a plate -- and added to the dry signal at ``wet_pct`` percent amplitude::

    y = x + wet_pct / 100 * (mid(x) * IR)

``wet_pct = 0`` returns the input exactly. Streaming carries the convolution tail of the
previous blocks (``IR length - 1`` samples) and the IR itself in the state; the stage is
causal (no latency) and the concatenated blocks equal the offline output.

Controller
----------
Prior (physical units), from the macros, the genre and the tempo (``bar = 240 / tempo_bpm``
seconds, 4/4):

* ``wet_pct = 100 * 10^(wet_db / 20)`` with ``wet_db = -25 + 9 * space + GENRE.wet_offset``
  (about -23 dB for pop, -19 dB for ballads, -17 dB for ambient, -36/-34 dB for metal/hiphop:
  almost dry);
* mid-band decay ``RT60 = bars * bar`` with ``bars = 0.4 * 2^(1.3 * space) * GENRE.decay``,
  **snapped** to the nearest musical fraction of a bar in ``{1, 1.5} * 2^k`` (1/8, 3/16, 1/4,
  3/8, 1/2, 3/4, 1, 3/2 bars ...; straight-through: the snapped value forward, the gradient of
  the unsnapped one backward), then clamped to 0.2-6 s; the other bands follow the genre's
  ratios (``low``, and ``high * 2^(0.5 * brightness)`` at the top, its square root at 2-6 kHz);
* ``pre_delay_ms``: the genre's note fraction of a whole note (1/64 for most, 1/32 for
  ambient/cinematic/synthwave, 1/128 for metal/hiphop) times ``2^(0.3 * space)``, snapped the
  same way to ``{1, 1.5} * 2^k`` whole notes (e.g. 1/64 note = 31 ms at 120 BPM), at most
  120 ms;
* ``tail_s = 1.1 * max(RT60)`` (at most 8 s); ``damping_hz = GENRE.damping * 2^brightness``;
  ``width = GENRE.width + 0.15 * width`` macro.

So pop is short and bright, ballads get a long bright plate-like tail, ambient a long, dark
and fully decorrelated one, metal and hiphop stay almost dry; ``space`` scales wet and length.

Learned residual: a zero-initialized MLP (:class:`mastering.stages._nets.MLPHead`) on the
long-term mid spectrum shape and side/mid ratio (10 bands), crest factor, correlation and the
conditioning vector, giving raw offsets for every parameter (~8k parameters).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mastering import SAMPLE_RATE
from mastering.conditioning import GENRES, ConditioningEncoder
from mastering.dsp.fir import fft_convolve
from mastering.dsp.ir import ir_length, synthesize_ir
from mastering.features import correlation as lr_correlation
from mastering.features import (
    crest_factor_db,
    mid_side_band_spectrum_db,
    normalized_tilt_db,
)
from mastering.params import ParamSpec
from mastering.stages._nets import MLPHead
from mastering.stages.base import Params, Stage, StageContext

#: The bands of ``rt60_s`` (:data:`mastering.dsp.ir.DEFAULT_BAND_EDGES_HZ`).
_BAND_DOC = "below 250 Hz, 250 Hz-2 kHz, 2-6 kHz, above 6 kHz"

REVERB_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("rt60_s", "s", 0.1, 8.0, size=4, doc=f"decay time (-60 dB) per band: {_BAND_DOC}"),
    ParamSpec("pre_delay_ms", "ms", 0.0, 150.0, doc="silence before the tail (tempo-synced)"),
    ParamSpec("tail_s", "s", 0.1, 8.0, doc="IR length after the pre-delay (last 25 % fades)"),
    ParamSpec("damping_hz", "Hz", 1_000.0, 20_000.0, doc="1st-order HF damping of the tail"),
    ParamSpec("width", "ratio", 0.0, 1.0, doc="L/R decorrelation of the tail (0 mono, 1 wide)"),
    ParamSpec("wet_pct", "%", 0.0, 30.0, doc="wet send level, % amplitude (10 % = -20 dB)"),
)

#: Per-genre reverb character: wet offset (dB), decay scale, pre-delay note (1/N of a whole
#: note), low-band RT ratio, top-band RT ratio, damping corner (Hz), width.
GENRE_CHARACTER: dict[str, tuple[float, float, float, float, float, float, float]] = {
    #             wet   decay  1/N   low   high  damp     width
    "pop": (0.0, 0.7, 64, 0.9, 0.8, 12_000.0, 0.7),
    "rock": (-2.0, 0.8, 64, 1.0, 0.6, 9_000.0, 0.7),
    "metal": (-8.0, 0.7, 128, 0.8, 0.5, 8_000.0, 0.6),
    "edm": (-2.0, 0.7, 64, 0.7, 0.7, 11_000.0, 0.9),
    "hiphop": (-9.0, 0.6, 128, 0.8, 0.6, 9_000.0, 0.6),
    "jazz": (0.0, 0.9, 64, 1.1, 0.6, 8_000.0, 0.8),
    "lofi": (-1.0, 0.8, 64, 1.0, 0.4, 5_000.0, 0.6),
    "ambient": (0.0, 1.5, 32, 1.2, 0.55, 7_000.0, 1.0),
    "synthwave": (0.0, 1.0, 32, 1.0, 0.7, 10_000.0, 0.9),
    "ballad": (0.0, 1.0, 64, 0.9, 0.85, 13_000.0, 0.85),
    "classical": (0.0, 1.1, 64, 1.2, 0.6, 8_000.0, 0.9),
    "cinematic": (0.0, 1.2, 32, 1.2, 0.65, 9_000.0, 1.0),
    "folk": (-1.0, 0.9, 64, 1.0, 0.7, 10_000.0, 0.8),
    "unknown": (0.0, 1.0, 64, 1.0, 0.7, 10_000.0, 0.8),
}
#: Wet level at space 0 before the genre offset, dB, and its change per unit of space.
WET_BASE_DB, WET_PER_SPACE_DB = -25.0, 9.0
#: Decay at space 0 (bars, before the genre scale) and its octaves per unit of space.
DECAY_BASE_BARS, DECAY_OCTAVES_PER_SPACE = 0.4, 1.3
#: Bounds of the prior's mid-band RT60 (s) and pre-delay (ms).
RT60_PRIOR_RANGE = (0.2, 6.0)
MAX_PRIOR_PRE_DELAY_MS = 120.0
#: Tail length over the longest RT60.
TAIL_OVER_RT60 = 1.1


def snap_musical(value: Tensor) -> Tensor:
    """Snap positive values to the grid ``{1, 1.5} * 2^k`` (straight notes and dotted ones),
    nearest in log; straight-through (forward: snapped, gradient: identity)."""
    v = torch.log2(value.detach().clamp(min=1e-6))
    k = torch.floor(v)
    candidates = torch.stack([k, k + math.log2(1.5), k + 1.0], dim=-1)
    best = candidates.gather(-1, (candidates - v.unsqueeze(-1)).abs().argmin(-1, keepdim=True))
    snapped = torch.pow(2.0, best.squeeze(-1))
    return value + (snapped - value).detach()


class Reverb(Stage):
    """Generated-IR reverb/ambience (see the module docstring).

    Args:
        cond_dim: size of ``ctx.cond.vector`` (default: :class:`ConditioningEncoder`'s).
        hidden: width of the residual MLP.
    """

    name = "reverb"
    specs = REVERB_SPECS

    def __init__(self, cond_dim: int | None = None, hidden: int = 64):
        super().__init__()
        cond_dim = ConditioningEncoder().cond_dim if cond_dim is None else cond_dim
        table = torch.tensor([GENRE_CHARACTER[g] for g in GENRES], dtype=torch.float32)
        self.register_buffer("genre_character", table, persistent=False)
        self.n_out = sum(s.size for s in REVERB_SPECS)
        self.head = MLPHead(22 + cond_dim, self.n_out, hidden=hidden, n_hidden=2)

    # -- controller ------------------------------------------------------------------------
    def prior(self, x: Tensor, ctx: StageContext) -> Params:
        """Tempo-synced, genre- and macro-dependent parameters (see the module docstring)."""
        cond = ctx.cond
        dtype = x.dtype
        g = self.genre_character.to(x.device, dtype)[cond.genre.to(x.device)]  # [b, 7]
        wet_off, decay_scale, note, low, high, damp, width_g = g.unbind(-1)
        space = cond.macro("space").to(dtype)
        bright = cond.macro("brightness").to(dtype)
        bar_s = 240.0 / cond.tempo_bpm.to(x.device, dtype).clamp(20.0, 400.0)

        wet_db = WET_BASE_DB + WET_PER_SPACE_DB * space + wet_off
        bars = DECAY_BASE_BARS * torch.pow(2.0, DECAY_OCTAVES_PER_SPACE * space) * decay_scale
        rt_mid = (snap_musical(bars) * bar_s).clamp(*RT60_PRIOR_RANGE)
        top = (high * torch.pow(2.0, 0.5 * bright)).clamp(0.2, 1.2)
        rt60 = torch.stack([rt_mid * low, rt_mid, rt_mid * top.sqrt(), rt_mid * top], -1)
        whole_ms = 1000.0 * bar_s
        pre_delay = snap_musical(torch.pow(2.0, 0.3 * space) / note) * whole_ms
        pre_delay = pre_delay.clamp(max=MAX_PRIOR_PRE_DELAY_MS)
        tail = (TAIL_OVER_RT60 * rt60.amax(-1)).clamp(max=8.0)
        damping = (damp * torch.pow(2.0, bright)).clamp(1_500.0, 20_000.0)
        width = (width_g + 0.15 * cond.macro("width").to(dtype)).clamp(0.0, 1.0)
        return {
            "rt60_s": rt60,
            "pre_delay_ms": pre_delay.unsqueeze(-1),
            "tail_s": tail.unsqueeze(-1),
            "damping_hz": damping.unsqueeze(-1),
            "width": width.unsqueeze(-1),
            "wet_pct": (100.0 * torch.pow(10.0, wet_db / 20.0)).unsqueeze(-1),
        }

    def features(self, x: Tensor) -> Tensor:
        """Residual input ``[batch, 22]``: mid spectrum shape and side-minus-mid on 10 bands
        (dB / 10), crest factor (dB / 10) and L/R correlation."""
        spec = mid_side_band_spectrum_db(x)  # [b, 2, 40]
        p = torch.pow(10.0, spec / 10.0).unflatten(-1, (10, 4)).mean(-1)  # [b, 2, 10]
        db = 10.0 * torch.log10(p + 1e-10)
        shape = normalized_tilt_db(db[:, 0]).clamp(min=-60.0)
        side = (db[:, 1] - db[:, 0]).clamp(-40.0, 20.0)
        extra = torch.stack([crest_factor_db(x) / 10.0, lr_correlation(x)], dim=-1)
        return torch.cat([shape / 10.0, side / 10.0, extra], dim=-1)

    def residual(self, x: Tensor, ctx: StageContext) -> Params:
        out = self.head(torch.cat([self.features(x), ctx.cond.vector.to(x.dtype)], dim=-1))
        params, i = {}, 0
        for s in REVERB_SPECS:
            params[s.name] = out[:, i : i + s.size]
            i += s.size
        return params

    # -- DSP -------------------------------------------------------------------------------
    def impulse_response(self, params: Params, like: Tensor | None = None) -> Tensor:
        """The stereo IR ``[batch, 2, length]`` of the parameters (unit energy per channel)."""
        p = {k: v if like is None else v.to(like.dtype) for k, v in params.items()}
        return synthesize_ir(
            p["rt60_s"],
            p["pre_delay_ms"],
            p["tail_s"],
            p["damping_hz"],
            p["width"],
            length=ir_length(p["pre_delay_ms"], p["tail_s"], SAMPLE_RATE),
            sample_rate=SAMPLE_RATE,
        )

    def process(self, x: Tensor, params: Params, state: Any = None) -> tuple[Tensor, Any]:
        """``y = x + wet * (mid(x) * IR)`` for ``x [batch, 2, n]`` (no latency).

        ``state``: ``{"ir": [batch, 2, L], "tail": [batch, 2, L - 1]}``, the IR (generated on
        the first block and reused: parameters are fixed within a stream) and the part of the
        previous blocks' wet output that falls after them (``None`` at the start)."""
        n = x.shape[-1]
        if state is None:
            ir = self.impulse_response(params, x).to(x.device)
            tail = None
        else:
            ir, tail = state["ir"], state["tail"]
        send = 0.5 * (x[:, 0:1] + x[:, 1:2])  # [b, 1, n]
        wet = fft_convolve(send, ir)  # [b, 2, n + L - 1]
        if tail is not None:
            wet = torch.cat([wet[..., : tail.shape[-1]] + tail, wet[..., tail.shape[-1] :]], -1)
        mix = params["wet_pct"].to(x.dtype).reshape(-1, 1, 1) / 100.0
        y = x + mix * wet[..., :n]
        return y, {"ir": ir, "tail": wet[..., n:]}
