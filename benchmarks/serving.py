"""Serve endpoints: latency, throughput and Serve's overhead against the same work in-process.

    .venv/bin/python benchmarks/serving.py [--device cpu|cuda] [--gpus N]
        [--placement fused|split] [--groups G] [--replicas R] [--seconds 30]
        [--sequential 20] [--requests 50] [--concurrency 8]
        [--burst-seconds 10] [--burst-requests 200] [--no-retry] [--max-batch-size 8]

Starts a local Ray (all GPUs of the machine), Serve on a free loopback port and the app of
:class:`serving.config.ServingConfig` (``--placement fused``: the whole chain per replica,
``--replicas`` replicas; ``split``: ``--groups`` stage groups, default one per GPU; replicas
that outnumber ``--gpus`` share them), then prints two tables.

Latency and throughput (wall-clock at the client, loopback; uploads 16-bit WAV, answers
24-bit WAV, genre pop, the app's default auto-retry unless ``--no-retry``):

* **in-process**: the same work as one request without Serve or HTTP
  (:class:`serving.direct.DirectMaster`: spool the upload to a file, decode, measure, master,
  score, encode in memory), one at a time, on ``--device``;
* **serve, sequential**: ``POST /v1/master`` of the same clip, one at a time; the ratio of its
  p50 to the in-process p50 is Serve's overhead;
* **serve, burst**: ``--requests`` of ``--seconds`` clips from ``--concurrency`` client threads,
  and ``--burst-requests`` of ``--burst-seconds`` clips (the issue's 200 x 10 s; 0 skips it):
  requests/s, p50, p99 and failures.

Where the time goes (mean ms per request, from the reports' ``seconds``): decode at the
ingress, device work in the stage groups (stages, measurements, scoring), transport (the rest
of the chain time: hops through the object store, queueing, the retry loop), encode, and, for
Serve, HTTP (client latency minus the ingress's time: the proxy, the body both ways).

On a GPU machine (device tool; Ray from ``../shared/tools/device-bundle``), from the
repository root::

    mkdir -p /tmp/site && tar -xJf .device/bundle.tar.xz -C /tmp/site
    export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
    python3 benchmarks/serving.py --device cuda --gpus 1
    python3 benchmarks/serving.py --device cuda --gpus 1 --placement split --groups 2 \
        --burst-requests 0
"""

from __future__ import annotations

import argparse
import io
import json
import os
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

from mastering.testsignals import music_like  # noqa: E402
from serving.api import MasterParams  # noqa: E402

#: Request parameters of every measured request.
PARAMS = {"genre": "pop", "format": "wav24"}
#: Steps of the time breakdown (keys of the report's ``seconds``).
STEPS = ("decode", "device", "transport", "encode", "total")


def wav_bytes(seconds: float, seed: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, music_like(seconds, seed=seed).T.numpy(), 48_000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def steps(seconds: dict[str, float]) -> dict[str, float]:
    """A report's ``seconds`` as the breakdown's steps (transport = chain - device)."""
    return {
        "decode": seconds["decode"],
        "device": seconds["device"],
        "transport": seconds["chain"] - seconds["device"],
        "encode": seconds["encode"],
        "total": seconds["total"],
    }


def in_process(data: bytes, device: str, repeats: int, retry: bool) -> tuple[list, list]:
    """Latencies (s) and step breakdowns of the request's work without Serve. On CPU with
    one torch thread, as each Serve replica has (``num_cpus=1``)."""
    from serving.direct import DirectMaster

    if device == "cpu":
        torch.set_num_threads(1)
    direct = DirectMaster(device)
    params = MasterParams(**PARAMS, retry=retry)
    times, parts = [], []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "upload"
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            path.write_bytes(data)  # the ingress spools every upload to a file
            result = direct.master(path, params, "clip.wav")
            if device == "cuda":
                torch.cuda.synchronize()
            if i:  # the first run warms up (chain and scorer loaded, kernels compiled)
                times.append(time.perf_counter() - t0)
                parts.append(steps(result.header["seconds"]))
    return times, parts


def post(url: str, data: bytes, retry: bool) -> tuple[float, int, dict | None]:
    """Seconds, status and ``X-Lacquer-Report`` of one ``POST /v1/master`` (status 0: the
    connection failed)."""
    t0 = time.perf_counter()
    try:
        r = requests.post(
            f"{url}/v1/master",
            data=data,
            params={**PARAMS, "retry": str(retry).lower()},
            headers={"Content-Type": "audio/wav"},
            timeout=600,
        )
        status = r.status_code
        report = json.loads(r.headers["X-Lacquer-Report"]) if status == 200 else None
    except requests.RequestException:
        status, report = 0, None
    return time.perf_counter() - t0, status, report


def burst(url: str, clips: list[bytes], concurrency: int, retry: bool):
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda c: post(url, c, retry), clips))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r[1] == 200]
    return wall, ok, len(results) - len(ok)


def row(name: str, n: int, wall: float | None, lat: list[float], failed: int, extra: str = ""):
    rps = f"{n / wall:8.2f}" if wall else f"{'-':>8}"
    p50 = f"{statistics.median(lat) * 1000:9.1f}" if lat else f"{'-':>9}"
    p99 = f"{percentile(lat, 0.99) * 1000:9.1f}" if lat else f"{'-':>9}"
    print(f"| {name:<34} | {n:>5} | {rps} | {p50} | {p99} | {failed:>6} | {extra}")


def mean_ms(parts: list[dict[str, float]], key: str) -> str:
    return f"{1000 * statistics.fmean(p[key] for p in parts):9.1f}" if parts else f"{'-':>9}"


def breakdown(base: list[dict], seq: list[dict], seq_latency: list[float]) -> None:
    print(f"\n| {'mean ms per request':<30} | {'in-process':>10} | {'serve seq.':>10} |")
    print(f"|{'-' * 32}|{'-' * 12}|{'-' * 12}|")
    labels = {
        "decode": "decode (ingress)",
        "device": "device work (stage groups)",
        "transport": "transport + queue + retry loop",
        "encode": "encode (ingress)",
        "total": "ingress total",
    }
    for key in STEPS:
        print(f"| {labels[key]:<30} | {mean_ms(base, key):>10} | {mean_ms(seq, key):>10} |")
    if seq:
        http = [{"http": lat - p["total"]} for lat, p in zip(seq_latency, seq, strict=True)]
        label = "HTTP + proxy (client-ingress)"
        print(f"| {label:<30} | {'-':>10} | {mean_ms(http, 'http'):>10} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--placement", choices=("fused", "split"), default="fused")
    p.add_argument("--groups", type=int, default=None, help="split: stage groups (def. --gpus)")
    p.add_argument("--replicas", type=int, default=1, help="replicas per deployment")
    p.add_argument("--seconds", type=float, default=30.0, help="clip length for latency, s")
    p.add_argument("--sequential", type=int, default=20)
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--burst-seconds", type=float, default=10.0)
    p.add_argument("--burst-requests", type=int, default=200)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--no-retry", action="store_true", help="requests with retry=false")
    args = p.parse_args()
    retry = not args.no_retry

    import ray
    from ray import serve

    from serving.config import ServingConfig
    from serving.local import deploy, free_port, start_http

    data = wav_bytes(args.seconds, seed=1)
    base, base_parts = in_process(data, args.device, max(3, args.sequential // 4), retry)

    # Every replica of every deployment on the GPUs given: shares of one when they outnumber it.
    n_groups = 1 if args.placement == "fused" else (args.groups or max(1, args.gpus))
    replicas = n_groups * args.replicas
    gpus_per_group = min(1.0, args.gpus / replicas) if args.gpus else None
    # One CPU per replica (stage groups and ingress) even where the machine has fewer cores.
    cpus = max(os.cpu_count() or 1, replicas + args.replicas)
    ray.init(address="local", num_cpus=cpus, log_to_driver=False)  # never join another cluster
    port = free_port()
    start_http("127.0.0.1", port)
    config = ServingConfig(
        port=port,
        placement=args.placement,
        gpus=args.gpus,
        groups=args.groups,
        gpus_per_group=gpus_per_group,
        device=args.device,
        min_replicas=args.replicas,
        max_replicas=args.replicas,
        max_batch_size=args.max_batch_size,
        stage_max_ongoing_requests=max(16, args.max_batch_size),
        max_ongoing_requests=max(32, 2 * args.concurrency),
        max_queued_requests=max(64, args.burst_requests, args.requests),
    )
    try:
        url = deploy(config)[0]
        groups = config.stage_groups()
        for _ in range(3):
            post(url, data, retry)  # warm-up: chains loaded, kernels compiled
        seq = [post(url, data, retry) for _ in range(args.sequential)]
        seq_ok = [r for r in seq if r[1] == 200]
        wall, lat, failed = burst(url, [data] * args.requests, args.concurrency, retry)
        if args.burst_requests:
            short = [wav_bytes(args.burst_seconds, seed=2 + i % 4) for i in range(4)]
            clips = [short[i % 4] for i in range(args.burst_requests)]
            b_wall, b_lat, b_failed = burst(url, clips, args.concurrency, retry)
    finally:
        serve.shutdown()
        ray.shutdown()

    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"\nLacquer Serve, {device}, {args.placement}, gpus={args.gpus}, groups "
        f"{[list(g) for g in groups]}, replicas/deployment={args.replicas}, "
        f"batch<={args.max_batch_size}, retry={'on' if retry else 'off'}\n"
    )
    print(f"| {'what':<34} | {'n':>5} | {'req/s':>8} | {'p50 ms':>9} | {'p99 ms':>9} | failed |")
    print(f"|{'-' * 36}|{'-' * 7}|{'-' * 10}|{'-' * 11}|{'-' * 11}|{'-' * 8}|")
    s = args.seconds
    row(f"in-process, {s:g} s clip", len(base), None, base, 0)
    seq_lat = [r[0] for r in seq_ok]
    ratio = statistics.median(seq_lat) / statistics.median(base) if seq_lat else float("nan")
    row(
        f"serve sequential, {s:g} s clip",
        len(seq),
        None,
        seq_lat,
        len(seq) - len(seq_ok),
        f"overhead x{ratio:.2f}",
    )
    batches = [max(r[2]["batch_sizes"]) for r in lat]
    row(
        f"serve burst x{args.concurrency}, {s:g} s clip",
        args.requests,
        wall,
        [r[0] for r in lat],
        failed,
        f"largest batch {max(batches, default=0)}",
    )
    if args.burst_requests:
        row(
            f"serve burst x{args.concurrency}, {args.burst_seconds:g} s clip",
            args.burst_requests,
            b_wall,
            [r[0] for r in b_lat],
            b_failed,
        )
    breakdown(base_parts, [steps(r[2]["seconds"]) for r in seq_ok], seq_lat)
    attempts = [len(r[2]["attempts"]) for r in seq_ok]
    if attempts:
        print(f"\nattempts per sequential request: mean {statistics.fmean(attempts):.2f}")
    print(f"serve burst, {s:g} s clips: {args.requests * s / wall:.1f}x real time")


if __name__ == "__main__":
    main()
