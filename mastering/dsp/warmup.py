"""Compile the fused GPU kernels before the first song.

Triton compiles a kernel on its first use (about a second each when its cache is cold). A
render farm worker or a Serve replica calls :func:`warm_up` while starting, so its first songs
do not pay for it.
"""

from __future__ import annotations

import torch

from mastering.dsp import _fused, _fused_scan, saturation
from mastering.dsp.smoothing import envelope_follower


def warm_up(device: torch.device | str) -> dict[str, bool]:
    """Compile every fused kernel for ``device``; returns, per kernel, whether it runs there
    (``False`` everywhere on a CPU or without Triton)."""
    device = torch.device(device)
    ran = {saturation.KERNEL: saturation.warm_up(device), _fused_scan.KERNEL: False}
    if device.type != "cuda":
        return ran
    # One segment (a streamed block) and several (a song): all four kernel variants.
    for length in (4096, 2 * _fused_scan.SEGMENT + 1):
        x = torch.zeros(2, length, device=device)
        with torch.no_grad():
            envelope_follower(x, 10.0, 100.0, mode="decoupled")
    ran[_fused_scan.KERNEL] = _fused.fusable(_fused_scan.KERNEL, x) and (
        _fused_scan.KERNEL not in _fused.broken
    )
    return ran


__all__ = ["warm_up"]
