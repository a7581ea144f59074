"""The mastering chain: seven stages composed, conditioned, reported, offline or streamed.

Default order (configurable, any stage can be bypassed)::

    eq -> compressor -> exciter -> imager -> reverb -> limiter -> master_out

Why this order rather than the catalogue order (EQ, compressor, limiter, imager, reverb,
exciter, master out): tonal balance first, so the compressor reacts to the corrected
spectrum; the exciter after the compressor, to restore the highs compression dulls; spatial
processing (imager, then ambience) on the glued mix; the limiter last among the learned stages,
so width, reverb tails and added harmonics are all inside its true-peak ceiling; master out
only trims the level to the loudness target, re-limiting at the same ceiling when needed.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mastering import features
from mastering.conditioning import Conditioning, ConditioningBatch, ConditioningEncoder
from mastering.dsp._util import cached_constant
from mastering.dsp.biquad import highpass_sos
from mastering.dsp.iir import sosfilt
from mastering.errors import InvalidAudioError, InvalidParameterError
from mastering.params import describe
from mastering.stages.base import Params, Stage, StageContext

DEFAULT_ORDER: tuple[str, ...] = (
    "eq",
    "compressor",
    "exciter",
    "imager",
    "reverb",
    "limiter",
    "master_out",
)
#: Stage name -> "module:Class".
STAGE_CLASSES: dict[str, str] = {
    "eq": "mastering.stages.eq:EQ",
    "compressor": "mastering.stages.compressor:Compressor",
    "exciter": "mastering.stages.exciter:Exciter",
    "imager": "mastering.stages.imager:Imager",
    "reverb": "mastering.stages.reverb:Reverb",
    "limiter": "mastering.stages.limiter:Limiter",
    "master_out": "mastering.stages.master_out:MasterOut",
}
WEIGHTS_DIR = Path(__file__).parent / "weights"
#: Inputs shorter than this (samples; 1 s) are padded with silence for analysis.
MIN_SAMPLES = 48_000
#: DC blocker at the chain input: 2nd-order high-pass, Hz.
DC_CUTOFF_HZ = 5.0


def stage_class(name: str) -> type[Stage]:
    if name not in STAGE_CLASSES:
        raise InvalidParameterError(f"unknown stage {name!r}; valid: {', '.join(STAGE_CLASSES)}")
    module, cls = STAGE_CLASSES[name].split(":")
    return getattr(importlib.import_module(module), cls)


@dataclass
class ChainConfig:
    """How the chain is put together.

    Attributes:
        order: stage names in processing order (a subset/permutation of :data:`DEFAULT_ORDER`).
        bypass: stages skipped (their parameters are still reported as bypassed).
        wet: per-stage wet/dry blend 0..1 (1 = fully processed).
        mix: overall wet/dry blend 0..1 of everything before ``master_out``.
        target_lufs: integrated loudness target, LUFS.
        ceiling_dbtp: true-peak ceiling, dBTP.
    """

    order: tuple[str, ...] = DEFAULT_ORDER
    bypass: tuple[str, ...] = ()
    wet: dict[str, float] = field(default_factory=dict)
    mix: float = 1.0
    target_lufs: float = -14.0
    ceiling_dbtp: float = -1.0

    def validate(self) -> ChainConfig:
        for name in (*self.order, *self.bypass, *self.wet):
            stage_class(name)
        if len(set(self.order)) != len(self.order):
            raise InvalidParameterError("a stage appears twice in the chain order")
        for name, w in {**self.wet, "mix": self.mix}.items():
            if not 0.0 <= w <= 1.0:
                raise InvalidParameterError(f"wet/dry of {name} must be within 0..1, got {w}")
        if not -60.0 <= self.target_lufs <= 0.0:
            raise InvalidParameterError(f"target {self.target_lufs} LUFS is outside -60..0")
        if not -20.0 <= self.ceiling_dbtp <= 0.0:
            raise InvalidParameterError(f"ceiling {self.ceiling_dbtp} dBTP is outside -20..0")
        return self


@dataclass
class ChainOutput:
    """Result of :meth:`Chain.forward`.

    Attributes:
        audio: master ``[batch, 2, samples]``.
        params: stage name -> its parameters (batched tensors, physical units).
        cond: the conditioning used.
        info: stage name -> extra per-song facts a stage reports (e.g. master out's status).
    """

    audio: Tensor
    params: dict[str, Params]
    cond: ConditioningBatch
    info: dict[str, list[dict[str, Any]]]
    config: ChainConfig

    def parameters_json(self, index: int, stages: Mapping[str, Stage]) -> dict[str, Any]:
        """Human-readable parameters of song ``index``: ``{stage: {param: {value, unit}}}``."""
        out: dict[str, Any] = {}
        for name, params in self.params.items():
            stage = stages[name]
            out[name] = {
                "bypassed": name in self.config.bypass,
                "wet": self.config.wet.get(name, 1.0),
                "latency_samples": stage.latency(
                    {k: v[index : index + 1] for k, v in params.items()}
                ),
                **{s.name: describe(s, params[s.name][index]) for s in stage.specs},
            }
            if name in self.info:
                out[name]["info"] = self.info[name][index]
        return out


@dataclass
class ChainState:
    """A batch part-way through the chain: what one stage group hands the next.

    Attributes:
        audio: the signal so far ``[batch, 2, samples]`` (48 kHz; padded to
            :data:`MIN_SAMPLES` when the input was shorter).
        dry: the DC-free input, kept only when ``ChainConfig.mix < 1`` (master out blends it).
        cond: the encoded conditioning.
        overrides: ``{stage: {param: value}}`` in physical units.
        length: the input's length in samples (the output is cut back to it).
        params, info: what the stages run so far predicted and reported.
        done: names of the stages run so far, in order.
    """

    audio: Tensor
    dry: Tensor | None
    cond: ConditioningBatch
    overrides: dict[str, dict[str, Any]]
    length: int
    params: dict[str, Params] = field(default_factory=dict)
    info: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    done: tuple[str, ...] = ()

    def to(self, device: torch.device | str) -> ChainState:
        """The same state with every tensor on ``device``."""
        return ChainState(
            audio=self.audio.to(device),
            dry=None if self.dry is None else self.dry.to(device),
            cond=self.cond.to(device),
            overrides=self.overrides,
            length=self.length,
            params={k: {n: t.to(device) for n, t in p.items()} for k, p in self.params.items()},
            info=self.info,
            done=self.done,
        )


def check_audio(x: Tensor) -> None:
    """Raise :class:`InvalidAudioError` unless ``x`` is ``[batch, 2, samples]`` and finite."""
    if x.dim() != 3 or x.shape[1] != 2:
        raise InvalidAudioError(f"expected audio shaped [batch, 2, samples], got {list(x.shape)}")
    if not torch.isfinite(x).all():
        raise InvalidAudioError("audio contains NaN or Inf samples")


class Chain(nn.Module):
    """The seven-stage chain. ``chain(audio, conditioning)`` -> :class:`ChainOutput`.

    Deterministic (no randomness at inference), differentiable end to end with respect to the
    audio, the conditioning embedding and every controller weight.
    """

    def __init__(self, config: ChainConfig | None = None):
        super().__init__()
        self.config = (config or ChainConfig()).validate()
        self.encoder = ConditioningEncoder()
        self.stages = nn.ModuleDict({name: stage_class(name)() for name in DEFAULT_ORDER})
        self.configure_output(self.config.target_lufs, self.config.ceiling_dbtp)

    def configure_output(
        self, target_lufs: float | None = None, ceiling_dbtp: float | None = None
    ) -> None:
        """Set the loudness target (LUFS, master out) and the true-peak ceiling (dBTP) that
        both the limiter stage and master out's safety limiter hold."""
        self.stages["master_out"].configure(target_lufs=target_lufs, ceiling_dbtp=ceiling_dbtp)
        self.stages["limiter"].configure(ceiling_dbtp=ceiling_dbtp)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def pretrained(cls, config: ChainConfig | None = None, weights: Path | None = None) -> Chain:
        """A chain with the shipped weights (``mastering/weights/chain.safetensors``) when they
        exist; otherwise the untrained chain, whose analytic priors already master sensibly."""
        chain = cls(config)
        path = weights or WEIGHTS_DIR / "chain.safetensors"
        if Path(path).exists():
            from safetensors.torch import load_file

            chain.load_state_dict(load_file(str(path)), strict=False)
        return chain.eval()

    # -- conditioning -----------------------------------------------------------------------
    def condition(self, x: Tensor, items: Sequence[Conditioning]) -> ConditioningBatch:
        """Validate ``items`` (one per song), estimate what they leave open, encode."""
        if len(items) != x.shape[0]:
            raise InvalidParameterError(f"{len(items)} conditionings for {x.shape[0]} songs")
        for c in items:
            c.validate()

        def resolve(attr: str, estimate) -> Tensor:
            given = [getattr(c, attr) for c in items]
            if all(v is not None for v in given):
                return torch.tensor(given, dtype=torch.float32, device=x.device)
            est = estimate(x.detach()).float()
            return torch.tensor(
                [float(e) if v is None else v for v, e in zip(given, est, strict=True)],
                device=x.device,
            )

        return self.encoder(
            items,
            tempo_bpm=resolve("tempo_bpm", features.estimate_tempo),
            energy=resolve("energy", features.estimate_energy),
            vocal_ratio=resolve("vocal_ratio", features.estimate_vocal_ratio),
        )

    # -- offline ----------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        conditioning: Conditioning | Sequence[Conditioning] | ConditioningBatch,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> ChainOutput:
        """Master ``x [batch, 2, samples]`` (48 kHz).

        Args:
            conditioning: one per song (a single one is used for the whole batch), or an
                already encoded batch.
            overrides: ``{stage: {param: value}}`` in physical units; replace predictions.

        Equivalent to ``finish(run_stages(begin(x, ...), order))``; the render farm and the
        Serve app run those three steps on different workers.
        """
        state = self.begin(x, conditioning, overrides)
        return self.finish(self.run_stages(state, self.config.order))

    def begin(
        self,
        x: Tensor,
        conditioning: Conditioning | Sequence[Conditioning] | ConditioningBatch,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> ChainState:
        """Validate ``x [batch, 2, samples]``, pad short songs, remove DC and encode the
        conditioning: the state the first stage group starts from."""
        check_audio(x)
        n = x.shape[-1]
        if n < MIN_SAMPLES:
            # Too short to analyse: master it padded with silence, return the original length.
            x = torch.nn.functional.pad(x, (0, MIN_SAMPLES - n))
        cond = self._as_batch(x, conditioning)
        overrides = {k: dict(v) for k, v in (overrides or {}).items()}
        for name in overrides:
            stage_class(name)
        y, _ = remove_dc(x)
        return ChainState(
            audio=y,
            dry=y if self.config.mix < 1.0 else None,
            cond=cond,
            overrides=overrides,
            length=n,
        )

    def run_stages(self, state: ChainState, names: Sequence[str]) -> ChainState:
        """Run the stages ``names`` (consecutive, in chain order, after those already run) on
        ``state`` and return the updated state. Raises on a stage out of order."""
        order = self.config.order
        for name in names:
            expected = order[len(state.done)] if len(state.done) < len(order) else None
            if name != expected:
                raise InvalidParameterError(
                    f"stage {name!r} out of order: after {list(state.done)} comes {expected!r}"
                )
            state = self._run_stage(state, name)
        return state

    def _run_stage(self, state: ChainState, name: str) -> ChainState:
        stage = self.stages[name]
        ctx = StageContext(cond=state.cond)
        y = state.audio
        if name == "master_out" and state.dry is not None:
            y = self._blend(state.dry, y, self.config.mix)
        p = stage.predict(y, ctx, state.overrides.get(name))
        state.params[name] = p
        if name not in self.config.bypass:
            out = run_aligned(stage, y, p)
            y = self._blend(y, out, self.config.wet.get(name, 1.0))
            if hasattr(stage, "report"):
                state.info[name] = stage.report(p)
        state.audio = y
        state.done = (*state.done, name)
        return state

    def finish(self, state: ChainState) -> ChainOutput:
        """The :class:`ChainOutput` of a state that has run every stage."""
        if state.done != tuple(self.config.order):
            missing = [s for s in self.config.order if s not in state.done]
            raise InvalidParameterError(f"chain not finished: stages {missing} have not run")
        return ChainOutput(
            audio=state.audio[..., : state.length],
            params=state.params,
            cond=state.cond,
            info=state.info,
            config=self.config,
        )

    def _as_batch(self, x: Tensor, conditioning) -> ConditioningBatch:
        if isinstance(conditioning, ConditioningBatch):
            return conditioning
        if isinstance(conditioning, Conditioning):
            conditioning = [conditioning] * x.shape[0]
        return self.condition(x, list(conditioning))

    @staticmethod
    def _blend(dry: Tensor, wet_signal: Tensor, wet: float) -> Tensor:
        return wet_signal if wet >= 1.0 else wet * wet_signal + (1.0 - wet) * dry

    # -- streaming --------------------------------------------------------------------------
    def stream(self, blocks: Iterable[Tensor], params: Mapping[str, Params]) -> Iterator[Tensor]:
        """Render consecutive blocks ``[batch, 2, n]`` with parameters fixed by an analysis
        pass (``chain(x, ...).params``), carrying every stage's state between blocks.

        Each stage's look-ahead is compensated inside the stream (its first ``latency``
        output samples are dropped and it is flushed with zeros at the end), so the
        concatenated output equals the offline master. The stream as a whole lags its input
        by :meth:`latency` samples; blocks come out as soon as every stage has produced them.
        """
        streams = [
            _StageStream(self.stages[n], params[n], self.config.wet.get(n, 1.0))
            for n in self.config.order
            if n not in self.config.bypass and n != "master_out"
        ]
        if self.config.mix < 1.0:
            raise InvalidParameterError("streaming renders with mix = 1 only")
        master = (
            None
            if "master_out" in self.config.bypass or "master_out" not in self.config.order
            else _StageStream(self.stages["master_out"], params["master_out"], 1.0)
        )
        dc_state = None
        for block in blocks:
            check_audio(block)
            x, dc_state = remove_dc(block, dc_state)
            out = self._stream_block(streams, master, x)
            if out.shape[-1]:
                yield out
        tail = self._stream_flush(streams, master)
        if tail is not None and tail.shape[-1]:
            yield tail

    @staticmethod
    def _stream_block(streams, master, x: Tensor) -> Tensor:
        for s in streams:
            x = s.push(x)
        return x if master is None else master.push(x)

    @staticmethod
    def _stream_flush(streams, master) -> Tensor:
        """Flush every stage in order: what one stage still holds goes through the next."""
        carry: Tensor | None = None
        for s in [*streams, *([master] if master is not None else [])]:
            head = s.push(carry) if carry is not None else None
            tail = s.finish()
            carry = tail if head is None else torch.cat([head, tail], -1)
        return carry

    def latency(self, params: Mapping[str, Params]) -> int:
        """Total look-ahead of the enabled stages, samples."""
        return sum(
            self.stages[n].latency(params[n])
            for n in self.config.order
            if n not in self.config.bypass
        )


class _StageStream:
    """One stage in a stream: feeds blocks, drops its first ``latency`` outputs, blends wet/dry
    with a dry path delayed to match, and flushes with zeros at the end."""

    def __init__(self, stage: Stage, params: Params, wet: float):
        self.stage, self.params, self.wet = stage, params, wet
        self.delay = stage.latency(params)
        self.state: Any = None
        self.to_drop = self.delay
        self.n_in = 0
        self.n_out = 0
        self.dry_buffer: Tensor | None = None

    def push(self, x: Tensor) -> Tensor:
        if x.shape[-1] == 0:
            return x  # an upstream stage still filling its look-ahead: nothing to process
        self.n_in += x.shape[-1]
        y, self.state = self.stage.process(x, self.params, self.state)
        if self.wet < 1.0:
            buf = x if self.dry_buffer is None else torch.cat([self.dry_buffer, x], -1)
        drop = min(self.to_drop, y.shape[-1])
        self.to_drop -= drop
        y = y[..., drop:]
        if self.wet < 1.0:
            dry, self.dry_buffer = buf[..., : y.shape[-1]], buf[..., y.shape[-1] :]
            y = self.wet * y + (1.0 - self.wet) * dry
        self.n_out += y.shape[-1]
        return y

    def finish(self) -> Tensor:
        """The samples still owed (the look-ahead), pushed out by feeding zeros."""
        missing = self.n_in - self.n_out
        ref = next(iter(self.params.values()))
        if missing <= 0:
            return ref.new_zeros(ref.shape[0], 2, 0)
        self.n_in -= missing  # flushing zeros are not input
        return self.push(ref.new_zeros(ref.shape[0], 2, missing))[..., :missing]


def run_aligned(stage: Stage, x: Tensor, params: Params) -> Tensor:
    """Offline processing with the stage's look-ahead compensated: pad ``latency`` zeros at
    the end, process, drop the first ``latency`` samples. Output aligned with ``x``. A stage
    whose controller already rendered exactly this (:meth:`Stage.rendered`) is not run again."""
    done = stage.rendered(x, params)
    if done is not None:
        return done
    lat = stage.latency(params)
    if lat == 0:
        return stage.process(x, params)[0]
    y, _ = stage.process(torch.nn.functional.pad(x, (0, lat)), params)
    return y[..., lat:]


def _dc_blocker(like: Tensor) -> Tensor:
    """2nd-order Butterworth high-pass at :data:`DC_CUTOFF_HZ` as one sos row ``[1, 6]``
    (−3 dB at 5 Hz, within 0.1 dB above 20 Hz), float64 on ``like``'s device."""
    return _dc_blocker_on(like.device)


@cached_constant
def _dc_blocker_on(device: torch.device) -> Tensor:
    """One read-only tensor per device, so the IIR engine builds its tables once."""
    f = torch.tensor(DC_CUTOFF_HZ, dtype=torch.float64)
    q = torch.tensor(0.5**0.5, dtype=torch.float64)
    return highpass_sos(f, q, 48_000).reshape(1, 6).to(device)


def remove_dc(x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Remove DC offset from ``x [batch, 2, n]`` (linear amplitude, 48 kHz) with the
    :func:`_dc_blocker` high-pass; returns ``(y, state)`` for streaming.

    The filter runs in float64 whatever ``x``'s dtype: its poles sit 4.6e-4 inside the unit
    circle, and in float32 the rounding differs between a whole song and the same song in
    blocks (or batched with another song) by up to ~1e-2 full scale at the chain output; in
    float64 the streamed and offline masters agree to ~5e-5 (the other stages' float32
    rounding). ~4x the float32 filter's CPU time (55 ms per minute of stereo on a 2-core CPU),
    still small next to the stages. ``y [batch, 2, n]`` comes back in
    ``x``'s dtype, on ``x``'s device, differentiable with respect to ``x``.

    Args:
        x: audio ``[batch, 2, n]``, float32 or float64.
        state: filter state ``[batch, 2, 2]`` returned by the previous block (float32 or
            float64; ``None``: at rest).

    Returns:
        ``(y [batch, 2, n] in x.dtype, state [batch, 2, 2] float64)``.
    """
    x64 = x.to(torch.float64)
    s64 = None if state is None else state.to(device=x.device, dtype=torch.float64)
    y, final = sosfilt(x64, _dc_blocker(x64), s64, return_state=True)
    return y.to(x.dtype), final
