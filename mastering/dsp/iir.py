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
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Block length of the first level. ``L`` multiply-adds per sample for the zero-state part;
#: 64 keeps that cheap while making the next level 64x shorter.
BLOCK = 64
#: Below this many steps a recurrence is solved with a plain loop.
_DIRECT_STEPS = 16


def sos_to_statespace(sos: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """State-space form of a cascade of second-order sections.

    Args:
        sos: ``[..., n_sections, 6]`` rows ``b0, b1, b2, a0, a1, a2`` (scipy's layout);
            rows are normalized by ``a0`` here.

    Returns:
        ``A [..., N, N]``, ``B [..., N]``, ``C [..., N]``, ``D [...]`` with ``N = 2 * n_sections``,
        for ``s[n+1] = A s[n] + B x[n]``, ``y[n] = C . s[n] + D x[n]`` (transposed direct form II
        per section, sections in series).
    """
    sos = sos / sos[..., 3:4]
    b0, b1, b2, _, a1, a2 = sos.unbind(-1)
    n_sections = sos.shape[-2]
    batch = sos.shape[:-2]
    n = 2 * n_sections
    A = sos.new_zeros(*batch, n, n)
    B = sos.new_zeros(*batch, n)
    C = sos.new_zeros(*batch, n)
    D = sos.new_ones(batch)
    for i in range(n_sections):
        # Section i: y_i = s_i0 + b0 u_i ; s_i0' = -a1 s_i0 + s_i1 + (b1 - a1 b0) u_i ;
        # s_i1' = -a2 s_i0 + (b2 - a2 b0) u_i, with u_i = C . s + D x the output of the
        # sections before it.
        r = 2 * i
        bu0 = b1[..., i] - a1[..., i] * b0[..., i]
        bu1 = b2[..., i] - a2[..., i] * b0[..., i]
        A[..., r, r] = -a1[..., i]
        A[..., r, r + 1] = 1.0
        A[..., r + 1, r] = -a2[..., i]
        A[..., r, :] = A[..., r, :] + bu0.unsqueeze(-1) * C
        A[..., r + 1, :] = A[..., r + 1, :] + bu1.unsqueeze(-1) * C
        B[..., r] = bu0 * D
        B[..., r + 1] = bu1 * D
        C = C * b0[..., i].unsqueeze(-1)
        C[..., r] = C[..., r] + 1.0
        D = D * b0[..., i]
    return A, B, C, D


def _matrix_powers(M: Tensor, count: int, dtype: torch.dtype) -> Tensor:
    """``[M^0, M^1, ..., M^(count-1)]`` stacked on dim -3: ``[..., count, N, N]``.

    Computed in float64 (repeated products in float32 lose digits for poles near the unit
    circle, e.g. a 38 Hz high-pass) and returned in ``dtype``.
    """
    M = M.to(torch.float64)
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device).expand_as(M)
    powers = [eye]
    for _ in range(count - 1):
        powers.append(powers[-1] @ M)
    return torch.stack(powers, dim=-3).to(dtype)


def linear_recurrence(u: Tensor, M: Tensor, s0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Solve ``s[k+1] = M s[k] + u[k]`` for all ``k`` without a per-step Python loop.

    Args:
        u: inputs ``[..., K, N]``.
        M: transition matrix ``[..., N, N]`` (leading dims broadcast against ``u``'s).
        s0: start state ``[..., N]`` (zeros if ``None``).

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

    L = min(BLOCK, K)
    K2 = -(-K // L)
    pad = K2 * L - K
    if pad:
        u = torch.nn.functional.pad(u, (0, 0, 0, pad))
    ub = u.reshape(*lead, K2, L, n)
    powers = _matrix_powers(M, L + 1, u.dtype)  # M^0 .. M^L
    # Within a block, the zero-start state before step j is sum_{i<j} M^(j-1-i) u[i].
    idx = torch.arange(L, device=u.device)
    lag = idx.view(L, 1) - 1 - idx.view(1, L)  # [j, i]
    mask = (lag >= 0).to(u.dtype)
    P = powers[..., lag.clamp(min=0), :, :] * mask.view(L, L, 1, 1)  # [..., L, L, N, N]
    local = torch.einsum("...jimn,...kin->...kjm", P, ub)  # [..., K2, L, N]
    # End-of-block zero-start state, then the block-start states one level up.
    block_in = torch.einsum("...imn,...kin->...km", powers[..., L - 1 - idx, :, :], ub)
    starts, final = linear_recurrence(block_in, powers[..., L, :, :], s)
    # State before step j of block k: M^j S_k + local[k, j].
    states = torch.einsum("...jmn,...kn->...kjm", powers[..., :L, :, :], starts) + local
    states = states.reshape(*lead, K2 * L, n)
    if pad:
        # ``final`` includes the padded zero-input steps: take the state after step K-1.
        last = states[..., K - 1, :]
        final = (M @ last.unsqueeze(-1)).squeeze(-1) + u[..., K - 1, :]
        states = states[..., :K, :]
    return states, final


def statespace_filter(
    x: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    state: Tensor | None = None,
    block: int = BLOCK,
) -> tuple[Tensor, Tensor]:
    """Filter ``x [..., T]`` by the state-space system ``(A, B, C, D)`` exactly.

    Args:
        x: signal ``[..., T]``.
        A, B, C, D: as returned by :func:`sos_to_statespace` (``[..., N, N]``, ``[..., N]``,
            ``[..., N]``, ``[...]``); leading dims broadcast against ``x``'s.
        state: start state ``[..., N]`` or ``None`` for zeros.
        block: first-level block length ``L``.

    Returns:
        ``(y [..., T], final_state [..., N])``.
    """
    T = x.shape[-1]
    n = A.shape[-1]
    dtype = x.dtype
    A, B, C, D = (t.to(torch.float64) for t in (A, B, C, D))
    if T == 0:
        lead = torch.broadcast_shapes(x.shape[:-1], A.shape[:-2])
        s = x.new_zeros(*lead, n) if state is None else state.expand(*lead, n)
        return x.expand(*lead, 0), s
    L = min(block, T)
    K = -(-T // L)
    pad = K * L - T
    xp = torch.nn.functional.pad(x, (0, pad)) if pad else x
    xb = xp.reshape(*x.shape[:-1], K, L)

    powers = _matrix_powers(A, L + 1, torch.float64)  # A^0 .. A^L  [..., L+1, N, N]
    CA = (C.unsqueeze(-2).unsqueeze(-3) @ powers).squeeze(-2)  # C A^n   [..., L+1, N]
    AB = (powers @ B.unsqueeze(-1).unsqueeze(-3)).squeeze(-1)  # A^n B   [..., L+1, N]
    # Impulse response h[0] = D, h[n] = C A^(n-1) B.
    h = torch.cat([D.unsqueeze(-1), (CA[..., : L - 1, :] * B.unsqueeze(-2)).sum(-1)], dim=-1)
    idx = torch.arange(L, device=x.device)
    lag = idx.view(L, 1) - idx.view(1, L)
    H = h[..., lag.clamp(min=0)] * (lag >= 0)  # [..., L, L] lower-triangular Toeplitz
    G = AB[..., L - 1 - idx, :]  # [..., L, N]: contribution of x[j] to the block-end state
    H, G, CA, AB, powers = (t.to(dtype) for t in (H, G, CA, AB, powers))

    u = xb @ G  # [..., K, N]
    starts, final = linear_recurrence(u, powers[..., L, :, :], state)
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
        final = (Ar @ last_start.unsqueeze(-1)).squeeze(-1) + (
            x_last.unsqueeze(-1) * AB[..., r - 1 - idx[:r], :]
        ).sum(-2)
    return y, final


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
    A, B, C, D = sos_to_statespace(sos.to(torch.float64) if sos.dtype != x.dtype else sos)
    y, final = statespace_filter(x, A, B, C, D, state, block=block)
    return (y, final) if return_state else y
