"""Energy of an IIR-filtered signal per block, without materializing the filtered signal.

:func:`sosfilt_block_energy` returns ``sum(y[n]^2)`` over every complete block of ``block``
samples of ``y = sosfilt(x, sos)``: what a loudness meter needs from its weighting filter
(BS.1770's K-weighting, 100 ms blocks). It is a CPU kernel (numba, one thread, float64
throughout) and it is exact: it equals filtering with ``scipy.signal.sosfilt`` in float64 and
summing the squares, to float64 rounding (~1e-13 relative), for signals of any length (every
block starts from its exact filter state; nothing is truncated, nothing accumulates).

How (two passes over each group of :data:`LANES` consecutive blocks, the group held in cache):

1. **Block-start states.** With the cascade as a state-space system
   ``s[n+1] = A s[n] + B x[n]`` (:func:`mastering.dsp.iir.sos_to_statespace`, order
   ``N = 2 * n_sections``, transposed direct form II per section), the state entering block
   ``k + 1`` is ``s_{k+1} = A^L s_k + sum_j A^(L-1-j) B x_k[j]``: ``N`` dot products of the
   block with a precomputed table (vectorized along time) and an ``N x N`` step per block,
   chained from rest at the first block of every row.
2. **Lanes.** The filter recursion is run on the group's blocks side by side, each from its
   exact start state, one sample step for all lanes at a time (so the step is vectorized
   across lanes), accumulating ``y^2`` per lane. Sections are applied in pairs per step (a
   cascade with an odd count gets a pass-through section).

Cost per sample: one plain filter pass (about 6 operations per section) plus ``N``
multiply-adds, at SIMD width; the signal is read from memory once and the filtered signal is
never stored. On one CPU thread this is several times faster than scipy's direct-form
``sosfilt`` alone (``benchmarks/loudness.py``). Not differentiable and CPU only:
:func:`mastering.dsp.iir.sosfilt` (torch, any device) is the path for gradients and GPUs.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import torch
from torch import Tensor

from mastering.dsp.biquad import IDENTITY_SECTION
from mastering.dsp.iir import sos_to_statespace

#: Blocks filtered side by side (SIMD lanes of the recursion).
LANES = 32
#: Samples per lane copied into the interleaved working tile at a time (tile: 24 KiB).
TILE = 96


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _dot(x: np.ndarray, weights: np.ndarray) -> float:
    """``sum_j weights[j] * x[j]`` in float64 (reassociated, so it vectorizes)."""
    acc = 0.0
    for j in range(weights.shape[0]):
        acc += weights[j] * np.float64(x[j])
    return acc


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def _block_energy_kernel(
    x: np.ndarray,
    rows: int,
    length: int,
    block: int,
    coef: np.ndarray,
    gains: np.ndarray,
    step: np.ndarray,
    out: np.ndarray,
) -> None:
    """Fill ``out [rows * (length // block)]`` with the per-block energies.

    ``x``: ``[rows * length]`` (row-major signal; the tail of each row after its last
    complete block is not read). ``coef [S, 5]``: normalized sections ``b0, b1, b2, a1, a2``,
    ``S`` even. ``gains [N, block]``: ``A^(block-1-j) B`` per state component. ``step [N, N]``:
    ``A^block``.
    """
    n_sec = coef.shape[0]
    n = 2 * n_sec
    n_blocks = length // block
    n_tasks = rows * n_blocks
    state = np.zeros(n)
    new = np.zeros(n)
    lanes = np.zeros((n + 1, LANES))  # per lane: the n filter states, then the energy
    offsets = np.zeros(LANES, np.int64)
    tile = np.zeros(TILE * LANES)  # tile[i * LANES + p]: sample i of lane p
    for first in range(0, n_tasks, LANES):
        count = min(LANES, n_tasks - first)
        # 1. The exact start state of each block of the group.
        for p in range(LANES):
            task = first + min(p, count - 1)  # idle lanes repeat the last block
            row = task // n_blocks
            k = task - row * n_blocks
            offsets[p] = row * length + k * block
            lanes[n, p] = 0.0
            if p >= count:
                for m in range(n):
                    lanes[m, p] = lanes[m, count - 1]
                continue
            if k == 0:
                state[:] = 0.0
            segment = x[offsets[p] : offsets[p] + block]
            for m in range(n):
                lanes[m, p] = state[m]
                acc = _dot(segment, gains[m])
                for q in range(n):
                    acc += step[m, q] * state[q]
                new[m] = acc
            state[:] = new
        # 2. Every lane through the cascade, one sample step for all lanes at a time.
        for start in range(0, block, TILE):
            width = min(TILE, block - start)
            for p in range(LANES):
                source = x[offsets[p] + start : offsets[p] + start + width]
                for i in range(width):
                    tile[i * LANES + p] = source[i]
            for s in range(0, n_sec, 2):
                b0, b1, b2, a1, a2 = coef[s, 0], coef[s, 1], coef[s, 2], coef[s, 3], coef[s, 4]
                c0, c1, c2 = coef[s + 1, 0], coef[s + 1, 1], coef[s + 1, 2]
                d1, d2 = coef[s + 1, 3], coef[s + 1, 4]
                z1, z2, w1, w2 = lanes[s * 2], lanes[s * 2 + 1], lanes[s * 2 + 2], lanes[s * 2 + 3]
                energy = lanes[n]
                last = s + 2 == n_sec
                for i in range(width):
                    base = i * LANES
                    for p in range(LANES):
                        v = tile[base + p]
                        u = b0 * v + z1[p]
                        z1[p] = b1 * v - a1 * u + z2[p]
                        z2[p] = b2 * v - a2 * u
                        y = c0 * u + w1[p]
                        w1[p] = c1 * u - d1 * y + w2[p]
                        w2[p] = c2 * u - d2 * y
                        if last:  # the last pair: accumulate the energy
                            energy[p] += y * y
                        else:  # an inner pair: pass the output on
                            tile[base + p] = y
        for p in range(count):
            out[first + p] = lanes[n, p]


def _powers_applied(A: np.ndarray, B: np.ndarray, count: int) -> np.ndarray:
    """``[B, A B, A^2 B, ...]`` (``count`` columns) by repeated doubling, in ``A``'s dtype."""
    columns, power = B, A  # power: A^(number of columns)
    while columns.shape[1] < count:
        columns = np.concatenate([columns, power @ columns], axis=1)
        power = power @ power
    return columns[:, :count]


@functools.lru_cache(maxsize=32)
def _tables(sos_rows: tuple[float, ...], block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kernel tables for a cascade (``sos_rows``: its ``[S, 6]`` rows flattened), cached.

    Returns normalized coefficients ``[S, 5]`` (``S`` padded to even), the input-to-end-state
    gains ``A^(block-1-j) B`` as ``[N, block]`` and the block transition ``A^block [N, N]``,
    float64.
    """
    sos = torch.tensor(sos_rows, dtype=torch.float64).reshape(-1, 6)
    if sos.shape[0] % 2:
        sos = torch.cat([sos, torch.tensor([IDENTITY_SECTION], dtype=torch.float64)])
    sos = sos / sos[:, 3:4]
    coef = np.ascontiguousarray(sos[:, [0, 1, 2, 4, 5]].numpy())
    A, B, _, _ = (t.numpy() for t in sos_to_statespace(sos))
    # Powers of A in extended precision (x86 long double; plain float64 where long double is
    # float64): with poles near z = 1 the entries of A^k grow large before they decay and
    # cancel in A^k s, so float64 powers cost up to ~1e-10 (relative) in the block-start
    # states; computed wide and rounded once, the result matches float64 sosfilt (tested).
    wide = np.longdouble
    A_wide = A.astype(wide)
    gains = _powers_applied(A_wide, B[:, None].astype(wide), block)[:, ::-1]
    step = np.linalg.matrix_power(A_wide, block)
    return coef, np.ascontiguousarray(gains, dtype=np.float64), step.astype(np.float64)


def sosfilt_block_energy(x: Tensor | np.ndarray, sos: Tensor | np.ndarray, block: int) -> Tensor:
    """Per-block energy of ``y = sosfilt(x, sos)``: ``sum(y^2)`` over each complete block.

    Args:
        x: signal ``[..., T]`` on the CPU, float32 or float64 (other floats are cast to
            float32); every row is filtered from rest. Not differentiable.
        sos: one cascade for every row, ``[n_sections, 6]`` (``b0, b1, b2, a0, a1, a2``).
        block: samples per block (``>= 1``); each row's incomplete tail is ignored.

    Returns:
        float64 ``[..., T // block]`` sums of squares, on the CPU.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    sos = torch.as_tensor(sos).detach()
    if sos.dim() != 2 or sos.shape[-1] != 6 or sos.shape[0] == 0:
        raise ValueError(f"sos must be one cascade [n_sections, 6], got {tuple(sos.shape)}")
    t = torch.as_tensor(x).detach()
    if t.device.type != "cpu":
        raise ValueError(f"sosfilt_block_energy runs on the CPU, got a {t.device} tensor")
    if not t.is_floating_point():
        raise ValueError(f"x must be floating point, got {t.dtype}")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    lead, length = t.shape[:-1], t.shape[-1]
    rows, n_blocks = int(np.prod(lead)), length // block
    out = np.zeros(rows * n_blocks)
    if out.size:
        rows_key = tuple(sos.cpu().double().reshape(-1).tolist())
        coef, gains, step = _tables(rows_key, block)
        flat = t.reshape(rows, length).contiguous().numpy().reshape(-1)
        _block_energy_kernel(flat, rows, length, block, coef, gains, step, out)
    return torch.from_numpy(out).reshape(*lead, n_blocks)
