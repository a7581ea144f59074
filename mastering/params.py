"""Bounded, human-readable DSP parameters.

Every controller output passes through a :class:`ParamSpec`: the network works in an
unbounded "raw" space and the spec maps it into ``[low, high]`` in physical units with a
sigmoid, so no controller output can produce NaN, runaway gain or an unstable filter.
Analytic priors are written in physical units and mapped back with :meth:`ParamSpec.to_raw`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mastering.errors import InvalidParameterError

_EPS = 1e-4


@dataclass(frozen=True)
class ParamSpec:
    """One DSP parameter of a stage.

    Attributes:
        name: key in the stage's parameter dict and in the JSON report.
        unit: ``"dB"``, ``"ms"``, ``"Hz"``, ``"ratio"``, ``"%"`` ...
        low, high: physical bounds (inclusive).
        size: number of values per song (e.g. one per EQ band); 1 for a scalar.
        frames: ``True`` if the value varies over time at the stage's frame rate
            (shape ``[batch, size, frames]`` instead of ``[batch, size]``).
        doc: what it does.
    """

    name: str
    unit: str
    low: float
    high: float
    size: int = 1
    frames: bool = False
    doc: str = ""

    def to_physical(self, raw: Tensor) -> Tensor:
        """Raw (unbounded) -> physical value in ``[low, high]``."""
        return self.low + (self.high - self.low) * torch.sigmoid(raw)

    def to_raw(self, value: Tensor) -> Tensor:
        """Physical value -> raw; values are clamped just inside the bounds first."""
        span = self.high - self.low
        p = ((value - self.low) / span).clamp(_EPS, 1 - _EPS)
        return torch.log(p) - torch.log1p(-p)

    def clamp(self, value: Tensor) -> Tensor:
        return value.clamp(self.low, self.high)

    def check_override(self, value: float | list[float]) -> Tensor:
        """A user override as a tensor ``[size]``; raises if out of bounds or the wrong size."""
        t = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
        if t.numel() == 1 and self.size > 1:
            t = t.expand(self.size)
        if t.numel() != self.size:
            raise InvalidParameterError(
                f"parameter {self.name} takes {self.size} value(s), got {t.numel()}"
            )
        if not torch.isfinite(t).all() or (t < self.low).any() or (t > self.high).any():
            raise InvalidParameterError(
                f"parameter {self.name} must be within {self.low}..{self.high} {self.unit}, "
                f"got {value}"
            )
        return t


def describe(spec: ParamSpec, value: Tensor) -> dict:
    """JSON-ready description of one song's value: ``{"value": ..., "unit": ...}``.

    Time-varying values are summarized (mean/min/max over frames) to keep reports readable.
    """
    v = value.detach().float().cpu()
    out: dict = {"unit": spec.unit}
    if spec.frames:
        out.update(
            mean=_round(v.mean(-1)),
            min=_round(v.amin(-1)),
            max=_round(v.amax(-1)),
            frames=v.shape[-1],
        )
    else:
        out["value"] = _round(v)
    return out


def _round(v: Tensor):
    v = v.reshape(-1)
    vals = [round(float(x), 4) for x in v]
    return vals[0] if len(vals) == 1 else vals
