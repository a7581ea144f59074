"""Throughput of the DSP kernels in x real-time, on CPU (one thread) and, if present, a GPU.

Run: ``.venv/bin/python benchmarks/kernels.py [--seconds 180] [--repeats 3] [--batch 32]
[--device cpu|cuda|all]``

Signal: a music-like stereo 48 kHz song (default 3 minutes), batch 1 on CPU with
``torch.set_num_threads(1)``; on CUDA batch 1 and ``--batch`` (the song repeated). Each time is
the median of ``--repeats`` runs after one warm-up run (``torch.cuda.synchronize`` around
GPU runs). x-realtime = batch * song duration / seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from mastering.dsp.biquad import high_shelf_sos, highpass_sos
from mastering.dsp.crossover import split_bands
from mastering.dsp.fir import fft_convolve, frequency_sampled_filter
from mastering.dsp.iir import sosfilt
from mastering.dsp.sliding import sliding_max
from mastering.dsp.smoothing import envelope_follower, ltv_one_pole, one_pole, peak_hold_db
from mastering.dsp.stereo import from_mid_side, to_mid_side
from mastering.testsignals import music_like

SR = 48_000


def _oversample_kernel() -> Callable[[Tensor], Tensor] | None:
    try:
        from mastering.dsp.resample import oversample
    except ImportError:
        return None
    return lambda x: oversample(x, 4)


def kernels(x: Tensor) -> dict[str, Callable[[Tensor], object]]:
    """Name -> function of the song ``[batch, 2, T]`` (parameters built on its device)."""
    opts = {"dtype": x.dtype, "device": x.device}
    k_weighting = torch.stack(
        [
            high_shelf_sos(torch.tensor(1681.0, **opts), 4.0, 0.71),
            highpass_sos(torch.tensor(38.0, **opts), 0.5),
        ]
    )
    poles = torch.full_like(x, 0.999)
    eq_curve_db = 3.0 * torch.sin(torch.linspace(0, 6.0, 2049, **opts))  # 4095-tap FIR
    ir = torch.randn(1, 2, 3 * SR, generator=torch.Generator().manual_seed(0)).to(**opts)
    ir = ir * torch.exp(-torch.arange(3 * SR, **opts) / (0.5 * SR))
    table = {
        "sosfilt (K-weighting, 2 sections)": lambda s: sosfilt(s, k_weighting),
        "one_pole (10 ms)": lambda s: one_pole(s, time_ms=10.0),
        "ltv_one_pole": lambda s: ltv_one_pole(s, poles),
        "envelope_follower branching 5/100 ms": lambda s: envelope_follower(s.abs(), 5.0, 100.0),
        "envelope_follower decoupled 5/100 ms": lambda s: envelope_follower(
            s.abs(), 5.0, 100.0, mode="decoupled"
        ),
        "peak_hold_db (100 ms)": lambda s: peak_hold_db(s, 100.0),
        "sliding_max 5 ms (240)": lambda s: sliding_max(s.abs(), 240),
        "frequency_sampled_filter 4095 taps": lambda s: frequency_sampled_filter(
            s, eq_curve_db, in_db=True
        ),
        "fft_convolve 3 s stereo IR": lambda s: fft_convolve(s, ir),
        "crossover split_bands 3-band": lambda s: split_bands(s, [200.0, 2000.0]),
        "mid/side to + from": lambda s: from_mid_side(to_mid_side(s)),
    }
    oversample = _oversample_kernel()
    if oversample is not None:
        table["oversample 4x"] = oversample
    return table


def _median_time(fn: Callable[[], object], repeats: int, cuda: bool) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(song: Tensor, device: str, batch: int, repeats: int) -> list[tuple]:
    x = song.to(device).unsqueeze(0).expand(batch, -1, -1).contiguous()
    duration = song.shape[-1] / SR
    rows = []
    for name, fn in kernels(x).items():
        with torch.no_grad():
            seconds = _median_time(lambda f=fn: f(x), repeats, device == "cuda")
        rows.append((name, device, batch, seconds, batch * duration / seconds))
        print(f"{name:40s} {device:5s} {batch:5d} {seconds:9.4f} {rows[-1][-1]:11.1f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="song length (s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="GPU batch size")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    args = parser.parse_args()

    torch.set_num_threads(1)
    song = music_like(args.seconds, seed=1)  # [2, T] float32
    print(f"{'kernel':40s} {'device':5s} {'batch':>5s} {'seconds':>9s} {'x-realtime':>11s}")
    if args.device in ("cpu", "all"):
        run(song, "cpu", 1, args.repeats)
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        for batch in (1, args.batch):
            run(song, "cuda", batch, args.repeats)


if __name__ == "__main__":
    main()
