"""Audio file I/O: read any supported file as float32 stereo at 48 kHz, write atomically.

* :func:`read_audio` -> ``(tensor [2, samples] float32, AudioInfo)`` (whole file, bounded memory)
* :func:`iter_audio_blocks` -> float32 ``[2, n]`` blocks for streaming consumers
* :func:`write_audio` -> atomic WAV/FLAC writer (16-bit with TPDF dither, 24-bit, 32-bit float)
* :func:`probe_audio` -> :class:`AudioInfo` from the header only

Unlike the rest of :mod:`mastering`, tensors here have no batch axis. Errors are the typed
ones of :mod:`mastering.errors`, each naming the file.
"""

from mastering.audio.downmix import downmix_matrix
from mastering.audio.info import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    AudioInfo,
    check_supported,
    probe_audio,
)
from mastering.audio.read import iter_audio_blocks, read_audio
from mastering.audio.write import WRITE_FORMATS, quantize_tensor, write_audio

__all__ = [
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "WRITE_FORMATS",
    "AudioInfo",
    "check_supported",
    "downmix_matrix",
    "iter_audio_blocks",
    "probe_audio",
    "quantize_tensor",
    "read_audio",
    "write_audio",
]
