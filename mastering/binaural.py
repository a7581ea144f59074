"""Binaural rendering of a stereo master for headphones: virtual loudspeakers convolved with
head-related impulse responses (HRIRs), lows kept centred, loudness and true peak re-normalized.

Signal flow (:func:`render_binaural`, audio ``[batch, 2, samples]`` at 48 kHz):

1. **Per-band decision**: a Linkwitz-Riley crossover (:func:`mastering.dsp.crossover.split_bands`,
   ``crossover_hz``, 200 Hz by default) splits the master. The band below it is folded to mono
   and fed to both ears identically (delayed to line up with the HRIR path): this is the
   crossfeed that keeps the low end centred, as on loudspeakers, where bass reaches both ears
   alike (and the 128-tap KEMAR responses say little below a few hundred Hz anyway).
2. **Mid/side decision**: above the crossover the master goes to mid/side
   (:mod:`mastering.dsp.stereo`), the side is scaled by ``width`` (1 = as mastered), and the
   result feeds a virtual stereo pair of loudspeakers at ``+-speaker_angle_deg`` (30 deg, the
   ITU-R BS.775 stereo triangle), elevation 0.
3. **HRIR convolution** (:func:`mastering.dsp.fir.fft_convolve`): each ear gets both speakers
   through the HRIR from that speaker to that ear, so every source crossfeeds with the
   head's own interaural time and level differences.
4. **Normalization**: the binaural signal goes through master out's loudness search and
   true-peak limiter again (:class:`mastering.stages.master_out.MasterOut`), so the loudness
   target and the true-peak ceiling hold on the headphone render exactly as on the master.

HRIRs (:func:`load_hrirs`):

* ``"kemar"``: the MIT Media Lab KEMAR measurements (Gardner & Martin 1994, compact set,
  128 taps at 44.1 kHz, elevation -40..90 deg), as shipped by Debian's ``pd-earplug``
  package in ``/usr/lib/pd/extra/earplug~/earplug_data.txt`` (or ``$LACQUER_KEMAR_HRIR``).
  The package is GPL-2+; the data set's own terms (MIT) allow free use with attribution.
  Lacquer does not copy the data: it reads the installed file at run time and resamples it to
  48 kHz (``scipy.signal.resample_poly``, 160/147).
* ``"spherical"``: Brown & Duda's spherical-head model (IEEE Trans. Speech Audio Process.
  6(5), 1998): a one-pole/one-zero head-shadow filter per ear, ``alpha(theta) = (1 +
  alpha_min/2) + (1 - alpha_min/2) cos(theta / theta_min * pi)``, ``alpha_min = 0.1``,
  ``theta_min = 150 deg``, corner ``c / a``, and the Woodworth interaural delay, head radius
  8.75 cm, realised by frequency sampling (256 taps). No pinna: front/back and elevation
  cues are absent. Used when the KEMAR file is not installed (``"auto"``).

Both sets are scaled so a centred (mono) source has unit gain at each ear between 200 Hz
and 1 kHz, which keeps the crossover seamless.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mastering import SAMPLE_RATE
from mastering.dsp.crossover import split_bands
from mastering.dsp.fir import fft_convolve
from mastering.dsp.stereo import correlation, from_mid_side, to_mid_side
from mastering.errors import AudioReadError, InvalidParameterError
from mastering.loudness import integrated_loudness, true_peak

#: Where Debian's ``pd-earplug`` installs the KEMAR data.
KEMAR_PATH = Path("/usr/lib/pd/extra/earplug~/earplug_data.txt")
#: Rate of the KEMAR compact set, Hz.
KEMAR_RATE = 44_100
#: Speed of sound (m/s) and head radius (m) of the spherical-head model.
SPEED_OF_SOUND = 343.0
HEAD_RADIUS_M = 0.0875
#: Band (Hz) over which a centred source is normalized to unit gain.
_NORM_BAND_HZ = (200.0, 1000.0)


@dataclass
class BinauralConfig:
    """How the master is rendered for headphones.

    Attributes:
        speaker_angle_deg: azimuth of the virtual stereo loudspeakers (+-, deg; 30 = the
            standard stereo triangle).
        crossover_hz: below this the signal is mono and centred in the head (Hz).
        width: side gain above the crossover (0 = mono, 1 = as mastered, up to 2).
        hrirs: ``"auto"``, ``"kemar"`` or ``"spherical"`` (see the module docstring).
    """

    speaker_angle_deg: float = 30.0
    crossover_hz: float = 200.0
    width: float = 1.0
    hrirs: str = "auto"

    def validate(self) -> BinauralConfig:
        if not 0.0 < self.speaker_angle_deg <= 90.0:
            raise InvalidParameterError(
                f"speaker angle {self.speaker_angle_deg} deg is outside 0..90"
            )
        if not 40.0 <= self.crossover_hz <= 1000.0:
            raise InvalidParameterError(f"crossover {self.crossover_hz} Hz is outside 40..1000")
        if not 0.0 <= self.width <= 2.0:
            raise InvalidParameterError(f"width {self.width} is outside 0..2")
        if self.hrirs not in ("auto", "kemar", "spherical"):
            raise InvalidParameterError(
                f"unknown HRIR set {self.hrirs!r}; valid: auto, kemar, spherical"
            )
        return self


@dataclass
class HRIRSet:
    """Head-related impulse responses at elevation 0, 48 kHz.

    Attributes:
        name: ``"kemar"`` or ``"spherical"``.
        source: where they came from (file, or the model), and the licence.
        azimuths: measured azimuths, deg (0 = front, positive = to the right), ``[n]``.
        irs: ``[n, 2, taps]`` (left ear, right ear) for a source at each azimuth.
    """

    name: str
    source: str
    azimuths: Tensor
    irs: Tensor
    gain: float = 1.0
    notes: list[str] = field(default_factory=list)

    def pair(self, azimuth_deg: float) -> Tensor:
        """HRIRs ``[2 (left, right ear), taps]`` for a source at ``azimuth_deg`` (nearest
        measured azimuth; a source on the left uses the mirrored right-side response)."""
        az = ((azimuth_deg + 180.0) % 360.0) - 180.0
        idx = int(torch.argmin((self.azimuths - abs(az)).abs()))
        h = self.irs[idx] * self.gain
        return h.flip(0) if az < 0 else h


def _parse_kemar(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Elevation-0 azimuths (deg) and HRIRs ``[n, 2, 128]`` from earplug's text file."""
    azimuths, irs = [], []
    current: tuple[int, int] | None = None
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AudioReadError(f"cannot read the KEMAR HRIR file: {exc}", path) from exc
    for line in lines:
        if line.startswith("**"):
            m = re.search(r"H(-?\d+)e(\d+)a", line)
            current = (int(m.group(1)), int(m.group(2))) if m else None
        elif line.strip() and current is not None and current[0] == 0:
            values = np.array(line.split(), dtype=np.float64)
            if values.size % 2:
                raise AudioReadError("malformed HRIR line (odd sample count)", path)
            azimuths.append(current[1])
            irs.append(values.reshape(-1, 2).T)
    if len(azimuths) < 2:
        raise AudioReadError("no elevation-0 HRIRs found", path)
    return np.asarray(azimuths, dtype=np.float64), np.stack(irs)


def spherical_head_pair(azimuth_deg: float, n_taps: int = 256) -> Tensor:
    """Brown-Duda spherical-head HRIRs ``[2, n_taps]`` at 48 kHz for a source at
    ``azimuth_deg`` (0 front, positive right), float64."""
    f = torch.fft.rfftfreq(n_taps, 1.0 / SAMPLE_RATE).to(torch.float64)
    w = 2.0 * math.pi * f
    w0 = SPEED_OF_SOUND / HEAD_RADIUS_M
    alpha_min, theta_min = 0.1, math.radians(150.0)
    az = math.radians(azimuth_deg)
    out = []
    for ear_az in (-math.pi / 2, math.pi / 2):  # left ear, right ear
        # angle between the source and the ear's axis, 0..pi
        theta = math.acos(max(-1.0, min(1.0, math.cos(az - ear_az))))
        alpha = (1 + alpha_min / 2) + (1 - alpha_min / 2) * math.cos(theta / theta_min * math.pi)
        shadow = (1 + 1j * alpha * w / (2 * w0)) / (1 + 1j * w / (2 * w0))
        if theta < math.pi / 2:
            delay = -HEAD_RADIUS_M / SPEED_OF_SOUND * math.cos(theta)
        else:
            delay = HEAD_RADIUS_M / SPEED_OF_SOUND * (theta - math.pi / 2)
        delay += HEAD_RADIUS_M / SPEED_OF_SOUND + 16 / SAMPLE_RATE  # causal, with margin
        spectrum = shadow * torch.exp(-1j * w * delay)
        h = torch.fft.irfft(spectrum, n_taps)
        out.append(h * torch.hann_window(2 * n_taps, dtype=torch.float64)[n_taps:])
    return torch.stack(out)


def _centre_gain(hrirs: HRIRSet, angle_deg: float) -> float:
    """Gain making a centred source (both speakers) unity at one ear over 200 Hz .. 1 kHz."""
    summed = hrirs.pair(-angle_deg)[0] + hrirs.pair(angle_deg)[0]
    n = 8192
    mag = torch.fft.rfft(summed, n).abs()
    f = torch.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    band = (f >= _NORM_BAND_HZ[0]) & (f <= _NORM_BAND_HZ[1])
    return float(1.0 / mag[band].mean())


@cache
def _kemar(path: str) -> HRIRSet:
    from scipy.signal import resample_poly

    az, irs = _parse_kemar(Path(path))
    irs48 = resample_poly(irs, SAMPLE_RATE // 300, KEMAR_RATE // 300, axis=-1)
    return HRIRSet(
        name="kemar",
        source=f"MIT KEMAR compact set (Gardner & Martin 1994) from {path} (Debian pd-earplug, "
        "GPL-2+; data: free use with attribution)",
        azimuths=torch.tensor(az),
        irs=torch.tensor(irs48, dtype=torch.float64),
    )


@cache
def _spherical() -> HRIRSet:
    az = torch.arange(0.0, 181.0, 5.0, dtype=torch.float64)
    return HRIRSet(
        name="spherical",
        source="Brown-Duda spherical-head model (no pinna), head radius 8.75 cm",
        azimuths=az,
        irs=torch.stack([spherical_head_pair(float(a)) for a in az]),
    )


def kemar_path() -> Path:
    """The KEMAR file: ``$LACQUER_KEMAR_HRIR`` or Debian ``pd-earplug``'s."""
    return Path(os.environ.get("LACQUER_KEMAR_HRIR", str(KEMAR_PATH)))


def load_hrirs(kind: str = "auto", angle_deg: float = 30.0) -> HRIRSet:
    """The HRIR set ``kind`` (``"auto"``: KEMAR when installed, else the spherical head),
    scaled for a unit-gain centre at speakers ``+-angle_deg``."""
    path = kemar_path()
    if kind == "kemar" and not path.exists():
        raise AudioReadError(
            "KEMAR HRIRs not found; install Debian's pd-earplug or set LACQUER_KEMAR_HRIR", path
        )
    base = _kemar(str(path)) if kind == "kemar" or (kind == "auto" and path.exists()) else None
    if base is None:
        base = _spherical()
    hrirs = HRIRSet(base.name, base.source, base.azimuths, base.irs)
    if kind == "auto" and base.name == "spherical":
        hrirs.notes.append(f"{path} not found: used the spherical-head model")
    hrirs.gain = _centre_gain(hrirs, angle_deg)
    return hrirs


def _onset(h: Tensor) -> int:
    """Sample index of the largest magnitude of ``h`` (the direct sound)."""
    return int(h.abs().argmax())


def binaural_downmix(x: Tensor, config: BinauralConfig | None = None) -> tuple[Tensor, HRIRSet]:
    """Steps 1-3 of the module docstring: ``x [batch, 2, T]`` -> ears ``[batch, 2, T]``
    (aligned with ``x``: the frontal HRIR's onset delay is removed), not yet normalized."""
    config = (config or BinauralConfig()).validate()
    hrirs = load_hrirs(config.hrirs, config.speaker_angle_deg)
    dtype = x.dtype
    left_spk = hrirs.pair(-config.speaker_angle_deg).to(x.device, torch.float32)
    right_spk = hrirs.pair(config.speaker_angle_deg).to(x.device, torch.float32)
    delay = _onset(left_spk[0] + right_spk[0])
    n = x.shape[-1]
    low, high = split_bands(x.float(), [config.crossover_hz])
    mono_low = low.mean(dim=1, keepdim=True).expand(-1, 2, -1)
    ms = to_mid_side(high)
    ms = torch.stack([ms[:, 0], ms[:, 1] * config.width], dim=1)
    speakers = from_mid_side(ms)  # [B, 2 (left speaker, right speaker), T]
    # ears[b, ear] = sum over speakers of speaker[b, s] * hrir[s, ear]
    hrir = torch.stack([left_spk, right_spk])  # [speaker, ear, taps]
    ears = fft_convolve(speakers.unsqueeze(2), hrir.unsqueeze(0)).sum(dim=1)  # [B, 2, T+L-1]
    ears = ears[..., delay : delay + n]
    return (mono_low + ears).to(dtype), hrirs


def mono_compatibility(x: Tensor) -> list[dict[str, float | None]]:
    """Per song of ``x [batch, 2, T]``: inter-channel correlation (-1..1) and the loudness
    change (LU) of the mono fold-down ``(L + R) / 2`` in both channels against the stereo
    signal (0 = fully compatible; negative = content cancels in mono)."""
    mono = x.mean(dim=1, keepdim=True).expand(-1, 2, -1)
    stereo_l = integrated_loudness(x)
    mono_l = integrated_loudness(mono)
    corr = correlation(x)
    out = []
    for b in range(x.shape[0]):
        s, m = float(stereo_l[b]), float(mono_l[b])
        change = m - s if math.isfinite(s) and math.isfinite(m) else None
        out.append(
            {
                "correlation": round(float(corr[b]), 4),
                "mono_loudness_change_lu": None if change is None else round(change, 3),
            }
        )
    return out


def render_binaural(
    x: Tensor,
    config: BinauralConfig | None = None,
    target_lufs: float = -14.0,
    ceiling_dbtp: float = -1.0,
) -> tuple[Tensor, list[dict[str, Any]]]:
    """Headphone render of masters ``x [batch, 2, T]`` (48 kHz), normalized to
    ``target_lufs`` (LUFS) under ``ceiling_dbtp`` (dBTP) by master out's search.

    Returns ``(y [batch, 2, T], reports)``; each report has the HRIR set used, master out's
    status (``status``, ``output_lufs``, ``output_true_peak_dbtp`` ...), the measured output
    true peak, and the mono compatibility of the input and of the binaural output.
    """
    from mastering.chain import run_aligned
    from mastering.stages.master_out import MasterOut

    config = (config or BinauralConfig()).validate()
    with torch.no_grad():
        ears, hrirs = binaural_downmix(x, config)
        stage = MasterOut(target_lufs=target_lufs, ceiling_dbtp=ceiling_dbtp)
        params, status = stage.solve(ears)
        y = run_aligned(stage, ears, params)
        tp = true_peak(y)
        before, after = mono_compatibility(x), mono_compatibility(y)
    reports = []
    for b in range(x.shape[0]):
        reports.append(
            {
                "hrirs": hrirs.name,
                "hrir_source": hrirs.source,
                "notes": list(hrirs.notes),
                "config": {
                    "speaker_angle_deg": config.speaker_angle_deg,
                    "crossover_hz": config.crossover_hz,
                    "width": config.width,
                },
                "normalization": status[b],
                "true_peak_dbtp": round(float(tp[b]), 3),
                "mono_compatibility": {"master": before[b], "binaural": after[b]},
            }
        )
    return y, reports


def interaural_differences(
    ears: Tensor, band_hz: tuple[float, float] = (300.0, 1500.0)
) -> tuple[Tensor, Tensor]:
    """Interaural level difference (dB, left minus right, broadband energy) and time
    difference (ms, positive when the left ear leads; the lag of the cross-correlation peak
    within +-1 ms in ``band_hz``) of ``ears [batch, 2, T]``."""
    energy = ears.float().square().mean(-1).clamp(min=1e-20)
    ild = 10.0 * torch.log10(energy[:, 0] / energy[:, 1])
    n = ears.shape[-1]
    spec = torch.fft.rfft(ears.float(), 2 * n)
    f = torch.fft.rfftfreq(2 * n, 1.0 / SAMPLE_RATE).to(ears.device)
    spec = spec * ((f >= band_hz[0]) & (f <= band_hz[1]))
    xc = torch.fft.irfft(spec[:, 1] * spec[:, 0].conj(), 2 * n)  # r(k) = sum R[t+k] L[t]
    max_lag = int(0.001 * SAMPLE_RATE)
    lags = torch.cat([xc[:, : max_lag + 1], xc[:, -max_lag:]], -1)
    idx = lags.argmax(-1)
    lag = torch.where(idx <= max_lag, idx, idx - (2 * max_lag + 1))
    return ild, lag.float() / SAMPLE_RATE * 1000.0


__all__ = [
    "BinauralConfig",
    "HRIRSet",
    "binaural_downmix",
    "binaural_file",
    "interaural_differences",
    "load_hrirs",
    "mono_compatibility",
    "render_binaural",
    "spherical_head_pair",
]


def binaural_file(
    master: str | Path,
    out_dir: str | Path,
    target_lufs: float = -14.0,
    ceiling_dbtp: float = -1.0,
    format: str = "wav24",
    out_rate: int | None = None,
    config: BinauralConfig | None = None,
) -> dict[str, Any]:
    """Read a written master, render it for headphones and write ``<stem>.binaural.<ext>``
    atomically under ``out_dir``; return the report of :func:`render_binaural` with the
    output path."""
    from mastering.io import read_audio, write_audio
    from mastering.render import FORMATS

    audio, info = read_audio(master)
    y, reports = render_binaural(audio.unsqueeze(0), config, target_lufs, ceiling_dbtp)
    stem = Path(master).stem
    dest = Path(out_dir) / f"{stem}.binaural.{FORMATS[format]}"
    write_audio(
        dest,
        y[0].cpu(),
        sample_rate=SAMPLE_RATE,
        out_rate=out_rate or info.sample_rate,
        format=format,
    )
    return {"output": str(dest), **reports[0]}
