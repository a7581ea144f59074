"""When the fused GPU kernels (Triton) run, and what happens when one cannot.

The DSP kernels have an eager PyTorch form that runs everywhere and is differentiable. A few
of them also have a fused Triton kernel for the case that dominates rendering on a GPU:
float32 CUDA tensors with no gradient wanted. This module holds the one policy they share:

* the fused form runs only on CUDA float32 tensors, without gradients, where ``triton`` is
  importable (the GPU machines have it; CPU-only installs do not), unless
  ``LACQUER_FUSED=0``;
* a kernel that fails once (compilation, launch) is switched off for the process, logged, and
  the eager form answers instead: a kernel problem never stops a master.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

#: Kernel name -> the error that switched it off.
broken: dict[str, str] = {}


@functools.cache
def triton_available() -> bool:
    """Whether ``triton`` imports here."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def fusable(name: str, u: Tensor, *others: Tensor) -> bool:
    """Whether kernel ``name`` may run on ``u`` (and the other inputs ``others``)."""
    if not u.is_cuda or u.dtype != torch.float32 or u.numel() == 0:
        return False
    if os.environ.get("LACQUER_FUSED", "1") == "0" or name in broken:
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (u, *others)):
        return False
    return triton_available()


def run(name: str, fused: Callable[[], Any], eager: Callable[[], Any]) -> Any:
    """``fused()``, or ``eager()`` if it raises (then kernel ``name`` stays off)."""
    try:
        return fused()
    except Exception as exc:  # a kernel that cannot compile here must not stop a master
        broken[name] = repr(exc)
        logger.warning("fused %s kernel unavailable, using the eager form: %r", name, exc)
    return eager()
