"""Glue compressor: linked-stereo, high-passed sidechain, soft knee, log-domain smoothing,
plus a learned, time-varying gain curve.

DSP (:meth:`Compressor.process`), per sample ``n``:

1. sidechain ``s = HPF_90Hz(x)`` (2nd-order Butterworth, so the bass does not pump the mix);
   linked level ``l[n] = 20 log10 max_c |s_c[n]|`` dBFS;
2. static gain reduction ``c[n] = -gain_computer(l[n])`` (soft knee, Giannoulis, Massberg &
   Reiss, JAES 2012), computed *before* the smoothing (their recommended log-domain topology:
   the smoother sees the reduction, not the level, so attack and release act on the gain);
3. smoothing with the *decoupled* smooth peak detector
   (:func:`mastering.dsp.smoothing.envelope_follower`, ``mode="decoupled"``): a release
   stage ``y1 = max(c, a_R y1 + (1 - a_R) c)`` followed by an attack one-pole. Chosen over
   the branching follower because it is one exact scan whatever the signal (the branching
   follower's fixed-point passes grow with the number of attack/release switches, which an
   audio-rate detector makes every cycle), it is smooth (no slope jump at the switch), and
   its attack also rounds the release onset (Giannoulis et al. recommend the smooth forms).
4. gain ``g[n] = -c_smooth[n] + makeup + offset[n]`` dB, ``offset`` the learned
   ``gain_offset_db`` curve (10 ms frames) linearly interpolated to samples (no zipper), and
   ``y = x 10^(g/20)`` on both channels.

No look-ahead: latency 0.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mastering import SAMPLE_RATE
from mastering.conditioning import ConditioningEncoder
from mastering.dsp._util import cached_constant
from mastering.dsp.biquad import BUTTERWORTH_Q, highpass_sos
from mastering.dsp.dynamics import (
    active_frames,
    amplitude_to_db,
    apply_gain_db,
    frame_peak_db,
    gain_computer_db,
    masked_quantile,
)
from mastering.dsp.iir import sosfilt
from mastering.dsp.smoothing import envelope_follower
from mastering.features import frame_rms_db
from mastering.params import ParamSpec
from mastering.stages._nets import BandConvEncoder, MLPHead, cond_concat, pool_mean_max, zero_init_
from mastering.stages.base import (
    FRAME_HOP,
    Params,
    Stage,
    StageContext,
    frames_to_samples,
    n_frames,
)

#: Sidechain high-pass corner, Hz.
SIDECHAIN_HPF_HZ = 90.0
#: Percentile of the active frame peak levels at which the prior aims its gain reduction.
LOUD_PERCENTILE = 0.95
#: Soft-knee width of the prior, dB.
PRIOR_KNEE_DB = 6.0
#: Threshold used to bypass (above any sample peak of a float master at <= 0 dBFS).
BYPASS_THRESHOLD_DB = 6.0
#: Frames pooled per step of the controller's recurrent network (50 ms).
CONTROL_POOL = 5

_SCALARS = ("threshold_db", "ratio", "knee_db", "attack_ms", "release_ms", "makeup_db")


def _sidechain_sos(like: Tensor) -> Tensor:
    """The sidechain high-pass as one sos row ``[1, 6]`` on ``like``'s device (float64)."""
    return _sidechain_sos_on(like.device)


@cached_constant
def _sidechain_sos_on(device: torch.device) -> Tensor:
    """One read-only tensor per device, so the IIR engine builds its tables once."""
    return (
        highpass_sos(SIDECHAIN_HPF_HZ, BUTTERWORTH_Q, SAMPLE_RATE)
        .reshape(1, 6)
        .to(device=device, dtype=torch.float64)
    )


class CompressorController(nn.Module):
    """Learned residual: temporal convolutions + a GRU over the frame RMS and the conditioning.

    Input per 10 ms frame: the frame RMS (dBFS, scaled) and its deviation from the song's
    median, concatenated with the conditioning vector; frames are averaged in groups of
    :data:`CONTROL_POOL` (50 ms steps), encoded by dilated residual 1-D convolutions
    (:class:`BandConvEncoder`, used along time), then a GRU. Outputs (raw space, all starting
    at exactly zero): a per-step gain offset (linearly upsampled to the frames) and offsets
    of the six scalar parameters from the mean/max-pooled GRU states.

    Shapes: ``x [batch, 2, T]``, ``cond [batch, cond_dim]`` -> ``(curve [batch, 1, frames],
    scalars [batch, 6])``. About 30k parameters.
    """

    def __init__(self, cond_dim: int, hidden: int = 32):
        super().__init__()
        self.encoder = BandConvEncoder(2 + cond_dim, hidden, n_blocks=3, kernel=5)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.curve = zero_init_(nn.Conv1d(hidden, 1, 1))
        self.scalars = MLPHead(2 * hidden + cond_dim, len(_SCALARS), hidden=32, n_hidden=1)

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        rms = frame_rms_db(x).clamp(min=-100.0)  # [B, F]
        n = rms.shape[-1]
        median = rms.median(-1, keepdim=True).values
        feats = torch.stack([(rms + 20.0) / 20.0, (rms - median) / 10.0], dim=1)
        feats = F.avg_pool1d(feats, CONTROL_POOL, CONTROL_POOL, ceil_mode=True)
        h = self.encoder(cond_concat(feats, cond))
        h = _recurrent(self.gru, h.transpose(1, 2))  # [B, steps, hidden]
        h = h.transpose(1, 2)
        curve = F.interpolate(self.curve(h), size=n, mode="linear", align_corners=False)
        scalars = self.scalars(torch.cat([pool_mean_max(h), cond.to(h.dtype)], dim=-1))
        return curve, scalars


#: Most GRU steps per call: cuDNN refuses longer sequences (a 60-minute song has 72,000).
GRU_STEPS_PER_CALL = 32_768


def _recurrent(gru: nn.GRU, x: Tensor) -> Tensor:
    """``gru(x)[0]`` for ``x [B, steps, features]``, in calls of at most
    :data:`GRU_STEPS_PER_CALL` steps with the hidden state carried (the same recurrence)."""
    if x.shape[1] <= GRU_STEPS_PER_CALL:
        return gru(x)[0]
    outs, state = [], None
    for start in range(0, x.shape[1], GRU_STEPS_PER_CALL):
        out, state = gru(x[:, start : start + GRU_STEPS_PER_CALL], state)
        outs.append(out)
    return torch.cat(outs, dim=1)


class Compressor(Stage):
    """Bus compressor for glue (see the module docstring for the DSP).

    Prior (:meth:`prior`), from the conditioning macros and the input's level distribution
    (``L95``: 95th percentile of the 10 ms linked peak levels of the high-passed sidechain over
    the active frames, i.e. those within 40 dB of the loudest and above -80 dBFS):

    * ``glue`` ``g`` -> ``ratio = 1 + 1.5 (g + 1)`` (1 at ``g = -1``, 2.5 at 0, 4 at 1) and a
      target static reduction ``GR95 = 3 (g + 1)`` dB at ``L95``: ``threshold = L95 - GR95
      R / (R - 1)``. So the loudest 5 % of the song is turned down by ``GR95`` dB by the static
      curve (before attack smoothing), quieter passages progressively less.
    * ``knee = 6`` dB.
    * ``punch`` ``p`` -> ``attack = 10 * 2^(1.5 p)`` ms (slower attack lets transients through).
    * tempo and ``glue`` -> ``release = (60000 / bpm) / 4 * 2^(0.5 g)`` ms (a 16th note,
      longer for more glue), so the gain recovers between beats.
    * ``makeup`` = the energy-weighted loudness loss the static curve predicts over the frames
      (auto make-up: loudness roughly preserved).
    * ``PRODUCTION_BuriedVocals`` halves ``GR95`` and ``ratio - 1`` (less compression).
    * ``PRODUCTION_ExtremeDynamics`` -> ratio 1, knee 0, threshold +6 dBFS: bypass (make-up 0).
    * ``gain_offset_db`` = 0 (the learned curve starts flat).
    """

    name: ClassVar[str] = "compressor"
    specs: ClassVar[tuple[ParamSpec, ...]] = (
        ParamSpec("threshold_db", "dB", -60.0, 6.0, doc="threshold of the static curve, dBFS"),
        ParamSpec("ratio", "ratio", 1.0, 20.0, doc="compression ratio above the knee"),
        ParamSpec("knee_db", "dB", 0.0, 24.0, doc="soft-knee width centred on the threshold"),
        ParamSpec("attack_ms", "ms", 0.1, 100.0, doc="attack time constant of the smoother"),
        ParamSpec("release_ms", "ms", 10.0, 2000.0, doc="release time constant"),
        ParamSpec("makeup_db", "dB", -12.0, 24.0, doc="make-up gain"),
        ParamSpec(
            "gain_offset_db",
            "dB",
            -12.0,
            12.0,
            frames=True,
            doc="learned time-varying gain added to the compressor gain (10 ms frames)",
        ),
    )

    def __init__(self, cond_dim: int | None = None):
        super().__init__()
        self.controller = CompressorController(cond_dim or ConditioningEncoder().cond_dim)

    # -- controller -------------------------------------------------------------------------
    def prior(self, x: Tensor, ctx: StageContext) -> Params:
        cond = ctx.cond
        dtype, device = x.dtype, x.device
        glue = cond.macro("glue").to(device, dtype)
        punch = cond.macro("punch").to(device, dtype)
        buried = cond.flag("PRODUCTION_BuriedVocals").to(device, dtype)
        extreme = cond.flag("PRODUCTION_ExtremeDynamics").to(device, dtype)
        tempo = cond.tempo_bpm.to(device, dtype).clamp(20.0, 400.0)

        amount = (glue + 1.0).clamp(min=0.0) * (1.0 - 0.5 * buried)
        ratio = 1.0 + 1.5 * amount
        gr_target = 3.0 * amount
        peaks = frame_peak_db(sosfilt(x, _sidechain_sos(x)), FRAME_HOP)  # [B, F]
        active = active_frames(peaks)
        loud = masked_quantile(peaks, active, LOUD_PERCENTILE, fallback=-100.0)
        threshold = loud - gr_target * ratio / (ratio - 1.0).clamp(min=0.05)
        knee = torch.full_like(ratio, PRIOR_KNEE_DB)
        ratio = ratio * (1.0 - extreme) + extreme
        threshold = (threshold * (1.0 - extreme) + BYPASS_THRESHOLD_DB * extreme).clamp(-60.0, 6.0)
        knee = knee * (1.0 - extreme)

        # Auto make-up: energy-weighted loss of the static curve over the frames.
        static = gain_computer_db(
            peaks, threshold.unsqueeze(-1), ratio.unsqueeze(-1), knee.unsqueeze(-1)
        )
        energy = torch.pow(10.0, frame_rms_db(x) / 10.0)[..., : static.shape[-1]]
        kept = energy * torch.pow(10.0, static / 10.0)
        makeup = 10.0 * torch.log10(energy.sum(-1).clamp(min=1e-20) / kept.sum(-1).clamp(min=1e-20))
        attack = 10.0 * torch.pow(2.0, 1.5 * punch)
        release = (60_000.0 / tempo) / 4.0 * torch.pow(2.0, 0.5 * glue)
        scal = {
            "threshold_db": threshold,
            "ratio": ratio,
            "knee_db": knee,
            "attack_ms": attack.clamp(0.1, 100.0),
            "release_ms": release.clamp(10.0, 2000.0),
            "makeup_db": makeup.clamp(-12.0, 24.0),
        }
        out: Params = {k: v.unsqueeze(-1) for k, v in scal.items()}
        out["gain_offset_db"] = x.new_zeros(x.shape[0], 1, n_frames(x.shape[-1]))
        return out

    def residual(self, x: Tensor, ctx: StageContext) -> Params:
        curve, scalars = self.controller(x, ctx.cond.vector.to(x.device))
        out: Params = {k: scalars[:, i : i + 1] for i, k in enumerate(_SCALARS)}
        out["gain_offset_db"] = curve
        return out

    # -- DSP --------------------------------------------------------------------------------
    def gain_db(
        self, x: Tensor, params: Params, state: dict[str, Any] | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        """The compressor's total gain curve ``[batch, N]`` in dB for the chunk ``x [batch, 2,
        N]`` (smoothed reduction, make-up and the learned offset), and the new state."""
        B, _, N = x.shape
        state = state or {"pos": 0, "hpf": None, "env": x.new_zeros(B, 2)}
        side, hpf_state = sosfilt(x, _sidechain_sos(x), state["hpf"], return_state=True)
        level = amplitude_to_db(side.abs().amax(dim=1))  # [B, N]
        static = -gain_computer_db(
            level, params["threshold_db"], params["ratio"], params["knee_db"]
        )
        reduction, env_state = envelope_follower(
            static,
            params["attack_ms"].reshape(B),
            params["release_ms"].reshape(B),
            SAMPLE_RATE,
            state["env"],
            mode="decoupled",
            return_state=True,
        )
        offset = frames_to_samples(params["gain_offset_db"], state["pos"], N)[:, 0]
        gain = -reduction + params["makeup_db"] + offset
        return gain, {"pos": state["pos"] + N, "hpf": hpf_state, "env": env_state}

    def process(
        self, x: Tensor, params: Params, state: dict[str, Any] | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        gain, new_state = self.gain_db(x, params, state)
        return apply_gain_db(x, gain), new_state
