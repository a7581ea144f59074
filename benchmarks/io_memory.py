"""Peak memory and throughput of Lacquer's audio I/O on a long file.

Writes a stereo 44.1 kHz 24-bit WAV (10 minutes by default) to a temp folder, then, in fresh
subprocesses so each peak RSS is its own:

* ``read_audio``        whole file -> float32 [2, n] at 48 kHz (soxr VHQ)
* ``iter_audio_blocks`` same, streamed in 1 s blocks that are dropped at once
* ``write_audio``       the 48 kHz tensor -> wav24 at 48 kHz, and -> wav16 at 44.1 kHz
                        (resampled, TPDF-dithered); run after ``read_audio`` in its process

Peak RSS is ``resource.getrusage(RUSAGE_SELF).ru_maxrss``; "baseline" is the peak after
importing torch/soundfile/soxr and a tiny warm-up read. "copies" is the growth over baseline
divided by the size of one float32 48 kHz stereo copy of the signal.

Usage: ``.venv/bin/python benchmarks/io_memory.py [--minutes 10] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SOURCE_RATE = 44_100
INTERNAL_RATE = 48_000
MIB = 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the test file")
    parser.add_argument("--keep", type=Path, help="folder to write into and keep (default: temp)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "WAV"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child[0], Path(args.child[1]))))
        return 0
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run_benchmark(args.keep, args.minutes)
    with tempfile.TemporaryDirectory(prefix="lacquer-io-bench-") as folder:
        return run_benchmark(Path(folder), args.minutes)


def run_benchmark(folder: Path, minutes: float) -> int:
    source = folder / "source_44k1_24bit.wav"
    frames = int(minutes * 60 * SOURCE_RATE)
    started = time.perf_counter()
    write_test_wav(source, frames)
    print(
        f"test file: {source.name}, {minutes:g} min stereo 44.1 kHz 24-bit, "
        f"{source.stat().st_size / MIB:.0f} MiB (made in {time.perf_counter() - started:.1f} s)"
    )
    duration_s = frames / SOURCE_RATE
    one_copy = 2 * 4 * round(frames * INTERNAL_RATE / SOURCE_RATE)
    rows = [*child_results("read+write", source), *child_results("stream", source)]
    print_table(rows, duration_s, one_copy)
    return 0


def write_test_wav(path: Path, frames: int) -> None:
    """Noise plus a 1 kHz tone at about -12 dBFS, written in 10 s blocks (bounded memory)."""
    rng = np.random.default_rng(0)
    block = 10 * SOURCE_RATE
    with sf.SoundFile(str(path), "w", SOURCE_RATE, 2, "PCM_24", format="WAV") as f:
        for start in range(0, frames, block):
            n = min(block, frames - start)
            t = (start + np.arange(n)) / SOURCE_RATE
            tone = 0.2 * np.sin(2 * np.pi * 1000.0 * t)[:, None]
            f.write((tone + 0.05 * rng.standard_normal((n, 2))).astype(np.float32))


def child_results(mode: str, source: Path) -> list[dict]:
    command = [sys.executable, __file__, "--child", mode, str(source)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child {mode!r} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_child(mode: str, source: Path) -> list[dict]:
    """Runs in a fresh interpreter; returns one row per measured stage."""
    import torch  # noqa: F401  (part of the baseline)

    from mastering.io import iter_audio_blocks, read_audio, write_audio

    warm_up(source.parent, read_audio, write_audio)
    rows = [{"stage": "baseline (imports, warm-up)", "seconds": None, "peak": peak_rss()}]
    if mode == "stream":
        started = time.perf_counter()
        samples = sum(block.shape[1] for block in iter_audio_blocks(source, INTERNAL_RATE))
        rows.append(row("iter_audio_blocks (1 s blocks)", started, samples))
        return rows
    started = time.perf_counter()
    audio, _ = read_audio(source)
    rows.append(row("read_audio -> 48k float32", started, audio.shape[1]))
    started = time.perf_counter()
    write_audio(source.parent / "out_48k.wav", audio, format="wav24")
    rows.append(row("write_audio wav24 @ 48k", started, audio.shape[1]))
    started = time.perf_counter()
    write_audio(source.parent / "out_44k1.wav", audio, out_rate=SOURCE_RATE, format="wav16")
    rows.append(row("write_audio wav16 @ 44.1k (dither)", started, audio.shape[1]))
    return rows


def warm_up(folder: Path, read_audio, write_audio) -> None:
    """Loads codecs and the resampler once so the baseline excludes library start-up."""
    tiny = folder / "warm_up.wav"
    sf.write(str(tiny), np.zeros((4410, 2), np.float32), SOURCE_RATE, subtype="PCM_24")
    audio, _ = read_audio(tiny)
    write_audio(tiny, audio, out_rate=SOURCE_RATE, format="wav16")


def row(stage: str, started: float, samples_48k: int) -> dict:
    return {
        "stage": stage,
        "seconds": time.perf_counter() - started,
        "audio_s": samples_48k / INTERNAL_RATE,
        "peak": peak_rss(),
    }


def peak_rss() -> int:
    """Peak resident set size of this process in bytes (ru_maxrss is KiB on Linux)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def print_table(rows: list[dict], duration_s: float, one_copy: int) -> None:
    print(f"one float32 48 kHz stereo copy: {one_copy / MIB:.0f} MiB; audio: {duration_s:.0f} s")
    header = f"{'stage':<38}{'time s':>8}{'x RT':>8}{'peak RSS MiB':>14}{'+ MiB':>9}{'copies':>8}"
    print(header)
    print("-" * len(header))
    baseline = 0
    for r in rows:
        if r["seconds"] is None:
            baseline = r["peak"]
            timing = f"{'-':>8}{'-':>8}"
        else:
            timing = f"{r['seconds']:>8.2f}{duration_s / r['seconds']:>8.0f}"
        growth = r["peak"] - baseline
        print(
            f"{r['stage']:<38}{timing}{r['peak'] / MIB:>14.0f}"
            f"{growth / MIB:>9.0f}{growth / one_copy:>8.2f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
