"""Look-ahead true-peak limiter: trims the input's true peak to the ceiling, pushes it
``drive_db`` above, and limits back to the ceiling.

DSP (:meth:`Limiter.process`): ``x * 10^((trim + drive)/20)`` into
:func:`mastering.dsp.dynamics.lookahead_limiter` at ``ceiling_dbtp`` (4x-oversampled true-peak
sidechain, sliding maximum over the look-ahead, exponential release, moving-average attack
ramp). The output is delayed by the look-ahead (:meth:`Limiter.latency` samples).

``trim_db`` is measured, not learned: it puts the input's true peak exactly at the ceiling,
so ``drive_db`` means the same thing for every input level: how many dB the peaks are pushed
into the limiter (roughly the peak-to-loudness ratio it removes).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mastering import SAMPLE_RATE
from mastering.conditioning import ConditioningEncoder
from mastering.dsp.dynamics import (
    active_frames,
    amplitude_to_db,
    lookahead_limiter,
    lookahead_samples,
    masked_quantile,
)
from mastering.dsp.resample import max_abs_oversampled
from mastering.features import frame_rms_db
from mastering.params import ParamSpec
from mastering.stages._nets import MLPHead
from mastering.stages.base import Params, Stage, StageContext

#: Crest factor (dB, sample peak over active RMS) the prior aims for at ``drive = 0``.
NEUTRAL_CREST_DB = 12.0
#: Crest reduction (dB) per unit of the ``drive`` macro.
CREST_PER_DRIVE_DB = 4.0
#: Look-ahead of the prior, ms.
PRIOR_LOOKAHEAD_MS = 3.0
#: Number of density features fed to the controller.
N_FEATURES = 5


def density_features(x: Tensor) -> Tensor:
    """How dense the input already is: ``[batch, 5]`` =
    (sample peak dBFS, active RMS dBFS, crest dB = their difference, std of the active 10 ms
    frame RMS in dB, 95th - 50th percentile of it in dB).

    "Active" frames are those within 20 dB of the loudest frame and above -70 dBFS (a gate
    like BS.1770's relative gate), so fades and silences do not inflate the crest.
    Differentiable w.r.t. ``x`` (masks are constants).
    """
    rms = frame_rms_db(x).clamp(min=-120.0)  # [B, F]
    active = active_frames(rms, range_db=20.0, floor_db=-70.0)
    power = torch.pow(10.0, rms / 10.0)
    n = active.sum(-1).clamp(min=1)
    mean_power = torch.where(active, power, torch.zeros_like(power)).sum(-1) / n
    rms_active = 10.0 * torch.log10(mean_power + 1e-12)
    peak = amplitude_to_db(x.abs().amax(dim=(1, 2)))
    mean_db = torch.where(active, rms, torch.zeros_like(rms)).sum(-1) / n
    var = torch.where(active, (rms - mean_db.unsqueeze(-1)).square(), torch.zeros_like(rms))
    std = (var.sum(-1) / n + 1e-6).sqrt()
    p95 = masked_quantile(rms, active, 0.95, fallback=-120.0)
    p50 = masked_quantile(rms, active, 0.50, fallback=-120.0)
    return torch.stack([peak, rms_active, peak - rms_active, std, p95 - p50], dim=-1)


class Limiter(Stage):
    """True-peak brickwall limiter with drive.

    Prior (:meth:`prior`):

    * ``drive_db = clip(crest - (12 - 4 drive_macro), 0, 12)``: the macro sets a target crest
      factor (sample peak over active RMS; 12 dB at ``drive = 0``, 8 dB at 1, 16 dB at -1) and
      the drive is how far the input's measured crest is above it, so an input that is already
      dense is pushed less.
    * ``PRODUCTION_ExtremeDynamics`` -> ``drive_db = 0``: the limiter is only a safety at the
      ceiling.
    * ``ceiling_dbtp`` = the configured ceiling (-1 dBTP by default), ``lookahead_ms = 3``,
      ``release_ms = (60000 / bpm) / 4 * 2^(-0.5 drive_macro)`` clipped to 20..500 ms (a 16th
      note, faster when driven harder).
    * ``trim_db = ceiling - true_peak(x)`` (measured at 4x): not learned.

    Learned residual: an MLP (:class:`mastering.stages._nets.MLPHead`, zero-initialized output)
    on :func:`density_features` (scaled) and the conditioning vector -> raw offsets of
    ``drive_db`` and ``release_ms``.
    """

    name: ClassVar[str] = "limiter"
    specs: ClassVar[tuple[ParamSpec, ...]] = (
        ParamSpec("drive_db", "dB", 0.0, 12.0, doc="how far the peaks are pushed into the limiter"),
        ParamSpec("ceiling_dbtp", "dBTP", -20.0, 0.0, doc="true-peak ceiling (4x oversampled)"),
        ParamSpec("lookahead_ms", "ms", 1.0, 5.0, doc="look-ahead (= latency; batch maximum)"),
        ParamSpec("release_ms", "ms", 10.0, 1000.0, doc="gain recovery: 8.7 dB per release_ms"),
        ParamSpec(
            "trim_db",
            "dB",
            -60.0,
            60.0,
            doc="measured gain putting the input's true peak at the ceiling",
        ),
    )

    def __init__(
        self, cond_dim: int | None = None, ceiling_dbtp: float = -1.0, oversample: int = 4
    ):
        super().__init__()
        self.ceiling_dbtp = float(ceiling_dbtp)
        self.oversample = int(oversample)
        cond_dim = cond_dim or ConditioningEncoder().cond_dim
        self.controller = MLPHead(N_FEATURES + cond_dim, 2, hidden=64, n_hidden=2)

    def configure(self, ceiling_dbtp: float | None = None) -> None:
        """Set the ceiling the prior uses (dBTP)."""
        if ceiling_dbtp is not None:
            self.ceiling_dbtp = float(ceiling_dbtp)

    # -- controller -------------------------------------------------------------------------
    def prior(self, x: Tensor, ctx: StageContext) -> Params:
        cond = ctx.cond
        dtype, device = x.dtype, x.device
        drive_macro = cond.macro("drive").to(device, dtype)
        extreme = cond.flag("PRODUCTION_ExtremeDynamics").to(device, dtype)
        tempo = cond.tempo_bpm.to(device, dtype).clamp(20.0, 400.0)
        crest = self.shared("density", lambda: density_features(x))[:, 2]
        target = NEUTRAL_CREST_DB - CREST_PER_DRIVE_DB * drive_macro
        drive = (crest - target).clamp(0.0, 12.0) * (1.0 - extreme)
        release = ((60_000.0 / tempo) / 4.0 * torch.pow(2.0, -0.5 * drive_macro)).clamp(20.0, 500.0)
        ceiling = torch.full_like(drive, self.ceiling_dbtp)
        peak = amplitude_to_db(max_abs_oversampled(x, self.oversample).amax(-1))
        return {
            "drive_db": drive.unsqueeze(-1),
            "ceiling_dbtp": ceiling.unsqueeze(-1),
            "lookahead_ms": torch.full_like(ceiling, PRIOR_LOOKAHEAD_MS).unsqueeze(-1),
            "release_ms": release.unsqueeze(-1),
            "trim_db": (ceiling - peak).clamp(-60.0, 60.0).unsqueeze(-1),
        }

    def residual(self, x: Tensor, ctx: StageContext) -> Params:
        f = self.shared("density", lambda: density_features(x))
        scaled = torch.cat([f[:, :2] / 20.0 + 1.0, f[:, 2:] / 10.0], dim=-1)
        out = self.controller(torch.cat([scaled, ctx.cond.vector.to(x.device, x.dtype)], dim=-1))
        return {"drive_db": out[:, :1], "release_ms": out[:, 1:2]}

    # -- DSP --------------------------------------------------------------------------------
    def latency(self, params: Params) -> int:
        return lookahead_samples(float(params["lookahead_ms"].max()), SAMPLE_RATE)

    def process(
        self, x: Tensor, params: Params, state: Any = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        y, _, new_state = lookahead_limiter(
            x,
            params["ceiling_dbtp"].reshape(-1),
            self.latency(params),
            params["release_ms"].reshape(-1),
            state,
            gain_db=(params["trim_db"] + params["drive_db"]).reshape(-1),
            oversample=self.oversample,
            sample_rate=SAMPLE_RATE,
        )
        return y, new_state

    def gain_curve_db(self, x: Tensor, params: Params) -> Tensor:
        """The gain ``[batch, N]`` in dB (trim + drive - gain reduction) that the offline,
        latency-compensated rendering applies to ``x [batch, 2, N]``:
        ``run_aligned(self, x, params) == x * 10^(gain / 20)``. Stem mastering
        (:mod:`mastering.stems`) computes it on the sum and applies it to every stem."""
        lat = self.latency(params)
        gain = (params["trim_db"] + params["drive_db"]).reshape(-1)
        _, neg_reduction, _ = lookahead_limiter(
            torch.nn.functional.pad(x, (0, lat)),
            params["ceiling_dbtp"].reshape(-1),
            lat,
            params["release_ms"].reshape(-1),
            gain_db=gain,
            oversample=self.oversample,
            sample_rate=SAMPLE_RATE,
        )
        return gain.unsqueeze(-1) + neg_reduction[..., lat:]


__all__ = ["Limiter", "density_features"]
