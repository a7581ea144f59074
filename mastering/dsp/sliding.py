"""Sliding-window maximum and minimum in O(1) comparisons per sample (van Herk / Gil-Werman).

The signal is cut into blocks of ``window`` samples; a running maximum from each block's start
(prefix) and one from each block's end (suffix) are taken with ``torch.cummax``. Any window of
``window`` samples straddles at most two blocks, so its maximum is
``max(suffix[start], prefix[end])``: three passes over the signal whatever the window length.
Samples outside the signal are ignored (like ``scipy.ndimage.maximum_filter1d`` with
``mode="nearest"``). Differentiable (the gradient goes to the selected sample).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: ``alignment`` -> (samples before ``n``, samples after ``n``) for a window of ``W`` samples.
_ALIGNMENTS = {
    "causal": lambda W: (W - 1, 0),  # x[n-W+1 .. n]: the past, including now
    "centered": lambda W: (W // 2, (W - 1) // 2),  # scipy's origin=0
    "anticausal": lambda W: (0, W - 1),  # x[n .. n+W-1]: now and the look-ahead
}


def _forward_window_max(x: Tensor, window: int) -> Tensor:
    """``y[n] = max(x[n .. n+window-1])`` for ``n < len(x) - window + 1`` (``[..., T-W+1]``).

    On a GPU without gradients, ``max_pool1d`` (each output reads its window from the cache:
    one pass over memory, where the three cumulative scans below make several); otherwise
    van Herk / Gil-Werman."""
    T = x.shape[-1]
    wants_grad = torch.is_grad_enabled() and x.requires_grad  # max_pool1d has no backward
    if x.is_cuda and not wants_grad and x.dtype in (torch.float32, torch.float64) and window <= T:
        flat = x.reshape(-1, 1, T)
        return F.max_pool1d(flat, window, stride=1).reshape(*x.shape[:-1], T - window + 1)
    n_blocks = -(-T // window)
    pad = n_blocks * window - T
    lowest = torch.finfo(x.dtype).min
    blocks = F.pad(x, (0, pad), value=lowest).reshape(*x.shape[:-1], n_blocks, window)
    prefix = torch.cummax(blocks, dim=-1).values.flatten(-2)
    suffix = torch.cummax(blocks.flip(-1), dim=-1).values.flip(-1).flatten(-2)
    n_out = T - window + 1
    return torch.maximum(suffix[..., :n_out], prefix[..., window - 1 : window - 1 + n_out])


def _check(window: int, alignment: str) -> None:
    if window < 1:
        raise ValueError(f"window must be >= 1 sample, got {window}")
    if alignment not in _ALIGNMENTS:
        raise ValueError(f"alignment must be one of {sorted(_ALIGNMENTS)}, got {alignment!r}")


def sliding_max(x: Tensor, window: int, alignment: str = "causal") -> Tensor:
    """Maximum of ``x`` over a sliding window of ``window`` samples.

    Args:
        x: ``[..., T]`` real signal (any leading dims).
        window: window length in samples (e.g. 5 ms at 48 kHz = 240).
        alignment: where the window sits relative to output sample ``n``:
            ``"causal"`` ``x[n-W+1 .. n]`` (a look-ahead limiter takes this max of the
            rectified signal and delays the audio by ``W - 1`` samples);
            ``"centered"`` ``x[n - W//2 .. n + (W-1)//2]`` (``maximum_filter1d``'s default);
            ``"anticausal"`` ``x[n .. n+W-1]``.

    Returns:
        ``[..., T]``, same dtype/device; samples beyond the ends are ignored.
    """
    _check(window, alignment)
    if window == 1:
        return x
    before, after = _ALIGNMENTS[alignment](window)
    lowest = torch.finfo(x.dtype).min
    return _forward_window_max(F.pad(x, (before, after), value=lowest), window)


def sliding_min(x: Tensor, window: int, alignment: str = "causal") -> Tensor:
    """Minimum of ``x`` over a sliding window; arguments and shapes as :func:`sliding_max`."""
    return -sliding_max(-x, window, alignment)
