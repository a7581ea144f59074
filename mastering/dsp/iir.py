"""Exact IIR filtering on tensors, without per-sample loops.

A cascade of second-order sections is turned into one linear state-space system
``s[n+1] = A s[n] + B x[n]``, ``y[n] = C s[n] + D x[n]`` of order ``N = 2 * n_sections``.
The signal is cut into blocks of ``L`` samples; inside a block the output is the sum of

* the zero-state response, a lower-triangular Toeplitz matrix of the impulse response
  applied to the block (one matmul, ``L`` multiply-adds per sample), and
* the zero-input response ``C A^n s_k`` from the state at the block start.

The block-start states obey the same kind of recursion one level up,
``s_{k+1} = A^L s_k + u_k`` with ``u_k = sum_j A^(L-1-j) B x_k[j]``, which is solved by the
same blocking again (:func:`linear_recurrence`) until it is short enough for a plain loop.
The result equals direct-form filtering up to floating-point rounding (no truncated impulse
response, no time aliasing), is differentiable with respect to the signal and the
coefficients, and runs as a few large matmuls on CPU or GPU.

The filter state is the state vector ``s`` of that state-space form, shaped
``[..., 2 * n_sections]``; pass the returned state back in to filter a signal in chunks.

Everything that depends on the coefficients only (the state space, the matrix powers, the
Toeplitz and block matrices of every level) is memoized per ``sos`` tensor when that tensor
does not require gradients: a filter applied block after block (streaming), or a fixed design
applied to song after song, pays for its tables once. On a GPU those tables are most of the
kernel launches of a short call: 243 of a 4,096-sample DC blocker's, for example, against
about 30 for the signal itself. The memo holds the tensor weakly (it goes when the tensor
does) and is dropped if the tensor is modified in place.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

#: Block length of the first level. ``L`` multiply-adds per sample for the zero-state part;
#: 64 keeps that cheap while making the next level 64x shorter.
BLOCK = 64
#: Up to this many steps a recurrence is solved with a plain loop (two operations a step; a
#: level of blocking is about a dozen).
_DIRECT_STEPS = 4

#: Coefficient tables per ``sos`` tensor (see the module docstring).
_MEMO: WeakIdKeyDictionary = WeakIdKeyDictionary()

Memo = dict[Any, Any]


def _memo_for(sos: Tensor) -> Memo | None:
    """The table memo of ``sos``, or ``None`` when its tables must be rebuilt on every call:
    ``sos`` requires gradients (the tables must be part of the autograd graph), or inference
    mode is on (tables made there could not be used later by a call that records gradients)."""
    if sos.requires_grad or torch.is_inference_mode_enabled():
        return None
    entry = _MEMO.get(sos)
    if entry is None or entry["version"] != sos._version:
        entry = {"version": sos._version}
        _MEMO[sos] = entry
    return entry


def _cached(memo: Memo | None, key: Any, build):
    """``build()``, memoized under ``key`` in ``memo`` when there is one."""
    if memo is None:
        return build()
    if key not in memo:
        memo[key] = build()
    return memo[key]


def sos_to_statespace(sos: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """State-space form of a cascade of second-order sections.

    Section ``i`` (transposed direct form II, states ``s_i = (s_i0, s_i1)``) filters
    ``u_i``, the output of the sections before it: ``y_i = s_i0 + b0_i u_i``,
    ``s_i0' = -a1_i s_i0 + s_i1 + (b1_i - a1_i b0_i) u_i``,
    ``s_i1' = -a2_i s_i0 + (b2_i - a2_i b0_i) u_i``. Unrolled,
    ``u_i = sum_{j<i} W[i, j] s_j0 + P[i] x`` with ``P[i] = prod_{k<i} b0_k`` and
    ``W[i, j] = prod_{j<k<i} b0_k``; all sections are built at once from those products (a
    fixed number of tensor operations whatever the number of sections, which matters on a
    GPU, where each operation is a kernel launch).

    Args:
        sos: ``[..., n_sections, 6]`` rows ``b0, b1, b2, a0, a1, a2`` (scipy's layout);
            rows are normalized by ``a0`` here.

    Returns:
        ``A [..., N, N]``, ``B [..., N]``, ``C [..., N]``, ``D [...]`` with ``N = 2 * n_sections``,
        for ``s[n+1] = A s[n] + B x[n]``, ``y[n] = C . s[n] + D x[n]`` (sections in series).
    """
    sos = sos / sos[..., 3:4]
    b0, b1, b2, _, a1, a2 = sos.unbind(-1)  # each [..., S]
    S = sos.shape[-2]
    batch = sos.shape[:-2]
    # W[i, j] = prod over k of (b0_k if j < k < i else 1), for i in 0..S (row S = the output).
    k = torch.arange(S, device=sos.device)
    i = torch.arange(S + 1, device=sos.device).view(-1, 1, 1)
    inside = (k.view(1, 1, -1) > k.view(1, -1, 1)) & (k.view(1, 1, -1) < i)  # [S+1, S, S]
    factors = torch.where(inside, b0[..., None, None, :], b0.new_ones(()))
    W = factors.prod(-1) * (k.view(1, -1) < i.view(-1, 1)).to(sos.dtype)  # [..., S+1, S]
    ones = torch.ones_like(b0[..., :1])
    P = torch.cat([ones, torch.cumprod(b0, -1)], dim=-1)  # [..., S+1]
    # Coefficients of u_i on the full state: s_j0 -> W[i, j], s_j1 -> 0.
    Crow = torch.stack([W, torch.zeros_like(W)], dim=-1).flatten(-2)  # [..., S+1, 2S]
    bu = torch.stack([b1 - a1 * b0, b2 - a2 * b0], dim=-1)  # [..., S, 2]
    local = torch.zeros(*batch, S, 2, 2 * S, dtype=sos.dtype, device=sos.device)
    col = 2 * k
    rows = torch.arange(S, device=sos.device)
    local[..., rows, 0, col] = -a1
    local[..., rows, 0, col + 1] = 1.0
    local[..., rows, 1, col] = -a2
    A = (local + bu.unsqueeze(-1) * Crow[..., :S, None, :]).flatten(-3, -2)  # [..., 2S, 2S]
    B = (bu * P[..., :S, None]).flatten(-2)
    return A, B, Crow[..., S, :], P[..., S]


def _matrix_powers(M: Tensor, count: int, dtype: torch.dtype) -> Tensor:
    """``[M^0, M^1, ..., M^(count-1)]`` stacked on dim -3: ``[..., count, N, N]``.

    Computed in float64 (repeated products in float32 lose digits for poles near the unit
    circle, e.g. a 38 Hz high-pass) by doubling: with ``[M^0 .. M^(k-1)]`` known, one batched
    product by ``M^k`` gives ``[M^k .. M^(2k-1)]``, so ``count`` powers take
    ``log2(count)`` rounds of three operations rather than ``count`` products (on a GPU each
    operation is a kernel launch). Returned in ``dtype``.
    """
    M = M.to(torch.float64)
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device).expand_as(M)
    powers = torch.stack([eye, M], dim=-3)
    while powers.shape[-3] < count:
        k = powers.shape[-3]
        step = powers[..., k - 1, :, :] @ M  # M^k
        powers = torch.cat([powers, powers @ step.unsqueeze(-3)], dim=-3)
    return powers[..., :count, :, :].to(dtype)


def linear_recurrence(
    u: Tensor, M: Tensor, s0: Tensor | None = None, memo: Memo | None = None
) -> tuple[Tensor, Tensor]:
    """Solve ``s[k+1] = M s[k] + u[k]`` for all ``k`` without a per-step Python loop.

    Args:
        u: inputs ``[..., K, N]``.
        M: transition matrix ``[..., N, N]`` (leading dims broadcast against ``u``'s).
        s0: start state ``[..., N]`` (zeros if ``None``).
        memo: a dict that keeps ``M``'s tables between calls (``None``: rebuilt each call);
            the caller guarantees that the same memo always comes with the same ``M``.

    Returns:
        ``(states, final)``: ``states [..., K, N]`` holds ``s[k]`` (the state *before* step
        ``k``), ``final [..., N]`` holds ``s[K]``.
    """
    K, n = u.shape[-2], u.shape[-1]
    lead = torch.broadcast_shapes(u.shape[:-2], M.shape[:-2])
    u = u.expand(*lead, K, n)
    s = u.new_zeros(*lead, n) if s0 is None else s0.expand(*lead, n)
    if K <= _DIRECT_STEPS:
        states = []
        for k in range(K):
            states.append(s)
            s = (M @ s.unsqueeze(-1)).squeeze(-1) + u[..., k, :]
        return torch.stack(states, dim=-2), s

    # Always blocks of BLOCK steps (a short recurrence is one zero-padded block): one set of
    # tables per level whatever K is, so a memo stays small and always hits.
    L = BLOCK
    K2 = -(-K // L)
    pad = K2 * L - K
    if pad:
        u = torch.nn.functional.pad(u, (0, 0, 0, pad))
    ub = u.reshape(*lead, K2, L, n)
    level = memo.setdefault(("level", u.dtype), {}) if memo is not None else None
    M_L, P, G, W = _cached(level, "tables", lambda: _recurrence_tables(M, L, u.dtype))
    ub = ub.flatten(-2)  # [..., K2, L * N], sample-major
    # End-of-block zero-start state, then the block-start states one level up.
    up = None if level is None else level.setdefault("up", {})
    starts, final = linear_recurrence(ub @ G, M_L, s, up)
    # State before step j of block k: M^j S_k plus the zero-start state (one GEMM each).
    states = torch.matmul(starts, W).add_(ub @ P).reshape(*lead, K2 * L, n)
    if pad:
        # ``final`` includes the padded zero-input steps: take the state after step K-1.
        last = states[..., K - 1, :]
        final = (M @ last.unsqueeze(-1)).squeeze(-1) + u[..., K - 1, :]
        states = states[..., :K, :]
    return states, final


def _recurrence_tables(M: Tensor, L: int, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """For blocks of ``L`` steps of ``s -> M s + u``, as matrices over a block's inputs
    flattened sample-major (``[..., L * N]``), all in ``dtype`` (powers in float64):

    * ``M^L [..., N, N]``: the transition from block start to block start;
    * ``P [..., L*N, L*N]``: inputs -> zero-start state before each step
      (``M^(j-1-i)`` from input ``i`` to step ``j > i``);
    * ``G [..., L*N, N]``: inputs -> zero-start state after the block (``M^(L-1-i)``);
    * ``W [..., N, L*N]``: block-start state -> its part of the state before each step
      (``M^j``).
    """
    powers = _matrix_powers(M, L + 1, dtype)  # M^0 .. M^L  [..., L+1, N, N]
    n = M.shape[-1]
    lead = powers.shape[:-3]
    idx = torch.arange(L, device=M.device)
    lag = idx.view(L, 1) - 1 - idx.view(1, L)  # [j, i]
    mask = (lag >= 0).to(dtype)
    P = powers[..., lag.clamp(min=0), :, :] * mask.view(L, L, 1, 1)  # [..., j, i, m, n']
    P = P.permute(*range(len(lead)), -3, -1, -4, -2).reshape(*lead, L * n, L * n)
    G = powers[..., L - 1 - idx, :, :].transpose(-1, -2).reshape(*lead, L * n, n)
    W = powers[..., :L, :, :].permute(*range(len(lead)), -1, -3, -2).reshape(*lead, n, L * n)
    return powers[..., L, :, :], P.contiguous(), G.contiguous(), W.contiguous()


def statespace_filter(
    x: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    state: Tensor | None = None,
    block: int = BLOCK,
    memo: Memo | None = None,
) -> tuple[Tensor, Tensor]:
    """Filter ``x [..., T]`` by the state-space system ``(A, B, C, D)`` exactly.

    Args:
        x: signal ``[..., T]``.
        A, B, C, D: as returned by :func:`sos_to_statespace` (``[..., N, N]``, ``[..., N]``,
            ``[..., N]``, ``[...]``); leading dims broadcast against ``x``'s.
        state: start state ``[..., N]`` or ``None`` for zeros.
        block: first-level block length ``L``.
        memo: a dict that keeps the system's tables between calls (``None``: rebuilt); the
            caller guarantees that the same memo always comes with the same system.

    Returns:
        ``(y [..., T], final_state [..., N])``.
    """
    T = x.shape[-1]
    n = A.shape[-1]
    dtype = x.dtype
    if T == 0:
        lead = torch.broadcast_shapes(x.shape[:-1], A.shape[:-2])
        s = x.new_zeros(*lead, n) if state is None else state.expand(*lead, n)
        return x.expand(*lead, 0), s
    L = min(block, T)
    K = -(-T // L)
    pad = K * L - T
    xp = torch.nn.functional.pad(x, (0, pad)) if pad else x
    xb = xp.reshape(*x.shape[:-1], K, L)

    level = memo.setdefault(("filter", L, dtype), {}) if memo is not None else None
    H, G, CA, AB, powers = _cached(level, "tables", lambda: _filter_tables(A, B, C, D, L, dtype))
    u = xb @ G  # [..., K, N]
    up = None if level is None else level.setdefault("up", {})
    starts, final = linear_recurrence(u, powers[..., L, :, :], state, up)
    # Zero-input response of each block plus its zero-state response, in one fused GEMM.
    starts = starts.contiguous()
    if H.dim() == 2 and starts.shape[:-1] == xb.shape[:-1]:
        # One filter for every channel: two plain GEMMs over all blocks at once.
        y = (starts.reshape(-1, n) @ CA[:L].T).addmm_(xb.reshape(-1, L), H.T)
    else:
        y = starts @ CA[..., :L, :].transpose(-1, -2) + xb @ H.transpose(-1, -2)
    y = y.reshape(*starts.shape[:-2], K * L)
    if pad:
        y = y[..., :T]
        # ``final`` ran through the zero padding; propagate the last block's start state by
        # the r real samples instead.
        r = L - pad
        last_start = starts[..., K - 1, :]
        x_last = xb[..., K - 1, :r]
        Ar = powers[..., r, :, :]
        idx = torch.arange(r, device=x.device)
        final = (Ar @ last_start.unsqueeze(-1)).squeeze(-1) + (
            x_last.unsqueeze(-1) * AB[..., r - 1 - idx, :]
        ).sum(-2)
    return y, final


def _filter_tables(
    A: Tensor, B: Tensor, C: Tensor, D: Tensor, L: int, dtype: torch.dtype
) -> tuple[Tensor, ...]:
    """Blocks of ``L`` samples of the system: the Toeplitz matrix ``H [..., L, L]`` of its
    impulse response, ``G [..., L, N]`` (each input sample's share of the block-end state),
    ``C A^n`` and ``A^n B`` ``[..., L + 1, N]`` and the powers ``A^0 .. A^L``, in ``dtype``
    (built in float64)."""
    A, B, C, D = (t.to(torch.float64) for t in (A, B, C, D))
    powers = _matrix_powers(A, L + 1, torch.float64)  # A^0 .. A^L  [..., L+1, N, N]
    CA = (C.unsqueeze(-2).unsqueeze(-3) @ powers).squeeze(-2)  # C A^n   [..., L+1, N]
    AB = (powers @ B.unsqueeze(-1).unsqueeze(-3)).squeeze(-1)  # A^n B   [..., L+1, N]
    # Impulse response h[0] = D, h[n] = C A^(n-1) B.
    h = torch.cat([D.unsqueeze(-1), (CA[..., : L - 1, :] * B.unsqueeze(-2)).sum(-1)], dim=-1)
    idx = torch.arange(L, device=A.device)
    lag = idx.view(L, 1) - idx.view(1, L)
    H = h[..., lag.clamp(min=0)] * (lag >= 0)  # [..., L, L] lower-triangular Toeplitz
    G = AB[..., L - 1 - idx, :]  # [..., L, N]: contribution of x[j] to the block-end state
    return tuple(t.to(dtype) for t in (H, G, CA, AB, powers))


def sosfilt(
    x: Tensor,
    sos: Tensor,
    state: Tensor | None = None,
    *,
    return_state: bool = False,
    block: int = BLOCK,
) -> Tensor | tuple[Tensor, Tensor]:
    """Filter ``x`` by a cascade of second-order sections, exactly (like ``scipy.signal.sosfilt``).

    Args:
        x: signal ``[..., T]`` (e.g. ``[batch, channels, samples]``), float32 or float64.
        sos: ``[n_sections, 6]`` or ``[..., n_sections, 6]`` (``b0, b1, b2, a0, a1, a2``); its
            leading dims broadcast against ``x``'s leading dims, so per-song or per-channel
            filters are one call. Differentiable with respect to the coefficients.
        state: ``[..., 2 * n_sections]`` state returned by an earlier call (``None``: at rest).
        return_state: also return the final state, for chunked streaming.
        block: first-level block length (see the module docstring).

    Returns:
        ``y`` with the broadcast shape of ``x``, or ``(y, state)``.
    """
    memo = _memo_for(sos)
    # Designed in the signal's dtype when the coefficients share it, else in float64.
    design = sos.dtype if sos.dtype == x.dtype else torch.float64
    A, B, C, D = _cached(memo, ("statespace", design), lambda: sos_to_statespace(sos.to(design)))
    y, final = statespace_filter(
        x, A, B, C, D, state, block=block, memo=None if memo is None else memo.setdefault(block, {})
    )
    return (y, final) if return_state else y
