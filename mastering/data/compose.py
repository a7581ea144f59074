"""Procedural song composition: per-genre styles turned into MIDI parts and a vocal melody.

:func:`compose_song` writes one song as six parts (:data:`STEMS`): ``drums``, ``bass``,
``chords``, ``pad``, ``lead`` as General MIDI instruments and ``vocal`` as a list of sung
notes (pitch, time, syllable) that :mod:`mastering.data.synth` sings with Festival (or plays on
a GM voice preset when Festival is missing).

A song has a key and mode, a tempo from its genre's range, a section plan
(intro/verse/chorus/bridge/outro scaled to the requested duration; two sections for very short
songs), a chord progression per section, genre grooves (16-step drum patterns with fills and
crashes, bass figures, chord figures) with swing, and timing (±ms) and velocity jitter. The
vocal sings 2-bar phrases (chord tones on strong beats, steps between) that repeat per section
type. Everything is drawn from a ``numpy.random.Generator``: the same seed gives the same song.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pretty_midi

#: Part names, in mix order.
STEMS: tuple[str, ...] = ("drums", "bass", "chords", "pad", "lead", "vocal")

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
KEY_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

#: Progressions as 0-based scale degrees, one chord per bar.
MAJOR_PROGRESSIONS = ((0, 4, 5, 3), (0, 3, 4, 3), (5, 3, 0, 4), (0, 5, 3, 4), (0, 3, 5, 4))
MINOR_PROGRESSIONS = ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 5, 4), (0, 5, 3, 4))
JAZZ_PROGRESSIONS = ((1, 4, 0, 0), (1, 4, 0, 5), (0, 5, 1, 4), (2, 5, 1, 4))

SYLLABLES = (
    "la", "na", "oh", "love", "light", "night", "day", "go", "home", "sky", "fire", "heart",
    "time", "stay", "run", "high", "down", "rain", "soul", "dream", "free", "way", "see", "you",
    "me", "now", "all", "die", "sun", "moon", "hold", "on", "fall", "rise", "gold", "blue",
)  # fmt: skip

# GM drum notes.
KICK, SNARE, CLAP, RIM, HAT, HAT_OPEN, PEDAL_HAT, RIDE, CRASH = 36, 38, 39, 37, 42, 46, 44, 51, 49
TOMS = (50, 47, 45, 43)
TAMBOURINE, SHAKER = 54, 70


@dataclass(frozen=True)
class GenreStyle:
    """How a genre is composed.

    Attributes:
        tempo: BPM range. swing: offbeat 8th delay as a fraction of an 8th (0..0.33).
        minor: probability of a minor key. sevenths: 7th chords.
        drums: groove name (see :func:`_drum_bar`). kit: GM drum kit program.
        bass, chords, pad, lead: GM programs (0-based) to choose from.
        bass_figure: ``root8``, ``root4``, ``walk``, ``pulse16``, ``sustain``, ``syncop``.
        chord_figure: ``block``, ``strum8``, ``arp``, ``stabs``, ``comp``.
        density: lead/vocal note density 0..1.
    """

    tempo: tuple[float, float]
    drums: str
    bass: tuple[int, ...]
    chords: tuple[int, ...]
    pad: tuple[int, ...]
    lead: tuple[int, ...]
    bass_figure: str = "root8"
    chord_figure: str = "block"
    swing: float = 0.0
    minor: float = 0.4
    sevenths: bool = False
    kit: int = 0
    density: float = 0.55


STYLES: dict[str, GenreStyle] = {
    "pop": GenreStyle((92, 124), "pop", (33, 38), (0, 4, 25), (88, 89), (80, 81, 73), "root8",
                      "strum8"),
    "rock": GenreStyle((100, 150), "rock", (33, 34), (29, 30, 27), (48, 16), (29, 30), "root8",
                       "strum8", minor=0.5),
    "metal": GenreStyle((130, 190), "metal", (34, 33), (30, 30, 29), (48, 50), (30, 81), "pulse16",
                        "block", minor=0.9, kit=16),
    "edm": GenreStyle((120, 130), "four", (38, 39), (81, 90, 80), (89, 90, 94), (81, 80), "syncop",
                      "stabs", minor=0.6, kit=25),
    "hiphop": GenreStyle((80, 98), "hiphop", (38, 33), (4, 5, 0), (89, 88), (80, 11), "syncop",
                         "stabs", swing=0.2, minor=0.7, kit=25),
    "jazz": GenreStyle((90, 180), "jazz", (32,), (0, 26, 4), (48, 11), (65, 66, 56), "walk",
                       "comp", swing=0.3, minor=0.3, sevenths=True, kit=32),
    "lofi": GenreStyle((70, 90), "hiphop", (33, 32), (4, 5, 0), (89, 92), (11, 73), "sustain",
                       "comp", swing=0.25, minor=0.5, sevenths=True, kit=40, density=0.4),
    "ambient": GenreStyle((60, 90), "sparse", (38, 35), (88, 4), (89, 92, 94, 91), (73, 88),
                          "sustain", "arp", minor=0.5, kit=48, density=0.3),
    "synthwave": GenreStyle((84, 118), "pop", (38, 39), (90, 81, 4), (89, 90), (81, 80), "pulse16",
                            "arp", minor=0.7, kit=24),
    "ballad": GenreStyle((60, 84), "halftime", (33, 32), (0, 4, 24), (48, 49, 89), (73, 40, 71),
                         "root4", "arp", minor=0.4, kit=8, density=0.45),
    "classical": GenreStyle((60, 110), "sparse", (42, 32), (48, 0, 46), (49, 52), (40, 73, 68),
                            "root4", "arp", minor=0.5, kit=48, density=0.5),
    "cinematic": GenreStyle((70, 110), "cinematic", (43, 42), (48, 61, 0), (49, 52, 89),
                            (60, 56, 48), "sustain", "block", minor=0.7, kit=48),
    "folk": GenreStyle((84, 126), "folk", (32, 33), (25, 24, 105), (48, 21), (22, 73, 40),
                       "root4", "strum8", minor=0.3, kit=40),
}  # fmt: skip

SECTION_ENERGY = {"intro": 0.6, "verse": 0.75, "chorus": 1.0, "bridge": 0.7, "outro": 0.55}
#: Parts that play in each section (the vocal sings in verses and choruses).
SECTION_PARTS = {
    "intro": ("drums", "bass", "chords", "pad", "lead"),
    "verse": ("drums", "bass", "chords", "pad", "vocal"),
    "chorus": ("drums", "bass", "chords", "pad", "lead", "vocal"),
    "bridge": ("drums", "bass", "pad", "lead"),
    "outro": ("chords", "pad", "lead"),
}
TEMPLATE = (("intro", 4), ("verse", 8), ("chorus", 8), ("verse", 8), ("chorus", 8), ("bridge", 4))


@dataclass(frozen=True)
class VocalNote:
    """One sung note: ``start``/``end`` in seconds, ``pitch`` a MIDI note, one syllable."""

    start: float
    end: float
    pitch: int
    syllable: str


@dataclass
class Song:
    """A composed song.

    Attributes:
        genre, seed: what it was made from. tempo_bpm: BPM. key: e.g. ``"F# minor"``.
        sections: ``(name, start_s, end_s)``. duration_s: end of the final chord (whole bars;
            release tails ring on after it).
        parts: GM instrument per MIDI stem (``drums`` ... ``lead``). programs: their programs.
        vocal: sung notes (MIDI pitch, male register C3..E4).
    """

    genre: str
    seed: int
    tempo_bpm: float
    key: str
    sections: list[tuple[str, float, float]]
    duration_s: float
    parts: dict[str, pretty_midi.Instrument] = field(default_factory=dict)
    vocal: list[VocalNote] = field(default_factory=list)

    @property
    def programs(self) -> dict[str, int]:
        return {name: inst.program for name, inst in self.parts.items()}

    def midi(self, stems: tuple[str, ...] | None = None) -> pretty_midi.PrettyMIDI:
        """A MIDI file with the chosen MIDI parts (all when ``None``)."""
        m = pretty_midi.PrettyMIDI(initial_tempo=self.tempo_bpm)
        for name, inst in self.parts.items():
            if stems is None or name in stems:
                m.instruments.append(inst)
        return m

    def vocal_instrument(self, program: int = 53) -> pretty_midi.Instrument:
        """The vocal line as a GM instrument (default 53, "voice oohs"): the fallback when
        no singing synthesizer is installed."""
        inst = pretty_midi.Instrument(program=program, name="vocal")
        for n in self.vocal:
            inst.notes.append(pretty_midi.Note(96, n.pitch, n.start, n.end))
        return inst


class _Writer:
    """Places notes on the bar/step grid with swing and jitter."""

    def __init__(self, rng: np.random.Generator, tempo: float, swing: float):
        self.rng = rng
        self.step = 60.0 / tempo / 4.0  # a 16th, seconds
        self.swing = swing

    def time(self, bar: int, step: float) -> float:
        t = (bar * 16 + step) * self.step
        if self.swing and float(step) % 4 == 2:  # offbeat 8th
            t += self.swing * 2 * self.step
        return max(0.0, t + float(self.rng.normal(0.0, 0.004)))

    def note(self, inst, bar, step, steps, pitch, velocity, energy=1.0):
        start = self.time(bar, step)
        end = max(start + 0.03, self.time(bar, step + steps) - 0.01)
        vel = int(np.clip(velocity * (0.55 + 0.45 * energy) + self.rng.normal(0, 6), 20, 127))
        inst.notes.append(pretty_midi.Note(vel, int(pitch), start, end))


def _plan(bars: int) -> list[tuple[str, int]]:
    """Section names and lengths in bars, summing to ``bars``."""
    if bars < 12:
        half = max(1, bars // 2)
        return [("verse", half), ("chorus", max(1, bars - half))]
    intro = 4 if bars >= 24 else 2
    plan, total = [("intro", intro)], intro
    body = TEMPLATE[1:]
    i = 0
    while total < bars - 4:
        name, n = body[i % len(body)]
        n = min(n, bars - 4 - total)
        plan.append((name, n))
        total += n
        i += 1
    plan.append(("outro", bars - total))
    return plan


def _chord(scale, root, degree, sevenths, octave_base):
    """MIDI notes of the diatonic chord on ``degree`` (0-based) in the key."""
    count = 4 if sevenths else 3
    notes = []
    for k in range(count):
        d = degree + 2 * k
        notes.append(octave_base + root + scale[d % 7] + 12 * (d // 7))
    return notes


def _drum_bar(groove, rng, fill):
    """``(step, note, velocity)`` hits for one 4/4 bar of ``groove``."""
    hits = []
    if groove in ("pop", "rock", "folk"):
        hits += [(0, KICK, 110), (8, KICK, 100), (4, SNARE, 105), (12, SNARE, 108)]
        if rng.random() < 0.5:
            hits.append((10, KICK, 90))
        hat = TAMBOURINE if groove == "folk" else HAT
        hits += [(s, hat, 70 + (15 if s % 4 == 0 else 0)) for s in range(0, 16, 2)]
    elif groove == "metal":
        hits += [(s, KICK, 100) for s in range(16)]
        hits += [(4, SNARE, 115), (12, SNARE, 115)] + [(s, RIDE, 90) for s in range(0, 16, 4)]
    elif groove == "four":
        hits += [(s, KICK, 118) for s in (0, 4, 8, 12)] + [(4, CLAP, 100), (12, CLAP, 100)]
        hits += [(s, HAT_OPEN, 80) for s in (2, 6, 10, 14)]
        hits += [(s, HAT, 55) for s in range(1, 16, 2)]
    elif groove == "hiphop":
        hits += [(0, KICK, 115), (7, KICK, 90), (10, KICK, 105), (4, SNARE, 110), (12, SNARE, 110)]
        hits += [(s, HAT, 60 + 20 * (s % 4 == 0)) for s in range(0, 16, 2)]
    elif groove == "jazz":
        hits += [(s, RIDE, 85) for s in (0, 4, 6, 8, 12, 14)] + [(4, PEDAL_HAT, 60), (12, 44, 60)]
        hits += [(s, KICK, 40) for s in (0, 4, 8, 12)]
        hits += [(int(rng.integers(0, 16)), SNARE, 55) for _ in range(2)]
    elif groove == "halftime":
        hits += [(0, KICK, 100), (8, SNARE, 95)] + [(s, HAT, 60) for s in range(0, 16, 2)]
    elif groove == "cinematic":
        hits += [(0, 41, 110), (6, 43, 90), (8, 41, 105), (12, SNARE, 80)]
    else:  # sparse: soft low percussion
        hits += [(0, 41, 70)] + ([(8, SHAKER, 45)] if rng.random() < 0.5 else [])
    if fill and groove not in ("sparse",):
        hits = [h for h in hits if h[0] < 12]
        hits += [(12 + k, TOMS[k % 4], 95 + 5 * k) for k in range(4)]
    return hits


def _bass_bar(figure, chord, next_root, rng):
    """``(step, steps, pitch, velocity)`` for one bar; ``chord[0]`` is the root."""
    root = chord[0]
    if figure == "root8":
        return [
            (s, 2, root + (12 if s == 14 and rng.random() < 0.3 else 0), 95)
            for s in range(0, 16, 2)
        ]
    if figure == "pulse16":
        return [(s, 1, root, 90 + 10 * (s % 4 == 0)) for s in range(16)]
    if figure == "root4":
        return [
            (0, 4, root, 95),
            (4, 4, chord[2] - 12 if chord[2] - 12 > root else root, 80),
            (8, 4, root, 90),
            (12, 4, chord[1], 80),
        ]
    if figure == "walk":
        approach = next_root + (1 if rng.random() < 0.5 else -1)
        return [(0, 4, root, 90), (4, 4, chord[1], 80), (8, 4, chord[2], 85), (12, 4, approach, 80)]
    if figure == "syncop":
        return [(0, 3, root, 110), (3, 3, root, 95), (6, 2, root + 12, 85), (10, 4, root, 100)]
    return [(0, 16, root, 90)]  # sustain


def _chord_bar(figure, chord, rng):
    """``(step, steps, pitches, velocity)`` for one bar."""
    if figure == "strum8":
        return [(s, 2, chord, 80 + 12 * (s % 8 == 0)) for s in range(0, 16, 2)]
    if figure == "arp":
        tones = [*chord, chord[0] + 12]
        return [(s, 2, [tones[(s // 2) % len(tones)]], 75) for s in range(0, 16, 2)]
    if figure == "stabs":
        return [(s, 1, chord, 95) for s in (0, 3, 6, 10) if rng.random() < 0.85]
    if figure == "comp":
        return [(s, 2, chord, 70) for s in sorted(rng.choice(16, size=3, replace=False))]
    return [(0, 16, chord, 80)]  # block


def _melody_phrase(rng, chords, scale, root, low, high, density, bar_count):
    """A phrase of ``(step_in_phrase, steps, pitch)`` over ``bar_count`` bars on an 8th grid."""
    pool = [p for p in range(low, high + 1) if (p - root) % 12 in scale]
    notes, idx = [], len(pool) // 2
    total = bar_count * 16
    s = 0
    while s < total - 4:  # leave a breath at the phrase end
        if rng.random() < density or s % 16 == 0:
            chord = chords[min(s // 16, len(chords) - 1)]
            if s % 8 == 0:  # strong beat: nearest chord tone
                tones = [i for i, p in enumerate(pool) if p % 12 in {c % 12 for c in chord}]
                idx = min(tones, key=lambda i: abs(i - idx)) if tones else idx
            else:
                idx = int(np.clip(idx + rng.choice([-2, -1, -1, 1, 1, 2]), 0, len(pool) - 1))
            length = int(rng.choice([2, 2, 4, 4, 6]))
            notes.append((s, min(length, total - 4 - s), pool[idx]))
            s += length
        else:
            s += 2
    return notes


def compose_song(genre: str, seed: int, duration_s: float) -> Song:
    """Compose a song of about ``duration_s`` seconds (whole bars) in ``genre``.

    Args:
        genre: a key of :data:`STYLES`.
        seed: generator seed (the same seed and arguments give the same song).
        duration_s: requested length in seconds (at least one bar is written).
    """
    if genre not in STYLES:
        raise ValueError(f"no composition style for genre {genre!r}; valid: {', '.join(STYLES)}")
    style = STYLES[genre]
    rng = np.random.default_rng(seed)
    tempo = float(round(rng.uniform(*style.tempo)))
    minor = bool(rng.random() < style.minor)
    scale = MINOR if minor else MAJOR
    root = int(rng.integers(0, 12))
    key = f"{KEY_NAMES[root]} {'minor' if minor else 'major'}"
    w = _Writer(rng, tempo, style.swing * float(rng.uniform(0.7, 1.0)))
    bar_s = 16 * w.step
    plan = _plan(max(1, math.floor(duration_s / bar_s) - 1))  # the last bar: the final chord

    parts = {
        "drums": pretty_midi.Instrument(program=style.kit, is_drum=True, name="drums"),
        "bass": pretty_midi.Instrument(program=int(rng.choice(style.bass)), name="bass"),
        "chords": pretty_midi.Instrument(program=int(rng.choice(style.chords)), name="chords"),
        "pad": pretty_midi.Instrument(program=int(rng.choice(style.pad)), name="pad"),
        "lead": pretty_midi.Instrument(program=int(rng.choice(style.lead)), name="lead"),
    }
    pools = (
        JAZZ_PROGRESSIONS
        if style.sevenths
        else (MINOR_PROGRESSIONS if minor else MAJOR_PROGRESSIONS)
    )
    progressions = {name: pools[int(rng.integers(len(pools)))] for name in SECTION_ENERGY}
    vocal_low, vocal_high = 48, 64
    lead_octave = 72 if parts["lead"].program not in (29, 30) else 60
    motifs: dict[str, list] = {}
    lead_motifs: dict[str, list] = {}
    vocal: list[VocalNote] = []
    sections = []
    bar = 0
    for s_idx, (name, n_bars) in enumerate(plan):
        energy = SECTION_ENERGY[name]
        playing = SECTION_PARTS[name]
        prog = progressions[name]
        chords = [
            _chord(scale, root, prog[b % len(prog)], style.sevenths, 48) for b in range(n_bars + 1)
        ]
        sections.append((name, bar * bar_s, (bar + n_bars) * bar_s))
        for b in range(n_bars):
            chord, g = chords[b], bar + b
            if "drums" in playing:
                last = b == n_bars - 1 and s_idx < len(plan) - 1
                hits = _drum_bar(style.drums, rng, fill=last and n_bars >= 4)
                if b == 0 and name in ("chorus", "bridge") and style.drums != "sparse":
                    hits.append((0, CRASH, 100))
                for step, pitch, vel in hits:
                    w.note(parts["drums"], g, step, 1, pitch, vel, energy)
            if "bass" in playing:
                for step, steps, pitch, vel in _bass_bar(
                    style.bass_figure, [p - 12 for p in chord], chords[b + 1][0] - 12, rng
                ):
                    w.note(parts["bass"], g, step, steps, pitch, vel, energy)
            if "chords" in playing:
                for step, steps, pitches, vel in _chord_bar(style.chord_figure, chord, rng):
                    for p in pitches:
                        w.note(parts["chords"], g, step, steps, p + 12, vel, energy)
            if "pad" in playing:
                for p in chord[:3]:
                    w.note(parts["pad"], g, 0, 16, p + 12, 70, energy)
        for b0 in range(0, n_bars, 2):
            phrase_bars = min(2, n_bars - b0)
            pc = chords[b0 : b0 + phrase_bars]
            if "vocal" in playing:
                key_ = f"{name}{phrase_bars}{(b0 // 2) % 2}"
                if key_ not in motifs:
                    dens = style.density + (0.1 if name == "chorus" else 0.0)
                    lo, hi = (
                        (vocal_low + 4, vocal_high)
                        if name == "chorus"
                        else (vocal_low, vocal_high - 3)
                    )
                    motifs[key_] = _melody_phrase(rng, pc, scale, root, lo, hi, dens, phrase_bars)
                for step, steps, pitch in motifs[key_]:
                    start = w.time(bar + b0, step)
                    end = max(start + 0.08, w.time(bar + b0, step + steps) - 0.03)
                    vocal.append(VocalNote(start, end, pitch, str(rng.choice(SYLLABLES))))
            if "lead" in playing:
                key_ = f"{name}{phrase_bars}"
                if key_ not in lead_motifs:
                    lead_motifs[key_] = _melody_phrase(
                        rng,
                        pc,
                        scale,
                        root,
                        lead_octave,
                        lead_octave + 14,
                        style.density,
                        phrase_bars,
                    )
                for step, steps, pitch in lead_motifs[key_]:
                    w.note(parts["lead"], bar + b0, step, steps, pitch, 85, energy)
        bar += n_bars
    # Final chord ringing out.
    final = _chord(scale, root, 0, style.sevenths, 48)
    for p in final:
        w.note(parts["pad"], bar, 0, 16, p + 12, 60, 0.5)
        w.note(parts["chords"], bar, 0, 8, p + 12, 70, 0.5)
    w.note(parts["bass"], bar, 0, 8, final[0] - 12, 80, 0.5)
    duration = (bar + 1) * bar_s
    return Song(genre, seed, tempo, key, sections, duration, parts, vocal)
