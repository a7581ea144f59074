"""One-pole smoothers, time-varying recursions and envelope followers, without per-sample loops.

Conventions: signals are ``[..., T]``; a smoother's *state* is its previous output
``y[n-1]`` shaped ``[..., 1]`` (``None``: 0, i.e. at rest), so feeding the returned state to
the next call continues the recursion exactly across chunks. A coefficient ``a`` is the pole
``y[n] = a y[n-1] + (1 - a) x[n]``; :func:`time_constant_to_coeff` turns a time constant in
ms into it.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from mastering import SAMPLE_RATE
from mastering.dsp import _fused, _fused_scan
from mastering.dsp._scan import LINEAR, MAX_AFFINE, scan
from mastering.dsp._util import TensorLike, as_tensors
from mastering.dsp.iir import sosfilt

#: ``20 log10(e)``: dB per neper.
_DB_PER_NEPER = 20.0 / math.log(10.0)
#: Samples per chunk of the peak-hold ``cummax`` scan (keeps the ramp offsets small).
_PEAK_HOLD_CHUNK = 1024


def time_constant_to_coeff(time_ms: TensorLike, sample_rate: float = SAMPLE_RATE) -> TensorLike:
    """Pole ``a = exp(-1 / (tau fs))`` of a one-pole smoother with time constant ``tau``.

    The step response reaches ``1 - 1/e`` (63 %) after ``time_ms``. ``time_ms = 0`` gives
    ``a = 0`` (no smoothing).

    Args:
        time_ms: time constant in ms (number or tensor, ``>= 0``).
        sample_rate: in Hz.

    Returns:
        ``a`` in ``[0, 1)``, a float for a number, else a tensor of ``time_ms``'s shape.
    """
    if isinstance(time_ms, Tensor):
        return torch.exp(-1000.0 / (time_ms * sample_rate))
    return math.exp(-1000.0 / (time_ms * sample_rate)) if time_ms > 0 else 0.0


def _state_or_zeros(state: Tensor | None, lead: torch.Size, like: Tensor) -> Tensor:
    """``state [..., 1]`` expanded to ``[*lead]`` (zeros when ``None``)."""
    if state is None:
        return like.new_zeros(lead)
    return state.to(like).squeeze(-1).expand(lead)


def _with_state(y: Tensor, state: Tensor, return_state: bool) -> Tensor | tuple[Tensor, Tensor]:
    return (y, state) if return_state else y


def first_order_recurrence(
    a: Tensor, b: Tensor, state: Tensor | None = None, *, return_state: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Solve ``y[n] = a[n] y[n-1] + b[n]`` exactly by a chunked parallel scan.

    Args:
        a: ``[..., T]`` coefficients (any real values; broadcast with ``b``).
        b: ``[..., T]`` inputs.
        state: ``y[-1]`` as ``[..., 1]`` (``None``: 0).
        return_state: also return ``y[..., -1:]`` for the next chunk.

    Returns:
        ``y [..., T]`` (broadcast shape), or ``(y, state)``; differentiable w.r.t. all inputs.
    """
    a, b = torch.broadcast_tensors(a, b)
    y0 = _state_or_zeros(state, a.shape[:-1], b)
    if a.shape[-1] == 0:
        return _with_state(b, y0.unsqueeze(-1), return_state)
    y = scan((a, b), y0, LINEAR)
    return _with_state(y, y[..., -1:], return_state)


def ltv_one_pole(
    x: Tensor, a: Tensor, state: Tensor | None = None, *, return_state: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Time-varying one-pole smoother ``y[n] = a[n] y[n-1] + (1 - a[n]) x[n]``.

    Solved by a chunked scan (no per-sample loop, no logs or divisions): matches the plain
    recursion to float rounding for any ``a`` in ``[0, 1]``.

    Args:
        x: ``[..., T]`` signal.
        a: ``[..., T]`` per-sample pole (broadcast with ``x``; e.g. ``[..., 1]`` is constant).
        state: ``y[-1]`` as ``[..., 1]`` (``None``: 0).
        return_state: also return ``y[..., -1:]``.

    Returns:
        ``y [..., T]`` or ``(y, state)``; differentiable w.r.t. ``x``, ``a`` and ``state``.
    """
    x, a = torch.broadcast_tensors(x, a)
    return first_order_recurrence(a, (1.0 - a) * x, state, return_state=return_state)


def _pole(x: Tensor, coeff: TensorLike | None, time_ms: TensorLike | None, sample_rate: float):
    """The pole as a tensor on ``x``'s dtype/device from a coefficient or a time constant."""
    if (coeff is None) == (time_ms is None):
        raise ValueError("give exactly one of coeff and time_ms")
    if coeff is None:
        coeff = time_constant_to_coeff(as_tensors(time_ms, like=x)[0], sample_rate)
    return as_tensors(coeff, like=x)[0]


def one_pole(
    x: Tensor,
    coeff: TensorLike | None = None,
    state: Tensor | None = None,
    *,
    time_ms: TensorLike | None = None,
    sample_rate: float = SAMPLE_RATE,
    return_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """LTI one-pole low-pass smoother ``y[n] = a y[n-1] + (1 - a) x[n]`` (unity DC gain).

    Runs through :func:`mastering.dsp.iir.sosfilt` (exact, chunk-safe).

    Args:
        x: ``[..., T]`` signal.
        coeff: pole ``a`` in ``[0, 1)``: a number or a tensor ``[...]`` broadcasting with
            ``x``'s leading dims (one smoother per row).
        state: previous output ``y[-1]`` as ``[..., 1]`` (``None``: 0).
        time_ms: instead of ``coeff``, the time constant in ms (see
            :func:`time_constant_to_coeff`).
        sample_rate: in Hz, for ``time_ms``.
        return_state: also return ``y[..., -1:]``.

    Returns:
        ``y [..., T]`` or ``(y, state)``; differentiable w.r.t. ``x``, the coefficient/time and
        ``state``.
    """
    a = _pole(x, coeff, time_ms, sample_rate)
    zero = torch.zeros_like(a)
    sos = torch.stack([1.0 - a, zero, zero, torch.ones_like(a), -a, zero], dim=-1).unsqueeze(-2)
    lead = torch.broadcast_shapes(x.shape[:-1], a.shape)
    y_prev = _state_or_zeros(state, lead, x)
    # Transposed direct form II state of the section: z1 = a y[-1], z2 = 0.
    iir_state = torch.stack([a * y_prev, torch.zeros_like(y_prev)], dim=-1)
    y = sosfilt(x, sos, iir_state)
    if y.shape[-1] == 0:
        return _with_state(y, y_prev.unsqueeze(-1), return_state)
    return _with_state(y, y[..., -1:], return_state)


def peak_hold_db(
    x_db: Tensor,
    release_ms: TensorLike,
    sample_rate: float = SAMPLE_RATE,
    state: Tensor | None = None,
    *,
    return_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Instant-attack peak hold with exponential release, on a level in dB.

    ``y[n] = max(x[n], y[n-1] - d)`` with ``d = 20 log10(e) * 1000 / (release_ms * fs)`` dB per
    sample, i.e. the linear-domain ``y = max(x, a_R y)`` with ``a_R`` from
    :func:`time_constant_to_coeff`. Solved as a max-plus scan, ``y[n] = max_k x[k] - (n-k) d``,
    with ``torch.cummax`` inside chunks of 1024 samples (small ramp offsets keep float32
    exact) and the same scan recursively across chunks.

    Args:
        x_db: ``[..., T]`` level in dB.
        release_ms: release time constant in ms (number or ``[...]`` tensor per row).
        sample_rate: in Hz.
        state: ``y[-1]`` in dB as ``[..., 1]`` (``None``: no history, ``y[0] = x[0]``).
        return_state: also return ``y[..., -1:]``.

    Returns:
        ``y [..., T]`` in dB or ``(y, state)``; differentiable w.r.t. ``x_db`` and
        ``release_ms``.
    """
    release = as_tensors(release_ms, like=x_db)[0]
    decay = _DB_PER_NEPER * 1000.0 / (release * sample_rate)
    lead = torch.broadcast_shapes(x_db.shape[:-1], decay.shape)
    x_db = x_db.expand(*lead, x_db.shape[-1])
    if state is None:
        y0 = x_db.new_full(lead, torch.finfo(x_db.dtype).min)
    else:
        y0 = state.to(x_db).squeeze(-1).expand(lead)
    y = _max_plus_scan(x_db, decay.expand(lead), y0)
    return _with_state(y, y[..., -1:] if y.shape[-1] else y0.unsqueeze(-1), return_state)


def _max_plus_scan(x: Tensor, decay: Tensor, y0: Tensor) -> Tensor:
    """``y[n] = max(x[n], y[n-1] - decay)``, ``y[-1] = y0``: ``x [..., T]``, ``decay, y0 [...]``."""
    T = x.shape[-1]
    if T == 0:
        return x
    width = min(_PEAK_HOLD_CHUNK, T)
    n_chunks = -(-T // width)
    lowest = torch.finfo(x.dtype).min
    chunks = F.pad(x, (0, n_chunks * width - T), value=lowest).unflatten(-1, (n_chunks, width))
    ramp = torch.arange(width, dtype=x.dtype, device=x.device) * decay[..., None, None]
    # Within each chunk from an empty start: max_k (x[k] + k d) - n d.
    local = torch.cummax(chunks + ramp, dim=-1).values - ramp
    if n_chunks == 1:
        entering = y0.unsqueeze(-1)
    else:
        ends = _max_plus_scan(local[..., :-1, -1], decay * width, y0)
        entering = torch.cat([y0.unsqueeze(-1), ends], dim=-1)
    carried = entering.unsqueeze(-1) - (ramp + decay[..., None, None])
    return torch.maximum(local, carried).flatten(-2)[..., :T]


def _coefficient_pair(x: Tensor, attack_ms: TensorLike, release_ms: TensorLike, fs: float):
    """Attack and release poles as ``[..., 1]`` tensors on ``x``'s dtype/device."""
    attack, release = as_tensors(attack_ms, release_ms, like=x)
    return (
        time_constant_to_coeff(attack, fs).unsqueeze(-1),
        time_constant_to_coeff(release, fs).unsqueeze(-1),
    )


def _previous_outputs(y: Tensor, y0: Tensor) -> Tensor:
    """``y[n-1]`` for every ``n``: ``y0 [..., 1]`` followed by ``y[..., :-1]``."""
    return torch.cat([y0, y[..., :-1]], dim=-1)


def _branching_mask(x: Tensor, a_att: Tensor, a_rel: Tensor, y0: Tensor, max_iterations: int):
    """Attack/release decisions of the branching follower, found by fixed-point iteration.

    Guess the decisions, solve the time-varying recursion, recompute the decisions from the
    outputs and repeat from the first sample that changed (everything before it is final).
    Each pass settles at least one more sample, so this ends; it usually takes a few passes.
    """
    y = ltv_one_pole(x, a_rel, y0)  # release-only first guess
    mask = x > _previous_outputs(y, y0)
    start = 0
    for _ in range(max_iterations):
        a = torch.where(mask[..., start:], a_att, a_rel)
        prev_start = y0 if start == 0 else y[..., start - 1 : start]
        y_tail = ltv_one_pole(x[..., start:], a, prev_start)
        y = torch.cat([y[..., :start], y_tail], dim=-1)
        new_tail = x[..., start:] > _previous_outputs(y_tail, prev_start)
        changed = (new_tail != mask[..., start:]).reshape(-1, new_tail.shape[-1]).any(dim=0)
        if not bool(changed.any()):
            return mask
        # new_tail agrees with mask before the first change, which is now settled.
        mask = torch.cat([mask[..., :start], new_tail], dim=-1)
        start += int(changed.nonzero()[0])
    warnings.warn(
        f"envelope_follower: attack/release decisions still changing after {max_iterations} "
        "passes; the result is approximate",
        RuntimeWarning,
        stacklevel=4,
    )
    return mask


def _segment_length(x: Tensor) -> int:
    """Samples per segment for the branching follower: on CPU, segments of about 2^19 values
    (all rows together) stay in cache and settle independently, which is several times
    faster than iterating over a whole song; on GPUs one segment keeps the device busy."""
    T = x.shape[-1]
    if x.device.type != "cpu":
        return max(T, 1)
    rows = max(1, math.prod(x.shape[:-1]))
    return max(1 << 15, (1 << 19) // rows)


def _branching_follower(x, a_att, a_rel, y0, max_iterations):
    """Branching follower segment by segment (each settled exactly before the next):
    decisions without gradient, then a differentiable solve. Returns ``(y, y[..., -1:])``."""
    outputs, previous = [], y0
    step = _segment_length(x)
    for start in range(0, x.shape[-1], step):
        segment = x[..., start : start + step]
        with torch.no_grad():
            mask = _branching_mask(
                segment.detach(), a_att.detach(), a_rel.detach(), previous.detach(), max_iterations
            )
        y = ltv_one_pole(segment, torch.where(mask, a_att, a_rel), previous)
        outputs.append(y)
        previous = y[..., -1:]
    return (torch.cat(outputs, dim=-1) if outputs else x), previous


def envelope_follower(
    x: Tensor,
    attack_ms: TensorLike,
    release_ms: TensorLike,
    sample_rate: float = SAMPLE_RATE,
    state: Tensor | None = None,
    *,
    mode: str = "branching",
    return_state: bool = False,
    max_iterations: int = 1000,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attack/release envelope of a detector signal (a rectified level, linear or dB).

    Modes:

    * ``"branching"``: the classic ``y[n] = y[n-1] + alpha(n) (x[n] - y[n-1])`` with
      ``alpha = 1 - a_attack`` if ``x[n] > y[n-1]`` else ``1 - a_release``. Computed exactly:
      the decisions are found by fixed-point iteration over time-varying solves
      (:func:`ltv_one_pole`), then one differentiable solve with the final decisions (the
      gradient treats the decisions as constants, which is exact almost everywhere).
      State ``[..., 1]``: ``y[-1]``.
    * ``"decoupled"``: the smooth decoupled peak detector of Giannoulis, Massberg & Reiss
      (JAES 2012): ``y1[n] = max(x[n], a_R y1[n-1] + (1 - a_R) x[n])`` (release, solved as
      an exact max-affine scan), then ``y[n] = a_A y[n-1] + (1 - a_A) y1[n]`` (attack,
      :func:`one_pole`). State ``[..., 2]``: ``(y1[-1], y[-1])``.

    Args:
        x: ``[..., T]`` detector signal.
        attack_ms: attack time constant in ms (number or ``[...]`` tensor per row).
        release_ms: release time constant in ms.
        sample_rate: in Hz.
        state: as above (``None``: all zeros, e.g. silence in the linear domain; pass a
            state for a dB-domain detector).
        mode: ``"branching"`` or ``"decoupled"``.
        return_state: also return the state after the last sample.
        max_iterations: cap on branching passes (a ``RuntimeWarning`` is issued if hit).

    Returns:
        ``y [..., T]`` or ``(y, state)``; differentiable w.r.t. ``x``, the times and ``state``.
    """
    a_att, a_rel = _coefficient_pair(x, attack_ms, release_ms, sample_rate)
    lead = torch.broadcast_shapes(x.shape[:-1], a_att.shape[:-1])
    x = x.expand(*lead, x.shape[-1])
    if mode == "branching":
        y0 = _state_or_zeros(state, lead, x).unsqueeze(-1)
        y, y_last = _branching_follower(x, a_att, a_rel, y0, max_iterations)
        return _with_state(y, y_last, return_state)
    if mode == "decoupled":
        return _decoupled_peak(x, a_att, a_rel, state, lead, return_state)
    raise ValueError(f"mode must be 'branching' or 'decoupled', got {mode!r}")


def _decoupled_peak(x, a_att, a_rel, state, lead, return_state):
    """Smooth decoupled peak detector (see :func:`envelope_follower`)."""
    states = x.new_zeros(*lead, 2) if state is None else state.to(x).expand(*lead, 2)
    if x.shape[-1] == 0:
        return _with_state(x, states, return_state)
    if (
        a_att.shape[-1] == 1
        and a_rel.shape[-1] == 1
        and _fused.fusable(_fused_scan.KERNEL, x, a_att, a_rel, states)
    ):
        # One Triton launch per branch for a streamed block (see ``_fused_scan``).
        release, y = _fused.run(
            _fused_scan.KERNEL,
            lambda: _decoupled_fused(x, a_att, a_rel, states),
            lambda: _decoupled_eager(x, a_att, a_rel, states),
        )
    else:
        release, y = _decoupled_eager(x, a_att, a_rel, states)
    return _with_state(y, torch.cat([release[..., -1:], y[..., -1:]], dim=-1), return_state)


def _decoupled_eager(x, a_att, a_rel, states):
    a_rel_t = a_rel.expand_as(x)
    release = scan((x, a_rel_t, (1.0 - a_rel_t) * x), states[..., 0], MAX_AFFINE)
    # The attack smoother is the same scan's linear family: no filter tables to build, which
    # a stream would otherwise pay on every block (its poles are new tensors each call).
    a_att_t = a_att.expand_as(x)
    return release, scan((a_att_t, (1.0 - a_att_t) * release), states[..., 1], LINEAR)


def _decoupled_fused(x, a_att, a_rel, states):
    lead = x.shape[:-1]
    release = _fused_scan.pole_scan(x, a_rel[..., 0].expand(lead), states[..., 0], "release_peak")
    return release, _fused_scan.pole_scan(
        release, a_att[..., 0].expand(lead), states[..., 1], "one_pole"
    )
