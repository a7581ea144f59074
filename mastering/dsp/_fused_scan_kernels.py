"""Triton kernels of :mod:`mastering.dsp._fused_scan` (imported only where Triton is).

Triton resolves the functions a kernel calls among its module's globals, hence a module of
their own.
"""

import triton
import triton.language as tl


@triton.jit
def combine_linear(a1, b1, a2, b2):
    # f1 (earlier) then f2: y -> a2 (a1 y + b1) + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def combine_max_affine(p1, a1, q1, p2, a2, q2):
    # f1 then f2, with a2 >= 0: y -> max(p2, a2 max(p1, a1 y + q1) + q2).
    return tl.maximum(p2, a2 * p1 + q2), a1 * a2, a2 * q1 + q2


# Lengths vary song to song: no recompilation per value (or per divisibility) of them.
@triton.jit(do_not_specialize=["length", "n_segments"])
def segment_kernel(
    x_ptr,
    pole_ptr,
    start_ptr,
    out_ptr,
    length,
    n_segments,
    MAX_AFFINE: tl.constexpr,
    REDUCE: tl.constexpr,
    SEG: tl.constexpr,
    TILE: tl.constexpr,
):
    seg = tl.program_id(0)
    row = tl.program_id(1)
    a = tl.load(pole_ptr + row)
    base = row.to(tl.int64) * length
    offs = tl.arange(0, TILE)
    last = offs == TILE - 1
    seg_start = seg * SEG
    if REDUCE:  # noqa: SIM108 (constexpr branches)
        carry = tl.full([], 0.0, tl.float32)
    else:
        carry = tl.load(start_ptr + row * n_segments + seg)
    tot_p = tl.full([], -1.0e30, tl.float32)  # the identity map
    tot_a = tl.full([], 1.0, tl.float32)
    tot_q = tl.full([], 0.0, tl.float32)
    for t0 in range(0, SEG, TILE):
        cols = seg_start + t0 + offs
        mask = cols < length  # a padded tile is identity maps
        x = tl.load(x_ptr + base + cols, mask=mask, other=0.0)
        A = tl.where(mask, a, 1.0)
        Q = tl.where(mask, (1.0 - a) * x, 0.0)
        if MAX_AFFINE:
            P = tl.where(mask, x, -1.0e30)  # finite: 0 * it is 0
            Pp, Ap, Qp = tl.associative_scan((P, A, Q), 0, combine_max_affine)
            if REDUCE:
                lp = tl.sum(tl.where(last, Pp, 0.0), 0)
                la = tl.sum(tl.where(last, Ap, 0.0), 0)
                lq = tl.sum(tl.where(last, Qp, 0.0), 0)
                tot_p = tl.maximum(lp, la * tot_p + lq)
                tot_a = tot_a * la
                tot_q = la * tot_q + lq
            else:
                y = tl.maximum(Pp, Ap * carry + Qp)
                tl.store(out_ptr + base + cols, y, mask=mask)
                carry = tl.sum(tl.where(last, y, 0.0), 0)
        else:
            Ap, Qp = tl.associative_scan((A, Q), 0, combine_linear)
            if REDUCE:
                la = tl.sum(tl.where(last, Ap, 0.0), 0)
                lq = tl.sum(tl.where(last, Qp, 0.0), 0)
                tot_a = tot_a * la
                tot_q = la * tot_q + lq
            else:
                y = Ap * carry + Qp
                tl.store(out_ptr + base + cols, y, mask=mask)
                carry = tl.sum(tl.where(last, y, 0.0), 0)
    if REDUCE:
        cell = (row * n_segments + seg) * 3
        tl.store(out_ptr + cell, tot_p)
        tl.store(out_ptr + cell + 1, tot_a)
        tl.store(out_ptr + cell + 2, tot_q)
