"""Differentiable DSP kernels: plain functions over tensors shaped [batch, channels, samples].

Like ``torch.nn.functional``: no modules, no state objects; recursive kernels take and return
an explicit ``state`` for chunked streaming. Float32 at 48 kHz by default, CPU or CUDA.
"""

from mastering.dsp.biquad import (
    BUTTERWORTH_Q,
    allpass_sos,
    bandpass_sos,
    cascade_sos,
    high_shelf_sos,
    highpass_sos,
    identity_sos,
    low_shelf_sos,
    lowpass_sos,
    notch_sos,
    peaking_sos,
    rfft_frequencies,
    sos_magnitude_db,
    sos_response,
)
from mastering.dsp.fir import design_frequency_sampled_fir, fft_convolve, frequency_sampled_filter
from mastering.dsp.sliding import sliding_max, sliding_min
from mastering.dsp.stereo import correlation, from_mid_side, side_to_mid_ratio_db, to_mid_side

__all__ = [
    "BUTTERWORTH_Q",
    "allpass_sos",
    "bandpass_sos",
    "cascade_sos",
    "correlation",
    "design_frequency_sampled_fir",
    "fft_convolve",
    "frequency_sampled_filter",
    "from_mid_side",
    "high_shelf_sos",
    "highpass_sos",
    "identity_sos",
    "low_shelf_sos",
    "lowpass_sos",
    "notch_sos",
    "peaking_sos",
    "rfft_frequencies",
    "side_to_mid_ratio_db",
    "sliding_max",
    "sliding_min",
    "sos_magnitude_db",
    "sos_response",
    "to_mid_side",
]

# Modules that need the IIR core (and modules owned by others) are re-exported only once they
# exist; the lead finalizes this list.
try:
    from mastering.dsp.iir import sos_to_statespace, sosfilt
except ImportError:  # pragma: no cover - iir.py not written yet
    pass
else:
    from mastering.dsp.crossover import crossover_band_sos, linkwitz_riley_sos, split_bands
    from mastering.dsp.smoothing import (
        envelope_follower,
        first_order_recurrence,
        ltv_one_pole,
        one_pole,
        peak_hold_db,
        time_constant_to_coeff,
    )

    __all__ += [
        "crossover_band_sos",
        "envelope_follower",
        "first_order_recurrence",
        "linkwitz_riley_sos",
        "ltv_one_pole",
        "one_pole",
        "peak_hold_db",
        "sos_to_statespace",
        "sosfilt",
        "split_bands",
        "time_constant_to_coeff",
    ]

try:
    from mastering.dsp.resample import downsample, max_abs_oversampled, oversample
except ImportError:  # pragma: no cover - resample.py not written yet
    pass
else:
    __all__ += ["downsample", "max_abs_oversampled", "oversample"]
