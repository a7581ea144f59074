"""Decoding uploads and encoding masters for the Serve app, with :mod:`mastering.io` (the
same reader and atomic writer the CLI and the farm use), and the measurements that go into
the reports (:func:`mastering.render.summary`, :mod:`mastering.loudness`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mastering import SAMPLE_RATE
from mastering.io import AudioInfo, read_audio, write_audio
from mastering.loudness import measure
from mastering.render import FORMATS, summary

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


def encode(audio: torch.Tensor, info: AudioInfo, fmt: str, folder: Path) -> Path:
    """Write the master ``[2, samples]`` (48 kHz) in format ``fmt`` at the source's sample
    rate, atomically, into ``folder``; returns the file."""
    target = folder / f"master.{FORMATS[fmt]}"
    return write_audio(
        target, audio, sample_rate=SAMPLE_RATE, out_rate=info.sample_rate, format=fmt
    )


def media_type(fmt: str) -> str:
    return MEDIA_TYPES[FORMATS[fmt]]


def file_blocks(path: Path, block: int = STREAM_BLOCK) -> Iterator[bytes]:
    """The bytes of ``path`` in blocks of ``block`` bytes."""
    with open(path, "rb") as f:
        while data := f.read(block):
            yield data


def measurements(audio: torch.Tensor, mono: bool = False) -> dict[str, Any]:
    """Loudness (LUFS, LU, dBTP, dBFS), spectral tilt (dB/octave), correlation and side/mid
    ratio (dB) of ``audio [2, samples]`` at 48 kHz, on its device. ``mono``: the source was
    mono, so loudness is measured on one channel (BS.1770), not on the dual-mono pair."""
    report = summary(audio.unsqueeze(0))[0]
    if mono:
        report.update(measure(audio[:1], SAMPLE_RATE).to_dict())
    return report


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
