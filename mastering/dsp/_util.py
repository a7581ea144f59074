"""Small helpers shared by the DSP kernels (private)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

TensorLike = Tensor | float | int


def cached_constant(build: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Memoize a function that builds a constant tensor (a fixed filter design per device,
    say) from hashable arguments: one tensor per arguments, so the IIR engine's table memo
    (keyed by the tensor) hits too. Built outside inference mode, so a tensor first asked for
    there still serves calls that record gradients later. Callers must not modify it."""
    cached = functools.lru_cache(maxsize=16)(build)

    @functools.wraps(build)
    def constant(*args: object) -> Tensor:
        with torch.inference_mode(False):
            return cached(*args)

    return constant


def common_float_options(*values: TensorLike) -> tuple[torch.dtype, torch.device]:
    """The dtype and device to compute in: those of the first floating tensor among ``values``
    (float32 on CPU when none is a tensor)."""
    for value in values:
        if isinstance(value, Tensor) and value.is_floating_point():
            return value.dtype, value.device
    for value in values:
        if isinstance(value, Tensor):
            return torch.get_default_dtype(), value.device
    return torch.get_default_dtype(), torch.device("cpu")


def as_tensors(*values: TensorLike, like: Tensor | None = None) -> list[Tensor]:
    """Turn numbers or tensors into tensors of one floating dtype and device, broadcast together.

    ``like`` (if given) fixes the dtype and device; otherwise the first floating tensor does.
    Gradients flow through tensors that are passed in.
    """
    if like is not None:
        dtype, device = like.dtype, like.device
    else:
        dtype, device = common_float_options(*values)
    tensors = [torch.as_tensor(v, dtype=dtype, device=device) for v in values]
    return list(torch.broadcast_tensors(*tensors))


def next_power_of_two(n: int) -> int:
    """Smallest power of two ``>= n`` (``n >= 1``)."""
    return 1 << max(0, int(n) - 1).bit_length()


def next_fast_fft_length(n: int) -> int:
    """Smallest ``m >= n`` whose only prime factors are 2, 3 and 5 (fast FFT sizes)."""
    best = next_power_of_two(n)
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            m = power35
            while m < n:
                m *= 2
            best = min(best, m)
            power35 *= 3
        power5 *= 5
    return best
