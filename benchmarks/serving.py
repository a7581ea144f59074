"""Serve endpoints: latency, throughput and Serve's overhead against the chain in-process.

    .venv/bin/python benchmarks/serving.py [--device cpu|cuda] [--gpus N] [--groups G]
        [--replicas R] [--seconds 30] [--sequential 20] [--requests 50] [--concurrency 8]
        [--burst-seconds 10] [--burst-requests 200]

Starts a local Ray (all GPUs of the machine), Serve on a free loopback port and the app of
:class:`serving.config.ServingConfig` (``--gpus`` GPUs, ``--groups`` stage groups, default one
per GPU; ``--replicas`` replicas per deployment, e.g. ``--gpus 4 --groups 1 --replicas 4`` for
the whole chain on every GPU), then prints one table:

* **in-process**: the work one request does, without Serve or HTTP (decode the uploaded
  WAV, measure it, master on ``--device``, measure, encode), one at a time;
* **serve, sequential**: ``POST /v1/master`` of the same clip, one at a time; the ratio of
  its p50 to the in-process p50 is Serve's overhead;
* **serve, burst**: ``--requests`` of ``--seconds`` clips from ``--concurrency`` client
  threads, and ``--burst-requests`` of ``--burst-seconds`` clips (the issue's 200 x 10 s);
  requests/s, p50, p99 and failures.

Uploads are 16-bit WAV; the answer is 24-bit WAV. Latencies are wall-clock seconds at the
client, loopback.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# This script is named like the package it measures: keep its folder off the import path (of
# this process, and so of the Ray workers, which copy the driver's script folder only when it
# is on the driver's path).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import requests  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from mastering.chain import Chain  # noqa: E402
from mastering.conditioning import Conditioning  # noqa: E402
from mastering.testsignals import music_like  # noqa: E402
from serving.codec import decode, encode, measurements  # noqa: E402


def wav_bytes(seconds: float, seed: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, music_like(seconds, seed=seed).T.numpy(), 48_000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def in_process(data: bytes, device: str, repeats: int) -> list[float]:
    """Seconds per run of the request's work without Serve (see the module docstring). On
    CPU with one torch thread, as each Serve replica has (``num_cpus=1``)."""
    if device == "cpu":
        torch.set_num_threads(1)
    chain = Chain.pretrained().to(device)
    cond = Conditioning(genre="pop")
    times = []
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            (folder / "upload").write_bytes(data)
            audio, info = decode(folder / "upload")
            x = audio.to(device)
            measurements(x)
            with torch.no_grad():
                master = chain(x.unsqueeze(0), cond).audio[0]
            measurements(master)
            encode(master.cpu(), info, "wav24", folder)
            if device == "cuda":
                torch.cuda.synchronize()
            if i:  # the first run warms up
                times.append(time.perf_counter() - t0)
    return times


def post(url: str, data: bytes) -> tuple[float, int]:
    """Seconds and status of one ``POST /v1/master`` (status 0: the connection failed)."""
    t0 = time.perf_counter()
    try:
        status = requests.post(
            f"{url}/v1/master",
            data=data,
            params={"genre": "pop", "format": "wav24"},
            headers={"Content-Type": "audio/wav"},
            timeout=600,
        ).status_code
    except requests.RequestException:
        status = 0
    return time.perf_counter() - t0, status


def burst(url: str, clips: list[bytes], concurrency: int) -> tuple[float, list[float], int]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda c: post(url, c), clips))
    wall = time.perf_counter() - t0
    ok = [s for s, code in results if code == 200]
    return wall, ok, len(results) - len(ok)


def row(name: str, n: int, wall: float | None, lat: list[float], failed: int, extra: str = ""):
    rps = f"{n / wall:8.2f}" if wall else f"{'-':>8}"
    p50 = f"{statistics.median(lat) * 1000:9.1f}" if lat else f"{'-':>9}"
    p99 = f"{percentile(lat, 0.99) * 1000:9.1f}" if lat else f"{'-':>9}"
    print(f"| {name:<34} | {n:>5} | {rps} | {p50} | {p99} | {failed:>6} | {extra}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--groups", type=int, default=None, help="stage groups (default: --gpus)")
    p.add_argument("--replicas", type=int, default=1, help="replicas per deployment")
    p.add_argument("--seconds", type=float, default=30.0, help="clip length for latency, s")
    p.add_argument("--sequential", type=int, default=20)
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--burst-seconds", type=float, default=10.0)
    p.add_argument("--burst-requests", type=int, default=200)
    p.add_argument("--max-batch-size", type=int, default=8)
    args = p.parse_args()

    import ray
    from ray import serve

    from serving.config import ServingConfig
    from serving.local import deploy, free_port, start_http

    data = wav_bytes(args.seconds, seed=1)
    base = in_process(data, args.device, repeats=max(3, args.sequential // 4))

    ray.init(log_to_driver=False)
    port = free_port()
    start_http("127.0.0.1", port)
    config = ServingConfig(
        port=port,
        gpus=args.gpus,
        groups=args.groups,
        device=args.device,
        min_replicas=args.replicas,
        max_replicas=args.replicas,
        max_batch_size=args.max_batch_size,
        stage_max_ongoing_requests=max(16, args.max_batch_size),
        max_ongoing_requests=max(32, 2 * args.concurrency),
        max_queued_requests=max(64, args.burst_requests),
    )
    try:
        url = deploy(config)[0]
        groups = config.stage_groups()
        for _ in range(3):
            post(url, data)  # warm-up: chains loaded, kernels compiled
        seq = [post(url, data) for _ in range(args.sequential)]
        seq_ok = [s for s, code in seq if code == 200]
        wall, lat, failed = burst(url, [data] * args.requests, args.concurrency)
        short = [wav_bytes(args.burst_seconds, seed=2 + i % 4) for i in range(4)]
        clips = [short[i % 4] for i in range(args.burst_requests)]
        b_wall, b_lat, b_failed = burst(url, clips, args.concurrency)
    finally:
        serve.shutdown()
        ray.shutdown()

    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"\nLacquer Serve, {device}, gpus={args.gpus}, groups "
        f"{[list(g) for g in groups]}, replicas/deployment={args.replicas}, "
        f"batch<={args.max_batch_size}\n"
    )
    print(f"| {'what':<34} | {'n':>5} | {'req/s':>8} | {'p50 ms':>9} | {'p99 ms':>9} | failed |")
    print(f"|{'-' * 36}|{'-' * 7}|{'-' * 10}|{'-' * 11}|{'-' * 11}|{'-' * 8}|")
    s = args.seconds
    row(f"in-process, {s:g} s clip", len(base), None, base, 0)
    ratio = statistics.median(seq_ok) / statistics.median(base) if seq_ok else float("nan")
    row(
        f"serve sequential, {s:g} s clip",
        len(seq),
        None,
        seq_ok,
        len(seq) - len(seq_ok),
        f"overhead x{ratio:.2f}",
    )
    row(f"serve burst x{args.concurrency}, {s:g} s clip", args.requests, wall, lat, failed)
    row(
        f"serve burst x{args.concurrency}, {args.burst_seconds:g} s clip",
        args.burst_requests,
        b_wall,
        b_lat,
        b_failed,
    )
    print(f"\nserve burst, {s:g} s clips: {args.requests * s / wall:.1f}x real time")


if __name__ == "__main__":
    main()
