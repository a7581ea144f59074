"""Full-chain speed: Lacquer vs a comparable pedalboard chain and matchering, same song, same run.

    .venv/bin/python benchmarks/chain.py [--seconds 180] [--gpu-batches 1,8,32] [--skip-peers]
        [--skip-cpu]

CPU rows use one thread (``torch.set_num_threads(1)``); pedalboard runs its chain (3 EQ bands,
compressor, reverb, distortion, gain, limiter) on the same 3-minute stereo 48 kHz song;
matchering masters it against a reference made from it. GPU rows (when CUDA is present) give
seconds per batch, songs per second and x real time at each batch size. Peak RSS of the
process is printed at the end.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mastering.chain import Chain
from mastering.conditioning import Conditioning
from mastering.testsignals import music_like

SR = 48_000


def timed(fn, repeats: int = 1) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def pedalboard_chain():
    import pedalboard as pb

    return pb.Pedalboard(
        [
            pb.LowShelfFilter(cutoff_frequency_hz=100, gain_db=2.0),
            pb.PeakFilter(cutoff_frequency_hz=1000, gain_db=-1.5, q=1.0),
            pb.HighShelfFilter(cutoff_frequency_hz=8000, gain_db=2.0),
            pb.Compressor(threshold_db=-18, ratio=3, attack_ms=10, release_ms=120),
            pb.Reverb(room_size=0.3, wet_level=0.08, dry_level=0.92),
            pb.Distortion(drive_db=3),
            pb.Gain(gain_db=4),
            pb.Limiter(threshold_db=-1.0, release_ms=100),
        ]
    )


def run_matchering(audio: np.ndarray) -> float:
    import matchering as mg
    import soundfile as sf

    with tempfile.TemporaryDirectory() as d:
        target, ref, out = Path(d, "t.wav"), Path(d, "r.wav"), Path(d, "o.wav")
        sf.write(target, audio.T, SR, subtype="FLOAT")
        sf.write(ref, np.clip(audio.T * 2.0, -1, 1), SR, subtype="FLOAT")
        mg.log(default_handler=lambda *_: None)
        t = time.perf_counter()
        mg.process(target=str(target), reference=str(ref), results=[mg.pcm24(str(out))])
        return time.perf_counter() - t


STAGE_BATCH = 8


def stage_breakdown(chain: Chain, x, cond) -> list[tuple[str, float]]:
    """Seconds per stage (prediction + DSP) for a batch of :data:`STAGE_BATCH` on CUDA, the
    median of 3 runs after a warm-up; ``begin`` (DC removal + conditioning) counts as a stage."""
    xb = x.expand(STAGE_BATCH, -1, -1).contiguous()
    times: dict[str, list[float]] = {}
    with torch.no_grad():
        for _ in range(4):
            torch.cuda.synchronize()
            t = time.perf_counter()
            state = chain.begin(xb, cond)
            torch.cuda.synchronize()
            times.setdefault("begin", []).append(time.perf_counter() - t)
            for name in chain.config.order:
                t = time.perf_counter()
                state = chain.run_stages(state, [name])
                torch.cuda.synchronize()
                times.setdefault(name, []).append(time.perf_counter() - t)
    return [(k, sorted(v[1:])[1]) for k, v in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--gpu-batches", default="1,8,32")
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--skip-cpu", action="store_true", help="GPU rows only (implies --skip-peers)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    song = music_like(args.seconds, seed=7).float()
    x = song.unsqueeze(0)
    cond = Conditioning(genre="pop", tempo_bpm=120.0, energy=0.6, vocal_ratio=0.3)
    chain = Chain.pretrained().eval()
    rows = []
    if not args.skip_cpu:
        with torch.no_grad():
            t_ours = timed(lambda: chain(x, cond))
        rows.append(("lacquer chain", "cpu x1", 1, t_ours))
    if not (args.skip_peers or args.skip_cpu):
        board = pedalboard_chain()
        audio = song.numpy()
        t_pb = timed(lambda: board(audio, SR))
        rows.append(("pedalboard chain", "cpu x1", 1, t_pb))
        rows.append(("matchering", "cpu x1", 1, run_matchering(audio)))
    stage_rows: list[tuple[str, float]] = []
    if torch.cuda.is_available():
        chain_gpu = Chain.pretrained().eval().cuda()
        for b in (int(v) for v in args.gpu_batches.split(",")):
            xb = x.cuda().expand(b, -1, -1).contiguous()

            def step(xb=xb):
                chain_gpu(xb, cond)
                torch.cuda.synchronize()

            torch.cuda.reset_peak_memory_stats()
            try:
                with torch.no_grad():
                    t = timed(step, repeats=3)
            except torch.OutOfMemoryError:
                t = float("nan")
            peak = torch.cuda.max_memory_allocated() / 2**30
            rows.append(("lacquer chain", "cuda", b, t, peak))
            del xb
            torch.cuda.empty_cache()
        stage_rows = stage_breakdown(chain_gpu, x.cuda(), cond)
    print(f"song: {args.seconds:.0f} s stereo {SR} Hz")
    print(
        f"{'what':<18} {'device':<8} {'batch':>5} {'s/batch':>9} {'songs/s':>9} "
        f"{'x realtime':>11} {'GPU peak GiB':>13}"
    )
    for name, dev, b, t, *peak in rows:
        mem = f"{peak[0]:>13.1f}" if peak else f"{'':>13}"
        print(
            f"{name:<18} {dev:<8} {b:>5} {t:>9.3f} {b / t:>9.2f} {b * args.seconds / t:>11.0f}{mem}"
        )
    if stage_rows:
        total = sum(t for _, t in stage_rows)
        print(f"\nper stage on cuda, batch {STAGE_BATCH} (ms per batch, share):")
        for name, t in stage_rows:
            print(f"  {name:<12} {1000 * t:>9.1f} {100 * t / total:>6.1f} %")
    base = {n: t for n, d, b, t, *_ in rows if d == "cpu x1"}
    for peer in ("pedalboard chain", "matchering"):
        if peer in base:
            ratio = base["lacquer chain"] / base[peer]
            print(f"lacquer / {peer} time ratio (cpu, 1 thread): {ratio:.2f}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
