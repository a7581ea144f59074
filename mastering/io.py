"""Audio file I/O entry points (implemented in :mod:`mastering.audio`)."""

from mastering.audio import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    WRITE_FORMATS,
    AudioInfo,
    check_supported,
    downmix_matrix,
    iter_audio_blocks,
    probe_audio,
    quantize_tensor,
    read_audio,
    write_audio,
)

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
