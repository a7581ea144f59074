"""Folding any channel count to stereo.

Channel order is assumed to be the WAV/SMPTE order (libsndfile does not expose channel masks
through soundfile), chosen by channel count. ``g = 1/√2 ≈ 0.7071`` (-3 dB):

=========  ===============================  =====================================
channels   assumed layout                   Lo / Ro
=========  ===============================  =====================================
1          M                                Lo = Ro = M (dual mono)
2          L R                              unchanged
3          L R C                            Lo = L + g·C,           Ro = R + g·C
4          L R Ls Rs (quad)                 Lo = L + g·Ls,          Ro = R + g·Rs
5          L R C Ls Rs (5.0)                Lo = L + g·C + g·Ls,    Ro = R + g·C + g·Rs
6          L R C LFE Ls Rs (5.1)            Lo = L + g·C + g·Ls,    Ro = R + g·C + g·Rs
8          L R C LFE Ls Rs Lb Rb (7.1)      Lo = L + g·C + g·Ls + g·Lb (R likewise)
other      unknown                          equal-power fold, see below
=========  ===============================  =====================================

The 3/2 rows are ITU-R BS.775 (Table 2): centre and surrounds at -3 dB, LFE discarded. 7.1
extends it by treating the back pair like the side pair. No normalisation is applied, so the
fold can exceed 0 dBFS (e.g. correlated L, C, Ls at full scale give 2.41); reading is in
float and never clips, and gain staging is the mastering chain's job.

Unknown layouts (7 and 9+ channels): 1-based odd channels (1, 3, 5 ...) go to Lo, even
channels (2, 4, 6 ...) to Ro, each side scaled by ``1/sqrt(n_side)`` so uncorrelated
channels keep their total power.
"""

from __future__ import annotations

import math

import numpy as np

G = 1.0 / math.sqrt(2.0)

# Rows: Lo, Ro. Columns: source channels in WAV/SMPTE order.
_KNOWN_LAYOUTS: dict[int, list[list[float]]] = {
    1: [[1.0], [1.0]],
    2: [[1.0, 0.0], [0.0, 1.0]],
    3: [[1.0, 0.0, G], [0.0, 1.0, G]],
    4: [[1.0, 0.0, G, 0.0], [0.0, 1.0, 0.0, G]],
    5: [[1.0, 0.0, G, G, 0.0], [0.0, 1.0, G, 0.0, G]],
    6: [[1.0, 0.0, G, 0.0, G, 0.0], [0.0, 1.0, G, 0.0, 0.0, G]],
    8: [[1.0, 0.0, G, 0.0, G, 0.0, G, 0.0], [0.0, 1.0, G, 0.0, 0.0, G, 0.0, G]],
}


def downmix_matrix(channels: int) -> np.ndarray:
    """The ``[2, channels]`` float32 matrix folding ``channels`` inputs to (Lo, Ro)."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if channels in _KNOWN_LAYOUTS:
        return np.asarray(_KNOWN_LAYOUTS[channels], dtype=np.float32)
    return _equal_power_odd_even_fold(channels)


def fold_to_stereo(block: np.ndarray) -> np.ndarray:
    """Folds a ``[frames, channels]`` float32 block to a C-contiguous ``[frames, 2]`` block.

    Stereo is returned as is (no copy); mono is duplicated; more channels use
    :func:`downmix_matrix`.
    """
    channels = block.shape[1]
    if channels == 2:
        return block
    if channels == 1:
        return np.repeat(block, 2, axis=1)
    return np.ascontiguousarray(block @ downmix_matrix(channels).T)


def _equal_power_odd_even_fold(channels: int) -> np.ndarray:
    matrix = np.zeros((2, channels), dtype=np.float32)
    left = np.arange(0, channels, 2)  # 1-based odd channels
    right = np.arange(1, channels, 2)  # 1-based even channels
    matrix[0, left] = 1.0 / math.sqrt(len(left))
    matrix[1, right] = 1.0 / math.sqrt(len(right))
    return matrix
