"""Small, reusable controller building blocks for the stages' learned residuals.

Every stage's learned residual must start at exactly zero (so the untrained stage does what
its analytic prior says). The blocks here make that easy:

* :class:`MLPHead` — an MLP whose **last layer is zero-initialized** (weights and bias), with
  optional residual hidden blocks. Use it as the final map to raw-space parameter offsets.
* :func:`cond_concat` — concatenates a conditioning vector ``[batch, cond_dim]`` onto features,
  either flat ``[batch, F]`` or per-position ``[batch, C, L]`` (broadcast along ``L``).
* :class:`FiLM` — feature-wise affine modulation ``h * (1 + gamma(c)) + beta(c)`` of a
  ``[batch, C, L]`` (or ``[batch, C]``) tensor by a conditioning vector; starts as identity.
* :class:`BandConvEncoder` — a light 1-D convolutional encoder over frequency bands / bins:
  ``[batch, in_ch, L] -> [batch, ch, L]`` (same length, residual GELU conv blocks).
* :class:`BinAttention` — one pre-norm multi-head self-attention block over bins with a
  sinusoidal position code for the bin index: ``[batch, C, L] -> [batch, C, L]``.
* :func:`pool_mean_max` — mean and max over the last axis: ``[batch, C, L] -> [batch, 2C]``.

All blocks are device/dtype agnostic, differentiable, batch-first, and tiny (a few thousand to
a few tens of thousands of parameters at the default sizes). Shapes use ``L`` for the number of
frequency positions (bands or bins) and ``C`` for channels/features.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def zero_init_(layer: nn.Module) -> nn.Module:
    """Set all weights and biases of ``layer`` (``nn.Linear`` / ``nn.Conv1d``) to zero in place.

    Returns the layer (for chaining)."""
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
    return layer


def cond_concat(features: Tensor, cond: Tensor) -> Tensor:
    """Concatenate a conditioning vector onto features.

    Args:
        features: ``[batch, F]`` or ``[batch, C, L]``.
        cond: ``[batch, cond_dim]``.

    Returns:
        ``[batch, F + cond_dim]`` for flat features, or ``[batch, C + cond_dim, L]`` (the vector
        repeated at every position) for per-position features.
    """
    cond = cond.to(features.dtype)
    if features.dim() == 2:
        return torch.cat([features, cond], dim=-1)
    if features.dim() == 3:
        c = cond.unsqueeze(-1).expand(-1, -1, features.shape[-1])
        return torch.cat([features, c], dim=1)
    raise ValueError(f"features must be [batch, F] or [batch, C, L], got {tuple(features.shape)}")


def pool_mean_max(h: Tensor) -> Tensor:
    """Mean and max pooling over the last axis: ``[batch, C, L] -> [batch, 2C]``."""
    return torch.cat([h.mean(-1), h.amax(-1)], dim=-1)


class MLPHead(nn.Module):
    """MLP ``in_dim -> hidden (x n_hidden) -> out_dim`` with a zero-initialized last layer.

    Hidden layers are ``Linear + GELU``; with ``residual=True`` every hidden layer after the
    first adds its input (a residual MLP). Because the output layer starts at zero, the head
    outputs exactly 0 for any input until trained, while gradients still reach its last layer.

    Args:
        in_dim: input features.
        out_dim: outputs (raw-space offsets).
        hidden: hidden width.
        n_hidden: number of hidden layers (>= 1).
        residual: residual connections between hidden layers.
        layer_norm: LayerNorm on the input (recommended for un-normalized features).

    Shapes: ``[..., in_dim] -> [..., out_dim]``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 64,
        n_hidden: int = 2,
        residual: bool = True,
        layer_norm: bool = True,
    ):
        super().__init__()
        if n_hidden < 1:
            raise ValueError("n_hidden must be >= 1")
        self.norm = nn.LayerNorm(in_dim) if layer_norm else nn.Identity()
        self.inp = nn.Linear(in_dim, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_hidden - 1))
        self.residual = residual
        self.act = nn.GELU()
        self.out = zero_init_(nn.Linear(hidden, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.inp(self.norm(x)))
        for layer in self.hidden:
            z = self.act(layer(h))
            h = h + z if self.residual else z
        return self.out(h)


class FiLM(nn.Module):
    """Feature-wise linear modulation by a conditioning vector, identity at initialization.

    ``y = h * (1 + gamma(c)) + beta(c)`` with ``gamma, beta = Linear(cond_dim, 2C)(c)``; the
    linear layer is zero-initialized.

    Args:
        cond_dim: conditioning vector size.
        channels: ``C`` of the modulated tensor.

    Shapes: ``h [batch, C]`` or ``[batch, C, L]``, ``cond [batch, cond_dim]`` -> like ``h``.
    """

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.proj = zero_init_(nn.Linear(cond_dim, 2 * channels))

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        gamma, beta = self.proj(cond.to(h.dtype)).chunk(2, dim=-1)
        if h.dim() == 3:
            gamma, beta = gamma.unsqueeze(-1), beta.unsqueeze(-1)
        return h * (1.0 + gamma) + beta


class BandConvEncoder(nn.Module):
    """1-D convolutional encoder along frequency (bands or bins), length preserving.

    ``Conv1d(in_ch, ch, k) + GELU`` followed by ``n_blocks`` residual blocks
    ``h + GELU(Conv1d(ch, ch, k, dilation=2**i))`` (growing receptive field, 'same' padding).
    An optional :class:`FiLM` after each block injects a conditioning vector.

    Args:
        in_ch: input channels (e.g. 2 for mid/side spectra in dB, scaled).
        ch: hidden channels.
        n_blocks: residual blocks.
        kernel: odd kernel size.
        cond_dim: if > 0, FiLM-condition every block on a ``[batch, cond_dim]`` vector.

    Shapes: ``x [batch, in_ch, L]`` (+ ``cond [batch, cond_dim]``) -> ``[batch, ch, L]``.
    """

    def __init__(
        self, in_ch: int, ch: int = 32, n_blocks: int = 2, kernel: int = 5, cond_dim: int = 0
    ):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError("kernel must be odd")
        self.inp = nn.Conv1d(in_ch, ch, kernel, padding=kernel // 2)
        self.blocks = nn.ModuleList(
            nn.Conv1d(ch, ch, kernel, padding=(kernel // 2) * 2**i, dilation=2**i)
            for i in range(n_blocks)
        )
        self.films = (
            nn.ModuleList(FiLM(cond_dim, ch) for _ in range(n_blocks)) if cond_dim else None
        )
        self.act = nn.GELU()

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h = self.act(self.inp(x))
        for i, conv in enumerate(self.blocks):
            h = h + self.act(conv(h))
            if self.films is not None:
                if cond is None:
                    raise ValueError("this encoder is conditioned; pass cond")
                h = self.films[i](h, cond)
        return h


def sinusoidal_positions(length: int, dim: int, device=None, dtype=None) -> Tensor:
    """Sinusoidal position code ``[dim, length]`` (sin/cos pairs at geometric wavelengths)."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(0)
    half = max(1, dim // 2)
    freq = torch.exp(-math.log(1000.0) * torch.arange(half, device=device) / half).unsqueeze(1)
    code = torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], dim=0)[:dim]
    if code.shape[0] < dim:
        code = torch.nn.functional.pad(code, (0, 0, 0, dim - code.shape[0]))
    return code.to(dtype or torch.float32)


class BinAttention(nn.Module):
    """One pre-norm transformer block over frequency positions (bins or bands).

    ``h = h + MHA(LN(h + pos))``, then ``h = h + FF(LN(h))`` with a 2x feed-forward; ``pos`` is
    a fixed sinusoidal code of the position index (so attention knows which bin is which).

    Args:
        ch: channels (must be divisible by ``heads``).
        heads: attention heads.

    Shapes: ``[batch, ch, L] -> [batch, ch, L]``.
    """

    def __init__(self, ch: int = 32, heads: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(ch)
        self.attn = nn.MultiheadAttention(ch, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(ch)
        self.ff = nn.Sequential(nn.Linear(ch, 2 * ch), nn.GELU(), nn.Linear(2 * ch, ch))

    def forward(self, h: Tensor) -> Tensor:
        pos = sinusoidal_positions(h.shape[-1], h.shape[1], device=h.device, dtype=h.dtype)
        t = h.transpose(1, 2)  # [batch, L, ch]
        q = self.norm1((h + pos.unsqueeze(0)).transpose(1, 2))
        t = t + self.attn(q, q, q, need_weights=False)[0]
        t = t + self.ff(self.norm2(t))
        return t.transpose(1, 2)


def n_params(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
