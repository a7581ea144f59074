"""The shape every mastering stage shares: a controller that predicts bounded DSP parameters,
and a differentiable DSP body that applies them, chunk by chunk if asked.

A stage's controller is an **analytic prior** (:meth:`Stage.prior`, physical units, computed
from features of the audio and the conditioning macros) plus a **learned residual**
(:meth:`Stage.residual`, raw space, zero-initialized last layer). The untrained stage therefore
does exactly what the prior says, and training moves it from there; gradients still reach the
conditioning embedding through the prior. User overrides replace predicted values last.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mastering.conditioning import ConditioningBatch
from mastering.errors import InvalidParameterError
from mastering.params import ParamSpec

#: Control frame hop of time-varying parameters, in samples at 48 kHz (10 ms).
FRAME_HOP = 480

Params = dict[str, Tensor]


@dataclass
class StageContext:
    """What a stage's controller may read besides its input audio."""

    cond: ConditioningBatch
    sample_rate: int = 48_000


class Stage(nn.Module):
    """Base class. Subclasses set :attr:`name`, :attr:`specs` and implement :meth:`prior`,
    :meth:`process` and, for learned behaviour, :meth:`residual`.

    Shapes: audio ``[batch, 2, samples]``; a scalar parameter ``[batch, size]``; a time-varying
    one ``[batch, size, frames]`` at :data:`FRAME_HOP`.
    """

    name: ClassVar[str]
    specs: ClassVar[tuple[ParamSpec, ...]]

    def spec(self, name: str) -> ParamSpec:
        for s in self.specs:
            if s.name == name:
                return s
        raise KeyError(name)

    # -- controller -------------------------------------------------------------------------
    def prior(self, x: Tensor, ctx: StageContext) -> Params:
        """Physical parameter values from features of ``x`` and ``ctx`` (no learned weights)."""
        raise NotImplementedError

    def residual(self, x: Tensor, ctx: StageContext) -> Params:
        """Learned raw-space offsets added to the prior (missing keys: no offset)."""
        return {}

    def predict(
        self, x: Tensor, ctx: StageContext, overrides: Mapping[str, Any] | None = None
    ) -> Params:
        """Bounded physical values: ``to_physical(to_raw(prior) + residual)``, then overrides.

        With a style adapter attached (:meth:`attach_adapter`), the adapter first rewrites the
        context the prior and the residual read (``adapter.context(ctx)``) and then offsets
        the residual's raw outputs (``adapter.offsets(delta)``)."""
        adapter = self._modules.get("adapter")
        if adapter is not None:
            ctx = adapter.context(ctx)
        self._shared = {}
        try:
            prior = self.prior(x, ctx)
            delta = self.residual(x, ctx)
        finally:
            self._shared = None
        if adapter is not None:
            delta = adapter.offsets(delta)
        params: Params = {}
        for s in self.specs:
            raw = s.to_raw(prior[s.name])
            if s.name in delta:
                raw = raw + delta[s.name]
            params[s.name] = s.to_physical(raw)
        return self.apply_overrides(params, overrides)

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per :meth:`predict`, where the prior and the residual read the
        same features of the same input (an STFT analysis, say); outside a prediction it is
        computed each time."""
        memo = getattr(self, "_shared", None)
        if memo is None:
            return compute()
        if key not in memo:
            memo[key] = compute()
        return memo[key]

    def attach_adapter(self, adapter: nn.Module | None) -> None:
        """Attach a style adapter (an ``nn.Module`` with ``context(ctx) -> ctx`` and
        ``offsets(delta) -> delta``, see :mod:`mastering.adapters`) or detach it (``None``).
        It becomes the submodule ``adapter`` (its weights appear in the state dict)."""
        if "adapter" in self._modules:
            del self._modules["adapter"]
        if adapter is not None:
            self.add_module("adapter", adapter)

    def apply_overrides(self, params: Params, overrides: Mapping[str, Any] | None) -> Params:
        """Replace predicted values by user values (physical units, checked against the spec)."""
        for key, value in (overrides or {}).items():
            names = [s.name for s in self.specs]
            if key not in names:
                raise InvalidParameterError(
                    f"stage {self.name} has no parameter {key!r}; valid: {', '.join(names)}"
                )
            ref = params[key]
            v = self.spec(key).check_override(value).to(ref.device, ref.dtype)
            shape = (1, -1, 1) if ref.dim() == 3 else (1, -1)
            params[key] = v.view(shape).expand_as(ref).clone()
        return params

    # -- DSP body ---------------------------------------------------------------------------
    def process(self, x: Tensor, params: Params, state: Any = None) -> tuple[Tensor, Any]:
        """Apply the DSP to ``x [batch, 2, n]``; ``state`` carries what a following chunk
        needs (``None`` at the start). Returns ``(y, new_state)`` with ``y`` of the same shape."""
        raise NotImplementedError

    def latency(self, params: Params) -> int:
        """Algorithmic delay of :meth:`process` in samples (look-ahead)."""
        return 0

    def rendered(self, x: Tensor, params: Params) -> Tensor | None:
        """The latency-compensated output for ``x`` and ``params`` if the controller already
        rendered it while predicting (master out's loudness search does), else ``None``.
        :func:`mastering.chain.run_aligned` asks before processing."""
        return None

    def forward(
        self, x: Tensor, ctx: StageContext, overrides: Mapping[str, Any] | None = None
    ) -> tuple[Tensor, Params]:
        params = self.predict(x, ctx, overrides)
        y, _ = self.process(x, params)
        return y, params


def frames_to_samples(p: Tensor, start: int, length: int, hop: int = FRAME_HOP) -> Tensor:
    """Linear interpolation of a frame-rate control ``p [batch, size, frames]`` to samples
    ``start .. start+length`` (frame ``f`` sits at sample ``f * hop``; held past the last frame).

    Returns ``[batch, size, length]``. Chunk-safe: the result only depends on absolute positions.
    """
    n_frames = p.shape[-1]
    pos = (torch.arange(start, start + length, device=p.device, dtype=p.dtype)) / hop
    pos = pos.clamp(0, n_frames - 1)
    i0 = pos.floor().long().clamp(max=n_frames - 1)
    i1 = (i0 + 1).clamp(max=n_frames - 1)
    w = (pos - i0.to(p.dtype)).view(1, 1, -1)
    return p[..., i0] * (1 - w) + p[..., i1] * w


def n_frames(n_samples: int, hop: int = FRAME_HOP) -> int:
    """Number of control frames covering ``n_samples``."""
    return max(1, -(-n_samples // hop))
