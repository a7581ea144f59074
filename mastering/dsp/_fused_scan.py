"""Fused GPU (Triton) first-order scans with one pole per row: private engine of ``smoothing``.

Two recurrences, each with a constant pole ``a`` in ``[0, 1)`` per row:

* ``"one_pole"``: ``y[n] = a y[n-1] + (1 - a) x[n]`` (the LTI smoother);
* ``"release_peak"``: ``y[n] = max(x[n], a y[n-1] + (1 - a) x[n])`` (the release branch of the
  decoupled peak detector).

Both are compositions of step maps of a closed family (linear ``y -> A y + B``, max-affine
``y -> max(P, A y + Q)`` with ``A >= 0``), so a tile of samples is solved by one
``tl.associative_scan`` of its maps, and tiles follow each other with the state carried in
registers. Long rows are cut into segments solved side by side, like the chunked scan of
``_scan`` with two levels:

1. ``REDUCE``: every segment composes its maps into one (one program per segment and row);
2. the eager chunked scan runs those segment maps (a row's worth divided by
   :data:`SEGMENT`) for each segment's entering state;
3. every segment is solved from its entering state.

A row no longer than a segment (a streamed block) is one launch. The eager chunked scan does
the same work in some 30 to 100 kernel launches, which dominate a streamed block on a GPU.
Float32 on CUDA only, without gradients (:mod:`mastering.dsp._fused` decides); results agree
with the eager scan to float rounding (a CUDA test checks it).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from mastering.dsp._scan import LINEAR, MAX_AFFINE, scan

#: Samples per tile (one associative scan).
BLOCK = 1024
#: Samples per segment of a long row (a multiple of :data:`BLOCK`).
SEGMENT = 16 * BLOCK

FAMILIES = ("one_pole", "release_peak")
#: These kernels' name in :mod:`mastering.dsp._fused`'s policy.
KERNEL = "pole_scan"


@functools.cache
def _kernels():
    """``(triton, segment_kernel)``, or ``None`` where Triton is missing."""
    try:
        import triton

        from mastering.dsp import _fused_scan_kernels as k
    except ImportError:
        return None
    return triton, k.segment_kernel


def pole_scan(x: Tensor, pole: Tensor, y0: Tensor, family: str) -> Tensor:
    """Solve ``family`` (see the module docstring) over rows of ``x``.

    Args:
        x: ``[..., T]`` float32 input, ``T >= 1`` (CUDA for speed; the Triton interpreter
            also runs it on CPU tensors).
        pole: ``[...]`` pole per row, in ``[0, 1)``.
        y0: ``[...]`` state before the first sample.
        family: ``"one_pole"`` or ``"release_peak"``.

    Returns:
        ``y [..., T]`` float32.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    triton, segment_kernel = _kernels()
    lead, length = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, length).contiguous()
    rows = flat.shape[0]
    poles = pole.to(flat).expand(lead).reshape(rows).contiguous()
    starts = y0.to(flat).expand(lead).reshape(rows, 1).contiguous()
    n_segments = triton.cdiv(length, SEGMENT)
    max_affine = family == "release_peak"
    y = torch.empty_like(flat)
    for r0 in range(0, rows, 65_535):  # grid dim 1 is limited to 65535 programs
        r1 = min(r0 + 65_535, rows)
        seg_starts = starts[r0:r1]
        if n_segments > 1:
            maps = flat.new_empty(r1 - r0, n_segments, 3)
            grid = (n_segments, r1 - r0)
            segment_kernel[grid](
                flat[r0:r1], poles[r0:r1], seg_starts, maps, length, n_segments,
                MAX_AFFINE=max_affine, REDUCE=True, SEG=SEGMENT, TILE=BLOCK,
            )  # fmt: skip
            # Entering states: y0, then the segment maps run in order (the last one's end is
            # not needed).
            p, a, q = (maps[:, :-1, i] for i in range(3))
            y0 = starts[r0:r1, 0]
            entering = scan((p, a, q), y0, MAX_AFFINE) if max_affine else scan((a, q), y0, LINEAR)
            seg_starts = torch.cat([y0.unsqueeze(-1), entering], dim=-1).contiguous()
        segment_kernel[(n_segments, r1 - r0)](
            flat[r0:r1], poles[r0:r1], seg_starts, y[r0:r1], length, n_segments,
            MAX_AFFINE=max_affine, REDUCE=False, SEG=SEGMENT, TILE=BLOCK,
        )  # fmt: skip
    return y.reshape(*lead, length)
