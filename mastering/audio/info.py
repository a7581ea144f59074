"""What a source file is (:class:`AudioInfo`) and whether Lacquer can read it.

:func:`probe_audio` opens only the header. It raises :class:`~mastering.errors.AudioReadError`
for anything that is not readable audio: a missing or empty file, a file libsndfile does not
recognise (text renamed ``.wav``, a garbage header), a file with no frames, and a PCM
WAV/RF64/AIFF whose header declares more frames than the file holds (truncated). Files that
are readable but outside what Lacquer takes (channel count, sample rate) are rejected by
:func:`check_supported` with :class:`~mastering.errors.UnsupportedAudioError`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from mastering.audio.headers import declared_frames
from mastering.errors import AudioReadError, InvalidParameterError, UnsupportedAudioError

#: Lowest and highest source sample rates (Hz) Lacquer reads and writes.
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000


@dataclass(frozen=True, slots=True)
class AudioInfo:
    """Properties of a SOURCE file, as stored (before resampling or channel folding).

    ``sample_rate`` in Hz; ``frames`` samples per channel at ``sample_rate``; ``duration_s``
    in seconds; ``format``/``subtype`` are libsndfile's names (``"WAV"``, ``"PCM_24"``,
    ``"FLAC"``, ``"VORBIS"`` ...).
    """

    path: str
    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    format: str
    subtype: str


def probe_audio(path: str | Path) -> AudioInfo:
    """Reads the header of ``path`` and returns its :class:`AudioInfo`.

    Raises :class:`AudioReadError` (naming the file) when the file is missing, empty, not
    audio, has no frames, or is a PCM WAV/RF64/AIFF truncated inside its sample data.
    """
    path = Path(path)
    _check_readable_nonempty_file(path)
    with open_sound_file(path) as f:
        info = AudioInfo(
            path=str(path),
            sample_rate=int(f.samplerate),
            channels=int(f.channels),
            frames=int(f.frames),
            duration_s=f.frames / f.samplerate if f.samplerate > 0 else 0.0,
            format=str(f.format),
            subtype=str(f.subtype),
        )
    _check_has_frames(info)
    _check_header_length(info)
    return info


def check_supported(info: AudioInfo, *, downmix: bool = False) -> None:
    """Raises :class:`UnsupportedAudioError` unless Lacquer takes this rate and channel count.

    Rates from :data:`MIN_SAMPLE_RATE` to :data:`MAX_SAMPLE_RATE` Hz; mono or stereo, or any
    channel count when ``downmix`` is true.
    """
    if not MIN_SAMPLE_RATE <= info.sample_rate <= MAX_SAMPLE_RATE:
        raise UnsupportedAudioError(
            f"sample rate {info.sample_rate} Hz is outside the supported range "
            f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz",
            info.path,
        )
    if info.channels > 2 and not downmix:
        raise UnsupportedAudioError(
            f"{info.channels} channels: only mono and stereo files are read "
            f"(pass downmix=True to fold {info.channels} channels to stereo)",
            info.path,
        )


def check_rate_parameter(name: str, rate: int) -> int:
    """Returns ``rate`` (Hz) as an int; :class:`InvalidParameterError` unless it is an integer
    in the supported range."""
    if (
        not isinstance(rate, numbers.Integral)
        or isinstance(rate, bool)
        or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE
    ):
        raise InvalidParameterError(
            f"{name}={rate!r}: expected an integer sample rate from "
            f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz"
        )
    return int(rate)


def resampled_length(frames: int, in_rate: int, out_rate: int) -> int:
    """Frames soxr produces for ``frames`` input frames: ``floor(frames·out/in + 1/2)``."""
    if in_rate == out_rate:
        return frames
    return (2 * frames * out_rate + in_rate) // (2 * in_rate)


def open_sound_file(path: str | Path) -> sf.SoundFile:
    """Opens ``path`` for reading with libsndfile; failures become :class:`AudioReadError`."""
    try:
        return sf.SoundFile(str(path))
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as exc:
        raise AudioReadError(_undecodable_message(exc), path) from exc
    except OSError as exc:
        raise AudioReadError(f"cannot open file: {exc.strerror or exc}", path) from exc


def _undecodable_message(exc: Exception) -> str:
    detail = str(getattr(exc, "error_string", "") or exc).strip()
    message = (
        "not readable as audio: the format is not recognised or the header is corrupt "
        "(is it really an audio file?)"
    )
    # libsndfile says "File does not exist" for some unrecognised files that do exist.
    if detail and "does not exist" not in detail:
        message += f" [libsndfile: {detail}]"
    return message


def _check_readable_nonempty_file(path: Path) -> None:
    if not path.exists():
        raise AudioReadError("file not found", path)
    if not path.is_file():
        raise AudioReadError("not a regular file", path)
    if path.stat().st_size == 0:
        raise AudioReadError("file is empty (0 bytes)", path)
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise AudioReadError(f"cannot open file: {exc.strerror or exc}", path) from exc


def _check_has_frames(info: AudioInfo) -> None:
    if info.frames <= 0 or info.channels <= 0 or info.sample_rate <= 0:
        raise AudioReadError(
            f"contains no audio ({info.frames} frames, {info.channels} channels, "
            f"{info.sample_rate} Hz)",
            info.path,
        )


def _check_header_length(info: AudioInfo) -> None:
    declared = declared_frames(info.path, info.format, info.subtype)
    if declared is not None and declared > info.frames:
        raise AudioReadError(
            f"truncated: the {info.format} header declares {declared} frames "
            f"({declared / info.sample_rate:.3f} s) but the file holds only {info.frames}",
            info.path,
        )
