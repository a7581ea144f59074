"""Chunk-safe application of finite-memory operators by carrying an input history.

An operator ``op`` whose output sample ``n`` depends only on input samples
``n - past .. n + lookahead`` (an FIR, a linear-phase resampler round trip, a memoryless
nonlinearity between them) can be run on a signal cut into consecutive chunks: keep the last
``past + lookahead`` input samples, prepend them to the next chunk, run ``op`` on that buffer
and keep the part of its output that saw no buffer edge. The result equals running ``op`` on the
whole signal (zero-padded on the left) and **delaying it by** ``lookahead`` samples; a causal
operator (``lookahead = 0``) is not delayed.

:func:`apply_with_history` does that; :func:`delay` is the pure delay line built from it (used to
keep a dry path aligned with a look-ahead wet path).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def apply_with_history(
    x: Tensor,
    history: Tensor | None,
    op: Callable[[Tensor], Tensor],
    past: int,
    lookahead: int = 0,
) -> tuple[Tensor, Tensor]:
    """Run a finite-memory operator on one chunk.

    Args:
        x: chunk ``[..., T]``.
        history: the previous call's returned history ``[..., past + lookahead]``, or ``None``
            at the start of the signal (zeros: silence before it).
        op: maps a buffer ``[..., N]`` to ``[..., N]`` (time-aligned with its input, zero
            padding outside it); output sample ``n`` may depend on input samples
            ``n - past .. n + lookahead`` only.
        past: samples of past context ``op`` needs (e.g. ``L - 1`` for a causal FIR of ``L`` taps).
        lookahead: samples of future context ``op`` needs; the output is delayed by this many.

    Returns:
        ``(y [..., T], new_history [..., past + lookahead])``; ``y[t]`` is ``op`` of the whole
        signal at sample ``t - lookahead`` (exactly, up to floating-point rounding).
    """
    n_hist = past + lookahead
    if history is None:
        history = x.new_zeros(*x.shape[:-1], n_hist)
    buffer = torch.cat([history.to(x), x], dim=-1)
    out = op(buffer)
    start = n_hist - lookahead  # = past
    y = out[..., start : start + x.shape[-1]]
    return y, buffer[..., buffer.shape[-1] - n_hist :]


def delay(x: Tensor, history: Tensor | None, samples: int) -> tuple[Tensor, Tensor]:
    """Delay a chunk by ``samples`` (a delay line): ``y[t] = x[t - samples]``, zeros before 0.

    Args:
        x: chunk ``[..., T]``.
        history: returned by the previous call (``None`` at the start).
        samples: delay in samples (>= 0).

    Returns:
        ``(y [..., T], new_history [..., samples])``.
    """
    return apply_with_history(x, history, lambda b: b, past=0, lookahead=samples)


#: Default working-set bound of :func:`apply_chunked` on a CPU: elements per chunk (128 MiB of
#: float32; the intermediates stay near the caches).
MAX_CHUNK_ELEMENTS = 1 << 25
#: The bound on other devices (512 MiB of float32): there each operation is a kernel launch
#: and a few large chunks keep the device busy where many small ones leave it waiting on the
#: host; an exciter's oversampled intermediates are then a few GiB.
DEVICE_CHUNK_ELEMENTS = 1 << 27


def apply_chunked(
    x: Tensor,
    history: Tensor | None,
    op: Callable[[Tensor], Tensor],
    past: int,
    lookahead: int = 0,
    max_elements: int | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`apply_with_history` over consecutive sub-chunks of ``x``, so an operator whose
    intermediates are many times its input (oversampling, band splits) runs in bounded memory
    on long, batched signals. Same result and history as one call (up to rounding).

    Args:
        max_elements: bound on the elements of one sub-chunk ``[..., T']``; ``T'`` is at least
            ``4 * (past + lookahead)`` so the overlap stays a small fraction. ``None``:
            :data:`MAX_CHUNK_ELEMENTS` on a CPU, :data:`DEVICE_CHUNK_ELEMENTS` elsewhere.
    """
    if max_elements is None:
        cpu = x.device.type == "cpu"
        max_elements = MAX_CHUNK_ELEMENTS if cpu else DEVICE_CHUNK_ELEMENTS
    rows = max(1, math.prod(x.shape[:-1]))
    step = max(max_elements // rows, 4 * (past + lookahead), 1)
    if x.shape[-1] <= step:
        return apply_with_history(x, history, op, past, lookahead)
    outs = []
    for start in range(0, x.shape[-1], step):
        y, history = apply_with_history(x[..., start : start + step], history, op, past, lookahead)
        outs.append(y)
    return torch.cat(outs, dim=-1), history
