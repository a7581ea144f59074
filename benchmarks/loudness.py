"""Loudness-meter speed: ours (mastering.loudness) against pyloudnorm, on one CPU thread.

Run: ``.venv/bin/python benchmarks/loudness.py [--seconds 180] [--repeats 7] [--batch 32]
[--drift-minutes 60]``

For a music-like stereo 48 kHz signal (default 3 minutes) the timed candidates run
interleaved, round after round in one process (the machine may be shared: every round sees
the same load), after one warm-up call each; the table gives the median over ``--repeats``
rounds (seconds) and the speed-up over pyloudnorm is the median of the per-round ratios.

* pyloudnorm ``Meter(48000).integrated_loudness`` (scipy ``lfilter`` K-weighting in float64,
  then the gating);
* scipy ``sosfilt`` of the K-weighting alone (float64, the C direct form);
* ours: ``integrated_loudness`` (CPU: the float64 block-energy kernel,
  :mod:`mastering.dsp.block_energy`), the kernel alone, ``integrated_loudness`` through the
  torch ``sosfilt`` path (float32; what CUDA and autograd use), and the full ``measure``
  (integrated, LRA, momentary/short-term maxima, sample peak, true peak 4x).

If CUDA is available, GPU times of ``measure_batch`` and ``integrated_loudness`` at batch 1
and ``--batch`` follow. ``--drift-minutes N`` adds a stability check: N minutes of a 1 s
periodic signal, whose per-period sub-block energies must stay equal to float64 rounding.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from mastering import loudness as L
from mastering.dsp.block_energy import sosfilt_block_energy
from mastering.testsignals import music_like

SR = 48_000


def _interleaved(
    candidates: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Time every candidate once per round, ``repeats`` rounds, after one warm-up call each."""
    results = {name: fn() for name, fn in candidates.items()}
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times, results


def _gpu_rows(x: torch.Tensor, batch: int, repeats: int) -> list[tuple[str, float, str]]:
    rows = []
    name = torch.cuda.get_device_name()

    def synced(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            out = fn()
            torch.cuda.synchronize()
            return out

        return run

    for b in (1, batch):
        xb = x.cuda().unsqueeze(0).expand(b, -1, -1).contiguous()
        times, _ = _interleaved(
            {
                "integrated": synced(lambda xb=xb: L.integrated_loudness(xb).cpu()),
                "measure": synced(lambda xb=xb: L.measure_batch(xb)),
            },
            repeats,
        )
        t_i, t_m = statistics.median(times["integrated"]), statistics.median(times["measure"])
        rows.append((f"GPU {name} batch {b}: integrated_loudness", t_i, ""))
        rows.append((f"GPU {name} batch {b}: measure_batch", t_m, f"{t_m / b * 1e3:.1f} ms/song"))
        del xb
        torch.cuda.empty_cache()
    return rows


def _drift_check(minutes: float) -> str:
    """Max relative spread of the per-period sub-block energies over a long periodic signal."""
    t = np.arange(SR) / SR
    rng = np.random.default_rng(0)
    period = 0.5 * np.sin(2 * np.pi * 20 * t) + 0.1 * rng.standard_normal(SR)
    seconds = int(minutes * 60)
    x = torch.from_numpy(period.astype(np.float32)).repeat(seconds)
    t0 = time.perf_counter()
    e = sosfilt_block_energy(x, L.k_weighting_sos(SR), SR // 10).numpy().reshape(seconds, 10)
    elapsed = time.perf_counter() - t0
    spread = np.abs(e[2:] / e[1] - 1).max()
    return (
        f"{minutes:g} min mono periodic signal: per-period energies equal to {spread:.1e} "
        f"(relative), first vs last minute LUFS difference "
        f"{10 * np.log10(e[-60:].sum() / e[60:120].sum()):+.2e} LU; kernel {elapsed:.3f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="signal length (s)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (>= 5)")
    parser.add_argument("--batch", type=int, default=32, help="GPU batch size")
    parser.add_argument("--drift-minutes", type=float, default=0.0, help="stability check")
    args = parser.parse_args()

    torch.set_num_threads(1)
    x = music_like(args.seconds, seed=1)  # [2, samples] float32
    data = x.double().T.numpy().copy()  # pyloudnorm's layout: [samples, channels], float64
    sos = L.k_weighting_sos(SR)
    sos_np = sos.numpy()

    try:
        import pyloudnorm
    except ImportError:
        pyloudnorm = None
    from scipy import signal as sps

    candidates: dict[str, Callable[[], object]] = {}
    if pyloudnorm is not None:
        meter = pyloudnorm.Meter(SR)
        candidates["pyloudnorm"] = lambda: meter.integrated_loudness(data)
    x64 = x.double().numpy()
    candidates["scipy"] = lambda: sps.sosfilt(sos_np, x64, axis=-1)
    candidates["ours"] = lambda: L.integrated_loudness(x).item()
    candidates["kernel"] = lambda: sosfilt_block_energy(x, sos, SR // 10)
    candidates["torch"] = lambda: L._integrated_from_blocks(
        L._window_power(
            L._subblock_energies(x.unsqueeze(0), SR, torch.float32, kernel=False),
            L._weights(None, 2, x),
            L.MOMENTARY_SUBBLOCKS,
        )
    ).item()
    candidates["measure"] = lambda: L.measure(x)
    times, res = _interleaved(candidates, args.repeats)
    med = {name: statistics.median(ts) for name, ts in times.items()}

    rep = res["measure"]
    rows: list[tuple[str, float, str]] = []
    if "pyloudnorm" in med:
        rows.append(
            ("pyloudnorm integrated_loudness", med["pyloudnorm"], f"{res['pyloudnorm']:.3f} LUFS")
        )
    rows += [
        ("scipy sosfilt, K-weighting only (float64)", med["scipy"], ""),
        ("ours integrated_loudness (CPU kernel)", med["ours"], f"{res['ours']:.3f} LUFS"),
        ("ours K-weighted 100 ms energies (kernel alone)", med["kernel"], "float64"),
        (
            "ours integrated_loudness, torch sosfilt path (f32)",
            med["torch"],
            f"{res['torch']:.3f} LUFS",
        ),
        (
            "ours measure (I, LRA, M/S max, sample + true peak 4x)",
            med["measure"],
            f"LRA {rep.lra_lu:.2f} LU, TP {rep.true_peak_dbtp:.2f} dBTP",
        ),
    ]
    if torch.cuda.is_available():
        rows += _gpu_rows(x, args.batch, args.repeats)

    width = max(len(r[0]) for r in rows)
    print(f"{args.seconds:g} s stereo {SR} Hz music-like signal, torch {torch.__version__}")
    print(
        f"CPU, one thread (torch.set_num_threads(1); numba kernel single-threaded): median of "
        f"{args.repeats} interleaved rounds after a warm-up\n"
    )
    print(f"{'what':<{width}}  {'time s':>8}  result")
    for label, t, note in rows:
        print(f"{label:<{width}}  {t:8.4f}  {note}")
    if "pyloudnorm" in times:
        ratios = [p / o for p, o in zip(times["pyloudnorm"], times["ours"], strict=True)]
        print(
            f"\nspeed-up over pyloudnorm (integrated loudness): {statistics.median(ratios):.1f}x "
            f"(per-round range {min(ratios):.1f}-{max(ratios):.1f}x)"
        )
    kernel_vs_scipy = [s / k for s, k in zip(times["scipy"], times["kernel"], strict=True)]
    print(
        "K-weighting + energies vs scipy sosfilt (filtering alone): "
        f"{statistics.median(kernel_vs_scipy):.1f}x"
    )
    if args.drift_minutes > 0:
        print(_drift_check(args.drift_minutes))


if __name__ == "__main__":
    main()
