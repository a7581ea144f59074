"""Writing audio files atomically, with optional resampling and TPDF dither.

Formats (:data:`WRITE_FORMATS`):

=========  =========  ===================  ===========================================
name       container  samples              notes
=========  =========  ===================  ===========================================
wav16      WAV        16-bit PCM           TPDF dither, ±1 LSB triangular
wav24      WAV        24-bit PCM           rounded, no dither
wav32f     WAV        32-bit IEEE float    exact; values above 1.0 are kept
flac16     FLAC       16-bit               TPDF dither, ±1 LSB triangular
flac24     FLAC       24-bit               rounded, no dither
=========  =========  ===================  ===========================================

Integer formats map full scale 1.0 to ``2**(bits-1)`` and CLIP anything outside
``[-1, 1 - 2**(1-bits)]``: keeping the signal below full scale (true-peak limiting) is the
caller's job. Quantisation is done here (not by libsndfile, whose float-to-int scaling is
``2**(bits-1) - 1``), so a sample ``k / 2**(bits-1)`` read back from a file is written back
unchanged.

Atomicity: samples go to a hidden temporary file in the target folder (same filesystem), which
is flushed to disk and then renamed over the final name with :func:`os.replace`. On any
failure the temporary file is removed and the final name is untouched (an existing file there
keeps its old content), so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from mastering import SAMPLE_RATE
from mastering.audio.info import check_rate_parameter
from mastering.errors import (
    AudioWriteError,
    InvalidAudioError,
    InvalidParameterError,
    LacquerError,
)

#: Frames encoded per block when writing.
WRITE_BLOCK_FRAMES = 65_536
RESAMPLE_QUALITY = "VHQ"


@dataclass(frozen=True, slots=True)
class WriteFormat:
    """A named output format: libsndfile container and subtype, integer bit depth (``None``
    for float) and whether TPDF dither is added before quantising."""

    container: str
    subtype: str
    bits: int | None
    dither: bool


WRITE_FORMATS: dict[str, WriteFormat] = {
    "wav16": WriteFormat("WAV", "PCM_16", 16, dither=True),
    "wav24": WriteFormat("WAV", "PCM_24", 24, dither=False),
    "wav32f": WriteFormat("WAV", "FLOAT", None, dither=False),
    "flac16": WriteFormat("FLAC", "PCM_16", 16, dither=True),
    "flac24": WriteFormat("FLAC", "PCM_24", 24, dither=False),
}

#: Seed of the dither generator when the caller passes none (so output is deterministic).
DEFAULT_DITHER_SEED = 0


def write_audio(
    path: str | Path,
    audio: torch.Tensor | np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    out_rate: int | None = None,
    format: str = "wav24",
    generator: np.random.Generator | None = None,
) -> Path:
    """Writes ``audio`` to ``path`` atomically and returns the final path.

    Args:
        path: output file; its folder must exist and be writable. The extension is not
            inspected: ``format`` decides the container.
        audio: float ``[2, samples]`` (stereo), ``[1, samples]`` or ``[samples]`` (mono
            file), full scale 1.0, at ``sample_rate`` Hz. Tensors are moved to the CPU.
            Or samples already quantized for an undithered integer format by
            :func:`quantize_tensor` (e.g. on a GPU): int32 for 24 bits, written as they are
            (no resampling: ``out_rate`` must equal ``sample_rate``).
        sample_rate: rate of ``audio`` in Hz (default the internal 48 kHz).
        out_rate: rate of the file in Hz (e.g. the source's); ``None`` keeps
            ``sample_rate``. Resampled with soxr VHQ to
            ``floor(samples * out_rate / sample_rate + 1/2)`` frames.
        format: one of :data:`WRITE_FORMATS`. Integer formats clip at full scale.
        generator: NumPy generator for the dither noise; ``None`` uses a fresh generator
            seeded with :data:`DEFAULT_DITHER_SEED`, so equal input gives equal bytes.

    Raises:
        AudioWriteError: unknown ``format`` (the message lists the valid ones), missing or
            unwritable folder, ``path`` is a folder, or the encoder failed.
        InvalidAudioError: NaN/Inf samples or no samples (nothing is written).
        InvalidParameterError: a bad shape or a rate outside 8-192 kHz.
    """
    target = Path(path)
    spec = _write_format(format, target)
    samples = _as_channels_first(audio, target)
    sample_rate = check_rate_parameter("sample_rate", sample_rate)
    out_rate = check_rate_parameter("out_rate", sample_rate if out_rate is None else out_rate)
    if samples.dtype.kind == "i":
        _check_prequantized(samples, spec, format, sample_rate, out_rate, target)
    else:
        _check_finite(samples, target)
    rng = generator if generator is not None else np.random.default_rng(DEFAULT_DITHER_SEED)
    _check_output_folder(target)
    temp = _create_temp_file(target)
    try:
        _encode_file(temp, samples, spec, sample_rate, out_rate, rng)
        _finalise(temp, target)
    except BaseException as exc:
        _remove_quietly(temp)
        if isinstance(exc, LacquerError) or not isinstance(exc, Exception):
            raise
        raise AudioWriteError(f"write failed: {exc}", target) from exc
    return target


def _write_format(name: str, target: Path) -> WriteFormat:
    if name not in WRITE_FORMATS:
        valid = ", ".join(WRITE_FORMATS)
        raise AudioWriteError(f"unknown output format {name!r}; valid formats: {valid}", target)
    return WRITE_FORMATS[name]


def _as_channels_first(audio: torch.Tensor | np.ndarray, target: Path) -> np.ndarray:
    """``audio`` as a float32 ``[channels, samples]`` array (a view when already float32);
    integer samples (pre-quantized) keep their type."""
    if isinstance(audio, torch.Tensor):
        keep = audio.dtype in (torch.int16, torch.int32)
        audio = audio.detach().to(device="cpu", dtype=None if keep else torch.float32).numpy()
    audio = np.asarray(audio)
    samples = audio if audio.dtype in (np.int16, np.int32) else audio.astype(np.float32, copy=False)
    if samples.ndim == 1:
        samples = samples[np.newaxis, :]
    if samples.ndim != 2 or samples.shape[0] not in (1, 2):
        raise InvalidParameterError(
            f"audio must be shaped [2, samples], [1, samples] or [samples], "
            f"got {list(samples.shape)}",
            target,
        )
    if samples.shape[1] == 0:
        raise InvalidAudioError("audio has no samples; nothing written", target)
    return samples


def _check_prequantized(
    samples: np.ndarray, spec: WriteFormat, name: str, in_rate: int, out_rate: int, target: Path
) -> None:
    """Integer samples are accepted only as :func:`quantize_tensor` makes them for ``spec``."""
    expected = {24: np.int32}.get(spec.bits) if not spec.dither else None
    if expected is None or samples.dtype != expected:
        raise InvalidParameterError(
            f"{samples.dtype} samples cannot be written as {name}: pass float samples, or "
            f"int32 from quantize_tensor for an undithered 24-bit format",
            target,
        )
    if in_rate != out_rate:
        raise InvalidParameterError(
            f"pre-quantized samples cannot be resampled ({in_rate} -> {out_rate} Hz)", target
        )


def quantize_tensor(x: torch.Tensor, bits: int = 24) -> torch.Tensor:
    """What :func:`quantize` (no dither) gives, computed where ``x`` is (on a GPU, say), so
    only the encoding is left to the host: ``x [..., samples]`` float, full scale 1.0 ->
    int32 with the ``bits``-bit integer in its top bits (libsndfile's 24-bit input), clipped.
    Bit-identical to :func:`quantize` (round half to even): the scale is a power of two, so
    ``x * 2**23`` is exact in float32 as in float64 and float32 input is scaled in float32
    (a third of the time on a CPU). ``x`` must be finite (the caller checks: NaN has no
    integer)."""
    if bits != 24:
        raise InvalidParameterError(f"quantize_tensor supports 24 bits, got {bits}")
    scale = float(2 ** (bits - 1))
    work = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
    q = torch.round(work * scale).clamp_(-scale, scale - 1.0)
    return q.to(torch.int32).bitwise_left_shift_(32 - bits)


def _check_finite(samples: np.ndarray, target: Path) -> None:
    """Raises :class:`InvalidAudioError` on NaN/Inf; checks in blocks to bound memory."""
    step = WRITE_BLOCK_FRAMES
    bad = sum(
        int(np.count_nonzero(~np.isfinite(samples[:, i : i + step])))
        for i in range(0, samples.shape[1], step)
    )
    if bad:
        raise InvalidAudioError(
            f"audio contains {bad} NaN or Inf samples; refusing to write", target
        )


def _check_output_folder(target: Path) -> None:
    folder = target.parent
    if not folder.exists():
        raise AudioWriteError(f"output folder does not exist: {folder}", target)
    if not folder.is_dir():
        raise AudioWriteError(f"output folder is not a folder: {folder}", target)
    if target.is_dir():
        raise AudioWriteError("output path is an existing folder", target)


def _create_temp_file(target: Path) -> Path:
    """Creates an empty hidden temp file beside ``target`` (same filesystem)."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except PermissionError as exc:
        raise AudioWriteError(f"output folder is not writable: {target.parent}", target) from exc
    except OSError as exc:
        raise AudioWriteError(f"cannot create a file in {target.parent}: {exc}", target) from exc
    os.close(fd)
    return Path(name)


def _encode_file(
    temp: Path,
    samples: np.ndarray,
    spec: WriteFormat,
    in_rate: int,
    out_rate: int,
    rng: np.random.Generator,
) -> None:
    """Resamples ``[channels, samples]`` block by block and encodes it into ``temp``."""
    channels, total = samples.shape
    resampler = None
    if in_rate != out_rate:
        resampler = soxr.ResampleStream(
            in_rate, out_rate, channels, dtype="float32", quality=RESAMPLE_QUALITY
        )
    with sf.SoundFile(str(temp), "w", out_rate, channels, spec.subtype, format=spec.container) as f:
        for start in range(0, total, WRITE_BLOCK_FRAMES):
            block = np.ascontiguousarray(samples[:, start : start + WRITE_BLOCK_FRAMES].T)
            if resampler is not None:
                last = start + WRITE_BLOCK_FRAMES >= total
                block = resampler.resample_chunk(block, last=last)
            f.write(_encode_block(block, spec, rng))


def _encode_block(block: np.ndarray, spec: WriteFormat, rng: np.random.Generator) -> np.ndarray:
    """``[frames, channels]`` float32 (or already quantized) -> what soundfile writes."""
    if spec.bits is None or block.dtype.kind == "i":
        return block
    return quantize(block, spec.bits, rng if spec.dither else None)


def quantize(block: np.ndarray, bits: int, rng: np.random.Generator | None) -> np.ndarray:
    """Quantises float samples (full scale 1.0) to ``bits``-bit integers, clipping.

    With ``rng``, TPDF dither (difference of two uniform variables: triangular on ±1 LSB) is
    added first. Returns int16 for 16 bits, else int32 left-aligned (the integer in the top
    ``bits`` bits), which is what libsndfile expects for 24-bit PCM.
    """
    scale = float(2 ** (bits - 1))
    scaled = block.astype(np.float64) * scale
    if rng is not None:
        scaled += rng.random(scaled.shape) - rng.random(scaled.shape)
    np.rint(scaled, out=scaled)
    np.clip(scaled, -scale, scale - 1.0, out=scaled)
    if bits == 16:
        return scaled.astype(np.int16)
    return scaled.astype(np.int32) << (32 - bits)


def _finalise(temp: Path, target: Path) -> None:
    """Flushes ``temp`` to disk, gives it normal permissions and renames it to ``target``."""
    with open(temp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(temp, _new_file_mode(target))
    os.replace(temp, target)


def _new_file_mode(target: Path) -> int:
    """The mode of the file being replaced, else ``0o666`` less the process umask."""
    with contextlib.suppress(OSError):
        return target.stat().st_mode & 0o7777
    return 0o666 & ~_process_umask()


def _process_umask() -> int:
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _remove_quietly(temp: Path) -> None:
    with contextlib.suppress(OSError):
        temp.unlink()
