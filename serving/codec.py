"""Decoding uploads and encoding masters for the Serve app, with :mod:`mastering.io` (the
same reader the CLI and the farm use) and the encoder settings of :mod:`mastering.audio.write`,
and the measurements that go into the reports (:func:`mastering.render.summary`,
:mod:`mastering.loudness`).

Masters are encoded in memory (:func:`encode_bytes`): the answer is a byte string, so the
atomic file write of :func:`mastering.io.write_audio` (temporary file, ``fsync``, rename, then
reading the file back) is skipped; at 48 kHz the bytes equal that function's file (tested).
Measured on a 30 s clip, 2-core CPU: file write + read back 54 ms, in memory 12-30 ms.

Formats of :data:`DEVICE_FORMATS` (undithered 24-bit WAV) can instead be encoded where the
master is, by the last stage group (:func:`device_data`, on its GPU): the group sends back the
WAV data (8.6 MB for 30 s, against 11.5 MB of float32) and the ingress only prepends the
header (:func:`device_bytes`), with the same bytes as :func:`encode_bytes`. On the H100 host
:func:`encode_bytes` took 39 ms of the ingress's time per 30 s request.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from mastering import SAMPLE_RATE
from mastering.audio.wav_pcm import PCM24_BYTES, pcm24_data, wav24_bytes
from mastering.audio.write import (
    DEFAULT_DITHER_SEED,
    WRITE_BLOCK_FRAMES,
    WRITE_FORMATS,
    WriteFormat,
    quantize,
)
from mastering.errors import InvalidAudioError, InvalidParameterError
from mastering.io import AudioInfo, read_audio, write_audio
from mastering.loudness import LoudnessReport, measure
from mastering.render import FORMATS, summary

#: Output formats the last stage group can encode on its device (:func:`device_data`).
DEVICE_FORMATS = frozenset({"wav24"})
#: Media type of each output format.
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac"}
#: Bytes per streamed block.
STREAM_BLOCK = 256 * 1024
#: Report keys kept in the small ``X-Lacquer-Report`` header.
HEADER_MEASURES = ("integrated_lufs", "true_peak_dbtp", "lra_lu", "sample_peak_dbfs")


def decode(path: Path) -> tuple[torch.Tensor, AudioInfo]:
    """Read an uploaded file as float32 ``[2, samples]`` at 48 kHz (more than two channels are
    folded to stereo). Raises the :mod:`mastering.errors` family on bad audio."""
    return read_audio(path, downmix=True)


def encode_bytes(audio: torch.Tensor, fmt: str, out_rate: int, folder: Path) -> bytes:
    """The master ``[2, samples]`` (float32, 48 kHz) encoded in format ``fmt`` (one of
    :data:`mastering.render.FORMATS`) at ``out_rate`` Hz.

    At 48 kHz it is encoded in memory with the quantization of
    :func:`mastering.audio.write.write_audio` (same bytes); at another rate that function
    writes it (with its streaming resampler) into ``folder`` and the file is read back.

    Raises:
        InvalidAudioError: NaN or Inf samples (nothing is encoded).
    """
    if out_rate != SAMPLE_RATE:
        target = folder / f"master.{FORMATS[fmt]}"
        path = write_audio(target, audio, sample_rate=SAMPLE_RATE, out_rate=out_rate, format=fmt)
        return path.read_bytes()
    spec = WRITE_FORMATS[fmt]
    frames = np.ascontiguousarray(audio.detach().to("cpu", torch.float32).numpy().T)
    if not np.isfinite(frames).all():
        raise InvalidAudioError("the master contains NaN or Inf samples; nothing encoded")
    buffer = io.BytesIO()
    with sf.SoundFile(
        buffer, "w", SAMPLE_RATE, frames.shape[1], spec.subtype, format=spec.container
    ) as f:
        if spec.dither:
            # The dither noise is drawn block by block as write_audio draws it (same bytes).
            rng = np.random.default_rng(DEFAULT_DITHER_SEED)
            for start in range(0, len(frames), WRITE_BLOCK_FRAMES):
                f.write(quantize(frames[start : start + WRITE_BLOCK_FRAMES], spec.bits, rng))
        else:
            f.write(pcm_samples(frames, spec))
    return buffer.getvalue()


def device_data(master: torch.Tensor, fmt: str) -> np.ndarray | None:
    """The WAV data of ``master [2, samples]`` (48 kHz) in format ``fmt`` of
    :data:`DEVICE_FORMATS`, computed on the master's device and returned as a host uint8
    array; ``None`` when the master has NaN or Inf samples (the ingress's encoder then names
    the problem)."""
    if fmt not in DEVICE_FORMATS:
        raise InvalidParameterError(f"format {fmt!r} is not encoded on the device")
    if not bool(torch.isfinite(master).all()):
        return None
    return pcm24_data(master).cpu().numpy()


def device_frames(data: np.ndarray, channels: int) -> int:
    """Frames of :func:`device_data`'s ``data`` of ``channels`` channels."""
    return data.size // (channels * PCM24_BYTES)


def device_bytes(data: np.ndarray, fmt: str, channels: int = 2) -> bytes:
    """The file of format ``fmt`` at 48 kHz whose data :func:`device_data` made (the bytes
    :func:`encode_bytes` gives for the same master)."""
    if fmt not in DEVICE_FORMATS:
        raise InvalidParameterError(f"format {fmt!r} is not encoded on the device")
    return wav24_bytes(memoryview(data), channels, SAMPLE_RATE)


def pcm_samples(frames: np.ndarray, spec: WriteFormat) -> np.ndarray:
    """What libsndfile writes for an undithered format: float32 ``frames [n, channels]`` as
    they are (float formats), or rounded and clipped to ``spec.bits`` bits as
    :func:`mastering.audio.write.quantize` does, in float32 rather than float64: full scale
    is a power of two, so ``x * 2**(bits-1)`` is exact in float32 for bits <= 24 and the
    result is the same integers (tested), in 40 % of the time (6 ms against 15 ms for 30 s)."""
    if spec.bits is None:
        return frames
    if spec.bits > 24:
        return quantize(frames, spec.bits, None)
    scale = np.float32(2 ** (spec.bits - 1))
    scaled = frames * scale
    np.rint(scaled, out=scaled)
    np.clip(scaled, -scale, scale - 1, out=scaled)
    if spec.bits == 16:
        return scaled.astype(np.int16)
    out = scaled.astype(np.int32)
    out <<= 32 - spec.bits
    return out


def media_type(fmt: str) -> str:
    return MEDIA_TYPES[FORMATS[fmt]]


def byte_blocks(data: bytes, block: int = STREAM_BLOCK) -> Iterator[bytes]:
    """``data`` in blocks of ``block`` bytes (the streamed answer)."""
    view = memoryview(data)
    for start in range(0, len(data), block):
        yield bytes(view[start : start + block])


def measurements(audio: torch.Tensor, mono: bool = False) -> dict[str, Any]:
    """Loudness (LUFS, LU, dBTP, dBFS), spectral tilt (dB/octave), correlation and side/mid
    ratio (dB) of ``audio [2, samples]`` at 48 kHz, on its device. ``mono``: the source was
    mono, so loudness is measured on one channel (BS.1770), not on the dual-mono pair."""
    return measurements_batch(audio.unsqueeze(0), [mono])[0]


def measurements_batch(
    x: torch.Tensor, monos: list[bool], loudness: list[LoudnessReport] | None = None
) -> list[dict[str, Any]]:
    """:func:`measurements` of each song of ``x [batch, 2, samples]`` (one batch through the
    meters); ``monos``: which sources were mono; ``loudness``: ``x``'s
    :func:`mastering.loudness.measure_batch` when the caller has it already."""
    reports = summary(x, loudness)
    for report, audio, mono in zip(reports, x, monos, strict=True):
        if mono:
            report.update(measure(audio[:1], SAMPLE_RATE).to_dict())
    return reports


def source_info(info: AudioInfo) -> dict[str, Any]:
    """The uploaded file's format, rate (Hz), channels and duration (s)."""
    return {
        "format": info.format,
        "subtype": info.subtype,
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "duration_s": round(info.duration_s, 4),
    }


def analysis(audio: torch.Tensor, info: AudioInfo) -> dict[str, Any]:
    """:func:`measurements` of a decoded upload with its :func:`source_info`."""
    return {**measurements(audio, info.channels == 1), "source": source_info(info)}


def header_measures(report: dict[str, Any]) -> dict[str, Any]:
    """The few measurements the ``X-Lacquer-Report`` header carries."""
    return {k: report.get(k) for k in HEADER_MEASURES}
