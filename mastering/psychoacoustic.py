"""Perceived loudness: ISO 532-1:2017 (Zwicker) stationary and time-varying loudness, in sone
and phon, beside the BS.1770 meter of :mod:`mastering.loudness`.

Procedure (ISO 532-1, clauses 5-6 and Annex A; the structure of Zwicker & Fastl's published
BASIC program, DIN 45631):

1. **Third-octave band powers** of the pressure signal in the 28 bands 25 Hz .. 12.5 kHz
   (:data:`CENTRE_HZ`), by a bank of 6th-order Butterworth band-passes (3 second-order
   sections each, band edges ``fm 10^(+-1/20)``, designed with ``scipy.signal.butter`` and
   run by :func:`mastering.dsp.iir.sosfilt`). The standard asks for IEC 61260 class-1
   filters; its Table A.1 coefficients are one such design, this is another.
2. **Core loudness** (:func:`core_loudness`, vectorised torch, differentiable): the low bands
   are weighted by the equal-loudness corrections ``DLL`` within the level ranges ``RAP``,
   the bands below 300 Hz are merged into the first three critical bands, the ear's
   transmission ``A0`` (and the free/diffuse difference ``DDF``) and the third-octave to
   critical-band adaptation ``DCB`` are applied, and Zwicker's power law
   ``N' = 0.0635 10^(0.025 LTQ) ((1 - s + s 10^((LE - LTQ)/10))^0.25 - 1)``, ``s = 0.25``,
   gives the core specific loudness of 20 critical bands (sone/Bark), with the lowest band's
   threshold correction.
3. **Upper slopes and total loudness** (:func:`total_loudness`): the masking slopes ``USL``
   (ranges ``RNS``) spread each band's loudness upwards in critical-band rate; the specific
   loudness is sampled on a 0.1 Bark grid (240 values, 0.1 .. 24 Bark) and the total
   loudness ``N`` (sone) is its integral. This step is a data-dependent scan, run by a small
   ``numba`` kernel over every frame at once.
4. **Time-varying loudness** (:func:`loudness_time_varying`, ISO 532-1 clause 6): each band's
   squared output is smoothed by three cascaded first-order low-passes (time constant
   ``2/(3 fc)``, at most ``2/3000`` s), read at 2 kHz, turned into core loudness, passed
   through the hearing's non-linear temporal decay (a two-capacitor network, time constants
   5, 15 and 75 ms, 24 inner steps per 0.5 ms), through the slopes, and the total loudness is
   weighted by two first-order low-passes (3.5 ms and 70 ms, weights 0.47 and 0.53). The
   reported series is at 500 Hz (every 2 ms); ``N5`` (the loudness exceeded 5 % of the time)
   is the single-number value ISO 532-1 recommends for time-varying sounds.
5. **Loudness level** (phon): ``40 + 10 log2 N`` for ``N >= 1`` sone, else
   ``40 (N + 0.0005)^0.35``.

**Calibration assumption** (digital audio has no absolute level): a digital signal whose RMS
is 1.0 (0 dBFS RMS, a full-scale square wave) is played at :data:`FULL_SCALE_DB_SPL`
(100 dB SPL) at the listener; so a full-scale sine is 96.99 dB SPL and a -14 LUFS master of
typical music reads about 80-85 dB SPL, a loud but ordinary listening level. Pass
``full_scale_db_spl`` to change it. The sound field is a frontal free field by default.

**Stereo**: the band powers are averaged over the channels before step 2 (a diotic
equivalent: a mono signal in both channels reads exactly as that signal alone). Shapes: audio
``[..., channels, samples]`` at 48 kHz (``[samples]`` is mono); results one value per item.

Reference values checked in ``tests/test_psychoacoustic.py``: ISO 532-1 Annex B.2 (test
signal 1, third-octave levels -> 83.296 sone), Annex B.3 test signal 3 (1 kHz, 60 dB SPL ->
4.019 sone) and test signal 5 (pink noise, 60 dB SPL -> 10.498 sone), and the definition of
the sone (1 kHz at 40 dB SPL = 1 sone = 40 phon), within the standard's tolerance (5 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numba
import numpy as np
import torch
from torch import Tensor

from mastering import SAMPLE_RATE
from mastering.dsp.iir import sosfilt
from mastering.errors import InvalidAudioError, InvalidParameterError

#: dB SPL of a digital signal with RMS 1.0 (see the module docstring).
FULL_SCALE_DB_SPL = 100.0
#: Reference pressure, Pa.
P_REF = 2e-5
#: Nominal centre frequencies of the 28 third-octave bands, Hz.
CENTRE_HZ = (
    25, 31.5, 40, 50, 63, 80, 100, 125, 160, 200, 250, 315, 400, 500, 630, 800, 1000,
    1250, 1600, 2000, 2500, 3150, 4000, 5000, 6300, 8000, 10000, 12500,
)  # fmt: skip
#: Level ranges (dB) of the low-frequency equal-loudness corrections.
RAP = (45.0, 55.0, 65.0, 71.0, 80.0, 90.0, 100.0, 120.0)
#: Reductions (dB) of the 11 bands 25..250 Hz within each range of :data:`RAP`.
DLL = (
    (-32, -24, -16, -10, -5, 0, -7, -3, 0, -2, 0),
    (-29, -22, -15, -10, -4, 0, -7, -2, 0, -2, 0),
    (-27, -19, -14, -9, -4, 0, -6, -2, 0, -2, 0),
    (-25, -17, -12, -9, -3, 0, -5, -2, 0, -2, 0),
    (-23, -16, -11, -7, -3, 0, -4, -1, 0, -1, 0),
    (-20, -14, -10, -6, -3, 0, -4, -1, 0, -1, 0),
    (-18, -12, -9, -6, -2, 0, -3, -1, 0, -1, 0),
    (-15, -10, -8, -4, -2, 0, -3, -1, 0, -1, 0),
)
#: Critical-band level at the threshold in quiet (dB), 20 critical bands.
LTQ = (30, 18, 12, 8, 7, 6, 5, 4, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3)
#: Transmission through the outer ear (dB).
A0 = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -0.5, -1.6, -3.2, -5.4, -5.6, -4, -1.5, 2, 5, 12)
#: Diffuse minus free field level (dB).
DDF = (0, 0, 0.5, 0.9, 1.2, 1.6, 2.3, 2.8, 3, 2, 0, -1.4, -2, -1.9, -1, 0.5, 3, 4, 4.3, 4)
#: Third-octave to critical-band level adaptation (dB).
DCB = (
    -0.25, -0.6, -0.8, -0.8, -0.5, 0, 0.5, 1.1, 1.5, 1.7, 1.8, 1.8, 1.7, 1.6, 1.4, 1.2, 0.8,
    0.5, 0, -0.5,
)  # fmt: skip
#: Upper limits (Bark) of the 21 approximated critical bands.
ZUP = (
    0.9, 1.8, 2.8, 3.5, 4.4, 5.4, 6.6, 7.9, 9.2, 10.6, 12.3, 13.8, 15.2, 16.7, 18.1, 19.3,
    20.6, 21.8, 22.7, 23.6, 24.0,
)  # fmt: skip
#: Ranges of specific loudness (sone/Bark) selecting the slope steepness.
RNS = (
    21.5, 18, 15.1, 11.5, 9, 6.1, 4.4, 3.1, 2.13, 1.36, 0.82, 0.42, 0.30, 0.22, 0.15, 0.10,
    0.035, 0,
)  # fmt: skip
#: Steepness (sone/Bark per Bark) of the upper slopes: 18 ranges x 8 band groups.
USL = (
    (13, 8.2, 6.3, 5.5, 5.5, 5.5, 5.5, 5.5),
    (9, 7.5, 6, 5.1, 4.5, 4.5, 4.5, 4.5),
    (7.8, 6.7, 5.6, 4.9, 4.4, 3.9, 3.9, 3.9),
    (6.2, 5.4, 4.6, 4.0, 3.5, 3.2, 3.2, 3.2),
    (4.5, 3.8, 3.6, 3.2, 2.9, 2.7, 2.7, 2.7),
    (3.7, 3.0, 2.8, 2.35, 2.2, 2.2, 2.2, 2.2),
    (2.9, 2.3, 2.1, 1.9, 1.8, 1.7, 1.7, 1.7),
    (2.4, 1.7, 1.5, 1.35, 1.3, 1.3, 1.3, 1.3),
    (1.95, 1.45, 1.3, 1.15, 1.1, 1.1, 1.1, 1.1),
    (1.5, 1.2, 0.94, 0.86, 0.82, 0.82, 0.82, 0.82),
    (0.72, 0.67, 0.64, 0.63, 0.62, 0.62, 0.62, 0.62),
    (0.59, 0.53, 0.51, 0.50, 0.42, 0.42, 0.42, 0.42),
    (0.40, 0.33, 0.26, 0.24, 0.24, 0.22, 0.22, 0.22),
    (0.27, 0.21, 0.20, 0.18, 0.17, 0.17, 0.17, 0.17),
    (0.16, 0.15, 0.14, 0.12, 0.11, 0.11, 0.11, 0.11),
    (0.12, 0.11, 0.10, 0.08, 0.08, 0.08, 0.08, 0.08),
    (0.09, 0.08, 0.07, 0.06, 0.06, 0.06, 0.06, 0.05),
    (0.06, 0.05, 0.03, 0.02, 0.02, 0.02, 0.02, 0.02),
)
#: Points of the specific-loudness grid (0.1 .. 24 Bark).
N_BARK = 240
#: Rate of the time-varying core loudness (Hz) and of the reported series (Hz).
CORE_RATE = 2000
OUTPUT_RATE = 500
#: Inner steps per core sample of the non-linear decay and the temporal weighting.
_INNER = 24
#: Zwicker's exponent constant ``s``.
_S = 0.25
#: Lowest band powers are floored here (Pa^2) so that silence stays finite (-100 dB SPL).
_POWER_FLOOR = (P_REF**2) * 1e-10


@dataclass
class LoudnessResult:
    """ISO 532-1 loudness of a batch.

    Attributes:
        sone: total loudness ``[...]``: stationary ``N``, or time-varying ``N5`` (exceeded 5 %
            of the time).
        phon: loudness level of ``sone``, ``[...]``.
        specific: specific loudness ``[..., 240]`` in sone/Bark on 0.1 .. 24 Bark (stationary;
            for time-varying the frame where ``N`` is largest).
        series: time-varying only: ``N(t)`` ``[..., frames]`` at :data:`OUTPUT_RATE` Hz.
        sone_max: time-varying only: the largest ``N(t)``.
    """

    sone: Tensor
    phon: Tensor
    specific: Tensor
    series: Tensor | None = None
    sone_max: Tensor | None = None


# --------------------------------------------------------------------------------------------
# Level calibration and the third-octave bank
# --------------------------------------------------------------------------------------------


def pascal_per_unit(full_scale_db_spl: float = FULL_SCALE_DB_SPL) -> float:
    """Pressure (Pa) of a digital sample value of 1.0 under the calibration assumption."""
    return P_REF * 10.0 ** (full_scale_db_spl / 20.0)


def tone_amplitude(level_db_spl: float, full_scale_db_spl: float = FULL_SCALE_DB_SPL) -> float:
    """Digital peak amplitude of a sine of ``level_db_spl`` dB SPL (for test signals)."""
    rms_pa = P_REF * 10.0 ** (level_db_spl / 20.0)
    return math.sqrt(2.0) * rms_pa / pascal_per_unit(full_scale_db_spl)


@cache
def third_octave_sos(sample_rate: int = SAMPLE_RATE) -> Tensor:
    """The 28-band bank as second-order sections ``[28, 3, 6]`` (float64): 6th-order
    Butterworth band-passes on the exact base-10 band edges ``1000 10^((k +- 0.5)/10)`` Hz."""
    from scipy.signal import butter

    rows = []
    for k in range(-16, 12):
        fm = 1000.0 * 10.0 ** (k / 10.0)
        lo, hi = fm * 10.0 ** (-1 / 20), fm * 10.0 ** (1 / 20)
        rows.append(butter(3, [lo, hi], btype="bandpass", output="sos", fs=sample_rate))
    return torch.tensor(np.stack(rows), dtype=torch.float64)


def _as_pressure(x: Tensor | np.ndarray, full_scale_db_spl: float) -> tuple[Tensor, tuple]:
    """``x [..., channels, samples]`` (or ``[samples]``) -> float64 Pa ``[M, channels, T]``
    and the leading shape ``[...]``."""
    x = torch.as_tensor(x)
    if x.dim() == 1:
        x = x.view(1, 1, -1)
    if x.dim() < 2 or x.shape[-1] == 0:
        raise InvalidAudioError(f"expected audio [..., channels, samples], got {list(x.shape)}")
    if not torch.isfinite(x).all():
        raise InvalidAudioError("audio contains NaN or Inf samples")
    lead = tuple(x.shape[:-2])
    p = x.to(torch.float64).reshape(-1, x.shape[-2], x.shape[-1])
    return p * pascal_per_unit(full_scale_db_spl), lead


def _filter(x: Tensor, sos: Tensor) -> Tensor:
    """``x [..., 28, T]`` through per-band sections ``sos [28, S, 6]`` (float64). On the CPU
    ``scipy.signal.sosfilt`` (about 3x faster there than the blocked state-space kernel, which
    is not differentiable here anyway); elsewhere :func:`mastering.dsp.iir.sosfilt`."""
    if x.device.type != "cpu" or x.requires_grad:
        return sosfilt(x, sos.to(x.device))
    from scipy.signal import sosfilt as scipy_sosfilt

    xn = x.detach().numpy()
    out = np.empty(xn.shape, dtype=np.float64)
    for band in range(sos.shape[0]):
        out[..., band, :] = scipy_sosfilt(
            np.ascontiguousarray(sos[band].numpy()), xn[..., band, :], axis=-1
        )
    return torch.from_numpy(out)


def band_powers(p: Tensor, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Third-octave band signals squared: ``p [M, channels, T]`` (Pa) -> ``[M, channels, 28,
    T]`` (Pa^2), float64."""
    x = p.unsqueeze(-2).expand(*p.shape[:-1], 28, p.shape[-1])
    return _filter(x, third_octave_sos(sample_rate)).square()


def third_octave_levels(
    x: Tensor | np.ndarray,
    full_scale_db_spl: float = FULL_SCALE_DB_SPL,
    sample_rate: int = SAMPLE_RATE,
) -> Tensor:
    """Long-term third-octave band levels ``[..., 28]`` (dB SPL) of ``x [..., channels,
    samples]``: band powers averaged over time and channels."""
    p, lead = _as_pressure(x, full_scale_db_spl)
    power = band_powers(p, sample_rate).mean(dim=(-1, 1))
    return (10.0 * torch.log10(power.clamp(min=_POWER_FLOOR) / P_REF**2)).reshape(*lead, 28)


# --------------------------------------------------------------------------------------------
# Core loudness (torch, differentiable) and the slopes (numba)
# --------------------------------------------------------------------------------------------


def core_loudness(levels_db: Tensor, field: str = "free") -> Tensor:
    """Core specific loudness ``[..., 21]`` (sone/Bark; the 21st band is 0) of third-octave
    levels ``levels_db [..., 28]`` (dB SPL), ISO 532-1 A.3/A.4. Differentiable.

    Raises :class:`InvalidParameterError` when a band below 300 Hz exceeds 120 dB (outside
    the tables) or ``field`` is not ``"free"``/``"diffuse"``.
    """
    if field not in ("free", "diffuse"):
        raise InvalidParameterError(f"sound field must be 'free' or 'diffuse', got {field!r}")
    levels_db = levels_db.to(torch.float64)
    if bool((levels_db[..., :11] > 120.0).any()):
        raise InvalidParameterError(
            "a third-octave level below 300 Hz exceeds 120 dB SPL, outside ISO 532-1's tables; "
            "lower full_scale_db_spl"
        )
    t = dict(dtype=torch.float64, device=levels_db.device)
    rap, dll = torch.tensor(RAP, **t), torch.tensor(DLL, **t)  # [8], [8, 11]
    low = levels_db[..., :11]
    # Range index j: count the leading ranges whose corrected upper bound the level exceeds.
    above = (low.unsqueeze(-2) > (rap[:7, None] - dll[:7])).to(torch.int64)  # [..., 7, 11]
    j = above.cumprod(dim=-2).sum(dim=-2)  # [..., 11] in 0..7
    corrected = (
        low + torch.gather(dll.expand(*low.shape[:-1], 8, 11), -2, j.unsqueeze(-2))[..., 0, :]
    )
    ti = torch.pow(10.0, corrected / 10.0)
    lcb = 10.0 * torch.log10(
        torch.stack([ti[..., :6].sum(-1), ti[..., 6:9].sum(-1), ti[..., 9:11].sum(-1)], -1)
    )
    le = torch.cat([lcb, levels_db[..., 11:]], dim=-1) - torch.tensor(A0, **t)  # [..., 20]
    if field == "diffuse":
        le = le + torch.tensor(DDF, **t)
    ltq = torch.tensor(LTQ, **t)
    audible = le > ltq
    le = le - torch.tensor(DCB, **t)
    mp1 = 0.0635 * torch.pow(10.0, 0.025 * ltq)
    ratio = torch.pow(10.0, 0.1 * (torch.where(audible, le, ltq) - ltq))
    nm = (mp1 * (torch.pow(1.0 - _S + _S * ratio, 0.25) - 1.0)).clamp(min=0.0)
    nm = torch.where(audible, nm, torch.zeros_like(nm))
    korry = 0.4 + 0.32 * nm[..., :1].clamp(min=1e-30).pow(0.2)
    first = torch.where(korry <= 1.0, nm[..., :1] * korry, nm[..., :1])
    return torch.cat([first, nm[..., 1:], torch.zeros_like(nm[..., :1])], dim=-1)


@numba.njit(cache=True)
def _slopes(nm, zup, rns, usl, total, specific):  # pragma: no cover - compiled
    """Upper slopes (ISO 532-1 A.5): ``nm [M, 21]`` core loudness -> ``total [M]`` (sone) and
    ``specific [M, 240]`` on the 0.1 Bark grid (filled in place)."""
    for m in range(nm.shape[0]):
        n_tot = 0.0
        z1 = 0.0
        n1 = 0.0
        iz = 0  # next grid point: z = 0.1 (iz + 1)
        for i in range(21):
            z_up = zup[i] + 0.0001
            ig = min(max(i - 1, 0), 7)
            while True:
                target = nm[m, i]
                if n1 > target:  # falling: follow the slope of the range n1 lies in
                    j = 0
                    while j < 17 and rns[j] >= n1:
                        j += 1
                    steep = usl[j, ig]
                    n2 = max(rns[j], target)
                    dz = (n1 - n2) / steep
                    z2 = z1 + dz
                    if z2 > z_up:
                        z2 = z_up
                        dz = z2 - z1
                        n2 = n1 - dz * steep
                    n_tot += dz * (n1 + n2) / 2.0
                    while iz < 240 and 0.1 * (iz + 1) <= z2 + 1e-9:
                        specific[m, iz] = n1 - (0.1 * (iz + 1) - z1) * steep
                        iz += 1
                else:  # rising or flat: the band's own value up to its upper limit
                    n2 = target
                    z2 = z_up
                    n_tot += n2 * (z2 - z1)
                    while iz < 240 and 0.1 * (iz + 1) <= z2 + 1e-9:
                        specific[m, iz] = n2
                        iz += 1
                z1 = z2
                n1 = n2
                if z1 >= z_up - 1e-12:
                    break
        total[m] = max(n_tot, 0.0)


def _slope_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.asarray(ZUP, dtype=np.float64),
        np.asarray(RNS, dtype=np.float64),
        np.asarray(USL, dtype=np.float64),
    )


def total_loudness(core: Tensor) -> tuple[Tensor, Tensor]:
    """Total loudness ``[...]`` (sone) and specific loudness ``[..., 240]`` (sone/Bark) of
    core loudness ``core [..., 21]`` (from :func:`core_loudness`). Not differentiable."""
    lead = core.shape[:-1]
    nm = np.ascontiguousarray(core.detach().reshape(-1, 21).cpu().numpy(), dtype=np.float64)
    total = np.zeros(nm.shape[0])
    specific = np.zeros((nm.shape[0], N_BARK))
    _slopes(nm, *_slope_tables(), total, specific)
    t = dict(dtype=torch.float64, device=core.device)
    return (
        torch.as_tensor(total, **t).reshape(lead),
        torch.as_tensor(specific, **t).reshape(*lead, N_BARK),
    )


def sone_to_phon(sone: Tensor) -> Tensor:
    """Loudness level (phon) of a loudness (sone): ``40 + 10 log2 N`` above 1 sone, else
    ``40 (N + 0.0005)^0.35`` (ISO 532-1)."""
    sone = torch.as_tensor(sone, dtype=torch.float64)
    high = 40.0 + 10.0 * torch.log2(sone.clamp(min=1.0))
    low = 40.0 * torch.pow(sone.clamp(min=0.0) + 0.0005, 0.35)
    return torch.where(sone >= 1.0, high, low)


def phon_to_sone(phon: Tensor) -> Tensor:
    """Inverse of :func:`sone_to_phon`."""
    phon = torch.as_tensor(phon, dtype=torch.float64)
    high = torch.pow(2.0, (phon - 40.0) / 10.0)
    low = (phon.clamp(min=0.0) / 40.0).pow(1.0 / 0.35) - 0.0005
    return torch.where(phon >= 40.0, high, low.clamp(min=0.0))


# --------------------------------------------------------------------------------------------
# Public measures
# --------------------------------------------------------------------------------------------


def loudness_from_levels(levels_db: Tensor, field: str = "free") -> LoudnessResult:
    """Stationary loudness of third-octave levels ``[..., 28]`` (dB SPL)."""
    total, specific = total_loudness(core_loudness(torch.as_tensor(levels_db), field))
    return LoudnessResult(sone=total, phon=sone_to_phon(total), specific=specific)


def loudness_stationary(
    x: Tensor | np.ndarray,
    full_scale_db_spl: float = FULL_SCALE_DB_SPL,
    field: str = "free",
    sample_rate: int = SAMPLE_RATE,
) -> LoudnessResult:
    """ISO 532-1 stationary loudness of ``x [..., channels, samples]`` (the whole signal's
    band powers). Meant for steady sounds; for music use :func:`loudness_time_varying`."""
    return loudness_from_levels(third_octave_levels(x, full_scale_db_spl, sample_rate), field)


def _one_pole_sos(tau_s: Tensor, sample_rate: int) -> Tensor:
    """First-order low-pass ``y = (1-a) x + a y[-1]``, ``a = exp(-1/(fs tau))``, as sos rows
    ``[..., 1, 6]``."""
    a = torch.exp(-1.0 / (sample_rate * tau_s))
    z = torch.zeros_like(a)
    return torch.stack([1.0 - a, z, z, torch.ones_like(a), -a, z], dim=-1).unsqueeze(-2)


@numba.njit(cache=True)
def _nl_decay(core, b, inner):  # pragma: no cover - compiled
    """Non-linear temporal decay (ISO 532-1 A.7) of ``core [M, T]`` at 2 kHz, in place:
    two-capacitor discharge network, ``inner`` linearly interpolated steps per sample."""
    for m in range(core.shape[0]):
        uo_last = 0.0
        u2_last = 0.0
        n = core.shape[1]
        for t in range(n):
            cur = core[m, t]
            nxt = core[m, t + 1] if t + 1 < n else 0.0
            delta = (nxt - cur) / inner
            ui = cur
            out = cur
            for k in range(inner):
                if ui < uo_last:
                    if uo_last > u2_last:
                        u2 = uo_last * b[0] - u2_last * b[1]
                        uo = uo_last * b[2] - u2_last * b[3]
                        if ui > uo:
                            uo = ui
                        if u2 > uo:
                            u2 = uo
                    else:
                        uo = uo_last * b[4]
                        if ui > uo:
                            uo = ui
                        u2 = uo
                else:
                    uo = ui
                    if abs(ui - uo_last) < 1e-5 and uo <= u2_last:
                        u2 = ui
                    else:
                        u2 = (u2_last - ui) * b[5] + ui
                uo_last = uo
                u2_last = u2
                if k == 0:
                    out = uo
                ui += delta
            core[m, t] = out


def _nl_constants(rate: int = CORE_RATE, inner: int = _INNER) -> np.ndarray:
    """The discharge network's coefficients ``B[0..5]`` (time constants 5, 15, 75 ms)."""
    t_short, t_long, t_var = 0.005, 0.015, 0.075
    dt = 1.0 / (rate * inner)
    p = (t_var + t_long) / (t_var * t_short)
    q = 1.0 / (t_short * t_var)
    l1 = -p / 2 + math.sqrt(p * p / 4 - q)
    l2 = -p / 2 - math.sqrt(p * p / 4 - q)
    den = t_var * (l1 - l2)
    e1, e2 = math.exp(l1 * dt), math.exp(l2 * dt)
    return np.array(
        [
            (e1 - e2) / den,
            ((t_var * l2 + 1) * e1 - (t_var * l1 + 1) * e2) / den,
            ((t_var * l1 + 1) * e1 - (t_var * l2 + 1) * e2) / den,
            (t_var * l1 + 1) * (t_var * l2 + 1) * (e1 - e2) / den,
            math.exp(-dt / t_long),
            math.exp(-dt / t_var),
        ]
    )


@numba.njit(cache=True)
def _lowpass_interp(x, a, inner, out):  # pragma: no cover - compiled
    """First-order low-pass ``y = a y + (1 - a) u`` of ``x [M, T]`` run ``inner`` times per
    sample on the linearly interpolated input; ``out`` gets the value at each sample."""
    for m in range(x.shape[0]):
        y = 0.0
        n = x.shape[1]
        for t in range(n):
            cur = x[m, t]
            nxt = x[m, t + 1] if t + 1 < n else 0.0
            delta = (nxt - cur) / inner
            u = cur
            for k in range(inner):
                y = a * y + (1.0 - a) * u
                if k == 0:
                    out[m, t] = y
                u += delta


def _temporal_weighting(total: np.ndarray, rate: int = CORE_RATE) -> np.ndarray:
    """``0.47 LP_3.5ms + 0.53 LP_70ms`` of the total loudness ``[M, T]`` at ``rate``."""
    dt = 1.0 / (rate * _INNER)
    fast, slow = np.zeros_like(total), np.zeros_like(total)
    _lowpass_interp(total, math.exp(-dt / 0.0035), _INNER, fast)
    _lowpass_interp(total, math.exp(-dt / 0.070), _INNER, slow)
    return 0.47 * fast + 0.53 * slow


def loudness_time_varying(
    x: Tensor | np.ndarray,
    full_scale_db_spl: float = FULL_SCALE_DB_SPL,
    field: str = "free",
    sample_rate: int = SAMPLE_RATE,
) -> LoudnessResult:
    """ISO 532-1 time-varying loudness of ``x [..., channels, samples]`` (48 kHz).

    Returns ``sone`` = N5 (percentile loudness exceeded 5 % of the time), ``phon`` of it,
    ``sone_max``, the series ``N(t)`` at 500 Hz and the specific loudness at the loudest
    frame. Band filtering runs in torch on ``x``'s device; the scans on the CPU.
    """
    if sample_rate % CORE_RATE:
        raise InvalidParameterError(f"sample rate {sample_rate} Hz is not a multiple of 2 kHz")
    p, lead = _as_pressure(x, full_scale_db_spl)
    hop = sample_rate // CORE_RATE
    fc = torch.tensor(CENTRE_HZ, dtype=torch.float64, device=p.device)
    tau = 2.0 / (3.0 * fc.clamp(max=1000.0))
    smooth = _one_pole_sos(tau, sample_rate).expand(28, 3, 6)  # three cascaded one-poles
    # channel mean first: the smoothing is linear, so this equals smoothing each channel
    power = _filter(band_powers(p, sample_rate).mean(dim=1), smooth)  # [M, 28, T]
    power = power[..., hop - 1 :: hop]  # 2 kHz -> [M, 28, F]
    levels = 10.0 * torch.log10(power.clamp(min=_POWER_FLOOR) / P_REF**2)
    core = core_loudness(levels.transpose(-1, -2), field)  # [M, F, 21]
    m, f = core.shape[0], core.shape[1]
    nm = np.ascontiguousarray(core.detach().cpu().numpy().transpose(0, 2, 1).reshape(-1, f))
    _nl_decay(nm, _nl_constants(), _INNER)
    nm = np.ascontiguousarray(nm.reshape(m, 21, f).transpose(0, 2, 1).reshape(-1, 21))
    total = np.zeros(nm.shape[0])
    specific = np.zeros((nm.shape[0], N_BARK))
    _slopes(nm, *_slope_tables(), total, specific)
    weighted = _temporal_weighting(total.reshape(m, f))
    series = weighted[:, :: CORE_RATE // OUTPUT_RATE]  # 500 Hz
    n5 = np.percentile(series, 95.0, axis=-1)
    peak = series.argmax(-1) * (CORE_RATE // OUTPUT_RATE)
    spec = specific.reshape(m, f, N_BARK)[np.arange(m), peak]
    t = dict(dtype=torch.float64)
    sone = torch.as_tensor(n5, **t).reshape(lead)
    return LoudnessResult(
        sone=sone,
        phon=sone_to_phon(sone),
        specific=torch.as_tensor(spec, **t).reshape(*lead, N_BARK),
        series=torch.as_tensor(series, **t).reshape(*lead, -1),
        sone_max=torch.as_tensor(series.max(-1), **t).reshape(lead),
    )


def core_loudness_sum(
    x: Tensor, full_scale_db_spl: float = FULL_SCALE_DB_SPL, field: str = "free"
) -> Tensor:
    """A differentiable perceived-loudness objective ``[...]`` (sone) of ``x [..., channels,
    samples]``: the integral of the *core* specific loudness over critical-band rate (steps 1-2
    of the stationary procedure, without the non-differentiable upper slopes, so it reads a
    little below :func:`loudness_stationary`, most for narrow-band sounds). For training and
    level matching ("same perceived loudness with less limiting")."""
    levels = third_octave_levels(x, full_scale_db_spl)
    core = core_loudness(levels, field)  # [..., 21]
    zup = torch.tensor(ZUP, dtype=torch.float64, device=core.device)
    return (core * torch.diff(zup, prepend=zup.new_zeros(1))).sum(-1)


__all__ = [
    "CENTRE_HZ",
    "FULL_SCALE_DB_SPL",
    "LoudnessResult",
    "core_loudness",
    "core_loudness_sum",
    "loudness_from_levels",
    "loudness_stationary",
    "loudness_time_varying",
    "phon_to_sone",
    "sone_to_phon",
    "third_octave_levels",
    "tone_amplitude",
    "total_loudness",
]
