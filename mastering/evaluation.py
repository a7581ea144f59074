"""Scoring a master: measurements, six sub-scores (0-100) and one combined score (0-100).

Everything takes ``x [batch, 2, samples]`` float at 48 kHz and returns one value per song.
Pure PyTorch (no Ray); the learned part lives in :mod:`mastering.evaluation_model`.

Measurements (:class:`Measurements`, units in the field names):

* loudness: integrated loudness (LUFS), true peak (dBTP, 4x), PLR = true peak - integrated
  (dB), from :mod:`mastering.loudness`;
* micro-dynamics: the median over active 50 ms frames of the frame crest factor
  (peak / RMS of the channel mean, dB);
* spectrum: long-term mid spectrum on 40 log bands 30 Hz-18 kHz
  (:func:`mastering.features.mid_side_band_spectrum_db`, mean power per Hz, so pink noise
  falls 3 dB/octave); its tilt over 100 Hz-10 kHz (dB/octave,
  :func:`mastering.features.spectral_tilt_db_per_octave`); the RMS deviation (dB) of the
  level-normalized spectrum over 40 Hz-16 kHz from the *reference curve* (a straight line of
  the target tilt through its power-weighted mean); the mean excess (dB) of the 150-500 Hz
  bands over that curve ("mud");
* spectral contrast (dB): per 2048-point frame and per octave band 200 Hz-12.8 kHz, the mean
  of the loudest 20 % of bins minus the mean of the quietest 20 % (Jiang et al. 2002),
  averaged over bands and active frames. Distortion, noise and smearing fill the valleys;
* stereo: inter-channel correlation (:func:`mastering.dsp.stereo.correlation`), side/mid
  energy ratio (dB), mono fold-down loss ``-10 log10(1 + S/M)`` (dB, 0 = nothing lost,
  -3 dB = unrelated channels), side/mid ratio of the bands below 120 Hz (dB);
* artifacts: clipped samples (per mille of samples whose magnitude is within 0.1 dB of the
  peak and equal to their neighbour's: flat tops), pumping (Pearson correlation over 20 ms
  frames between the level of the > 4 kHz band and the < 150 Hz band, after removing their
  0.5 s moving averages; a mix ducked by its kick has a negative value), top-octave energy
  (power above 18 kHz relative to 2-18 kHz, dB; aliasing from undersampled nonlinearities
  and hard clipping fills it), DC offset (largest per-channel mean, dBFS).

Sub-scores, each 0-100 from piecewise-linear ramps ``ramp(value, bad, good)`` (0 at or beyond
``bad``, 100 at or beyond ``good``); the thresholds are the constants below. They were set
so that the untrained chain's masters of :func:`mastering.testsignals.music_like` songs score
near 100 and the degradations of :mod:`mastering.degradations` at medium severity lose points
(measured: ``python -m mastering.evaluation_model report``). The pumping and top-octave
measures are coarse: on that material the hi-hats coincide with the kicks (a pumping-free mix
reads +0.5..+0.8) and the hi-hats and exciter keep the top octave at -14..-17 dB, so only
gross pumping and gross HF hash are caught.

* **clarity** = 0.7 ramp(contrast, 20, 30 dB) + 0.3 ramp(mud, +6, +2 dB);
* **dynamics** = 0.6 ramp(PLR, 5, 9 dB) + 0.4 ramp(frame crest, 5, 9 dB);
* **balance** = 0.5 ramp(|tilt - target tilt|, 2.5, 0.5 dB/oct)
  + 0.5 ramp(curve deviation, 8, 4 dB); target tilt = -4.5 + 1.0 * the genre's brightness
  macro (dB/octave);
* **loudness** = min(ramp(|I - target|, 3, 0.5 LU), ramp(TP - ceiling, +1, +0.1 dB));
* **stereo** = 0.4 ramp(correlation, -0.2, 0.3) + 0.3 ramp(mono loss, -6, -2 dB)
  + 0.3 ramp(low side/mid, -3, -15 dB);
* **artifacts** = 0.5 min(c) + 0.5 mean(c) over c = ramp(clip, 2, 0.05 per mille),
  ramp(pumping, 0, 0.35), ramp(top octave, -6, -12 dB), ramp(DC, -30, -50 dBFS).

Combined: ``rule = 0.75 * weighted mean + 0.25 * min`` of the sub-scores (weights
:data:`WEIGHTS`), so one failing aspect cannot hide behind good ones. With a learned model,
``score = (1 - LEARNED_WEIGHT) * rule + LEARNED_WEIGHT * learned``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from mastering import features
from mastering.conditioning import GENRE_MACROS, MACRO_INDEX
from mastering.dsp.biquad import highpass_sos, lowpass_sos
from mastering.dsp.iir import sosfilt
from mastering.dsp.stereo import correlation, side_to_mid_ratio_db
from mastering.errors import InvalidAudioError, InvalidParameterError
from mastering.loudness import LoudnessReport, measure_batch

SAMPLE_RATE = 48_000
_TINY = 1e-12

#: Sub-score names, in report order.
SUB_SCORES: tuple[str, ...] = (
    "clarity",
    "dynamics",
    "balance",
    "loudness",
    "stereo",
    "artifacts",
)
#: Weights of the sub-scores in the combined rule score (sum 1).
WEIGHTS: dict[str, float] = {
    "clarity": 0.15,
    "dynamics": 0.2,
    "balance": 0.2,
    "loudness": 0.15,
    "stereo": 0.15,
    "artifacts": 0.15,
}
#: Share of the learned model in the combined score when one is loaded.
LEARNED_WEIGHT = 0.3
#: Score below which a master is considered to need another attempt (the retry default).
PASS_SCORE = 70.0

#: Reference-curve tilt (dB/octave of mean power per Hz) for a neutral genre, and its change
#: per unit of the genre's brightness macro.
BASE_TILT_DB_OCT = -4.5
TILT_PER_BRIGHTNESS = 1.0

# Ramp thresholds: (bad, good).
CONTRAST_DB = (20.0, 30.0)
MUD_DB = (6.0, 2.0)
PLR_DB = (5.0, 9.0)
FRAME_CREST_DB = (5.0, 9.0)
TILT_ERROR_DB_OCT = (2.5, 0.5)
CURVE_DEVIATION_DB = (8.0, 4.0)
LOUDNESS_ERROR_LU = (3.0, 0.5)
TRUE_PEAK_OVER_DB = (1.0, 0.1)
CORRELATION = (-0.2, 0.3)
MONO_LOSS_DB = (-6.0, -2.0)
LOW_SIDE_TO_MID_DB = (-3.0, -15.0)
CLIP_PERMILLE = (2.0, 0.05)
PUMPING = (0.0, 0.35)
TOP_OCTAVE_DB = (-6.0, -12.0)
DC_DBFS = (-30.0, -50.0)

#: Frame lengths, samples: crest (50 ms), pumping (20 ms).
CREST_FRAME = 2400
PUMP_FRAME = 960


def ramp(value: Tensor, bad: float, good: float) -> Tensor:
    """0 at ``bad`` (and beyond), 100 at ``good`` (and beyond), linear between. NaN -> 50."""
    s = 100.0 * ((value - bad) / (good - bad)).clamp(0.0, 1.0)
    return torch.nan_to_num(s, nan=50.0)


@dataclass
class Measurements:
    """Per-song measurements, each ``[batch]`` float32 (units in the names; see the module
    docstring for definitions)."""

    integrated_lufs: Tensor
    true_peak_dbtp: Tensor
    plr_db: Tensor
    frame_crest_db: Tensor
    tilt_db_oct: Tensor
    curve_deviation_db: Tensor
    mud_db: Tensor
    contrast_db: Tensor
    correlation: Tensor
    side_to_mid_db: Tensor
    mono_loss_db: Tensor
    low_side_to_mid_db: Tensor
    clip_permille: Tensor
    pumping: Tensor
    top_octave_db: Tensor
    dc_dbfs: Tensor

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def matrix(self) -> Tensor:
        """``[batch, len(names())]`` in :meth:`names` order."""
        return torch.stack([getattr(self, n).float() for n in self.names()], -1)

    def item(self, i: int) -> dict[str, float]:
        return {n: round(float(getattr(self, n)[i]), 4) for n in self.names()}


def target_tilt(genres: Sequence[str | None] | None, batch: int) -> Tensor:
    """Reference-curve tilt per song, dB/octave: ``[batch]``."""
    genres = list(genres) if genres is not None else [None] * batch
    if len(genres) != batch:
        raise InvalidParameterError(f"{len(genres)} genres for {batch} songs")
    out = []
    for g in genres:
        g = g or "unknown"
        if g not in GENRE_MACROS:
            raise InvalidParameterError(f"unknown genre {g!r}; valid: {', '.join(GENRE_MACROS)}")
        out.append(
            BASE_TILT_DB_OCT + TILT_PER_BRIGHTNESS * GENRE_MACROS[g][MACRO_INDEX["brightness"]]
        )
    return torch.tensor(out, dtype=torch.float32)


def _check(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[1] != 2:
        shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InvalidAudioError(f"expected audio shaped [batch, 2, samples], got {shape}")
    if x.shape[-1] < SAMPLE_RATE // 2:
        raise InvalidAudioError(f"need at least 0.5 s of audio to score, got {x.shape[-1]} samples")
    if not torch.isfinite(x).all():
        raise InvalidAudioError("audio contains NaN or Inf samples")
    return x.float()


def _active(level_db: Tensor, range_db: float = 30.0) -> Tensor:
    """Frames within ``range_db`` of the song's loudest frame and above -70 dBFS."""
    return (level_db > level_db.amax(-1, keepdim=True) - range_db) & (level_db > -70.0)


def _masked_mean(v: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(v.dtype)
    return (v * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def _frame_crest_db(x: Tensor) -> Tensor:
    m = x.mean(1)
    m = m[..., : m.shape[-1] // CREST_FRAME * CREST_FRAME].reshape(m.shape[0], -1, CREST_FRAME)
    rms = 10.0 * torch.log10(m.square().mean(-1) + _TINY)
    peak = 20.0 * torch.log10(m.abs().amax(-1) + _TINY)
    crest = peak - rms
    act = _active(rms)
    big = torch.full_like(crest, float("nan"))
    return torch.where(act, crest, big).nanmedian(-1).values


def _spectral_measures(x: Tensor, tilt_target: Tensor) -> dict[str, Tensor]:
    spec = features.mid_side_band_spectrum_db(x)  # [B, 2, bands]
    mid = features.normalized_tilt_db(spec[:, 0])
    centers = features.band_centers().to(x.device)
    octv = (centers / 1000.0).log2().float()
    sel = (centers >= 40.0) & (centers <= 16_000.0)
    line = tilt_target.to(x.device).view(-1, 1) * octv.view(1, -1)
    diff = (mid - line)[:, sel]
    diff = diff - diff.mean(-1, keepdim=True)  # best offset of the reference line
    deviation = diff.square().mean(-1).sqrt()
    mud_sel = (centers[sel] >= 150.0) & (centers[sel] <= 500.0)
    mud = diff[:, mud_sel].mean(-1)
    low = centers < 120.0
    p = torch.pow(10.0, spec[..., low] / 10.0).sum(-1)  # [B, 2]
    low_smr = 10.0 * torch.log10((p[:, 1] + _TINY) / (p[:, 0] + _TINY))
    return {
        "tilt_db_oct": features.spectral_tilt_db_per_octave(x),
        "curve_deviation_db": deviation,
        "mud_db": mud,
        "low_side_to_mid_db": low_smr,
    }


def _contrast_and_top_octave(x: Tensor) -> tuple[Tensor, Tensor]:
    n_fft = 2048
    p = features.stft_power(x.mean(1, keepdim=True), n_fft=n_fft, hop=n_fft // 2)[:, 0]
    f = torch.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE).to(x.device)
    frame_db = 10.0 * torch.log10(p.sum(1) + _TINY)  # [B, frames]
    act = _active(frame_db)
    contrasts = []
    lo = 200.0
    while lo < 12_800.0:
        band = (f >= lo) & (f < 2 * lo)
        db = 10.0 * torch.log10(p[:, band] + _TINY).sort(1).values  # [B, bins, frames]
        k = max(1, int(0.2 * db.shape[1]))
        contrasts.append(db[:, -k:].mean(1) - db[:, :k].mean(1))
        lo *= 2
    contrast = _masked_mean(torch.stack(contrasts).mean(0), act)
    total = p.mean(-1)  # [B, bins]
    top = total[:, f >= 18_000.0].sum(-1)
    body = total[:, (f >= 2_000.0) & (f < 18_000.0)].sum(-1)
    return contrast, 10.0 * torch.log10((top + _TINY) / (body + _TINY))


def _clip_permille(x: Tensor) -> Tensor:
    a = x.abs()
    peak = a.amax(-1, keepdim=True)
    near = a >= peak * 10.0 ** (-0.1 / 20.0)
    flat = (x[..., 1:] - x[..., :-1]).abs() <= 1e-6 * peak.clamp(min=_TINY)
    clipped = near[..., 1:] & flat & (peak > 1e-4)
    return 1000.0 * clipped.float().mean((-1, -2))


def _moving_average(v: Tensor, n: int) -> Tensor:
    k = torch.ones(1, 1, n, device=v.device, dtype=v.dtype) / n
    padded = torch.nn.functional.pad(v.unsqueeze(1), (n // 2, n - 1 - n // 2), mode="replicate")
    return torch.nn.functional.conv1d(padded, k)[:, 0]


def _pumping(x: Tensor) -> Tensor:
    m = x.mean(1, keepdim=True)
    high = sosfilt(m, highpass_sos(4000.0, 0.7071, SAMPLE_RATE).view(1, 6).to(x))[:, 0]
    low = sosfilt(m, lowpass_sos(150.0, 0.7071, SAMPLE_RATE).view(1, 6).to(x))[:, 0]

    def level(s: Tensor) -> Tensor:
        s = s[..., : s.shape[-1] // PUMP_FRAME * PUMP_FRAME].reshape(s.shape[0], -1, PUMP_FRAME)
        return 10.0 * torch.log10(s.square().mean(-1) + _TINY)

    lh, ll = level(high), level(low)
    act = _active(ll) & _active(lh, 40.0)
    n = 25  # 0.5 s of 20 ms frames
    dh, dl = lh - _moving_average(lh, n), ll - _moving_average(ll, n)
    dh = dh - _masked_mean(dh, act).unsqueeze(-1)
    dl = dl - _masked_mean(dl, act).unsqueeze(-1)
    cov = _masked_mean(dh * dl, act)
    var = _masked_mean(dh.square(), act) * _masked_mean(dl.square(), act)
    return cov / var.clamp(min=_TINY).sqrt()


@torch.no_grad()
def measure(
    x: Tensor,
    genres: Sequence[str | None] | None = None,
    reports: Sequence[LoudnessReport] | None = None,
) -> Measurements:
    """All the measurements of ``x [batch, 2, samples]`` (48 kHz, at least 0.5 s).

    Args:
        genres: one per song (``None``: neutral); sets the reference-curve tilt.
        reports: the :func:`mastering.loudness.measure_batch` of ``x`` when the caller has
            measured it already (not measured again).

    Raises:
        InvalidAudioError: mis-shaped, too short or non-finite audio.
    """
    x = _check(x)
    tilt_target = target_tilt(genres, x.shape[0])
    reports = measure_batch(x) if reports is None else reports
    lufs = torch.tensor([r.integrated_lufs for r in reports], dtype=torch.float32)
    tp = torch.tensor([r.true_peak_dbtp for r in reports], dtype=torch.float32)
    spectral = _spectral_measures(x, tilt_target)
    contrast, top = _contrast_and_top_octave(x)
    smr = side_to_mid_ratio_db(x)
    dc = x.mean(-1).abs().amax(-1)
    cpu = {
        "integrated_lufs": lufs,
        "true_peak_dbtp": tp,
        "plr_db": tp - lufs,
        "frame_crest_db": _frame_crest_db(x),
        **spectral,
        "contrast_db": contrast,
        "correlation": correlation(x),
        "side_to_mid_db": smr,
        "mono_loss_db": -10.0 * torch.log10(1.0 + torch.pow(10.0, smr / 10.0)),
        "clip_permille": _clip_permille(x),
        "pumping": _pumping(x),
        "top_octave_db": top,
        "dc_dbfs": 20.0 * torch.log10(dc + _TINY),
    }
    return Measurements(**{k: v.detach().float().cpu() for k, v in cpu.items()})


def sub_scores(
    m: Measurements, target_lufs: float = -14.0, ceiling_dbtp: float = -1.0, genres=None
) -> dict[str, Tensor]:
    """The six sub-scores (0-100, ``[batch]`` each) of measurements ``m`` (formulas in the
    module docstring). Non-finite loudness (silence) scores 0 for loudness and dynamics."""
    tilt_target = target_tilt(genres, m.integrated_lufs.shape[0])
    finite = torch.isfinite(m.integrated_lufs)
    plr = torch.where(finite, m.plr_db, torch.zeros_like(m.plr_db))
    lufs_err = torch.where(
        finite, (m.integrated_lufs - target_lufs).abs(), torch.full_like(plr, 99)
    )
    artifacts = torch.stack(
        [
            ramp(m.clip_permille, *CLIP_PERMILLE),
            ramp(m.pumping, *PUMPING),
            ramp(m.top_octave_db, *TOP_OCTAVE_DB),
            ramp(m.dc_dbfs, *DC_DBFS),
        ]
    )
    return {
        "clarity": 0.7 * ramp(m.contrast_db, *CONTRAST_DB) + 0.3 * ramp(m.mud_db, *MUD_DB),
        "dynamics": 0.6 * ramp(plr, *PLR_DB) + 0.4 * ramp(m.frame_crest_db, *FRAME_CREST_DB),
        "balance": 0.5 * ramp((m.tilt_db_oct - tilt_target).abs(), *TILT_ERROR_DB_OCT)
        + 0.5 * ramp(m.curve_deviation_db, *CURVE_DEVIATION_DB),
        "loudness": torch.minimum(
            ramp(lufs_err, *LOUDNESS_ERROR_LU),
            ramp(m.true_peak_dbtp - ceiling_dbtp, *TRUE_PEAK_OVER_DB),
        ),
        "stereo": 0.4 * ramp(m.correlation, *CORRELATION)
        + 0.3 * ramp(m.mono_loss_db, *MONO_LOSS_DB)
        + 0.3 * ramp(m.low_side_to_mid_db, *LOW_SIDE_TO_MID_DB),
        "artifacts": 0.5 * artifacts.amin(0) + 0.5 * artifacts.mean(0),
    }


def combine(subs: dict[str, Tensor]) -> Tensor:
    """Rule score 0-100: ``0.75 * sum(WEIGHTS[k] * sub[k]) + 0.25 * min_k sub[k]``."""
    stacked = torch.stack([subs[k] for k in SUB_SCORES])
    w = torch.tensor([WEIGHTS[k] for k in SUB_SCORES]).view(-1, 1)
    return 0.75 * (w * stacked).sum(0) + 0.25 * stacked.amin(0)


@dataclass
class Evaluation:
    """Scores of a batch: ``score``, ``rule`` and ``learned`` (``None`` without a model) are
    ``[batch]`` 0-100; ``sub_scores`` name -> ``[batch]``."""

    score: Tensor
    rule: Tensor
    learned: Tensor | None
    sub_scores: dict[str, Tensor]
    measurements: Measurements

    def item(self, i: int) -> dict[str, Any]:
        """JSON-ready scores of song ``i``."""
        return {
            "score": round(float(self.score[i]), 2),
            "rule": round(float(self.rule[i]), 2),
            "learned": None if self.learned is None else round(float(self.learned[i]), 2),
            "sub_scores": {k: round(float(v[i]), 2) for k, v in self.sub_scores.items()},
            "measurements": self.measurements.item(i),
        }


class Evaluator:
    """Scores masters: ``Evaluator()(x [batch, 2, samples], genres)`` -> :class:`Evaluation`.

    Args:
        target_lufs, ceiling_dbtp: what the loudness sub-score checks against (LUFS, dBTP).
        model: a :class:`mastering.evaluation_model.QualityModel` (``"default"``: the shipped
            weights when present; ``None``: rule score only).
    """

    def __init__(self, target_lufs: float = -14.0, ceiling_dbtp: float = -1.0, model="default"):
        self.target_lufs = target_lufs
        self.ceiling_dbtp = ceiling_dbtp
        if model == "default":
            from mastering.evaluation_model import QualityModel

            model = QualityModel.pretrained()
        self.model = model

    def __call__(
        self,
        x: Tensor,
        genres: Sequence[str | None] | None = None,
        *,
        target_lufs: float | None = None,
        ceiling_dbtp: float | None = None,
        reports: Sequence[LoudnessReport] | None = None,
    ) -> Evaluation:
        """Score ``x [batch, 2, samples]``; ``genres`` one per song (``None``: neutral);
        ``target_lufs`` / ``ceiling_dbtp`` replace the evaluator's for this call;
        ``reports``: ``x``'s :func:`mastering.loudness.measure_batch`, if already measured."""
        m = measure(x, genres, reports)
        lufs = self.target_lufs if target_lufs is None else target_lufs
        ceiling = self.ceiling_dbtp if ceiling_dbtp is None else ceiling_dbtp
        subs = sub_scores(m, lufs, ceiling, genres)
        rule = combine(subs)
        learned = None if self.model is None else self.model.score(m)
        score = rule if learned is None else (1 - LEARNED_WEIGHT) * rule + LEARNED_WEIGHT * learned
        return Evaluation(score=score, rule=rule, learned=learned, sub_scores=subs, measurements=m)
