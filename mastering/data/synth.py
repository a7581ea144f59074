"""Rendering composed parts to audio with system tools: FluidSynth (MIDI, General MIDI
soundfont) and Festival (singing). Nothing is downloaded; the tools come from Debian packages:

* ``fluidsynth`` + ``fluid-soundfont-gm`` (``/usr/share/sounds/sf2/FluidR3_GM.sf2``);
* ``festival`` + ``festvox-kallpc16k`` (``text2wave -mode singing``; a 16 kHz male voice).

FluidSynth renders float WAV at 48 kHz with its chorus off (the default chorus puts pads out of
phase) and the trailing silence its CLI appends trimmed. Festival's singing score uses
``BPM="50"`` so that ``BEATS`` are seconds, and its note names are an octave below scientific
pitch (its ``A5`` is 440 Hz). :func:`available_engines` says which tools are installed so the
corpus can degrade (a GM voice instead of singing) instead of failing.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pretty_midi
import soundfile as sf
import soxr

from mastering import SAMPLE_RATE
from mastering.data.compose import VocalNote
from mastering.errors import LacquerError

SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
)
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
#: FluidSynth output gain (its ``-g``); 0.5 leaves headroom in float.
FLUID_GAIN = 0.5


class RenderError(LacquerError):
    """An external renderer failed or is missing."""


@functools.cache
def soundfont() -> str | None:
    """The first installed General MIDI soundfont, or ``None``."""
    return next((f for f in SOUNDFONTS if Path(f).is_file()), None)


@functools.cache
def available_engines() -> dict[str, bool]:
    """``{"fluidsynth": ..., "festival": ...}``: which renderers are installed."""
    return {
        "fluidsynth": shutil.which("fluidsynth") is not None and soundfont() is not None,
        "festival": shutil.which("text2wave") is not None,
    }


def _run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RenderError(f"{what}: {exc}") from exc
    if proc.returncode != 0:
        raise RenderError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")


def _read_stereo(path: Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``[2, T]`` float32 at ``sample_rate`` from a WAV (mono duplicated, resampled with soxr)."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if sr != sample_rate:
        data = soxr.resample(data, sr, sample_rate, quality="VHQ").astype(np.float32)
    if data.shape[1] == 1:
        data = np.repeat(data, 2, axis=1)
    return np.ascontiguousarray(data[:, :2].T)


def render_midi(midi: pretty_midi.PrettyMIDI, length: int, *, reverb: bool = False) -> np.ndarray:
    """Render ``midi`` with FluidSynth to ``[2, length]`` float32 at 48 kHz (chorus off).

    The render is cut or zero-padded to ``length`` samples (FluidSynth appends seconds of
    silence; callers pass the song's length).
    """
    font = soundfont()
    if not available_engines()["fluidsynth"] or font is None:
        raise RenderError(
            "fluidsynth or a GM soundfont is not installed (Debian: fluidsynth fluid-soundfont-gm)"
        )
    with tempfile.TemporaryDirectory(prefix="lacquer-fluid-") as tmp:
        mid, wav = Path(tmp) / "part.mid", Path(tmp) / "part.wav"
        midi.write(str(mid))
        _run(
            [
                "fluidsynth",
                "-ni",
                "-q",
                "-C",
                "0",
                "-R",
                "1" if reverb else "0",
                "-r",
                str(SAMPLE_RATE),
                "-g",
                str(FLUID_GAIN),
                "-O",
                "float",
                "-T",
                "wav",
                "-F",
                str(wav),
                font,
                str(mid),
            ],
            "fluidsynth",
        )
        audio = _read_stereo(wav)
    out = np.zeros((2, length), dtype=np.float32)
    n = min(length, audio.shape[1])
    out[:, :n] = audio[:, :n]
    return out


def festival_note(pitch: int) -> str:
    """Festival's name for MIDI ``pitch`` (one octave below scientific: MIDI 69 is ``A5``)."""
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12}"


def singing_score(notes: list[VocalNote], offset_s: float) -> str:
    """A Festival singing score (XML) for ``notes`` starting at ``offset_s`` seconds."""
    items, t = [], offset_s
    for n in notes:
        if n.start > t + 1e-3:
            items.append(f'<REST BEATS="{n.start - t:.4f}"></REST>')
        dur = max(0.05, n.end - max(n.start, t))
        items.append(
            f'<DURATION BEATS="{dur:.4f}"><PITCH NOTE="{festival_note(n.pitch)}">'
            f"{escape(n.syllable)}</PITCH></DURATION>"
        )
        t = max(n.start, t) + dur
    return (
        '<?xml version="1.0"?>\n<!DOCTYPE SINGING PUBLIC "-//SINGING//DTD SINGING mark up//EN" '
        '"Singing.v0_1.dtd" []>\n<SINGING BPM="50">\n' + "\n".join(items) + "\n</SINGING>\n"
    )


def _phrases(notes: list[VocalNote], gap_s: float = 0.6) -> list[list[VocalNote]]:
    groups: list[list[VocalNote]] = []
    for n in notes:
        if groups and n.start - groups[-1][-1].end < gap_s:
            groups[-1].append(n)
        else:
            groups.append([n])
    return groups


def render_vocal(notes: list[VocalNote], length: int) -> np.ndarray:
    """Sing ``notes`` with Festival to ``[2, length]`` float32 (mono, both channels) at 48 kHz.

    Each phrase (notes separated by less than 0.6 s) is sung by one ``text2wave`` call and
    placed at its first note's start, so timing errors do not accumulate over the song.
    """
    if not available_engines()["festival"]:
        raise RenderError("festival is not installed (Debian: festival festvox-kallpc16k)")
    out = np.zeros((2, length), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="lacquer-sing-") as tmp:
        for i, phrase in enumerate(_phrases(notes)):
            xml, wav = Path(tmp) / f"p{i}.xml", Path(tmp) / f"p{i}.wav"
            xml.write_text(singing_score(phrase, phrase[0].start))
            _run(["text2wave", "-mode", "singing", str(xml), "-o", str(wav)], "festival singing")
            audio = _read_stereo(wav)
            start = round(phrase[0].start * SAMPLE_RATE)
            n = max(0, min(length - start, audio.shape[1]))
            out[:, start : start + n] += audio[:, :n]
    return out
