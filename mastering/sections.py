"""Section-aware mastering: find the song's sections, then give each its own conditioning.

Detection (:func:`detect_sections`)
-----------------------------------
1. **Beat grid**: the tempo of :func:`mastering.features.estimate_tempo` and the phase that
   maximizes the onset envelope (:func:`mastering.features.onset_envelope`) summed on the grid.
2. **Beat-synchronous features**, one vector per beat: 24 log-band mid levels (timbre and
   level), a 12-bin chroma (pitch content, 60 Hz-5 kHz), side/mid ratios in 4 bands (width),
   the overall level (dB, weighted double) and the onset strength; each dimension has the
   song's mean removed and is divided by a fixed scale (6 dB per band, 1/3 of chroma, 3 dB
   of width or level, the mean onset strength), and each group is scaled to equal weight.
   Fixed scales keep a song without sections at low novelty (beat-to-beat chord changes
   stay below the threshold) while a level change of several dB stands out.
3. **Novelty** (Foote 2000) on the self-similarity of those vectors: at every beat ``i``, the
   mean distance between the ``L`` beats before and the ``L`` after minus the mean distance
   within each side (Gaussian-tapered, ``L`` = ``SectionPolicy.kernel_beats``). Peaks above
   ``min_novelty`` and ``relative_novelty`` times the song's highest, at least
   ``min_section_beats`` apart, become boundaries, which therefore sit on beats (the grid is
   the analysis frame).
4. **Energy level** per section: its ungated K-weighted loudness (LUFS) against the loudest
   section: ``high`` (+1) within ``high_db``, ``low`` (-1) more than ``low_db`` below, else
   ``mid`` (0). Labels: high -> ``chorus``, mid -> ``verse``, low -> ``breakdown``; a first
   or last section quieter than the loudest level is ``intro`` / ``outro``.

Policy (:class:`SectionPolicy`, documented and tested)
------------------------------------------------------
Each section's macros are the song's plus ``offset * (level - mean level)`` (mean weighted by
duration, so the song as a whole keeps the user's setting), with per-level-unit offsets
``width +0.4``, ``brightness +0.3``, ``glue +0.2``, ``space -0.3``: a chorus is wider,
brighter and a little more glued than its verse; a breakdown breathes (less compression,
more space). One level everywhere gives zero offsets: exactly the one-setting master.

Application (:func:`master_with_sections`)
------------------------------------------
Every distinct level is a conditioning; before each stage runs, its controller predicts the
parameters for all levels at once (a batch of ``K <= 3``). Parameters the levels agree on are
used as they are; when only time-varying parameters (``FRAME_HOP`` frames: the compressor's
gain offset, the imager's side gains) differ, they are crossfaded frame by frame with the
section weights and the stage runs once; otherwise the stage runs once per level and its
outputs are crossfaded sample by sample. The weights are raised-cosine crossfades one beat
long centred on each boundary (no steps, no clicks), summing to 1 everywhere. Master out runs
once on the crossfaded signal, so the integrated loudness target and the true-peak ceiling of
the whole song are met exactly as without sections. Offline only (``Chain.stream`` renders
one setting).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mastering import SAMPLE_RATE
from mastering.chain import Chain, ChainOutput, ChainState, run_aligned
from mastering.conditioning import MACRO_INDEX, MACROS, ConditioningBatch
from mastering.errors import InvalidParameterError
from mastering.features import band_matrix, estimate_tempo, onset_envelope
from mastering.loudness import ungated_loudness
from mastering.reference import with_macros
from mastering.stages.base import FRAME_HOP, Params, StageContext, frames_to_samples

LEVEL_NAMES = {-1: "low", 0: "mid", 1: "high"}
#: Beat-feature groups (first column, end column, weight): timbre, chroma, width, level, onset.
_GROUPS = ((0, 24, 1.0), (24, 36, 1.0), (36, 40, 1.0), (40, 41, 2.0), (41, 42, 1.0))
#: Hop of the beat-feature STFT, samples (40 ms: enough to average within beats, light on
#: long songs).
FEATURE_HOP = 4 * FRAME_HOP


@dataclass(frozen=True)
class SectionPolicy:
    """How sections are found and what they change.

    Attributes:
        offsets: macro -> offset per energy-level unit (see the module docstring).
        kernel_beats: half-size of the novelty kernel, beats.
        min_section_beats: shortest section, beats.
        min_novelty: novelty a boundary needs (scaled feature-distance units) ...
        relative_novelty: ... and at least this fraction of the song's highest novelty.
        high_db, low_db: level classes, dB below the loudest section's loudness.
        crossfade_beats: crossfade length at each boundary, beats (at least 50 ms).
    """

    offsets: Mapping[str, float] = field(
        default_factory=lambda: {"width": 0.4, "brightness": 0.3, "glue": 0.2, "space": -0.3}
    )
    kernel_beats: int = 8
    min_section_beats: int = 8
    min_novelty: float = 1.5
    relative_novelty: float = 0.4
    high_db: float = 3.0
    low_db: float = 8.0
    crossfade_beats: float = 1.0

    def validate(self) -> SectionPolicy:
        for name in self.offsets:
            if name not in MACRO_INDEX:
                raise InvalidParameterError(f"unknown macro {name!r} in the section policy")
        if self.kernel_beats < 2 or self.min_section_beats < 1:
            raise InvalidParameterError("section kernel and minimum length must be >= 2/1 beats")
        return self


@dataclass
class Section:
    """One section: ``start_s``/``end_s`` (s), ``level`` (-1, 0, 1), ``label``, its input
    loudness (ungated LUFS) and the macro offsets applied to it."""

    start_s: float
    end_s: float
    level: int
    label: str
    loudness_lufs: float
    offsets: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "label": self.label,
            "level": LEVEL_NAMES[self.level],
            "loudness_lufs": round(self.loudness_lufs, 2),
            "macro_offsets": {k: round(v, 3) for k, v in self.offsets.items()},
        }


@dataclass
class SectionAnalysis:
    """Result of :func:`detect_sections`: tempo (BPM), beat times (s), boundary times (s,
    excluding 0 and the end), the sections, and the novelty curve (one value per beat)."""

    tempo_bpm: float
    beats_s: list[float]
    boundaries_s: list[float]
    sections: list[Section]
    novelty: list[float]

    def to_json(self) -> dict[str, Any]:
        return {
            "tempo_bpm": round(self.tempo_bpm, 2),
            "n_beats": len(self.beats_s),
            "boundaries_s": [round(b, 3) for b in self.boundaries_s],
            "sections": [s.to_json() for s in self.sections],
        }


# -- beat grid and features ----------------------------------------------------------------


def beat_grid(
    x: Tensor, tempo_bpm: float | None = None, onset: Tensor | None = None
) -> tuple[float, np.ndarray]:
    """Tempo (BPM) and beat positions in samples of ``x [1, 2, n]``: the grid at the tempo
    whose phase maximizes the mean onset strength on it. ``onset``: the song's
    :func:`mastering.features.onset_envelope` ``[1, frames]`` if already computed."""
    onset = onset_envelope(x) if onset is None else onset
    env = onset[0].clamp(min=0).cpu().numpy()  # frames of FRAME_HOP
    bpm = float(estimate_tempo(x)[0]) if tempo_bpm is None else float(tempo_bpm)
    period = 60.0 * SAMPLE_RATE / FRAME_HOP / bpm  # frames per beat
    n = env.size
    best, phase = -1.0, 0.0
    for p in np.arange(0.0, period, 1.0):
        idx = np.round(np.arange(p, n, period)).astype(int)
        idx = idx[idx < n]
        score = float(env[idx].mean()) if idx.size else 0.0
        if score > best:
            best, phase = score, p
    beats = np.arange(phase, n, period) * FRAME_HOP
    return bpm, beats[beats < x.shape[-1]]


def _chroma_matrix(n_fft: int) -> Tensor:
    f = torch.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE)
    valid = (f >= 60.0) & (f <= 5_000.0)
    pc = torch.round(12.0 * torch.log2(f.clamp(min=1.0) / 440.0)).long() % 12
    m = torch.zeros(12, f.numel())
    m[pc[valid], torch.nonzero(valid).view(-1)] = 1.0
    return m


def beat_features(x: Tensor, beats: np.ndarray, onset: Tensor | None = None) -> np.ndarray:
    """One feature vector per beat interval ``[n_beats - 1, d]`` of ``x [1, 2, n]`` (see the
    module docstring), mean-removed, scaled and group-weighted."""
    n_fft = 2 * FEATURE_HOP  # Hann at 50 % overlap: every sample weighs the same
    mono = x[0]
    ms = torch.stack([0.5 * (mono[0] + mono[1]), 0.5 * (mono[0] - mono[1])])
    win = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    spec = torch.stft(ms, n_fft, FEATURE_HOP, window=win, center=True, return_complex=True)
    power = spec.abs().square()  # [2, bins, frames]
    bands = band_matrix(n_fft, n_bands=24).to(power) @ power  # [2, 24, F]
    wide = torch.stack(
        [bands[:, i : i + 6].sum(1) for i in range(0, 24, 6)], dim=1
    )  # [2, 4, F] broad bands
    chroma = _chroma_matrix(n_fft).to(power) @ power[0]  # [12, F]
    onset = (onset_envelope(x) if onset is None else onset)[0]
    frames = np.round(beats / FEATURE_HOP).astype(int)
    onset_frames = np.round(beats / FRAME_HOP).astype(int)
    feats = []
    n_frames = power.shape[-1]
    for k, (a, b) in enumerate(itertools.pairwise(frames)):
        a, b = min(a, n_frames - 1), max(min(b, n_frames), min(a, n_frames - 1) + 1)
        mid = bands[0, :, a:b].mean(-1)
        level = 10.0 * torch.log10(mid.sum() + 1e-10)
        timbre = 10.0 * torch.log10(mid + 1e-10)
        c = chroma[:, a:b].mean(-1)
        c = c / c.sum().clamp(min=1e-10)
        width = 10.0 * torch.log10(
            (wide[1, :, a:b].mean(-1) + 1e-10) / (wide[0, :, a:b].mean(-1) + 1e-10)
        )
        oa = min(int(onset_frames[k]), onset.shape[-1] - 1)
        on = onset[oa : max(int(onset_frames[k + 1]), oa + 1)].mean().reshape(1)
        feats.append(torch.cat([timbre, c, width, level.reshape(1), on]))
    f = torch.stack(feats).double().cpu().numpy()
    f = f - f.mean(0)
    # Fixed scales (not the song's own spread, which would blow up the beat-to-beat noise of
    # a song without sections): a unit is 6 dB of a band level, a chroma shift of 1/3,
    # 3 dB of width or level, and the song's mean onset strength.
    scale = np.concatenate([np.full(24, 6.0), np.full(12, 1 / 3), np.full(4, 3.0), [3.0]])
    f[:, :41] /= scale
    f[:, 41] /= max(float(np.abs(onset.cpu().numpy()).mean()), 1e-6)
    for a, b, w in _GROUPS:
        f[:, a:b] *= w / math.sqrt(b - a)
    return f


def novelty_curve(feats: np.ndarray, half: int) -> np.ndarray:
    """Foote novelty of beat-feature rows ``[n, d]``: at row ``i`` (a boundary before row ``i``)
    the Gaussian-weighted mean distance across ``[i-half, i)`` x ``[i, i+half)`` minus the mean
    within each side. ``[n]``; 0 where a side is empty."""
    n = feats.shape[0]
    dist = np.sqrt(((feats[:, None, :] - feats[None, :, :]) ** 2).sum(-1) / 2.0)
    out = np.zeros(n)
    taper = np.exp(-0.5 * ((np.arange(half) + 0.5) / (0.5 * half)) ** 2)
    for i in range(1, n):
        past = np.arange(i - 1, max(-1, i - 1 - half), -1)
        fut = np.arange(i, min(n, i + half))
        if past.size < 2 or fut.size < 2:
            continue
        wp, wf = taper[: past.size], taper[: fut.size]
        cross = (wp[:, None] * wf[None, :] * dist[np.ix_(past, fut)]).sum() / (wp.sum() * wf.sum())
        wpp = wp[:, None] * wp[None, :]
        wff = wf[:, None] * wf[None, :]
        within_p = (wpp * dist[np.ix_(past, past)]).sum() / wpp.sum()
        within_f = (wff * dist[np.ix_(fut, fut)]).sum() / wff.sum()
        out[i] = cross - 0.5 * (within_p + within_f)
    return out


def _pick_peaks(nov: np.ndarray, min_gap: int, threshold: float) -> list[int]:
    """Indices of novelty peaks above ``threshold``, greedily by height, ``min_gap`` apart
    from each other and from both ends."""
    n = nov.size
    chosen: list[int] = []
    for i in np.argsort(-nov):
        if nov[i] < threshold:
            break
        if i < min_gap or n - i < min_gap:
            continue
        lo, hi = max(0, i - 1), min(n, i + 2)
        if nov[i] < nov[lo:hi].max():
            continue
        if all(abs(int(i) - c) >= min_gap for c in chosen):
            chosen.append(int(i))
    return sorted(chosen)


def detect_sections(
    audio: Tensor, policy: SectionPolicy | None = None, tempo_bpm: float | None = None
) -> SectionAnalysis:
    """Sections of one song ``audio [2, n]`` or ``[1, 2, n]`` at 48 kHz (see the module
    docstring). Songs shorter than two kernels give one section."""
    policy = (policy or SectionPolicy()).validate()
    x = audio.unsqueeze(0) if audio.dim() == 2 else audio
    if x.shape[0] != 1:
        raise InvalidParameterError("detect_sections takes one song")
    x = x.detach().float()
    n = x.shape[-1]
    onset = onset_envelope(x)
    bpm, beats = beat_grid(x, tempo_bpm, onset)
    boundaries: list[float] = []
    nov = np.zeros(max(0, beats.size - 1))
    if beats.size - 1 >= 2 * policy.kernel_beats:
        feats = beat_features(x, beats, onset)
        nov = novelty_curve(feats, policy.kernel_beats)
        threshold = max(policy.min_novelty, policy.relative_novelty * float(nov.max()))
        peaks = _pick_peaks(nov, policy.min_section_beats, threshold)
        boundaries = [float(beats[i]) for i in peaks]  # feature row i starts at beat i
    edges = [0.0, *boundaries, float(n)]
    loud = []
    for a, b in itertools.pairwise(edges):
        seg = x[..., int(a) : max(int(b), int(a) + 1)]
        loud.append(float(ungated_loudness(seg[0]).reshape(-1)[0]))
    top = max(loud)
    levels = [1 if top - v <= policy.high_db else (-1 if top - v > policy.low_db else 0)
              for v in loud]  # fmt: skip
    dur = np.diff(edges)
    mean_level = float(np.dot(levels, dur) / dur.sum())
    sections = []
    for k, (a, b) in enumerate(itertools.pairwise(edges)):
        lv = levels[k]
        label = {1: "chorus", 0: "verse", -1: "breakdown"}[lv]
        if len(levels) > 1 and lv < max(levels):
            if k == 0:
                label = "intro"
            elif k == len(levels) - 1:
                label = "outro"
        offsets = {m: float(v) * (lv - mean_level) for m, v in policy.offsets.items()}
        sections.append(Section(a / SAMPLE_RATE, b / SAMPLE_RATE, lv, label, loud[k], offsets))
    return SectionAnalysis(
        tempo_bpm=bpm,
        beats_s=[float(b) / SAMPLE_RATE for b in beats],
        boundaries_s=[b / SAMPLE_RATE for b in boundaries],
        sections=sections,
        novelty=[float(v) for v in nov],
    )


# -- time-varying conditioning -------------------------------------------------------------


def level_weights(
    analysis: SectionAnalysis, n_samples: int, policy: SectionPolicy | None = None
) -> tuple[list[int], Tensor]:
    """The distinct levels (sorted) and their crossfade weights at frame rate
    ``[K, frames]`` (frame ``f`` at sample ``f * FRAME_HOP``; frames cover ``n_samples``):
    raised-cosine transitions of ``crossfade_beats`` centred on each boundary, summing to 1."""
    policy = policy or SectionPolicy()
    levels = sorted({s.level for s in analysis.sections})
    nf = -(-n_samples // FRAME_HOP) + 1
    t = np.arange(nf) * FRAME_HOP / SAMPLE_RATE
    xfade = max(0.05, policy.crossfade_beats * 60.0 / analysis.tempo_bpm)

    def rise(boundary_s: float) -> np.ndarray:  # 0 before, 1 after, raised cosine between
        u = np.clip((t - (boundary_s - xfade / 2)) / xfade, 0.0, 1.0)
        return 0.5 - 0.5 * np.cos(np.pi * u)

    w = np.zeros((len(levels), nf))
    last = len(analysis.sections) - 1
    for i, sec in enumerate(analysis.sections):
        on = rise(sec.start_s) if i > 0 else np.ones(nf)
        off = rise(sec.end_s) if i < last else np.zeros(nf)
        w[levels.index(sec.level)] += on * (1.0 - off)
    return levels, torch.from_numpy(w).float()


def section_conditionings(
    cond: ConditioningBatch, analysis: SectionAnalysis, levels: Sequence[int]
) -> ConditioningBatch:
    """One conditioning per level ``[K]`` from the song's ``cond [1]``: its macros plus each
    level's offsets (:attr:`Section.offsets`)."""
    rows = []
    for lv in levels:
        sec = next(s for s in analysis.sections if s.level == lv)
        off = torch.zeros(len(MACROS), dtype=cond.macros.dtype, device=cond.macros.device)
        for name, v in sec.offsets.items():
            off[MACRO_INDEX[name]] = v
        rows.append(with_macros(cond, (cond.macros + off).clamp(-1.5, 1.5)))
    return ConditioningBatch.cat(rows)


def _frame_weights(w: Tensor, n_frames: int) -> Tensor:
    if w.shape[-1] >= n_frames:
        return w[:, :n_frames]
    return torch.nn.functional.pad(w, (0, n_frames - w.shape[-1]), mode="replicate")


def _merge(stage, params: Params, w: Tensor) -> tuple[Params, bool]:
    """Crossfade ``params`` (batch = levels) into one song's parameters when only time-varying
    ones differ. Returns ``(merged, True)``, or ``(duration-weighted mean, False)`` when a
    scalar parameter differs (the stage must then run once per level)."""
    frame_spec = {s.name for s in stage.specs if s.frames}
    share = w.mean(-1).to(next(iter(params.values())))  # [K] time share
    merged: Params = {}
    ok = True
    for name, p in params.items():
        same = bool(torch.allclose(p, p[:1].expand_as(p), atol=1e-6, rtol=1e-5))
        if same:
            merged[name] = p[:1]
        elif name in frame_spec and p.dim() == 3:
            wf = _frame_weights(w, p.shape[-1]).to(p).unsqueeze(1)  # [K, 1, F]
            merged[name] = (p * wf).sum(0, keepdim=True)
        else:
            ok = False
            shape = (-1,) + (1,) * (p.dim() - 1)
            merged[name] = (p * share.view(shape)).sum(0, keepdim=True)
    return merged, ok


def master_with_sections(
    chain: Chain,
    x: Tensor,
    conditioning,
    analysis: SectionAnalysis,
    policy: SectionPolicy | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> ChainOutput:
    """Master one song ``x [1, 2, n]`` with per-section conditioning (module docstring).

    ``conditioning``: a :class:`Conditioning`, or an encoded ``ConditioningBatch`` of one song
    (e.g. after reference matching). The output's ``info["sections"]`` holds the analysis and
    each level's parameters; ``params`` hold the crossfaded (time-varying) or
    duration-weighted (scalar, for the report) values."""
    if x.shape[0] != 1:
        raise InvalidParameterError("section-aware mastering takes one song at a time")
    state: ChainState = chain.begin(x, conditioning, overrides)
    levels, w = level_weights(analysis, state.audio.shape[-1], policy)
    per_level: dict[str, Any] = {}
    if len(levels) > 1:
        conds = section_conditionings(state.cond, analysis, levels)
        w = w.to(x.device)
        ws = frames_to_samples(w.unsqueeze(0), 0, state.audio.shape[-1])[0]  # [K, n]
        for name in chain.config.order:
            if name == "master_out":
                break
            state = _run_levels(chain, state, name, conds, w, ws, per_level)
    state = chain.run_stages(state, chain.config.order[len(state.done) :])
    out = chain.finish(state)
    out.info["sections"] = [{**analysis.to_json(), "levels": per_level}]
    return out


def _run_levels(chain, state, name, conds, w, ws, per_level) -> ChainState:
    stage = chain.stages[name]
    k = conds.macros.shape[0]
    y = state.audio
    yk = y.expand(k, -1, -1)
    p = stage.predict(yk, StageContext(cond=conds), state.overrides.get(name))
    merged, once = _merge(stage, p, w)
    state.params[name] = merged
    per_level[name] = {
        "mode": "crossfaded parameters" if once else "crossfaded renders",
        "differs": [n for n, v in p.items() if not torch.allclose(v, v[:1].expand_as(v))],
    }
    if name not in chain.config.bypass:
        if once:
            out = run_aligned(stage, y, merged)
        else:
            outs = run_aligned(stage, yk.contiguous(), p)  # [K, 2, n]
            out = (outs * ws.unsqueeze(1).to(outs)).sum(0, keepdim=True)
        y = chain._blend(y, out, chain.config.wet.get(name, 1.0))
        if hasattr(stage, "report"):
            state.info[name] = stage.report(merged)
    state.audio = y
    state.done = (*state.done, name)
    return state
