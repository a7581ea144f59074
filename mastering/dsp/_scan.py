"""Chunked parallel scans for first-order recurrences (private engine of ``smoothing``).

A first-order recurrence ``y[n] = f_n(y[n-1])`` whose step maps ``f_n`` belong to a family
closed under composition is solved without a per-sample Python loop:

1. cut the signal into chunks of ``CHUNK`` samples; for every chunk at once (vectorized over
   chunks) compose the step maps from the chunk start, giving the map from the state before
   the chunk to every output in it (``CHUNK`` small vectorized steps);
2. the chunk-end maps form the same kind of recurrence, ``CHUNK`` times shorter, which is
   solved by the same procedure (recursion) for the state entering each chunk;
3. apply every prefix map to its chunk's entering state.

There are no divisions and no logarithms, so the result matches a sequential loop to float
rounding whatever the coefficients (0 or 1 included), and it is differentiable.

Families, each a tuple of tensors ``[..., T]``:

* linear ``(a, b)``: ``y -> a y + b``;
* max-affine ``(p, a, q)``: ``y -> max(p, a y + q)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

#: Samples per chunk on a CPU: Python steps per level vs. length of the next level.
CHUNK = 64
#: Samples per chunk on other devices. There every step is a kernel launch whose cost does
#: not depend on its size, so short chunks and more levels win: a 3-minute song takes
#: 8 levels of 8 steps (about 110 launches in all for a linear scan) instead of 4 of 64
#: (about 280), for some 15 % more memory traffic.
DEVICE_CHUNK = 8
#: Chunks interleaved per tile of the working layout (see :func:`_to_blocked`).
LANES = 64

Maps = tuple[Tensor, ...]


class Family(NamedTuple):
    """A family of step maps: ``prefix`` composes them along dim -2 of ``[..., J, chunk,
    lanes]`` tensors (map from the chunk start to each position), ``apply`` evaluates maps
    at a state."""

    prefix: Callable[[Maps], Maps]
    apply: Callable[[Maps, Tensor], Tensor]


def _running(step: Callable[[int, Tensor], Tensor], first: Tensor, width: int) -> Tensor:
    """``r[0] = first``, ``r[i] = step(i, r[i-1])`` along dim -2 (``width`` positions)."""
    rows = [first]
    for i in range(1, width):
        rows.append(step(i, rows[-1]))
    return torch.stack(rows, dim=-2)


def _running_affine(a: Tensor, b: Tensor) -> Tensor:
    """``r[i] = a[i] r[i-1] + b[i]`` along dim -2, from ``r[0] = b[0]``."""
    return _running(
        lambda i, r: torch.addcmul(b[..., i, :], a[..., i, :], r), b[..., 0, :], a.shape[-2]
    )


def _prefix_linear(maps: Maps) -> Maps:
    a, b = maps
    return torch.cumprod(a, dim=-2), _running_affine(a, b)


def _apply_linear(maps: Maps, y: Tensor) -> Tensor:
    a, b = maps
    return torch.addcmul(b, a, y)


def _prefix_max_affine(maps: Maps) -> Maps:
    p, a, q = maps
    peak = _running(
        lambda i, r: torch.maximum(p[..., i, :], torch.addcmul(q[..., i, :], a[..., i, :], r)),
        p[..., 0, :],
        a.shape[-2],
    )
    return peak, torch.cumprod(a, dim=-2), _running_affine(a, q)


def _apply_max_affine(maps: Maps, y: Tensor) -> Tensor:
    p, a, q = maps
    return torch.maximum(p, torch.addcmul(q, a, y))


LINEAR = Family(_prefix_linear, _apply_linear)
MAX_AFFINE = Family(_prefix_max_affine, _apply_max_affine)


def _to_blocked(t: Tensor, chunk: int, lanes: int, length: int) -> Tensor:
    """``[..., T]`` zero-padded to ``length`` (a multiple of ``chunk * lanes``), as
    ``[..., J, chunk, lanes]``.

    Sample ``(j * lanes + l) * chunk + i`` lands at ``[j, i, l]``: position ``i`` of every
    chunk is a run of ``lanes`` contiguous values, and the transpose is done in small
    cache-sized tiles (a plain ``[n_chunks, chunk]`` transpose is several times slower).
    """
    pad = length - t.shape[-1]
    t = F.pad(t, (0, pad)) if pad else t
    return t.unflatten(-1, (-1, lanes, chunk)).transpose(-1, -2).contiguous()


def _from_blocked(t: Tensor) -> Tensor:
    """Inverse of :func:`_to_blocked` (without the padding removal)."""
    return t.transpose(-1, -2).flatten(-3)


def scan(maps: Maps, y0: Tensor, family: Family, chunk: int | None = None) -> Tensor:
    """Solve ``y[n] = f_n(y[n-1])`` with ``y[-1] = y0``.

    Args:
        maps: the family's tensors, all ``[..., T]`` (same shape, ``T >= 1``).
        y0: state before the first sample, ``[...]``.
        family: :data:`LINEAR` or :data:`MAX_AFFINE`.
        chunk: samples per chunk (``>= 2``); ``None``: :data:`CHUNK` on a CPU,
            :data:`DEVICE_CHUNK` elsewhere.

    Returns:
        ``y [..., T]``.
    """
    T = maps[0].shape[-1]
    if chunk is None:
        chunk = CHUNK if maps[0].device.type == "cpu" else DEVICE_CHUNK
    width = min(chunk, T)
    n_chunks = -(-T // width)
    lanes = min(LANES, n_chunks)
    n_chunks = -(-n_chunks // lanes) * lanes
    # Zero-padded maps only produce outputs that are cut off below.
    blocked = tuple(_to_blocked(t, width, lanes, n_chunks * width) for t in maps)
    prefixes = family.prefix(blocked)
    if n_chunks == 1:
        starts = y0.unsqueeze(-1)
    else:
        # Chunk-end maps in chunk order; the last chunk's end is not needed.
        ends = tuple(p[..., -1, :].flatten(-2)[..., :-1] for p in prefixes)
        entering = scan(ends, y0, family, chunk)
        starts = torch.cat([y0.unsqueeze(-1), entering], dim=-1)
    y = family.apply(prefixes, starts.unflatten(-1, (-1, lanes)).unsqueeze(-2))
    return _from_blocked(y)[..., :T]
