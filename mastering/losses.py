"""Training losses of the mastering chain: each compares an output ``y`` with a reference
master ``ref`` (both ``[batch, 2, samples]``, 48 kHz, time-aligned) and is **exactly zero when
they are identical**, grows with the degradation it is named after, and is differentiable.

The four losses of the design, plus two stage-specific ones:

1. :func:`perceptual_spectral_loss` -- log-mel distance (dB) and multi-resolution STFT distance
   (spectral convergence + log magnitude, as in Yamamoto et al. 2019 / auraloss), computed on
   the **mid and side** channels (sum-and-difference, the side weighted ``side_weight``).
2. :func:`dynamic_loss` -- multi-band dynamics: per-band 10 ms loudness envelopes (shape,
   level-independent), per-band envelope crest (99th percentile over the long-term level),
   per-band short-term (400 ms) loudness distribution against the long-term level (10th,
   50th, 95th percentiles: the short-vs-long loudness range) and the broadband sample crest
   factor, all in dB.
3. :func:`image_loss` -- stereo image per band: inter-channel (phase) correlation, side/mid
   energy ratio (dB), and a penalty on correlation falling below ``min(0, reference)``
   (unnatural, out-of-phase output).
4. :func:`loudness_loss` -- distance (LU) of the differentiable K-weighted ungated loudness
   (BS.1770 K-filter of :func:`mastering.loudness.k_weight`) from a target in LUFS.
5. :func:`harmonic_loss` -- for the exciter: perceived brightness, the spectral centroid (in
   octaves) and the 2-16 kHz third-octave levels relative to the 200 Hz-2 kHz body (dB).
6. :func:`ir_loss` -- for the reverb: per-band Schroeder energy-decay-curve distance of
   impulse responses (:func:`mastering.dsp.ir.band_edc_loss`, dB) and, given RT60 labels,
   :func:`rt60_loss` (octaves).

Band analysis is done on STFT bins (Hann window), which keeps the losses cheap on long clips;
per-band correlations and energies from the STFT equal the band-limited time-domain ones up
to the window's leakage. All functions take ``reduction="mean"`` (a scalar) or ``"none"``
(one value per song, ``[batch]``), which the evaluation uses as metrics.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from mastering import SAMPLE_RATE
from mastering.dsp.dynamics import masked_quantile
from mastering.dsp.ir import band_edc_loss
from mastering.dsp.stereo import to_mid_side
from mastering.features import crest_factor_db
from mastering.loudness import LUFS_OFFSET, channel_weights, k_weight

#: (n_fft, hop) pairs of the multi-resolution STFT loss.
MRSTFT_RESOLUTIONS: tuple[tuple[int, int], ...] = ((512, 128), (1024, 256), (2048, 512))
#: Mel analysis: FFT size, hop, number of bands, range (Hz).
MEL_FFT, MEL_HOP, N_MELS, MEL_RANGE_HZ = 2048, 512, 64, (20.0, 20_000.0)
#: Dynamic range (dB below the loudest bin of the reference) the log-mel comparison covers.
MEL_FLOOR_DB = 80.0
#: Band edges (Hz) of the dynamics and image analysis: < 150, 150-1k, 1k-5k, > 5 kHz.
BAND_EDGES_HZ: tuple[float, ...] = (150.0, 1_000.0, 5_000.0)
#: Analysis frame of the envelopes: 1024-point STFT, hop 480 (10 ms).
ENV_FFT, ENV_HOP = 1024, 480
#: Short-term window (frames of 10 ms) and its hop: 400 ms every 100 ms.
SHORT_FRAMES, SHORT_HOP = 40, 10
#: Frames (or windows) more than this below the loudest of the reference are ignored (dB).
GATE_DB = 50.0
#: Loudness-distribution quantiles compared by the dynamic loss.
RANGE_QUANTILES: tuple[float, ...] = (0.10, 0.50, 0.95)
#: Quantile of the 10 ms envelope used as the band's "peak" (envelope crest).
CREST_QUANTILE = 0.99
_EPS = 1e-10


def _reduce(v: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return v.mean()
    if reduction == "none":
        return v
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _check_pair(y: Tensor, ref: Tensor) -> None:
    if y.shape != ref.shape or y.dim() != 3 or y.shape[1] != 2:
        raise ValueError(
            f"expected y and ref shaped [batch, 2, samples] alike, got {list(y.shape)} and "
            f"{list(ref.shape)}"
        )


def _stft(x: Tensor, n_fft: int, hop: int) -> Tensor:
    """Complex STFT ``[batch, channels, bins, frames]`` (Hann, centred, computed in float32)."""
    b, c, n = x.shape
    flat = x.reshape(b * c, n).float()
    if n < n_fft:
        flat = F.pad(flat, (0, n_fft - n))
    win = torch.hann_window(n_fft, device=x.device, dtype=torch.float32)
    spec = torch.stft(flat, n_fft, hop, window=win, center=True, return_complex=True)
    return spec.reshape(b, c, *spec.shape[-2:])


def _power(spec: Tensor) -> Tensor:
    return spec.real.square() + spec.imag.square()


# -- 1. perceptual spectral -------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _mel_matrix(n_fft: int, n_mels: int, fmin: float, fmax: float, sr: int) -> Tensor:
    """Triangular mel filterbank ``[n_mels, bins]`` (HTK mel scale, peaks 1)."""

    def mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    pts = torch.linspace(mel(fmin), mel(fmax), n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (torch.pow(10.0, pts / 2595.0) - 1.0)
    f = torch.fft.rfftfreq(n_fft, 1.0 / sr).double()
    lo, ce, hi = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (f - lo) / (ce - lo).clamp(min=_EPS)
    down = (hi - f) / (hi - ce).clamp(min=_EPS)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


def log_mel_db(x: Tensor) -> Tensor:
    """Log-mel power spectrogram in dB: ``[batch, channels, N_MELS, frames]``."""
    p = _power(_stft(x, MEL_FFT, MEL_HOP))
    m = _mel_matrix(MEL_FFT, N_MELS, *MEL_RANGE_HZ, SAMPLE_RATE).to(x.device)
    return 10.0 * torch.log10(torch.einsum("mf,bcft->bcmt", m, p) + _EPS)


def mel_distance_db(y: Tensor, ref: Tensor, reduction: str = "mean") -> Tensor:
    """Mean absolute log-mel difference in dB, per channel of the inputs (pass mid/side or
    left/right), over the range the reference covers: both spectrograms are floored at
    :data:`MEL_FLOOR_DB` below the reference's loudest mel bin. 0 for identical inputs.

    Returns ``[batch]`` (``"none"``) or a scalar, dB."""
    a, b = log_mel_db(y), log_mel_db(ref)
    floor = b.amax(dim=(-2, -1), keepdim=True).detach() - MEL_FLOOR_DB
    d = (torch.maximum(a, floor) - torch.maximum(b, floor)).abs()
    return _reduce(d.mean(dim=(1, 2, 3)), reduction)


def mrstft_distance(
    y: Tensor,
    ref: Tensor,
    resolutions: Sequence[tuple[int, int]] = MRSTFT_RESOLUTIONS,
    reduction: str = "mean",
) -> Tensor:
    """Multi-resolution STFT distance: for each ``(n_fft, hop)``, spectral convergence
    ``||R - Y||_F / ||R||_F`` plus the mean absolute log-magnitude difference (natural log,
    magnitudes floored at 1e-5, i.e. -100 dBFS), averaged over resolutions and channels.
    Dimensionless; 0 for identical inputs (a 1 dB level error gives ~0.23).

    Args:
        y, ref: ``[batch, channels, samples]``.

    Returns:
        ``[batch]`` or a scalar."""
    total = 0.0
    for n_fft, hop in resolutions:
        ym = _power(_stft(y, n_fft, hop)).add(_EPS).sqrt()
        rm = _power(_stft(ref, n_fft, hop)).add(_EPS).sqrt()
        sc = (rm - ym).square().sum((-2, -1)).sqrt() / rm.square().sum((-2, -1)).sqrt().clamp(
            min=1e-8
        )
        log = (torch.log(ym.clamp(min=1e-5)) - torch.log(rm.clamp(min=1e-5))).abs().mean((-2, -1))
        total = total + (sc + log).mean(1)
    return _reduce(total / len(resolutions), reduction)


def perceptual_spectral_loss(
    y: Tensor, ref: Tensor, side_weight: float = 0.5, reduction: str = "mean"
) -> Tensor:
    """Perceptual spectral loss: ``mrstft + mel_db / 10`` on the mid channel plus
    ``side_weight`` times the same on the side channel (:func:`mrstft_distance`,
    :func:`mel_distance_db`). Dimensionless (the mel term in units of 10 dB); 0 for identical
    inputs."""
    _check_pair(y, ref)
    ym, rm = to_mid_side(y), to_mid_side(ref)
    out = 0.0
    for ch, w in ((0, 1.0), (1, side_weight)):
        a, b = ym[:, ch : ch + 1], rm[:, ch : ch + 1]
        out = out + w * (
            mrstft_distance(a, b, reduction="none") + mel_distance_db(a, b, "none") / 10.0
        )
    return _reduce(out, reduction)


# -- band analysis shared by 2 and 3 --------------------------------------------------------


def _band_masks(n_fft: int, edges: Sequence[float], device) -> Tensor:
    f = torch.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE).to(device)
    bounds = [0.0, *edges, SAMPLE_RATE]
    return torch.stack(
        [((f >= lo) & (f < hi)).float() for lo, hi in itertools.pairwise(bounds)]
    )  # [K, bins]


def band_envelopes_db(x: Tensor, edges: Sequence[float] = BAND_EDGES_HZ) -> Tensor:
    """Mid-channel energy per band per 10 ms frame, dB: ``[batch, bands, frames]``."""
    spec = _stft(to_mid_side(x)[:, :1], ENV_FFT, ENV_HOP)  # [b, 1, bins, frames]
    bands = torch.einsum("kf,bft->bkt", _band_masks(ENV_FFT, edges, x.device), _power(spec[:, 0]))
    return 10.0 * torch.log10(bands + _EPS)


# -- 2. multi-band dynamics -----------------------------------------------------------------


def dynamic_loss(
    y: Tensor,
    ref: Tensor,
    edges: Sequence[float] = BAND_EDGES_HZ,
    reduction: str = "mean",
) -> Tensor:
    """Multi-band dynamic loss, dB: the mean of, per band (``edges``),

    * ``envelope``: mean absolute difference of the 10 ms level envelopes after removing
      each one's long-term level (so loudness differences do not count; the shapes do: a
      compressor flattens the envelope, a transient shaper sharpens it);
    * ``crest``: difference of the envelope crest (99th-percentile 10 ms level minus the
      long-term level);
    * ``range``: mean difference of the 10th/50th/95th percentiles of the short-term (400 ms
      every 100 ms) levels minus the long-term level (short-vs-long loudness range);

    plus the difference of the broadband sample crest factors (peak over RMS). Frames and
    windows more than :data:`GATE_DB` below the reference's loudest are ignored. 0 for
    identical inputs.

    Returns ``[batch]`` or a scalar, dB."""
    _check_pair(y, ref)
    ey, er = band_envelopes_db(y, edges), band_envelopes_db(ref, edges)  # [b, K, T]
    active = (er > er.amax(-1, keepdim=True) - GATE_DB).detach()
    n = active.sum(-1).clamp(min=1)

    def long_term(e: Tensor) -> Tensor:  # energy mean over the active frames, dB
        p = torch.where(active, torch.pow(10.0, e / 10.0), torch.zeros_like(e))
        return 10.0 * torch.log10(p.sum(-1) / n + _EPS)

    ly, lr = long_term(ey), long_term(er)
    ry, rr = ey - ly.unsqueeze(-1), er - lr.unsqueeze(-1)
    env = torch.where(active, (ry - rr).abs(), torch.zeros_like(ry)).sum(-1) / n  # [b, K]
    b, k, t = ey.shape
    flat = active.reshape(b * k, t)
    crest = (
        masked_quantile(ry.reshape(b * k, t), flat, CREST_QUANTILE, 0.0)
        - masked_quantile(rr.reshape(b * k, t), flat, CREST_QUANTILE, 0.0)
    ).abs()

    def short_term(e: Tensor) -> Tensor:  # 400 ms windows of the energy, dB
        p = torch.pow(10.0, e / 10.0)
        if p.shape[-1] < SHORT_FRAMES:
            p = F.pad(p, (0, SHORT_FRAMES - p.shape[-1]), mode="replicate")
        return 10.0 * torch.log10(F.avg_pool1d(p, SHORT_FRAMES, SHORT_HOP) + _EPS)

    sy, sr = short_term(ey) - ly.unsqueeze(-1), short_term(er) - lr.unsqueeze(-1)
    s_active = (sr > sr.amax(-1, keepdim=True) - GATE_DB).detach()
    ts = sy.shape[-1]
    rng = 0.0
    for q in RANGE_QUANTILES:
        qy = masked_quantile(sy.reshape(b * k, ts), s_active.reshape(b * k, ts), q, 0.0)
        qr = masked_quantile(sr.reshape(b * k, ts), s_active.reshape(b * k, ts), q, 0.0)
        rng = rng + (qy - qr).abs()
    rng = rng / len(RANGE_QUANTILES)
    per_band = env + crest.reshape(b, k) + rng.reshape(b, k)  # [b, K]
    broadband = (crest_factor_db(y.float()) - crest_factor_db(ref.float())).abs()
    return _reduce((per_band.sum(-1) + broadband) / (k + 1), reduction)


# -- 3. stereo image --------------------------------------------------------------------------


def band_image(x: Tensor, edges: Sequence[float] = BAND_EDGES_HZ) -> tuple[Tensor, Tensor]:
    """Per-band L/R correlation ``[batch, bands]`` (-1..1) and side/mid energy ratio
    ``[batch, bands]`` (dB, floored at -40 dB) over the whole clip."""
    spec = _stft(x, ENV_FFT, ENV_HOP)  # [b, 2, bins, T]
    left, right = spec[:, 0], spec[:, 1]
    masks = _band_masks(ENV_FFT, edges, x.device)
    cross = torch.einsum("kf,bft->bk", masks, (left * right.conj()).real)
    pl = torch.einsum("kf,bft->bk", masks, _power(left))
    pr = torch.einsum("kf,bft->bk", masks, _power(right))
    corr = cross / torch.sqrt(pl * pr + _EPS)
    mid = torch.einsum("kf,bft->bk", masks, _power(left + right))
    side = torch.einsum("kf,bft->bk", masks, _power(left - right))
    ratio = 10.0 * torch.log10((side + _EPS) / (mid + _EPS))
    return corr, ratio.clamp(min=-40.0)


def image_loss(
    y: Tensor,
    ref: Tensor,
    edges: Sequence[float] = BAND_EDGES_HZ,
    ratio_weight: float = 0.1,
    phase_weight: float = 4.0,
    reduction: str = "mean",
) -> Tensor:
    """Binaural image loss, mean over bands of
    ``|corr_y - corr_ref| + ratio_weight * |ratio_y - ratio_ref| (dB) + phase_weight *
    relu(min(0, corr_ref) - corr_y)``: correlation and side/mid energy per band should match
    the reference, and correlation below zero (out of phase) where the reference is not is
    penalized extra. 0 for identical inputs.

    Returns ``[batch]`` or a scalar (correlation units; the ratio term counts 0.1 per dB)."""
    _check_pair(y, ref)
    cy, ry = band_image(y, edges)
    cr, rr = band_image(ref, edges)
    phase = F.relu(torch.clamp(cr, max=0.0) - cy)
    per = (cy - cr).abs() + ratio_weight * (ry - rr).abs() + phase_weight * phase
    return _reduce(per.mean(-1), reduction)


# -- 4. loudness ----------------------------------------------------------------------------


def k_loudness(x: Tensor) -> Tensor:
    """Differentiable ungated loudness in LUFS, ``[batch]``: BS.1770 K-weighting
    (:func:`mastering.loudness.k_weight`), channel-weighted mean square, ``-0.691 + 10 log10``,
    with a -120 LUFS floor instead of ``-inf`` for silence (finite gradients)."""
    y = k_weight(x.float())
    w = torch.tensor(channel_weights(x.shape[1]), device=x.device, dtype=y.dtype)
    power = y.square().mean(-1) @ w
    return LUFS_OFFSET + 10.0 * torch.log10(power + 1e-12)


def loudness_loss(
    y: Tensor, target_lufs: float | Tensor, reduction: str = "mean", delta_lu: float = 1.0
) -> Tensor:
    """Loudness consistency loss in LU: Huber distance (quadratic within ``delta_lu``, then
    linear) of :func:`k_loudness` of ``y`` from ``target_lufs`` (a number or ``[batch]``).
    0 when the output is at the target. Ungated: matches the gated integrated loudness of
    music without long silences to a few tenths of a LU."""
    lufs = k_loudness(y)
    target = torch.as_tensor(target_lufs, device=y.device, dtype=lufs.dtype).expand_as(lufs)
    d = (lufs - target).abs()
    huber = torch.where(d < delta_lu, 0.5 * d.square() / delta_lu, d - 0.5 * delta_lu)
    return _reduce(huber, reduction)


# -- 5. harmonic / brightness (exciter) -----------------------------------------------------


@functools.lru_cache(maxsize=4)
def _third_octave_masks(n_fft: int, lo: float, hi: float) -> Tensor:
    f = torch.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE)
    n = round(3 * math.log2(hi / lo))
    edges = [lo * 2.0 ** (i / 3.0) for i in range(n + 1)]
    return torch.stack([((f >= a) & (f < b)).float() for a, b in itertools.pairwise(edges)])


def harmonic_loss(y: Tensor, ref: Tensor, reduction: str = "mean") -> Tensor:
    """Harmonic-difference (perceived brightness) loss for the exciter:
    ``|log2(centroid_y / centroid_ref)|`` (octaves, mid channel, 100 Hz-20 kHz) plus
    ``mean_b |(L_b - body)_y - (L_b - body)_ref| / 10`` over third-octave bands ``b`` from
    2 to 16 kHz, where ``body`` is the 200 Hz-2 kHz level (dB). Level-independent; 0 for
    identical inputs.

    Returns ``[batch]`` or a scalar."""
    _check_pair(y, ref)
    n_fft, hop = 4096, 1024

    def analyse(x: Tensor) -> tuple[Tensor, Tensor]:
        p = _power(_stft(to_mid_side(x)[:, :1], n_fft, hop))[:, 0].mean(-1)  # [b, bins]
        f = torch.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE).to(x.device)
        sel = ((f >= 100.0) & (f <= 20_000.0)).float()
        centroid = (p * f * sel).sum(-1) / ((p * sel).sum(-1) + _EPS)
        body = ((f >= 200.0) & (f < 2_000.0)).float()
        body_db = 10.0 * torch.log10((p * body).sum(-1) / body.sum() + _EPS)
        masks = _third_octave_masks(n_fft, 2_000.0, 16_000.0).to(x.device)
        bands = 10.0 * torch.log10(p @ masks.T / masks.sum(-1) + _EPS)
        return torch.log2(centroid + 1.0), bands - body_db.unsqueeze(-1)

    cy, by = analyse(y)
    cr, br = analyse(ref)
    return _reduce((cy - cr).abs() + (by - br).abs().mean(-1) / 10.0, reduction)


# -- 6. impulse responses (reverb) ----------------------------------------------------------


def ir_loss(ir: Tensor, target: Tensor) -> Tensor:
    """IR-matching loss, dB: per-band Schroeder energy-decay-curve distance plus band energy
    shares (:func:`mastering.dsp.ir.band_edc_loss`). ``ir, target``: ``[batch, 2, T]``
    (zero-padded to a common length). 0 for identical IRs; a scalar."""
    return band_edc_loss(ir, target)


def rt60_loss(rt60_s: Tensor, target_s: Tensor, reduction: str = "mean") -> Tensor:
    """RT60 distance in octaves, ``mean |log2(rt60 / target)|`` over bands: ``rt60_s`` and
    ``target_s`` ``[batch, bands]`` in seconds (e.g. the reverb's ``rt60_s`` parameter and a
    room's measured per-band RT60). 0 when equal."""
    d = (torch.log2(rt60_s.clamp(min=1e-3)) - torch.log2(target_s.clamp(min=1e-3))).abs()
    return _reduce(d.mean(-1), reduction)


# -- the total ----------------------------------------------------------------------------


@dataclass
class LossWeights:
    """Weights of :class:`MasteringLoss`'s terms (0 switches a term off)."""

    spectral: float = 1.0
    dynamic: float = 0.1
    image: float = 0.5
    loudness: float = 0.1
    harmonic: float = 0.5


@dataclass
class MasteringLoss:
    """Weighted sum of the losses for a whole chain output against a reference master.

    ``loss(y, ref, target_lufs)`` -> ``(total, {name: value})`` with ``total`` a scalar tensor
    and the components detached floats (for logging). ``target_lufs`` defaults to the
    reference's own :func:`k_loudness`.
    """

    weights: LossWeights = field(default_factory=LossWeights)

    def __call__(
        self, y: Tensor, ref: Tensor, target_lufs: float | Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        w = self.weights
        if target_lufs is None:
            target_lufs = k_loudness(ref).detach()
        terms = {
            "spectral": (w.spectral, lambda: perceptual_spectral_loss(y, ref)),
            "dynamic": (w.dynamic, lambda: dynamic_loss(y, ref)),
            "image": (w.image, lambda: image_loss(y, ref)),
            "loudness": (w.loudness, lambda: loudness_loss(y, target_lufs)),
            "harmonic": (w.harmonic, lambda: harmonic_loss(y, ref)),
        }
        total = y.new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        for name, (weight, fn) in terms.items():
            if weight:
                v = fn()
                total = total + weight * v
                parts[name] = float(v.detach())
        return total, parts
