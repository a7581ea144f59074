"""Loudness-meter speed: ours (mastering.loudness) against pyloudnorm, on one CPU thread.

Run: ``.venv/bin/python benchmarks/loudness.py [--seconds 180] [--repeats 3] [--batch 32]``

Prints a table for a music-like stereo 48 kHz signal (default 3 minutes): pyloudnorm's
``Meter(48000).integrated_loudness``, our ``integrated_loudness`` (float32 and float64
K-weighting), the ratio, our full ``measure`` (integrated, LRA, momentary/short-term maxima,
sample peak, true peak 4x), and, if CUDA is available, GPU times of ``measure_batch`` and
``integrated_loudness`` at batch 1 and ``--batch``. Times are the median of ``--repeats`` runs
after one warm-up run (seconds).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from mastering import loudness as L
from mastering.testsignals import music_like

SR = 48_000


def _time(fn: Callable[[], object], repeats: int, sync: bool = False) -> tuple[float, object]:
    result = fn()  # warm-up (allocations, cached filter designs)
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="signal length (s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="GPU batch size")
    args = parser.parse_args()

    torch.set_num_threads(1)
    x = music_like(args.seconds, seed=1)  # [2, samples] float32
    rows: list[tuple[str, float, str]] = []

    try:
        import pyloudnorm

        data = x.double().T.numpy()
        meter = pyloudnorm.Meter(SR)
        t_ref, ref = _time(lambda: meter.integrated_loudness(data), args.repeats)
        rows.append(("pyloudnorm integrated_loudness", t_ref, f"{ref:.3f} LUFS"))
    except ImportError:
        t_ref = float("nan")

    t32, i32 = _time(lambda: L.integrated_loudness(x).item(), args.repeats)
    rows.append(("ours integrated_loudness (float32 K-weighting)", t32, f"{i32:.3f} LUFS"))
    t64, i64 = _time(lambda: L.integrated_loudness(x, precision=torch.float64).item(), args.repeats)
    rows.append(("ours integrated_loudness (float64 K-weighting)", t64, f"{i64:.3f} LUFS"))
    t_m, rep = _time(lambda: L.measure(x), args.repeats)
    rows.append(
        (
            "ours measure (I, LRA, M/S max, sample + true peak 4x)",
            t_m,
            f"LRA {rep.lra_lu:.2f} LU, TP {rep.true_peak_dbtp:.2f} dBTP",
        )
    )

    gpu_rows: list[tuple[str, float, str]] = []
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for batch in (1, args.batch):
            xb = x.cuda().unsqueeze(0).expand(batch, -1, -1).contiguous()
            t_gi, _ = _time(lambda xb=xb: L.integrated_loudness(xb).cpu(), args.repeats, True)
            t_gm, _ = _time(lambda xb=xb: L.measure_batch(xb), args.repeats, True)
            per = f"{t_gm / batch * 1000:.1f} ms/song measure"
            gpu_rows.append((f"GPU {name} batch {batch}: integrated_loudness", t_gi, ""))
            gpu_rows.append((f"GPU {name} batch {batch}: measure_batch", t_gm, per))
            del xb
            torch.cuda.empty_cache()

    width = max(len(r[0]) for r in rows + gpu_rows)
    print(f"{args.seconds:g} s stereo {SR} Hz music-like signal, torch {torch.__version__}, ")
    print(f"CPU: torch.set_num_threads(1); median of {args.repeats} runs after a warm-up\n")
    print(f"{'what':<{width}}  {'time s':>8}  result")
    for label, t, note in rows + gpu_rows:
        print(f"{label:<{width}}  {t:8.4f}  {note}")
    print(f"\nspeed-up over pyloudnorm (integrated, float32): {t_ref / t32:.1f}x")
    print(f"speed-up over pyloudnorm (integrated, float64): {t_ref / t64:.1f}x")


if __name__ == "__main__":
    main()
