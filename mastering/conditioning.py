"""What the chain is asked for: genre, tempo, energy, vocal/instrument ratio, style phrase,
emotion and production rule-breaks, turned into tensors the stages read.

Two representations travel together in a :class:`ConditioningBatch`:

* **macros** ``[batch, len(MACROS)]``: interpretable production controls, nominally in
  ``[-1, 1]`` (0 = neutral), that the stages' analytic priors map to DSP parameters; and
* **vector** ``[batch, cond_dim]``: what the learned controllers read (the genre embedding,
  the macros, normalized tempo/energy/vocal ratio and the rule-break flags).

The genre embedding's first ``len(MACROS)`` columns are initialized to that genre's macro
preset (:data:`GENRE_MACROS`), so the untrained chain is already genre-aware, and gradients
of any loss reach the embedding through every stage's prior.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mastering.errors import InvalidParameterError

#: Interpretable production controls; each in [-1, 1], 0 neutral.
MACROS: tuple[str, ...] = (
    "brightness",  # high-shelf / air tilt: + brighter, - darker
    "warmth",  # low and low-mid weight
    "mids",  # 500 Hz - 3 kHz presence
    "punch",  # transient emphasis (slower compressor attack, exciter on attacks)
    "glue",  # compression amount (ratio, threshold)
    "width",  # side gain above the mono-bass crossover
    "space",  # reverb wet mix and length
    "drive",  # how hard the limiter is pushed
    "saturation",  # harmonic exciter / tape soft clipping
)
MACRO_INDEX = {name: i for i, name in enumerate(MACROS)}

#: Genre presets over :data:`MACROS` (order as there).
GENRE_MACROS: dict[str, tuple[float, ...]] = {
    #            bright warm  mids  punch glue  width space drive sat
    "pop": (0.3, 0.0, 0.1, 0.3, 0.3, 0.3, 0.2, 0.5, 0.1),
    "rock": (0.2, 0.2, 0.2, 0.4, 0.4, 0.2, 0.1, 0.6, 0.3),
    "metal": (0.3, -0.1, 0.3, 0.5, 0.6, 0.3, -0.3, 0.8, 0.4),
    "edm": (0.4, 0.3, 0.0, 0.6, 0.5, 0.5, 0.2, 0.9, 0.2),
    "hiphop": (0.1, 0.5, 0.1, 0.6, 0.4, 0.1, 0.0, 0.7, 0.2),
    "jazz": (-0.3, 0.2, 0.0, 0.0, -0.4, 0.2, 0.3, -0.3, 0.0),
    "lofi": (-0.6, 0.4, 0.0, -0.3, 0.1, -0.1, 0.2, 0.0, 0.6),
    "ambient": (0.0, 0.0, -0.2, -0.5, -0.3, 0.7, 0.9, -0.3, 0.0),
    "synthwave": (0.2, 0.1, 0.0, 0.3, 0.3, 0.6, 0.6, 0.4, 0.2),
    "ballad": (-0.1, 0.2, 0.1, -0.2, 0.0, 0.3, 0.7, 0.0, 0.0),
    "classical": (0.0, 0.0, 0.0, -0.4, -0.7, 0.2, 0.4, -0.6, -0.3),
    "cinematic": (0.1, 0.3, 0.0, 0.2, 0.0, 0.5, 0.7, 0.2, 0.0),
    "folk": (-0.1, 0.2, 0.1, 0.0, -0.1, 0.2, 0.3, 0.0, 0.0),
    "unknown": (0.0,) * len(MACROS),
}
GENRES: tuple[str, ...] = tuple(GENRE_MACROS)

#: Style words -> macro offsets. A style phrase is split into words; genre words in it set the
#: genre (when none is given), the others add their offsets.
STYLE_WORDS: dict[str, dict[str, float]] = {
    "aggressive": {"mids": 0.5, "punch": 0.5, "drive": 0.3, "glue": 0.2, "saturation": 0.2},
    "chill": {"brightness": -0.4, "punch": -0.3, "glue": -0.2, "drive": -0.2, "saturation": 0.3},
    "ambient": {"width": 0.4, "space": 0.6, "punch": -0.2},
    "synthwave": {"width": 0.3, "space": 0.3, "brightness": 0.1},
    "bright": {"brightness": 0.5},
    "dark": {"brightness": -0.5},
    "warm": {"warmth": 0.4, "brightness": -0.2, "saturation": 0.2},
    "wide": {"width": 0.5},
    "narrow": {"width": -0.5},
    "punchy": {"punch": 0.5},
    "soft": {"punch": -0.3, "glue": -0.2, "drive": -0.3},
    "loud": {"drive": 0.5, "glue": 0.3},
    "dynamic": {"glue": -0.5, "drive": -0.4},
    "lush": {"space": 0.5, "width": 0.3},
    "dry": {"space": -0.6},
    "gritty": {"saturation": 0.5, "mids": 0.2},
    "clean": {"saturation": -0.5},
}

#: Emotion presets -> macro offsets.
EMOTIONS: dict[str, dict[str, float]] = {
    "grief": {"brightness": -0.4, "space": 0.5, "punch": -0.3, "drive": -0.2},
    "rage": {"glue": 0.6, "mids": 0.5, "drive": 0.4, "punch": 0.3, "saturation": 0.3},
    "hope": {"brightness": 0.4, "width": 0.4, "space": 0.2},
    "calm": {"punch": -0.3, "glue": -0.2, "space": 0.3, "brightness": -0.1, "drive": -0.2},
    "joy": {"brightness": 0.3, "punch": 0.3, "width": 0.2},
}

#: Production rule-breaks: deliberate departures from "correct" mastering.
RULE_BREAKS: dict[str, str] = {
    "PRODUCTION_BuriedVocals": "vocal band tucked (-dB around 1-4 kHz in the mid channel) and "
    "compressed less, so the voice sits inside the mix",
    "PRODUCTION_LoFi": "tape emulation: soft clipping, 12-bit quantization, 11 kHz bandwidth",
    "PRODUCTION_ExtremeDynamics": "compressor bypassed; the limiter acts only as a safety at "
    "the ceiling (no drive)",
}

_NUMERIC = ("tempo", "energy", "vocal_ratio")


def _unknown(kind: str, value: str, valid: Sequence[str]) -> InvalidParameterError:
    return InvalidParameterError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")


@dataclass
class Conditioning:
    """What one song is mastered for. ``None`` fields are estimated from the audio.

    Attributes:
        genre: one of :data:`GENRES` (``None``: from the style phrase, else ``"unknown"``).
        tempo_bpm: tempo in beats per minute (``None``: estimated by onset autocorrelation).
        energy: 0..1 (``None``: estimated from loudness and onset density).
        vocal_ratio: 0..1 share of vocal-band centre energy (``None``: estimated).
        style: a phrase such as ``"aggressive rock"`` (words from :data:`STYLE_WORDS` and genres).
        emotion: one of :data:`EMOTIONS` or ``None``.
        rule_breaks: names from :data:`RULE_BREAKS`.
        macros: explicit macro offsets added last (name -> value in [-1, 1]).
    """

    genre: str | None = None
    tempo_bpm: float | None = None
    energy: float | None = None
    vocal_ratio: float | None = None
    style: str | None = None
    emotion: str | None = None
    rule_breaks: tuple[str, ...] = ()
    macros: Mapping[str, float] = field(default_factory=dict)

    def validate(self) -> Conditioning:
        """Raise :class:`InvalidParameterError` listing the valid names for anything unknown."""
        if self.genre is not None and self.genre not in GENRE_MACROS:
            raise _unknown("genre", self.genre, GENRES)
        if self.emotion is not None and self.emotion not in EMOTIONS:
            raise _unknown("emotion", self.emotion, tuple(EMOTIONS))
        for rb in self.rule_breaks:
            if rb not in RULE_BREAKS:
                raise _unknown("rule-break", rb, tuple(RULE_BREAKS))
        for word in self.style_words():
            if word not in STYLE_WORDS and word not in GENRE_MACROS:
                raise _unknown("style word", word, (*STYLE_WORDS, *GENRES))
        for name in self.macros:
            if name not in MACRO_INDEX:
                raise _unknown("macro", name, MACROS)
        if self.tempo_bpm is not None and not 20.0 <= self.tempo_bpm <= 400.0:
            raise InvalidParameterError(f"tempo {self.tempo_bpm} BPM is outside 20..400")
        for name in ("energy", "vocal_ratio"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise InvalidParameterError(f"{name} {v} is outside 0..1")
        return self

    def style_words(self) -> list[str]:
        return [] if not self.style else self.style.lower().replace(",", " ").split()

    def resolved_genre(self) -> str:
        if self.genre is not None:
            return self.genre
        genres = [w for w in self.style_words() if w in GENRE_MACROS]
        return genres[-1] if genres else "unknown"

    def macro_offsets(self) -> dict[str, float]:
        """Style words, emotion and explicit macros summed (without the genre preset)."""
        out = dict.fromkeys(MACROS, 0.0)
        sources = [STYLE_WORDS[w] for w in self.style_words() if w in STYLE_WORDS]
        if self.emotion:
            sources.append(EMOTIONS[self.emotion])
        sources.append(dict(self.macros))
        for src in sources:
            for k, v in src.items():
                out[k] += v
        return out


@dataclass
class ConditioningBatch:
    """Tensors for a batch of songs (see the module docstring).

    Attributes:
        macros: ``[batch, len(MACROS)]`` genre preset + offsets, clamped to [-1.5, 1.5].
        vector: ``[batch, cond_dim]`` controller input.
        genre: ``[batch]`` genre indices.
        tempo_bpm, energy, vocal_ratio: ``[batch]``.
        flags: ``[batch, len(RULE_BREAKS)]`` 0/1 rule-break flags.
    """

    macros: Tensor
    vector: Tensor
    genre: Tensor
    tempo_bpm: Tensor
    energy: Tensor
    vocal_ratio: Tensor
    flags: Tensor

    def to(self, device: torch.device | str) -> ConditioningBatch:
        """The same batch with every tensor on ``device``."""
        return ConditioningBatch(**{k: getattr(self, k).to(device) for k in _BATCH_FIELDS})

    @staticmethod
    def cat(batches: Sequence[ConditioningBatch]) -> ConditioningBatch:
        """Concatenate batches along the batch dimension."""
        return ConditioningBatch(
            **{k: torch.cat([getattr(b, k) for b in batches]) for k in _BATCH_FIELDS}
        )

    def select(self, index: slice | Sequence[int]) -> ConditioningBatch:
        """Songs ``index`` of the batch."""
        return ConditioningBatch(**{k: getattr(self, k)[index] for k in _BATCH_FIELDS})

    def macro(self, name: str) -> Tensor:
        """One macro for the batch: ``[batch]``."""
        return self.macros[:, MACRO_INDEX[name]]

    def flag(self, name: str) -> Tensor:
        """One rule-break flag for the batch: ``[batch]`` (0 or 1)."""
        return self.flags[:, tuple(RULE_BREAKS).index(name)]


_BATCH_FIELDS = ("macros", "vector", "genre", "tempo_bpm", "energy", "vocal_ratio", "flags")


class ConditioningEncoder(nn.Module):
    """Maps :class:`Conditioning` (with estimated values filled in) to a :class:`ConditioningBatch`.

    Args:
        embed_dim: genre embedding size; at least ``len(MACROS)`` (its first columns hold the
            genre's macro preset, the rest start small and random, free for training).
    """

    def __init__(self, embed_dim: int = 16):
        super().__init__()
        n = len(MACROS)
        if embed_dim < n:
            raise ValueError(f"embed_dim must be >= {n}")
        self.genre_embedding = nn.Embedding(len(GENRES), embed_dim)
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            self.genre_embedding.weight.normal_(0.0, 0.02, generator=g)
            self.genre_embedding.weight[:, :n] = torch.tensor([GENRE_MACROS[k] for k in GENRES])
        self.cond_dim = embed_dim + n + len(_NUMERIC) + len(RULE_BREAKS)

    def forward(
        self,
        items: Sequence[Conditioning],
        tempo_bpm: Tensor,
        energy: Tensor,
        vocal_ratio: Tensor,
    ) -> ConditioningBatch:
        """Args:
        items: one :class:`Conditioning` per song.
        tempo_bpm, energy, vocal_ratio: ``[batch]`` resolved values (given or estimated).
        """
        device = self.genre_embedding.weight.device
        genre = torch.tensor([GENRES.index(c.resolved_genre()) for c in items], device=device)
        emb = self.genre_embedding(genre)
        n = len(MACROS)
        offsets = torch.tensor(
            [[c.macro_offsets()[m] for m in MACROS] for c in items], device=device
        )
        macros = (emb[:, :n] + offsets).clamp(-1.5, 1.5)
        flags = torch.tensor(
            [[float(rb in c.rule_breaks) for rb in RULE_BREAKS] for c in items], device=device
        )
        numeric = torch.stack(
            [(tempo_bpm.to(device) - 120.0) / 60.0, energy.to(device), vocal_ratio.to(device)],
            dim=-1,
        )
        vector = torch.cat([emb, macros, numeric.to(emb.dtype), flags], dim=-1)
        return ConditioningBatch(
            macros=macros,
            vector=vector,
            genre=genre,
            tempo_bpm=tempo_bpm.to(device),
            energy=energy.to(device),
            vocal_ratio=vocal_ratio.to(device),
            flags=flags,
        )
