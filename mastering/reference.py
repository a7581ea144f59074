"""Reference-track features and the reference encoder ("master it like this track").

A reference master is described by level-independent, length-independent features:

* ``mid_db`` ``[40]``: long-term mid-channel spectrum shape on the 40 log bands of
  :func:`mastering.features.band_centers` (dB, power-weighted mean removed, smoothed over
  ~2/3 octave with :func:`mastering.stages.eq.smooth_bands`);
* ``side_db`` ``[40]``: side minus mid per band (dB, clamped to -40..20, smoothed);
* ``width_db`` ``[4]`` and ``correlation`` ``[4]``: side/mid energy ratio (dB) and L/R
  correlation in the imager's bands (< 120 Hz, 120 Hz-1 kHz, 1-5 kHz, > 5 kHz);
* ``crest_db``: sample peak over the RMS of the active 10 ms frames (dB; the limiter's
  density measure, :func:`mastering.stages.limiter.density_features`);
* ``spread_db``: 95th minus 50th percentile of the active 10 ms frame RMS (dB);
* ``plr_db``: sample peak minus ungated K-weighted loudness (dB; differentiable PLR);
* and, measured once with the BS.1770 meter and reported: ``loudness_lufs`` (the
  reference's own loudness, never used to shape the master), ``lra_lu``, ``true_peak_dbtp``.

The reference is read at 48 kHz (:func:`mastering.io.read_audio` resamples; in memory,
:func:`reference_features` resamples with soxr) and normalized to :data:`ANALYSIS_LUFS`
before any feature is taken, so its sample rate, length and level never change the result
(matchering's failure mode: a 48 kHz reference speeding up the output cannot happen here,
because the reference never touches the song's audio path, only its conditioning).

:class:`ReferenceEncoder` maps the features (and the song's own, for the parts that depend
on where the song starts from) into the conditioning space the controllers read: it sets
the ``brightness``, ``warmth``, ``mids``, ``width``, ``glue`` and ``drive`` macros by
inverting the stage priors analytically (EQ target balance, imager width target, compressor
gain-reduction rule, limiter crest target), plus a zero-initialized learned correction.
:mod:`mastering.matching` refines the result per song by gradient steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mastering import SAMPLE_RATE
from mastering.conditioning import MACRO_INDEX, MACROS, RULE_BREAKS, ConditioningBatch
from mastering.errors import InvalidAudioError, InvalidParameterError
from mastering.features import band_centers, mid_side_band_spectrum_db, normalized_tilt_db
from mastering.losses import band_image, k_loudness
from mastering.loudness import measure_batch
from mastering.stages import eq, imager, limiter

#: Loudness every reference (and every analysed master) is normalized to before analysis, LUFS.
ANALYSIS_LUFS = -14.0
#: Shortest reference accepted, s (loudness range needs 3 s windows).
MIN_REFERENCE_S = 3.0
#: Bands of the width features: the imager's feature bands (Hz).
WIDTH_EDGES_HZ: tuple[float, ...] = imager.FEATURE_EDGES_HZ
#: Range of analysis bands the spectrum distance and the EQ inversion use, Hz.
SPECTRUM_RANGE_HZ = (40.0, 16_000.0)
#: Macros the reference sets (the others stay as the user's conditioning has them).
REFERENCE_MACROS: tuple[str, ...] = ("brightness", "warmth", "mids", "width", "glue", "drive")
#: Feature keys of :func:`measure_features` (all ``[batch, ...]`` tensors).
FEATURE_KEYS = ("mid_db", "side_db", "width_db", "correlation", "crest_db", "spread_db", "plr_db")


def _spectrum_mask(device: torch.device | str = "cpu") -> Tensor:
    f = band_centers()
    lo, hi = SPECTRUM_RANGE_HZ
    return ((f >= lo) & (f <= hi)).to(device)


def measure_features(x: Tensor) -> dict[str, Tensor]:
    """Differentiable reference features of ``x [batch, 2, samples]`` (48 kHz), each
    ``[batch, ...]`` (see the module docstring for keys, units and shapes). Level-independent
    except through clipping; call it on loudness-normalized audio for exact invariance."""
    spec = mid_side_band_spectrum_db(x)  # [b, 2, 40]
    mid = eq.smooth_bands(normalized_tilt_db(spec[:, 0]))
    side = eq.smooth_bands((spec[:, 1] - spec[:, 0]).clamp(-40.0, 20.0))
    corr, ratio = band_image(x, WIDTH_EDGES_HZ)
    dens = limiter.density_features(x)  # peak, rms, crest, std, p95 - p50
    plr = dens[:, 0] - k_loudness(x)
    return {
        "mid_db": mid,
        "side_db": side,
        "width_db": ratio,
        "correlation": corr,
        "crest_db": dens[:, 2],
        "spread_db": dens[:, 4],
        "plr_db": plr,
    }


@dataclass
class ReferenceFeatures:
    """Features of one reference master (tensors without a batch dimension; see the module
    docstring). ``source_rate`` (Hz) and ``duration_s`` describe the file, for the report."""

    mid_db: Tensor
    side_db: Tensor
    width_db: Tensor
    correlation: Tensor
    crest_db: Tensor
    spread_db: Tensor
    plr_db: Tensor
    loudness_lufs: float
    lra_lu: float | None
    true_peak_dbtp: float
    source_rate: int
    duration_s: float
    name: str = "reference"

    def batch(self, n: int = 1, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """The differentiable features as a batch of ``n`` identical rows (for distances)."""
        return {k: getattr(self, k).to(device).unsqueeze(0).expand(n, *getattr(self, k).shape)
                for k in FEATURE_KEYS}  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """Summary for reports: scalars rounded, spectra as lists (dB)."""

        def r(v: Tensor | float) -> Any:
            if isinstance(v, Tensor):
                v = v.detach().cpu().reshape(-1)
                vals = [round(float(e), 3) for e in v]
                return vals[0] if len(vals) == 1 else vals
            return None if v is None else round(float(v), 3)

        return {
            "name": self.name,
            "source_rate": self.source_rate,
            "duration_s": r(self.duration_s),
            "loudness_lufs": r(self.loudness_lufs),
            "lra_lu": r(self.lra_lu),
            "true_peak_dbtp": r(self.true_peak_dbtp),
            "crest_db": r(self.crest_db),
            "plr_db": r(self.plr_db),
            "width_db": r(self.width_db),
            "correlation": r(self.correlation),
            "spectral_tilt_db_oct": r(_tilt(self.mid_db)),
        }


def _tilt(mid_db: Tensor) -> Tensor:
    """Least-squares slope (dB/octave) of a band shape over 100 Hz-10 kHz."""
    f = band_centers()
    sel = (f > 100) & (f < 10_000)
    o = f.log2()[sel].to(mid_db.dtype)
    o = o - o.mean()
    s = mid_db[..., sel.to(mid_db.device)]
    return ((s - s.mean(-1, keepdim=True)) @ o.to(mid_db.device)) / o.square().sum()


def normalize_loudness(x: Tensor, lufs: float = ANALYSIS_LUFS, name: str = "audio") -> Tensor:
    """``x [batch, 2, n]`` scaled so each item's integrated loudness is ``lufs``.

    Raises :class:`InvalidAudioError` (naming ``name``) for silent items."""
    reports = measure_batch(x.detach())
    gains = []
    for rep in reports:
        if not np.isfinite(rep.integrated_lufs):
            raise InvalidAudioError("silent (no loudness above the -70 LUFS gate)", name)
        gains.append(10.0 ** ((lufs - rep.integrated_lufs) / 20.0))
    return x * torch.tensor(gains, device=x.device, dtype=x.dtype).view(-1, 1, 1)


def reference_features(
    audio: Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE, name: str = "reference"
) -> ReferenceFeatures:
    """Features of a reference master ``audio [2, samples]`` (or ``[1, 2, samples]``) at
    ``sample_rate`` Hz (resampled to 48 kHz with soxr first).

    Raises:
        InvalidAudioError: not stereo-shaped, NaN/Inf, shorter than :data:`MIN_REFERENCE_S`
            or silent (the message names ``name``).
    """
    x = torch.as_tensor(audio, dtype=torch.float32)
    if x.dim() == 3 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 2 or x.shape[0] not in (1, 2):
        raise InvalidAudioError(f"expected [2, samples] audio, got {list(x.shape)}", name)
    if not torch.isfinite(x).all():
        raise InvalidAudioError("contains NaN or Inf samples", name)
    x = x.expand(2, -1) if x.shape[0] == 1 else x
    if int(sample_rate) != SAMPLE_RATE:
        import soxr

        y = soxr.resample(x.T.contiguous().numpy().astype(np.float64), sample_rate, SAMPLE_RATE)
        x = torch.from_numpy(np.ascontiguousarray(y.T)).float()
    duration = x.shape[-1] / SAMPLE_RATE
    if duration < MIN_REFERENCE_S:
        raise InvalidAudioError(
            f"reference is {duration:.2f} s long; at least {MIN_REFERENCE_S:.0f} s are needed", name
        )
    x = x.unsqueeze(0)
    meter = measure_batch(x)[0]
    x = normalize_loudness(x, ANALYSIS_LUFS, name)
    with torch.no_grad():
        f = {k: v[0] for k, v in measure_features(x).items()}
    lra = meter.lra_lu if np.isfinite(meter.lra_lu) else None
    return ReferenceFeatures(
        **f,
        loudness_lufs=meter.integrated_lufs,
        lra_lu=lra,
        true_peak_dbtp=meter.true_peak_dbtp,
        source_rate=int(sample_rate),
        duration_s=duration,
        name=name,
    )


def load_reference(path: str | Path) -> ReferenceFeatures:
    """Read a reference file (any supported format and rate, via :func:`mastering.io.read_audio`)
    and return its features. Errors name the file."""
    from mastering.io import read_audio

    audio, info = read_audio(path)
    feats = reference_features(audio, SAMPLE_RATE, name=str(path))
    feats.source_rate = info.sample_rate
    return feats


# -- distance --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistanceWeights:
    """Weights of :func:`feature_distance` terms (each term is in dB, or correlation x 10)."""

    spectrum: float = 1.0
    side: float = 0.5
    width: float = 1.0
    correlation: float = 0.5
    dynamics: float = 1.0


def distance_terms(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Per-term distances ``[batch]`` between two feature batches (:func:`measure_features`):

    * ``spectrum``: RMS difference of the mid shapes over :data:`SPECTRUM_RANGE_HZ`, dB;
    * ``side``: RMS difference of the side-minus-mid shapes over the same bands, dB;
    * ``width``: mean absolute difference of the side/mid ratios in the 3 bands above the mono
      crossover, dB;
    * ``correlation``: mean absolute difference of the band correlations, x 10;
    * ``dynamics``: mean of the absolute crest, spread and PLR differences, dB.
    """
    mask = _spectrum_mask(a["mid_db"].device)
    dm = a["mid_db"] - b["mid_db"]
    dm = dm - dm[:, mask].mean(-1, keepdim=True)  # shapes only: a level offset does not count
    ds = a["side_db"] - b["side_db"]
    dyn = torch.stack(
        [(a[k] - b[k]).abs() for k in ("crest_db", "spread_db", "plr_db")], dim=-1
    ).mean(-1)
    return {
        "spectrum": dm[:, mask].square().mean(-1).add(1e-9).sqrt(),
        "side": ds[:, mask].square().mean(-1).add(1e-9).sqrt(),
        "width": (a["width_db"] - b["width_db"])[:, 1:].abs().mean(-1),
        "correlation": 10.0 * (a["correlation"] - b["correlation"]).abs().mean(-1),
        "dynamics": dyn,
    }


def feature_distance(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], weights: DistanceWeights | None = None
) -> Tensor:
    """Weighted sum of :func:`distance_terms`: ``[batch]``, 0 for identical features."""
    w = weights or DistanceWeights()
    terms = distance_terms(a, b)
    return sum(getattr(w, k) * v for k, v in terms.items())


# -- conditioning ------------------------------------------------------------------------------


def with_macros(cond: ConditioningBatch, macros: Tensor) -> ConditioningBatch:
    """``cond`` with its macros replaced by ``macros [batch, len(MACROS)]``, both where the
    priors read them (``cond.macros``) and in the controllers' vector (its macro columns,
    which follow the genre embedding: ``[embedding, macros, tempo/energy/vocal, flags]``)."""
    n = len(MACROS)
    start = cond.vector.shape[-1] - n - 3 - len(RULE_BREAKS)
    m = macros.to(cond.vector.dtype)
    vector = torch.cat([cond.vector[:, :start], m, cond.vector[:, start + n :]], dim=-1)
    return replace(cond, macros=m, vector=vector)


def _eq_basis() -> tuple[Tensor, Tensor]:
    """EQ target-balance responses to a unit of ``brightness``, ``warmth`` and ``mids``:
    ``[3, 40]`` dB, and the zero-macro target (the reference balance) ``[40]``."""
    f = band_centers().float()
    names = ("brightness", "warmth", "mids")
    m = torch.zeros(len(names) + 1, len(MACROS))
    for i, name in enumerate(names):
        m[i + 1, MACRO_INDEX[name]] = 1.0
    z = torch.zeros(m.shape[0])
    cond = ConditioningBatch(
        macros=m,
        vector=torch.zeros(m.shape[0], 1),
        genre=z.long(),
        tempo_bpm=z + 120.0,
        energy=z,
        vocal_ratio=z,
        flags=torch.zeros(m.shape[0], len(RULE_BREAKS)),
    )
    t = eq.target_balance_db(f, cond, vocal_tuck=False)
    return t[1:] - t[:1], t[0]


class ReferenceEncoder(nn.Module):
    """Reference features (+ the song's own) -> the conditioning the controllers read.

    Analytic part (inverting the priors; each result clamped to -1.5..1.5):

    * ``brightness``, ``warmth``, ``mids``: ridge least squares so that the EQ prior's output
      shape ``(1 - S) song + S reference_balance + style(macros)`` (``S`` = ``eq.STRENGTH``)
      equals the reference's mid shape over :data:`SPECTRUM_RANGE_HZ`;
    * ``width``: the imager target per band that its prior (``imager.STRENGTH`` of the way)
      turns into the reference's side/mid ratio, ``(target - base) / TARGET_PER_WIDTH_DB``,
      averaged over the three bands;
    * ``glue``: the compressor's loud-frame reduction ``GR95 = 3 (glue + 1)`` dB set to the
      song's minus the reference's ``spread_db``;
    * ``drive``: the limiter's crest target ``12 - 4 drive`` dB set to the reference's crest.

    Learned part: an MLP over both feature sets with a zero-initialized output layer, adding
    offsets to the six macros (so the untrained encoder is exactly the analytic one).

    ``strength`` (0..1) blends the user's macros (0) and the reference's (1).
    """

    def __init__(self, hidden: int = 64):
        super().__init__()
        basis, zero = _eq_basis()
        self.register_buffer("eq_basis", basis, persistent=False)
        self.register_buffer("eq_reference", normalized_tilt_db(zero), persistent=False)
        n_in = 2 * (40 + 40 + 4 + 4 + 3)
        self.correction = nn.Sequential(
            nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, len(REFERENCE_MACROS))
        )
        nn.init.zeros_(self.correction[-1].weight)
        nn.init.zeros_(self.correction[-1].bias)

    @staticmethod
    def _flat(f: Mapping[str, Tensor]) -> Tensor:
        return torch.cat(
            [
                f["mid_db"] / 10.0,
                f["side_db"] / 20.0,
                f["width_db"] / 20.0,
                f["correlation"],
                torch.stack([f["crest_db"], f["spread_db"], f["plr_db"]], -1) / 20.0,
            ],
            dim=-1,
        )

    def reference_macros(self, ref: Mapping[str, Tensor], song: Mapping[str, Tensor]) -> Tensor:
        """The six :data:`REFERENCE_MACROS` ``[batch, 6]`` for reference/song feature batches."""
        mask = _spectrum_mask(ref["mid_db"].device)
        basis = self.eq_basis.to(ref["mid_db"])[:, mask]  # [3, K]
        s = eq.STRENGTH
        need = ref["mid_db"] - (1 - s) * song["mid_db"] - s * self.eq_reference.to(ref["mid_db"])
        need = need[:, mask]
        need = need - need.mean(-1, keepdim=True)
        basis = basis - basis.mean(-1, keepdim=True)
        gram = basis @ basis.T + 1.0 * torch.eye(3, device=basis.device, dtype=basis.dtype)
        tone = torch.linalg.solve(gram, basis @ need.T).T  # [b, 3]

        base = torch.tensor(imager.TARGET_BASE_DB, device=basis.device, dtype=basis.dtype)
        meas = song["width_db"][:, 1:]
        target = meas + (ref["width_db"][:, 1:] - meas) / imager.STRENGTH
        width = ((target - base) / imager.TARGET_PER_WIDTH_DB).mean(-1)
        glue = (song["spread_db"] - ref["spread_db"]) / 3.0 - 1.0
        drive = (limiter.NEUTRAL_CREST_DB - ref["crest_db"]) / limiter.CREST_PER_DRIVE_DB
        analytic = torch.cat([tone, torch.stack([width, glue, drive], -1)], dim=-1)
        delta = self.correction(torch.cat([self._flat(ref), self._flat(song)], dim=-1))
        return (analytic + delta).clamp(-1.5, 1.5)

    def forward(
        self,
        cond: ConditioningBatch,
        ref: Mapping[str, Tensor],
        song: Mapping[str, Tensor],
        strength: float = 1.0,
    ) -> ConditioningBatch:
        """``cond`` (the song's encoded conditioning) with the reference's macros blended in."""
        if not 0.0 <= strength <= 1.0:
            raise InvalidParameterError(f"reference strength must be within 0..1, got {strength}")
        rm = self.reference_macros(ref, song).to(cond.macros)
        idx = torch.tensor([MACRO_INDEX[k] for k in REFERENCE_MACROS], device=rm.device)
        macros = cond.macros.clone()
        macros[:, idx] = (1.0 - strength) * macros[:, idx] + strength * rm
        return with_macros(cond, macros)


def song_features(x: Tensor) -> dict[str, Tensor]:
    """:func:`measure_features` of ``x [batch, 2, n]`` after loudness normalization, no grad."""
    with torch.no_grad():
        return measure_features(normalize_loudness(x, ANALYSIS_LUFS, "song"))


def condition_on_reference(
    cond: ConditioningBatch,
    x: Tensor,
    reference: ReferenceFeatures,
    encoder: ReferenceEncoder | None = None,
    strength: float = 1.0,
) -> ConditioningBatch:
    """The song batch ``x [batch, 2, n]``'s conditioning ``cond`` steered toward ``reference``."""
    enc = encoder or ReferenceEncoder()
    song = song_features(x)
    ref = reference.batch(x.shape[0], x.device)
    with torch.no_grad():
        return enc.to(x.device)(cond, ref, song, strength)
