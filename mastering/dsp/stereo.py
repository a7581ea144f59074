"""Stereo utilities on ``[..., 2, samples]`` tensors (channel 0 = left, 1 = right).

Mid/side uses ``M = (L + R) / 2``, ``S = (L - R) / 2`` so that ``L = M + S``, ``R = M - S``
(an exact inverse; a mono signal has ``S = 0`` and ``M = L``).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Power floor for the ratios and correlation (silence gives finite numbers, not NaN).
_EPS = 1e-12


def _check_stereo(x: Tensor) -> None:
    if x.dim() < 2 or x.shape[-2] != 2:
        raise ValueError(f"expected [..., 2, samples], got shape {tuple(x.shape)}")


def to_mid_side(x: Tensor) -> Tensor:
    """Left/right ``[..., 2, T]`` to mid/side ``[..., 2, T]`` (``M = (L+R)/2``, ``S = (L-R)/2``)."""
    _check_stereo(x)
    left, right = x.unbind(-2)
    return torch.stack([0.5 * (left + right), 0.5 * (left - right)], dim=-2)


def from_mid_side(x: Tensor) -> Tensor:
    """Mid/side ``[..., 2, T]`` back to left/right ``[..., 2, T]`` (``L = M+S``, ``R = M-S``)."""
    _check_stereo(x)
    mid, side = x.unbind(-2)
    return torch.stack([mid + side, mid - side], dim=-2)


def _frames(x: Tensor, frame_length: int | None) -> Tensor:
    """``[..., T]`` -> ``[..., n_frames, frame_length]`` (non-overlapping; a partial last frame
    is dropped) or ``[..., 1, T]`` when ``frame_length`` is ``None``."""
    if frame_length is None:
        return x.unsqueeze(-2)
    return x.unfold(-1, frame_length, frame_length)


def correlation(x: Tensor, frame_length: int | None = None, eps: float = _EPS) -> Tensor:
    """Inter-channel (phase-meter) correlation ``sum(L R) / sqrt(sum(L^2) sum(R^2))``.

    +1: mono-compatible identical channels, 0: unrelated, -1: out of phase. No mean is
    removed (audio is zero-mean; a DC offset counts as correlated content).

    Args:
        x: ``[..., 2, T]`` stereo signal.
        frame_length: ``None`` for one value over the whole signal, or a frame length in
            samples for a value per non-overlapping frame.
        eps: floor added to the power product (silence gives 0).

    Returns:
        ``[...]`` or ``[..., n_frames]`` in ``[-1, 1]``.
    """
    _check_stereo(x)
    left, right = (_frames(c, frame_length) for c in x.unbind(-2))
    cross = (left * right).sum(-1)
    power = left.square().sum(-1) * right.square().sum(-1)
    r = cross / torch.sqrt(power + eps)
    return r.squeeze(-1) if frame_length is None else r


def side_to_mid_ratio_db(x: Tensor, frame_length: int | None = None, eps: float = _EPS) -> Tensor:
    """Side-to-mid energy ratio ``10 log10(sum S^2 / sum M^2)`` in dB of a left/right signal.

    -inf-like (very negative) for mono, 0 dB for unrelated equal-level channels, large for
    out-of-phase material.

    Args:
        x: ``[..., 2, T]`` left/right signal.
        frame_length: ``None`` for the whole signal, or samples per non-overlapping frame.
        eps: power floor added to both energies.

    Returns:
        ``[...]`` or ``[..., n_frames]`` in dB.
    """
    mid, side = (_frames(c, frame_length) for c in to_mid_side(x).unbind(-2))
    ratio = (side.square().sum(-1) + eps) / (mid.square().sum(-1) + eps)
    db = 10.0 * torch.log10(ratio)
    return db.squeeze(-1) if frame_length is None else db
