"""RBJ Audio-EQ-Cookbook biquad designs and the frequency response of SOS cascades.

Every design takes its frequency (Hz), gain (dB) and Q as numbers or tensors that broadcast
together, is differentiable with respect to all of them, and returns normalized
second-order-section rows ``[..., 6]`` = ``b0, b1, b2, 1, a1, a2`` (scipy's layout, a0 = 1).
Stack rows into a cascade ``[..., n_sections, 6]`` (``torch.stack(rows, -2)``; chain cascades
with :func:`cascade_sos`) and filter with
:func:`mastering.dsp.iir.sosfilt`.

Formulas: R. Bristow-Johnson, "Cookbook formulae for audio EQ biquad filter coefficients"
(bilinear transform with frequency pre-warping, ``w0 = 2 pi f0 / fs``,
``alpha = sin(w0) / (2 Q)``, ``A = 10^(gain_db / 40)``). Frequencies must lie in
``(0, sample_rate / 2)`` and Q must be positive.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mastering import SAMPLE_RATE
from mastering.dsp._util import TensorLike, as_tensors

#: Q of a second-order Butterworth section (maximally flat).
BUTTERWORTH_Q = 1.0 / math.sqrt(2.0)

#: A pass-through section, for padding cascades to a common length.
IDENTITY_SECTION = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)


def _prewarp(freq_hz: Tensor, q: Tensor, sample_rate: float) -> tuple[Tensor, Tensor]:
    """``(cos(w0), alpha)`` of the cookbook for centre/corner frequency and Q."""
    w0 = 2.0 * math.pi * freq_hz / sample_rate
    return torch.cos(w0), torch.sin(w0) / (2.0 * q)


def _normalized(b0: Tensor, b1: Tensor, b2: Tensor, a0: Tensor, a1: Tensor, a2: Tensor) -> Tensor:
    """Stack one section's coefficients into a row ``[..., 6]`` divided by ``a0``."""
    b0, b1, b2, a0, a1, a2 = torch.broadcast_tensors(b0, b1, b2, a0, a1, a2)
    return torch.stack([b0, b1, b2, a0, a1, a2], dim=-1) / a0.unsqueeze(-1)


def _amplitude(gain_db: Tensor) -> Tensor:
    """The cookbook's ``A = 10^(gain_db / 40)`` (square root of the linear gain)."""
    return torch.pow(10.0, gain_db / 40.0)


def peaking_sos(
    freq_hz: TensorLike, gain_db: TensorLike, q: TensorLike, sample_rate: float = SAMPLE_RATE
) -> Tensor:
    """Peaking (bell) EQ section: ``gain_db`` at ``freq_hz``, 0 dB far away.

    Args:
        freq_hz: centre frequency in Hz, ``[...]`` or a number.
        gain_db: gain at the centre in dB.
        q: quality factor (bandwidth = ``freq_hz / q`` between the mid-gain points).
        sample_rate: in Hz.

    Returns:
        ``[..., 6]`` normalized section (broadcast shape of the parameters).
    """
    freq_hz, gain_db, q = as_tensors(freq_hz, gain_db, q)
    cos_w0, alpha = _prewarp(freq_hz, q, sample_rate)
    A = _amplitude(gain_db)
    return _normalized(
        1.0 + alpha * A,
        -2.0 * cos_w0,
        1.0 - alpha * A,
        1.0 + alpha / A,
        -2.0 * cos_w0,
        1.0 - alpha / A,
    )


def _shelf(freq_hz: TensorLike, gain_db: TensorLike, q: TensorLike, sample_rate: float, high: bool):
    """Cookbook shelf; ``high`` flips the sign of the cosine terms (and of b1/a1)."""
    freq_hz, gain_db, q = as_tensors(freq_hz, gain_db, q)
    cos_w0, alpha = _prewarp(freq_hz, q, sample_rate)
    A = _amplitude(gain_db)
    sign = -1.0 if high else 1.0
    c = sign * cos_w0
    two_sqrt_a_alpha = 2.0 * torch.sqrt(A) * alpha
    b0 = A * ((A + 1) - (A - 1) * c + two_sqrt_a_alpha)
    b1 = 2.0 * sign * A * ((A - 1) - (A + 1) * c)
    b2 = A * ((A + 1) - (A - 1) * c - two_sqrt_a_alpha)
    a0 = (A + 1) + (A - 1) * c + two_sqrt_a_alpha
    a1 = -2.0 * sign * ((A - 1) + (A + 1) * c)
    a2 = (A + 1) + (A - 1) * c - two_sqrt_a_alpha
    return _normalized(b0, b1, b2, a0, a1, a2)


def low_shelf_sos(
    freq_hz: TensorLike,
    gain_db: TensorLike,
    q: TensorLike = BUTTERWORTH_Q,
    sample_rate: float = SAMPLE_RATE,
) -> Tensor:
    """Low shelf: ``gain_db`` below ``freq_hz`` (half the gain, in dB, at ``freq_hz``).

    Args:
        freq_hz: shelf midpoint in Hz.
        gain_db: low-frequency gain in dB.
        q: shelf Q (``1/sqrt(2)``: steepest without overshoot, cookbook slope S = 1).
        sample_rate: in Hz.

    Returns:
        ``[..., 6]`` normalized section.
    """
    return _shelf(freq_hz, gain_db, q, sample_rate, high=False)


def high_shelf_sos(
    freq_hz: TensorLike,
    gain_db: TensorLike,
    q: TensorLike = BUTTERWORTH_Q,
    sample_rate: float = SAMPLE_RATE,
) -> Tensor:
    """High shelf: ``gain_db`` above ``freq_hz`` (half the gain, in dB, at ``freq_hz``).

    Args:
        freq_hz: shelf midpoint in Hz.
        gain_db: high-frequency gain in dB.
        q: shelf Q (``1/sqrt(2)``: cookbook slope S = 1).
        sample_rate: in Hz.

    Returns:
        ``[..., 6]`` normalized section.
    """
    return _shelf(freq_hz, gain_db, q, sample_rate, high=True)


def lowpass_sos(
    freq_hz: TensorLike, q: TensorLike = BUTTERWORTH_Q, sample_rate: float = SAMPLE_RATE
) -> Tensor:
    """Second-order low-pass (12 dB/octave); ``q = 1/sqrt(2)``: Butterworth, -3 dB at ``freq_hz``.

    Returns:
        ``[..., 6]`` normalized section.
    """
    freq_hz, q = as_tensors(freq_hz, q)
    cos_w0, alpha = _prewarp(freq_hz, q, sample_rate)
    b0 = torch.sin(math.pi * freq_hz / sample_rate).square()  # (1 - cos w0) / 2, accurately
    return _normalized(b0, 2.0 * b0, b0, 1.0 + alpha, -2.0 * cos_w0, 1.0 - alpha)


def highpass_sos(
    freq_hz: TensorLike, q: TensorLike = BUTTERWORTH_Q, sample_rate: float = SAMPLE_RATE
) -> Tensor:
    """Second-order high-pass (12 dB/octave); ``q = 1/sqrt(2)``: Butterworth, -3 dB at ``freq_hz``.

    Returns:
        ``[..., 6]`` normalized section.
    """
    freq_hz, q = as_tensors(freq_hz, q)
    cos_w0, alpha = _prewarp(freq_hz, q, sample_rate)
    b0 = torch.cos(math.pi * freq_hz / sample_rate).square()  # (1 + cos w0) / 2
    return _normalized(b0, -2.0 * b0, b0, 1.0 + alpha, -2.0 * cos_w0, 1.0 - alpha)


def bandpass_sos(
    freq_hz: TensorLike, q: TensorLike = BUTTERWORTH_Q, sample_rate: float = SAMPLE_RATE
) -> Tensor:
    """Band-pass with 0 dB peak gain at ``freq_hz`` (bandwidth ``freq_hz / q``).

    Returns:
        ``[..., 6]`` normalized section.
    """
    freq_hz, q = as_tensors(freq_hz, q)
    cos_w0, alpha = _prewarp(freq_hz, q, sample_rate)
    zero = torch.zeros_like(alpha)
    return _normalized(alpha, zero, -alpha, 1.0 + alpha, -2.0 * cos_w0, 1.0 - alpha)


def notch_sos(
    freq_hz: TensorLike, q: TensorLike = BUTTERWORTH_Q, sample_rate: float = SAMPLE_RATE
) -> Tensor:
    """Notch (band-stop) with a zero at ``freq_hz`` (bandwidth ``freq_hz / q``).

    Returns:
        ``[..., 6]`` normalized section.
    """
    freq_hz, q = as_tensors(freq_hz, q)
    cos_w0, alpha = _prewarp(freq_hz, q, sample_rate)
    one = torch.ones_like(alpha)
    return _normalized(one, -2.0 * cos_w0, one, 1.0 + alpha, -2.0 * cos_w0, 1.0 - alpha)


def allpass_sos(
    freq_hz: TensorLike, q: TensorLike = BUTTERWORTH_Q, sample_rate: float = SAMPLE_RATE
) -> Tensor:
    """Second-order all-pass: unit magnitude, phase -180 degrees at ``freq_hz``.

    Returns:
        ``[..., 6]`` normalized section.
    """
    freq_hz, q = as_tensors(freq_hz, q)
    cos_w0, alpha = _prewarp(freq_hz, q, sample_rate)
    return _normalized(
        1.0 - alpha, -2.0 * cos_w0, 1.0 + alpha, 1.0 + alpha, -2.0 * cos_w0, 1.0 - alpha
    )


def identity_sos(*shape: int, like: Tensor | None = None) -> Tensor:
    """Pass-through sections ``[*shape, 6]`` (``b0 = a0 = 1``), on ``like``'s dtype/device."""
    ref = like if like is not None else torch.empty(0)
    row = torch.tensor(IDENTITY_SECTION, dtype=ref.dtype, device=ref.device)
    return row.expand(*shape, 6)


def cascade_sos(*cascades: Tensor) -> Tensor:
    """Chain cascades in series: each argument is ``[..., n_i, 6]`` (a single row ``[..., 6]``
    must be given as ``row.unsqueeze(-2)``: a ``[k, 6]`` tensor is a cascade of ``k``
    sections); leading dims broadcast. Returns ``[..., sum n_i, 6]``."""
    lead = torch.broadcast_shapes(*(c.shape[:-2] for c in cascades))
    return torch.cat([c.expand(*lead, c.shape[-2], 6) for c in cascades], dim=-2)


def rfft_frequencies(n_fft: int, sample_rate: float = SAMPLE_RATE, like: Tensor | None = None):
    """Frequencies in Hz of the ``n_fft // 2 + 1`` rfft bins (on ``like``'s dtype/device)."""
    ref = like if like is not None else torch.empty(0)
    return torch.arange(n_fft // 2 + 1, dtype=ref.dtype, device=ref.device) * (sample_rate / n_fft)


def _angular_grid(
    sos: Tensor, n_fft: int | None, sample_rate: float, frequencies_hz: Tensor | None
) -> Tensor:
    """Normalized angular frequencies ``w = 2 pi f / fs`` (rad/sample) to evaluate at."""
    if frequencies_hz is None:
        if n_fft is None:
            raise ValueError("give n_fft or frequencies_hz")
        return torch.arange(n_fft // 2 + 1, dtype=sos.dtype, device=sos.device) * (
            2.0 * math.pi / n_fft
        )
    return frequencies_hz.to(sos) * (2.0 * math.pi / sample_rate)


def _polynomial_on_circle(c0: Tensor, c1: Tensor, c2: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Real and imaginary parts of ``c0 + c1 e^{-jw} + c2 e^{-2jw}``; ``c* [..., 1]``, ``w [F]``."""
    real = c0 + c1 * torch.cos(w) + c2 * torch.cos(2.0 * w)
    imag = -(c1 * torch.sin(w) + c2 * torch.sin(2.0 * w))
    return real, imag


def _section_parts(sos: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Numerator and denominator (real, imag) of every section on the grid: ``[..., S, F]``."""
    b0, b1, b2, a0, a1, a2 = (c.unsqueeze(-1) for c in sos.unbind(-1))
    num_re, num_im = _polynomial_on_circle(b0, b1, b2, w)
    den_re, den_im = _polynomial_on_circle(a0, a1, a2, w)
    return num_re, num_im, den_re, den_im


def sos_response(
    sos: Tensor,
    n_fft: int | None = None,
    sample_rate: float = SAMPLE_RATE,
    *,
    frequencies_hz: Tensor | None = None,
) -> Tensor:
    """Complex frequency response of a cascade, the product over its sections.

    Args:
        sos: ``[..., n_sections, 6]`` (``b0, b1, b2, a0, a1, a2``).
        n_fft: evaluate on the rfft grid, ``n_fft // 2 + 1`` bins from 0 Hz to ``sample_rate/2``.
        sample_rate: in Hz (used with ``frequencies_hz``).
        frequencies_hz: ``[F]`` frequencies in Hz to evaluate at instead of the rfft grid.

    Returns:
        complex ``[..., n_fft // 2 + 1]`` (or ``[..., F]``), differentiable w.r.t. ``sos``.
        Matches ``scipy.signal.sosfreqz(sos, worN=n_fft // 2 + 1)`` on the rfft grid.
    """
    w = _angular_grid(sos, n_fft, sample_rate, frequencies_hz)
    num_re, num_im, den_re, den_im = _section_parts(sos, w)
    ratio = torch.complex(num_re, num_im) / torch.complex(den_re, den_im)  # [..., S, F]
    response = ratio[..., 0, :]
    for section in range(1, ratio.shape[-2]):
        response = response * ratio[..., section, :]
    return response


def sos_magnitude_db(
    sos: Tensor,
    n_fft: int | None = None,
    sample_rate: float = SAMPLE_RATE,
    *,
    frequencies_hz: Tensor | None = None,
    floor_db: float = -240.0,
) -> Tensor:
    """Magnitude response of a cascade in dB, computed in real arithmetic (gradient-friendly).

    Args:
        sos, n_fft, sample_rate, frequencies_hz: as for :func:`sos_response`.
        floor_db: each section's numerator power is floored at this level (dB re 1) so exact
            zeros (a notch centre, a low-pass at Nyquist) give a finite value and gradient.

    Returns:
        real ``[..., n_fft // 2 + 1]`` (or ``[..., F]``) in dB, the sum over sections.
    """
    w = _angular_grid(sos, n_fft, sample_rate, frequencies_hz)
    num_re, num_im, den_re, den_im = _section_parts(sos, w)
    floor = 10.0 ** (floor_db / 10.0)
    num_power = num_re.square() + num_im.square() + floor
    den_power = den_re.square() + den_im.square()
    return 10.0 * (torch.log10(num_power) - torch.log10(den_power)).sum(dim=-2)
