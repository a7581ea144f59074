"""Render-farm throughput, files on disk to files on disk, with a breakdown of where time goes.

CPU (default; *logical* GPUs, workers run on CPU)::

    .venv/bin/python benchmarks/farm.py [--songs 8 --seconds 10]

compares the farm (``pipeline`` and ``replicated`` on 1 and 2 logical GPUs, one CPU and one
torch thread per worker) with the chain in one process doing the same work per song (a
``StageWorker`` with the whole chain, no Ray, one torch thread), and prints the ratios. At
1 logical GPU the time ratio is the farm's overhead; at 2 it also shows what pipelining or
replication over two worker processes buys on this machine's cores.

GPU (on a machine with CUDA; Ray started locally with every GPU)::

    python benchmarks/farm.py --device cuda --gpus 1,2,4 --mode pipeline,replicated \\
        --songs 64 --seconds 180 --batch 8 [--transport nccl]

prints songs/s and x real time for each mode and GPU count, the scaling efficiency from the
smallest GPU count, a per-song breakdown (decode, host->device, begin, each stage, hops between
workers, device->host, encode+write, measure; GPU steps synchronized), and pedalboard's
comparable CPU chain run on all cores over the same files, for the ratio.

Throughput counts the rendering loop only (songs submitted -> last file written); Ray start-up
and actor start-up (loading the chain) are printed separately.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from actors.stage_actor import SongSpec, StageWorker  # noqa: E402
from cluster.inputs import songs_from_files  # noqa: E402
from cluster.job import RenderConfig, RenderJob  # noqa: E402
from cluster.runtime import ray_session  # noqa: E402
from mastering.chain import Chain  # noqa: E402
from mastering.io import write_audio  # noqa: E402
from mastering.render import MasterOptions  # noqa: E402
from mastering.retry import RetryPolicy  # noqa: E402
from mastering.testsignals import music_like  # noqa: E402

SR = 48_000
#: Breakdown columns (metrics ``t_<name>_s``), in pipeline order; stages are inserted.
BEFORE = ("decode", "h2d", "begin")
AFTER = ("hop", "wait", "measure", "retry", "quantize", "d2h", "write")


def make_songs(folder: Path, n: int, seconds: float, unique: int = 16) -> list[Path]:
    """``n`` raw mixes on disk; past ``unique`` of them, byte copies of the first ones (the
    same work per song, without minutes of synthesis for a long benchmark)."""
    paths = []
    for i in range(n):
        p = folder / f"song{i:03d}.wav"
        if i < unique:
            write_audio(p, music_like(seconds, seed=i), format="wav24")
        else:
            shutil.copyfile(paths[i % unique], p)
        paths.append(p)
    return paths


def in_process(paths: list[Path], out: Path, threads: int) -> float:
    """Seconds to master every song in this process, one at a time, doing exactly a farm
    worker's work (a :class:`StageWorker` with the whole chain, used without Ray: read,
    begin, stages, finish, write, measure)."""
    torch.set_num_threads(threads)
    worker = StageWorker(tuple(Chain().config.order), MasterOptions(), first=True, last=True)
    specs = [SongSpec(p.name, str(p), str(out / p.name)) for p in paths]
    worker.process(specs[:1])  # warm-up
    t = time.perf_counter()
    for spec in specs:
        (result,) = worker.process([spec])
        assert result.ok, result.error
    return time.perf_counter() - t


def farm(
    paths,
    out: Path,
    gpus: int,
    mode: str,
    batch: int,
    profile: bool,
    transport: str,
    cpus_per_worker: float = 1.0,
    overlap: int = 3,
    retry: bool = False,
    io: str = "threads",
):
    """(summary, start-up seconds, mean per-song breakdown) of one farm run."""
    import pyarrow.parquet as pq

    config = RenderConfig(
        out,
        MasterOptions(),
        gpus=gpus,
        mode=mode,
        batch=batch,
        progress=False,
        profile=profile,
        transport=transport,
        cpus_per_group=cpus_per_worker,
        overlap=overlap,
        retry=RetryPolicy() if retry else None,
        io=io,
    )
    job = RenderJob(songs_from_files(paths), config)
    t = time.perf_counter()
    job.pipelines = job.start_pipelines(job.make_plan())
    startup = time.perf_counter() - t
    job.stop()  # run() starts its own; this measured start-up alone
    summary = job.run()
    table = pq.read_table(summary.metrics_path).to_pylist()
    for f in out.glob("*.wav"):
        f.unlink()  # keep the disk free for the next run
    steps: dict[str, float] = {}
    for row in table:
        for k, v in row.items():
            if k.startswith("t_") and v is not None:
                steps[k[2:-2]] = steps.get(k[2:-2], 0.0) + v / len(table)
    return summary, startup, steps


def _pedalboard_one(args: tuple[str, str]) -> None:
    import soundfile as sf
    from chain import pedalboard_chain

    src, dst = args
    audio, rate = sf.read(src, dtype="float32", always_2d=True)
    sf.write(dst, pedalboard_chain()(audio.T, rate).T, rate, subtype="PCM_24")


def pedalboard_all_cores(paths: list[Path], out: Path) -> float | None:
    """Seconds for pedalboard's comparable chain over every file on all cores (read, process,
    write), or ``None`` when pedalboard is not installed."""
    try:
        import pedalboard  # noqa: F401
    except ImportError:
        return None
    jobs = [(str(p), str(out / p.name)) for p in paths]
    with mp.get_context("spawn").Pool(os.cpu_count()) as pool:
        pool.map(_pedalboard_one, jobs[:1])  # warm-up: imports in every worker
        t = time.perf_counter()
        pool.map(_pedalboard_one, jobs, chunksize=1)
        return time.perf_counter() - t


def _io_one(args: tuple[str, str]) -> None:
    from mastering.io import read_audio, write_audio

    src, dst = args
    write_audio(dst, read_audio(src)[0], format="wav24")


def io_all_cores(paths: list[Path], out: Path) -> float:
    """Seconds for the farm's file work alone over every file on all cores: decode each song
    (``read_audio``) and write it back as 24-bit WAV, no DSP. The ceiling of any farm's
    disk-to-disk throughput on this host."""
    jobs = [(str(p), str(out / p.name)) for p in paths]
    with mp.get_context("spawn").Pool(os.cpu_count()) as pool:
        pool.map(_io_one, jobs[: os.cpu_count()], chunksize=1)  # warm-up: imports
        t = time.perf_counter()
        pool.map(_io_one, jobs, chunksize=1)
        return time.perf_counter() - t


def _label(mode: str, overlap: int, overlaps: list[int], io: str, ios: list[str]) -> str:
    """Row name of a farm run (overlap and io shown only when several are compared)."""
    return (
        f"farm {mode}"
        + (f" overlap {overlap}" if len(overlaps) > 1 else "")
        + (f" io {io}" if len(ios) > 1 else "")
    )


def print_breakdown(rows, stages) -> None:
    cols = [*BEFORE, *stages, *AFTER]
    print(
        "\nper-song breakdown, ms (batch totals / batch size; hop = transfer + queue; "
        "wait = for the device, behind the same worker's other batches):"
    )
    print(f"{'run':<30} {'gpus':>4} " + " ".join(f"{c[:10]:>10}" for c in cols))
    for name, gpus, steps in rows:
        print(
            f"{name:<30} {gpus:>4} " + " ".join(f"{1000 * steps.get(c, 0.0):>10.1f}" for c in cols)
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--gpus", default="1,2", help="GPU counts, comma-separated (cpu: logical)")
    ap.add_argument("--mode", default="pipeline,replicated", help="modes, comma-separated")
    ap.add_argument("--songs", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, help="songs per batch (default: cpu 1, cuda 8)")
    ap.add_argument(
        "--transport",
        default="object_store",
        help="between stage workers: object_store, gloo (CPU) or nccl (GPU -> GPU)",
    )
    ap.add_argument("--no-pedalboard", action="store_true")
    ap.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        help="CPUs each stage worker reserves (its decode/encode threads)",
    )
    ap.add_argument(
        "--overlap",
        default="3",
        help="batches a worker holds at once (host I/O overlapped with the device), "
        "comma-separated to compare, e.g. 1,3",
    )
    ap.add_argument(
        "--io",
        default="threads",
        help="where workers decode/write: threads, tasks (Ray tasks on the worker's CPUs; "
        "needs --cpus-per-worker >= 2), comma-separated to compare",
    )
    ap.add_argument(
        "--retry",
        action="store_true",
        help="auto-retry on (the default policy, as `lacquer render` without a tuned one)",
    )
    args = ap.parse_args()
    overlaps = [int(o) for o in args.overlap.split(",")]
    ios = args.io.split(",")
    gpu_counts = [int(g) for g in args.gpus.split(",")]
    modes = args.mode.split(",")
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here")
    batch = args.batch or (8 if cuda else 1)
    audio_s = args.songs * args.seconds

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        paths = make_songs(tmp / "in", args.songs, args.seconds)
        print(
            f"{args.songs} songs x {args.seconds:g} s stereo {SR} Hz ({audio_s:g} s of audio), "
            f"device {args.device}, batch {batch}, transport {args.transport}"
        )
        rows: list[tuple[str, str, float, str]] = []
        if not cuda:
            out = tmp / "inproc"
            out.mkdir()
            t = in_process(paths, out, 1)
            rows.append(("chain in one process, 1 thread", "-", t, ""))
        t0 = time.perf_counter()
        num_gpus = None if cuda else max(gpu_counts)
        # On CPU every stage worker reserves one logical CPU: give Ray enough of them for the
        # widest pipeline (oversubscribing a small machine's cores, which the table then shows).
        num_cpus = None if cuda else max(os.cpu_count() or 1, max(gpu_counts) + 1)
        breakdown = []
        with ray_session(None, num_gpus=num_gpus, num_cpus=num_cpus):
            ray_start = time.perf_counter() - t0
            for mode, overlap, io, gpus in itertools.product(modes, overlaps, ios, gpu_counts):
                out = tmp / f"farm-{mode}-{overlap}-{io}-{gpus}"
                summary, startup, steps = farm(
                    paths,
                    out,
                    gpus,
                    mode,
                    batch,
                    cuda,
                    args.transport,
                    args.cpus_per_worker,
                    overlap,
                    args.retry,
                    io,
                )
                assert summary.done == args.songs, summary.lines()
                name = _label(mode, overlap, overlaps, io, ios)
                note = f"actors up {startup:.1f} s"
                if args.retry:
                    note += f", {summary.mean_attempts:.2f} attempts/song"
                rows.append((name, str(gpus), summary.seconds, note))
                breakdown.append((name, gpus, steps))
        if cuda:
            out = tmp / "io-only"
            out.mkdir()
            t = io_all_cores(paths, out)
            rows.append((f"file I/O only, {os.cpu_count()} processes", "-", t, "read + write"))
            shutil.rmtree(out)
        if cuda and not args.no_pedalboard:
            out = tmp / "pedalboard"
            out.mkdir()
            t = pedalboard_all_cores(paths, out)
            if t is not None:
                rows.append((f"pedalboard, {os.cpu_count()} processes", "-", t, "CPU"))

    print(f"Ray start-up: {ray_start:.1f} s")
    print(f"{'what':<34} {'gpus':>4} {'seconds':>8} {'songs/s':>8} {'x RT':>8}  note")
    for name, gpus, t, note in rows:
        print(f"{name:<34} {gpus:>4} {t:>8.2f} {args.songs / t:>8.2f} {audio_s / t:>8.1f}  {note}")
    by = {(n, g): t for n, g, t, _ in rows}
    names = [
        _label(m, o, overlaps, io, ios) for m, o, io in itertools.product(modes, overlaps, ios)
    ]
    if not cuda:
        base = by[("chain in one process, 1 thread", "-")]
        for name in names:
            for g in gpu_counts:
                t = by[(name, str(g))]
                print(
                    f"{name} on {g} logical GPU(s) ({g} worker(s), 1 CPU each) / "
                    f"chain in one process: {t / base:.2f}x the time, "
                    f"{base / t:.2f}x the throughput"
                )
    else:
        g0 = min(gpu_counts)
        for name in names:
            for g in gpu_counts:
                if g == g0:
                    continue
                eff = by[(name, str(g0))] * g0 / (by[(name, str(g))] * g)
                print(f"scaling efficiency {name} {g0} -> {g} GPUs: {100 * eff:.0f} %")
        ceiling = [t for n, _, t, _ in rows if n.startswith("file I/O only")]
        for name in names:
            for g in gpu_counts:
                share = ceiling[0] / by[(name, str(g))]
                print(f"{name} on {g} GPUs: {100 * share:.0f} % of the file-I/O-only throughput")
        pb = [t for n, _, t, _ in rows if n.startswith("pedalboard")]
        if pb:
            for name in names:
                g = max(gpu_counts)
                ratio = pb[0] / by[(name, str(g))]
                print(f"{name} on {g} GPUs vs pedalboard on all cores: {ratio:.2f}x")
    stages = list(Chain().config.order)
    print_breakdown(breakdown, stages)


if __name__ == "__main__":
    main()
