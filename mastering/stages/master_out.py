"""Master out: loudness normalization to a target, with a true-peak safety limiter.

The gain is computed, not learned (:meth:`MasterOut.solve`, exact, under ``torch.no_grad``):

1. measure the integrated loudness ``L0`` (BS.1770-4, :mod:`mastering.loudness`) and start at
   ``gain = target - L0``;
2. render ``limiter(x * 10^(gain/20))`` with the look-ahead true-peak limiter of
   :mod:`mastering.dsp.dynamics` at the ceiling (a pure delay when nothing exceeds it), measure
   its loudness ``L`` and the loudness the limiter took away (``limiting_db``: loudness of the
   gained input minus that of the output);
3. solve ``phi(gain) = max(L - target, limiting_db - max_limiting_db) = 0``: Newton steps
   whose slope is read off each rendering (the share of the output's energy the limiter left
   untouched, i.e. how much of the song still rises with the gain), the secant when it asks
   for a longer step, regula falsi once the root is bracketed (1.7 renderings a song on
   average on a 24-case corpus)
   until ``|L - target| <= tolerance`` (reached), or, when reaching the target would take
   more than ``max_limiting_db`` of limiting, until the limiting equals that maximum
   (unreachable: the output stays quieter than the target, and the report says so);
4. check the output's true peak with the meter (4x by default); if it reads above the
   ceiling (the limiter's gain varies a little across the meter's interpolation kernel),
   lower the limiter's internal ceiling by the overshoot and solve again.

Every output is then within ``tolerance`` (0.05 LU) of the target and at or below the ceiling
(true peak at the meter's oversampling), or the report says ``"unreachable"`` with the reason.
Silence gives gain 0 dB and status ``"silent"``. In :meth:`MasterOut.process` the found gain
is a constant (straight-through): gradients reach the input through the gain and the limiter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mastering import SAMPLE_RATE
from mastering.dsp.dynamics import (
    LimiterChunk,
    apply_gain_db,
    limit,
    limiter_chunk,
    lookahead_limiter,
    lookahead_samples,
)
from mastering.loudness import integrated_loudness, true_peak, ungated_loudness
from mastering.params import ParamSpec
from mastering.stages.base import Params, Stage, StageContext

#: Shortest signal the gated integrated loudness is defined for (one 400 ms block), samples.
_MIN_GATED = int(0.4 * SAMPLE_RATE)
#: How much faster than linearly the loudness gain of a limited song falls off per LU still
#: missing (the first Newton step of the search; measured on rock/EDM/metal/pop renderings:
#: the average slope to the target was 0.76-0.93 of the local one for 0.8-1.6 LU short).
_CURVATURE_PER_LU = 0.12
#: Extra lowering of the internal ceiling on top of a measured overshoot, dB.
_CEILING_STEP_DB = 0.002


@dataclass
class _Eval:
    """One rendering at ``gain``: loudness, limiting, the residual ``phi``, the output and
    ``free``: the share of the output's energy the limiter left untouched (an estimate of
    d loudness / d gain: limited passages stay pinned at the ceiling as the gain rises)."""

    gain: float
    loudness: float
    limiting: float
    phi: float
    output: Tensor
    free: float = 1.0


@dataclass(frozen=True)
class _Reference:
    """The input's loudness (LUFS), true peak (dBTP) and limiter sidechain (the batch's, this
    song at ``row``); ``scalable``: the loudness of the input times a gain is
    ``loudness + gain`` (gated measure defined); ``gated``: at least one 400 ms block long."""

    loudness: float
    true_peak: float
    scalable: bool
    chunk: LimiterChunk
    row: int
    gated: bool


class MasterOut(Stage):
    """Loudness normalizer and true-peak safety limiter (see the module docstring).

    Args:
        target_lufs: integrated loudness target, LUFS.
        ceiling_dbtp: true-peak ceiling, dBTP.
        max_limiting_db: most loudness (LU) the safety limiter may take away; a target that
            needs more is reported unreachable.
        lookahead_ms, release_ms: of the safety limiter.
        tolerance_lu: loudness tolerance of the search (the guarantee is twice that).
        true_peak_oversample: the meter's oversampling factor the ceiling is checked with (and
            the limiter's sidechain factor).
        max_iterations: renderings per song before the search gives up ("approximate").
    """

    name: ClassVar[str] = "master_out"
    specs: ClassVar[tuple[ParamSpec, ...]] = (
        ParamSpec("gain_db", "dB", -70.0, 70.0, doc="loudness-normalizing gain (computed)"),
        ParamSpec(
            "limit_ceiling_dbtp",
            "dBTP",
            -40.0,
            0.0,
            doc="ceiling the safety limiter limits at: the configured ceiling, lowered by any "
            "overshoot the true-peak meter found (computed)",
        ),
    )

    def __init__(
        self,
        target_lufs: float = -14.0,
        ceiling_dbtp: float = -1.0,
        max_limiting_db: float = 6.0,
        lookahead_ms: float = 3.0,
        release_ms: float = 100.0,
        tolerance_lu: float = 0.05,
        true_peak_oversample: int = 4,
        max_iterations: int = 30,
    ):
        super().__init__()
        self.target_lufs = float(target_lufs)
        self.ceiling_dbtp = float(ceiling_dbtp)
        self.max_limiting_db = float(max_limiting_db)
        self.lookahead_ms = float(lookahead_ms)
        self.release_ms = float(release_ms)
        self.tolerance_lu = float(tolerance_lu)
        self.true_peak_oversample = int(true_peak_oversample)
        self.max_iterations = int(max_iterations)
        self._last: tuple[Tensor, list[dict[str, Any]]] | None = None
        # The input the last search ran on and its best rendering (see :meth:`rendered`).
        self._rendering: tuple[Tensor, Tensor, Tensor] | None = None

    def configure(
        self,
        target_lufs: float | None = None,
        ceiling_dbtp: float | None = None,
        max_limiting_db: float | None = None,
    ) -> None:
        """Change the target (LUFS), the ceiling (dBTP) or the limiting allowance (LU)."""
        if target_lufs is not None:
            self.target_lufs = float(target_lufs)
        if ceiling_dbtp is not None:
            self.ceiling_dbtp = float(ceiling_dbtp)
        if max_limiting_db is not None:
            self.max_limiting_db = float(max_limiting_db)

    # -- controller -------------------------------------------------------------------------
    def prior(self, x: Tensor, ctx: StageContext) -> Params:
        self._rendering = None
        params, status, output = self._solve(x)
        self._last = (params["gain_db"].detach().clone(), status)
        if output is not None:
            found = torch.cat([params["gain_db"], params["limit_ceiling_dbtp"]], -1)
            self._rendering = (x, found, output)
        return params

    def rendered(self, x: Tensor, params: Params) -> Tensor | None:
        """The search's own best rendering, when ``x`` is the input :meth:`prior` just searched
        and ``params`` still hold its gain and ceiling (within 1e-4 dB: the parameter mapping
        rounds) and no gradient is wanted; else ``None`` (then :meth:`process` renders). Saves
        the final limiter pass: the output is the very signal the search measured."""
        if self._rendering is None:
            return None
        source, found, output = self._rendering
        self._rendering = None
        given = torch.cat([params["gain_db"], params["limit_ceiling_dbtp"]], -1)
        wants_grad = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in params.values())
        )
        if wants_grad or x is not source or given.shape != found.shape:
            return None
        if float((given.detach() - found).abs().max()) > 1e-4:
            return None
        return output

    def report(self, params: Params) -> list[dict[str, Any]]:
        """Per-song status of the last :meth:`prior` (``status``: ``"reached"``,
        ``"unreachable"``, ``"silent"``, ``"too_short"`` (under 400 ms: normalized by the
        ungated loudness) or ``"approximate"`` (the search ran out of renderings; not seen in
        the tests), with ``reason``, the measured
        input/output loudness and true peak, the gain and the limiting). A song whose gain was
        overridden is marked ``"overridden"`` (its measurements no longer apply)."""
        if self._last is None:
            raise RuntimeError("master_out has not analysed any audio yet")
        gains, status = self._last
        out = []
        given = params["gain_db"].detach().reshape(-1).cpu()
        for b, s in enumerate(status):
            item = dict(s)
            if b < given.numel() and abs(float(given[b]) - float(gains.reshape(-1)[b])) > 1e-3:
                item["status"] = "overridden"
                item["reason"] = "gain_db was overridden; the measurements above do not apply"
            out.append(item)
        return out

    def status(self) -> list[dict[str, Any]]:
        """Per-song status of the last analysis (see :meth:`report`)."""
        if self._last is None:
            raise RuntimeError("master_out has not analysed any audio yet")
        return [dict(s) for s in self._last[1]]

    def solve(self, x: Tensor) -> tuple[Params, list[dict[str, Any]]]:
        """Find each song's gain and limiter ceiling (see the module docstring).

        The songs' searches run in lockstep: each is a coroutine (:meth:`_solve_song`) that
        asks for renderings and true-peak readings, and every round answers all songs' requests
        with one batched limiter pass and one batched meter reading, so a GPU sees a batch and
        the host synchronizes once per round rather than once per song per rendering.

        Args:
            x: ``[batch, 2, T]``.

        Returns:
            ``({"gain_db": [batch, 1], "limit_ceiling_dbtp": [batch, 1]}, per-song status)``.
        """
        params, status, _ = self._solve(x)
        return params, status

    @torch.no_grad()
    def _solve(self, x: Tensor) -> tuple[Params, list[dict[str, Any]], Tensor | None]:
        """:meth:`solve`, plus the search's best renderings ``[batch, 2, T]`` (``None`` when a
        song had none: silence, or no samples)."""
        x = x.detach()
        refs = self._references(x)
        searches = [self._solve_song(ref) for ref in refs]
        results = _drive(searches, lambda requests: self._answer(x, refs, requests))
        t = dict(dtype=x.dtype, device=x.device)
        return (
            {
                "gain_db": torch.tensor([r[0] for r in results], **t).unsqueeze(-1),
                "limit_ceiling_dbtp": torch.tensor([r[1] for r in results], **t).unsqueeze(-1),
            },
            [r[2] for r in results],
            torch.cat([r[3] for r in results]) if all(r[3] is not None for r in results) else None,
        )

    # -- measurements, batched ----------------------------------------------------------------
    def _loudness(self, y: Tensor) -> list[float]:
        """Per-song loudness of ``y [k, 2, T]`` (LUFS): integrated, or ungated under 400 ms."""
        if y.shape[-1] >= _MIN_GATED:
            return integrated_loudness(y).tolist()
        return ungated_loudness(y).tolist()

    def _references(self, x: Tensor) -> list[_Reference | None]:
        """Per song: its loudness, true peak and limiter sidechain (``None`` for silence)."""
        if x.shape[-1] == 0:
            return [None] * x.shape[0]
        loud = self._loudness(x)
        ungated = ungated_loudness(x).tolist() if x.shape[-1] >= _MIN_GATED else loud
        peaks = true_peak(x, oversample=self.true_peak_oversample).tolist()
        d = lookahead_samples(self.lookahead_ms)
        chunk = limiter_chunk(F.pad(x, (0, d)), d, oversample=self.true_peak_oversample)
        refs: list[_Reference | None] = []
        for b in range(x.shape[0]):
            scalable = math.isfinite(loud[b]) and x.shape[-1] >= _MIN_GATED
            level = loud[b] if math.isfinite(loud[b]) else ungated[b]
            if not math.isfinite(level):
                refs.append(None)
                continue
            refs.append(_Reference(level, peaks[b], scalable, chunk, b, x.shape[-1] >= _MIN_GATED))
        return refs

    def _answer(self, x: Tensor, refs: list[_Reference | None], requests: list) -> list:
        """Answer one round of requests ``(song, ("render", gain, ceiling) | ("peak", y))``."""
        answers: list[Any] = [None] * len(requests)
        renders = [(i, b, r) for i, (b, r) in enumerate(requests) if r[0] == "render"]
        if renders:
            rows = [b for _, b, _ in renders]
            chunk = refs[rows[0]].chunk
            chunk.released_from_rest(self.release_ms, SAMPLE_RATE)  # once for every round
            sub = chunk.rows(rows)
            like = dict(dtype=x.dtype, device=x.device)
            gains = torch.tensor([r[1] for _, _, r in renders], **like)
            ceilings = torch.tensor([r[2] for _, _, r in renders], **like)
            y, neg_reduction, _ = limit(sub, ceilings, self.release_ms, gains)
            lookahead = chunk.geometry.lookahead
            y = y[..., lookahead:]
            energy = y.square().sum(1)  # [k, T]
            untouched = neg_reduction[..., lookahead:] > -1e-3
            free = (energy * untouched).sum(-1) / energy.sum(-1).clamp(min=1e-30)
            loud = self._loudness(y)
            free = free.tolist()
            for k, (i, b, r) in enumerate(renders):
                ref = refs[b]
                before = (
                    ref.loudness + r[1]
                    if ref.scalable
                    else self._loudness(apply_gain_db(x[b : b + 1], x.new_tensor([r[1]])))[0]
                )
                answers[i] = (
                    loud[k],
                    max(before - loud[k], 0.0),
                    y[k : k + 1].clone(),
                    free[k],
                )
        peaks = [(i, r[1]) for i, (_, r) in enumerate(requests) if r[0] == "peak"]
        if peaks:
            tp = true_peak(torch.cat([y for _, y in peaks]), oversample=self.true_peak_oversample)
            for (i, _), v in zip(peaks, tp.tolist(), strict=True):
                answers[i] = v
        return answers

    # -- one song's search (a coroutine: yields requests, receives answers) -----------------
    def _evaluate(self, gain: float, ceiling: float) -> Generator[Any, Any, _Eval]:
        loud, limiting, y, free = yield ("render", gain, ceiling)
        phi = max(loud - self.target_lufs, limiting - self.max_limiting_db)
        return _Eval(gain, loud, limiting, phi, y, free)

    def _classify(self, e: _Eval) -> str | None:
        tol = self.tolerance_lu
        if abs(e.loudness - self.target_lufs) <= tol and e.limiting <= self.max_limiting_db + tol:
            return "reached"
        if abs(e.limiting - self.max_limiting_db) <= tol and e.loudness < self.target_lufs:
            return "unreachable"
        return None

    def _search(self, gain: float, ceiling: float, budget: int) -> Generator[Any, Any, list]:
        """Bracketed root search of ``phi(gain)``; returns the evaluations made (last = best;
        only the last one keeps its output)."""
        evals: list[_Eval] = []
        lo: _Eval | None = None  # largest gain with phi < 0
        hi: _Eval | None = None  # smallest gain with phi >= 0
        for _ in range(budget):
            e = yield from self._evaluate(gain, ceiling)
            if evals:
                evals[-1].output = e.output[..., :0]
            evals.append(e)
            if self._classify(e) is not None or not math.isfinite(e.phi):
                break
            if e.phi < 0:
                lo = e if lo is None or e.gain > lo.gain else lo
            else:
                hi = e if hi is None or e.gain < hi.gain else hi
            if lo is not None and hi is not None:
                width = hi.gain - lo.gain
                t = -lo.phi / (hi.phi - lo.phi)
                gain = lo.gain + width * min(max(t, 0.1), 0.9)  # regula falsi, kept inside
            else:
                # Newton's step, the slope estimated from the rendering: the loudness rises by
                # the untouched share of the energy (less further on: more of the song gets
                # pinned, hence the curvature term), the limiting by the rest. With two
                # renderings, the secant when it asks for a longer step.
                pinned = e.limiting - self.max_limiting_db > e.loudness - self.target_lufs
                if pinned:
                    slope = 1.0 - e.free
                else:
                    slope = e.free * max(1.0 - _CURVATURE_PER_LU * abs(e.phi), 0.5)
                if len(evals) >= 2 and evals[-1].gain != evals[-2].gain:
                    secant = (evals[-1].phi - evals[-2].phi) / (evals[-1].gain - evals[-2].gain)
                    slope = min(slope, secant) if secant > 0 else slope
                slope = min(max(slope, 0.2), 1.0)
                gain = e.gain - e.phi / slope
            gain = min(max(gain, -69.0), 69.0)
        return evals

    def _solve_song(
        self, ref: _Reference | None
    ) -> Generator[Any, Any, tuple[float, float, dict[str, Any], Tensor | None]]:
        """One song's search: yields requests, returns ``(gain dB, limiter ceiling dBTP,
        status, best rendering [1, 2, T] or None)``."""
        target, ceiling = self.target_lufs, self.ceiling_dbtp
        base: dict[str, Any] = {
            "target_lufs": target,
            "ceiling_dbtp": ceiling,
            "max_limiting_db": self.max_limiting_db,
        }
        if ref is None:
            return (
                0.0,
                ceiling,
                {
                    **base,
                    "status": "silent",
                    "reason": "the input is digital silence: no gain applied",
                    "input_lufs": None,
                    "output_lufs": None,
                    "output_true_peak_dbtp": None,
                    "gain_db": 0.0,
                    "limiting_db": 0.0,
                    "iterations": 0,
                },
                None,
            )
        loud_in = ref.loudness
        gain = min(max(target - loud_in, -69.0), 69.0)
        limit = ceiling - _CEILING_STEP_DB  # float rounding must not read above the ceiling
        evals: list[_Eval] = []
        best: _Eval | None = None
        tp = float("inf")
        for _ in range(4):  # ceiling corrections
            budget = self.max_iterations - len(evals)
            if budget <= 0:
                break
            found = yield from self._search(gain, limit, budget)
            evals += found
            best = found[-1]
            gain = best.gain
            tp = yield ("peak", best.output)
            if tp <= ceiling or self._classify(best) is None:
                break
            limit -= tp - ceiling + _CEILING_STEP_DB
        assert best is not None
        kind = self._classify(best)
        if kind is None or tp > ceiling:
            kind = "approximate"
            reason = (
                f"search stopped after {len(evals)} renderings at {best.loudness:.2f} LUFS, "
                f"{tp:.2f} dBTP"
            )
        elif kind == "reached" and not ref.gated:
            kind = "too_short"
            reason = (
                "shorter than one 400 ms block: integrated loudness is undefined, so the "
                f"ungated loudness was normalized to {best.loudness:.2f} LUFS (true peak "
                f"{tp:.2f} dBTP)"
            )
        elif kind == "reached":
            reason = (
                f"{best.loudness:.2f} LUFS (target {target:.2f}), true peak "
                f"{tp:.2f} dBTP <= {ceiling:.2f}, {best.limiting:.2f} LU of limiting"
            )
        else:
            reason = (
                f"target {target:.2f} LUFS needs more than {self.max_limiting_db:.1f} LU of "
                f"limiting under a {ceiling:.2f} dBTP ceiling; stopped at that limit with "
                f"{best.loudness:.2f} LUFS"
            )
        return (
            best.gain,
            limit,
            {
                **base,
                "status": kind,
                "reason": reason,
                "input_lufs": loud_in,
                "output_lufs": best.loudness,
                "output_true_peak_dbtp": tp,
                "gain_db": best.gain,
                "limiting_db": best.limiting,
                "iterations": len(evals),
            },
            best.output,
        )

    # -- DSP --------------------------------------------------------------------------------
    def latency(self, params: Params) -> int:
        return lookahead_samples(self.lookahead_ms)

    def process(
        self, x: Tensor, params: Params, state: Any = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        y, _, new_state = lookahead_limiter(
            x,
            params["limit_ceiling_dbtp"].reshape(-1),
            self.latency(params),
            self.release_ms,
            state,
            gain_db=params["gain_db"].reshape(-1),
            oversample=self.true_peak_oversample,
        )
        return y, new_state

    def gain_curve_db(self, x: Tensor, params: Params) -> Tensor:
        """The gain ``[batch, N]`` in dB (normalizing gain - safety limiting) that the offline,
        latency-compensated rendering applies to ``x [batch, 2, N]``:
        ``run_aligned(self, x, params) == x * 10^(gain / 20)``. Stem mastering
        (:mod:`mastering.stems`) computes it on the sum and applies it to every stem."""
        lat = self.latency(params)
        gain = params["gain_db"].reshape(-1)
        _, neg_reduction, _ = lookahead_limiter(
            F.pad(x, (0, lat)),
            params["limit_ceiling_dbtp"].reshape(-1),
            lat,
            self.release_ms,
            gain_db=gain,
            oversample=self.true_peak_oversample,
        )
        return gain.unsqueeze(-1) + neg_reduction[..., lat:]


def _drive(searches: list[Generator[Any, Any, Any]], answer: Callable[[list], list]) -> list[Any]:
    """Run coroutines in lockstep: each round, collect every live one's request, answer them
    all with one call ``answer([(index, request), ...]) -> [answer, ...]``, send the answers
    back. Returns each coroutine's return value."""
    results: list[Any] = [None] * len(searches)
    pending: dict[int, Any] = {}

    def step(i: int, value: Any) -> None:
        try:
            pending[i] = searches[i].send(value)
        except StopIteration as done:
            results[i] = done.value

    for i in range(len(searches)):
        step(i, None)
    while pending:
        round_ = list(pending.items())
        pending.clear()
        for (i, _), value in zip(round_, answer(round_), strict=True):
            step(i, value)
    return results
