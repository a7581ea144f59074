"""Lacquer's mastering core: pure PyTorch, no Ray.

Audio is handled as float32 tensors shaped ``[batch, channels, samples]`` at the internal
rate :data:`SAMPLE_RATE` (48 kHz) unless a function says otherwise.
"""

from mastering.errors import LacquerError

__version__ = "0.1.0"
SAMPLE_RATE = 48_000

__all__ = ["SAMPLE_RATE", "LacquerError", "__version__"]
