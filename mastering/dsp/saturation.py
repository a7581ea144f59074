"""Memoryless saturation at the oversampled rate: one curve family, one fused GPU kernel.

:func:`tanh_curve` evaluates, sample by sample,

    ``y = a t / (1 + b t) - e u``  with  ``t = tanh(c u)``

with per-row coefficients ``a, b, c, e`` (``[..., 1]``, broadcast against ``u [..., L]``). The
exciter's two nonlinearities are members:

* the harmonics of an asymmetric tanh shaper, ``s(d u) / d`` with
  ``s(v) = tanh(v + beta) - tanh(beta) - sech^2(beta) v`` (the shaper minus its linear part):
  by the tanh addition formula ``tanh(v + beta) - tanh(beta) = sech^2(beta) tanh(v) /
  (1 + tanh(beta) tanh(v))``, so ``a = sech^2(beta) / d``, ``b = tanh(beta)``, ``c = d``,
  ``e = sech^2(beta)`` (:func:`shaper_harmonics`);
* the change a tape soft clip makes, ``w (tanh(k u) / k - u)``: ``a = w / k``, ``b = 0``,
  ``c = k``, ``e = w`` (:func:`soft_clip_change`).

``u = 0`` gives exactly 0 (``tanh(0) = 0``), so digital silence stays silent.

The curves run on signals oversampled 4x, where memory traffic is the cost. The eager form
takes six passes over ``u``; on CUDA, when no gradient is wanted and Triton is importable
(the GPU machines have it; ``LACQUER_FUSED=0`` turns it off; see :mod:`mastering.dsp._fused`),
one Triton kernel reads ``u`` once and writes ``y`` once. Both evaluate the same formula in
float32; they agree to float rounding (a CUDA test checks it).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from mastering.dsp import _fused as _fused_policy

#: Samples per Triton program.
_BLOCK = 2048
#: This kernel's name in :mod:`mastering.dsp._fused`'s policy.
KERNEL = "saturation"


def tanh_curve(u: Tensor, a: Tensor, b: Tensor, c: Tensor, e: Tensor) -> Tensor:
    """``a tanh(c u) / (1 + b tanh(c u)) - e u`` (see the module docstring).

    Args:
        u: ``[..., L]`` samples (any order: the curve is memoryless).
        a, b, c, e: coefficients broadcasting against ``u`` as ``[..., 1]``; ``1 + b t``
            must stay away from 0 (``|b| < 1``).

    Returns:
        ``[..., L]``, differentiable (the fused kernel is used only without gradients).
    """
    if _fused_policy.fusable(KERNEL, u, a, b, c, e) and _kernel() is not None:
        return _fused_policy.run(
            KERNEL, lambda: _fused(u, a, b, c, e), lambda: _eager(u, a, b, c, e)
        )
    return _eager(u, a, b, c, e)


def _eager(u: Tensor, a: Tensor, b: Tensor, c: Tensor, e: Tensor) -> Tensor:
    t = torch.mul(u, c).tanh_()
    q = torch.div(t, torch.addcmul(torch.ones_like(b), t, b))  # t / (1 + b t)
    return torch.addcmul(torch.mul(q, a), u, e, value=-1.0)


def shaper_harmonics(u: Tensor, drive: Tensor, bias: float) -> Tensor:
    """What the asymmetric tanh ``tanh(v + bias)`` adds to ``v = drive * u`` beyond its
    linear part, scaled back by ``drive``; ``drive`` ``[..., 1]`` (> 0)."""
    tb = math.tanh(bias)
    sech2 = 1.0 - tb**2
    ones = torch.ones_like(drive)
    return tanh_curve(u, sech2 / drive, tb * ones, drive, sech2 * ones)


def soft_clip_change(u: Tensor, amount: Tensor, k: Tensor) -> Tensor:
    """``amount * (tanh(k u) / k - u)``: the change a tanh soft clip of drive ``k`` makes,
    mixed by ``amount``; both ``[..., 1]`` (``k > 0``)."""
    return tanh_curve(u, amount / k, torch.zeros_like(k), k, amount)


def warm_up(device: torch.device | str) -> bool:
    """Compile the fused kernel for ``device`` now (Triton compiles on first use, a few
    seconds when its cache is cold), so a render farm worker or a Serve replica pays for it
    while starting rather than on its first songs. Returns whether the fused kernel runs."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    u = torch.zeros(2, 1, 4096, device=device)
    ones = torch.ones(2, 1, 1, device=device)
    with torch.no_grad():
        tanh_curve(u, ones, 0.5 * ones, ones, ones)
        tanh_curve(u[..., :4095], ones, 0.5 * ones, ones, ones)  # the other length class
    return _fused_policy.fusable(KERNEL, u, ones) and _kernel() is not None


# --------------------------------------------------------------------------------------------
# Fused CUDA kernel
# --------------------------------------------------------------------------------------------


@functools.cache
def _kernel():
    """The Triton kernel, or ``None`` where Triton is missing."""
    try:
        import triton
        import triton.language as tl
        from triton.language.extra import libdevice
    except ImportError:
        return None

    @triton.jit
    def tanh_curve_kernel(u_ptr, coef_ptr, y_ptr, length, BLOCK: tl.constexpr):
        row = tl.program_id(1)
        cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < length
        base = row.to(tl.int64) * length
        a = tl.load(coef_ptr + 4 * row)
        b = tl.load(coef_ptr + 4 * row + 1)
        c = tl.load(coef_ptr + 4 * row + 2)
        e = tl.load(coef_ptr + 4 * row + 3)
        u = tl.load(u_ptr + base + cols, mask=mask, other=0.0)
        t = libdevice.tanh(c * u)
        tl.store(y_ptr + base + cols, a * t / (1.0 + b * t) - e * u, mask=mask)

    return triton, tanh_curve_kernel


def _fused(u: Tensor, a: Tensor, b: Tensor, c: Tensor, e: Tensor) -> Tensor:
    triton, kernel = _kernel()
    lead, length = u.shape[:-1], u.shape[-1]
    flat = u.contiguous().reshape(-1, length)
    rows = flat.shape[0]
    coef = torch.stack(
        [t.to(u).expand(*lead, 1).reshape(rows) for t in (a, b, c, e)], dim=-1
    ).contiguous()  # [rows, 4]
    y = torch.empty_like(flat)
    for start in range(0, rows, 65_535):  # grid dim 1 is limited to 65535 programs
        stop = min(start + 65_535, rows)
        grid = (triton.cdiv(length, _BLOCK), stop - start)
        kernel[grid](flat[start:stop], coef[start:stop], y[start:stop], length, BLOCK=_BLOCK)
    return y.reshape(*lead, length)


__all__ = ["shaper_harmonics", "soft_clip_change", "tanh_curve", "warm_up"]
