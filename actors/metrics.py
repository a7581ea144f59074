"""Prometheus metrics of the render farm, through Ray's metrics export (``ray.util.metrics``).

Ray's metrics agent on every node serves them on ``/metrics`` (the node's
``MetricsExportPort``; 8080 under KubeRay) with the ``ray_`` prefix; counters get a
``_total`` suffix, histograms ``_bucket``/``_sum``/``_count``. ``infra/monitoring/`` scrapes
and plots them. Each process creates its metrics once, on first use (:func:`farm_metrics`),
so the functions below are cheap enough to call per batch.

Who records what:

* the job's driver (:mod:`cluster.job`): songs done / failed / retried, batch sizes,
  songs per second, × real time, songs in flight and pending (:func:`song_done`,
  :func:`song_failed`, :func:`song_retried`, :func:`batch_submitted`, :func:`progress`);
* each stage worker (:mod:`actors.stage_actor`): seconds per step of every batch, and the
  utilization of its GPU (:func:`stage_batch`, :func:`gpu_utilization`).

Metric names (before Ray's ``ray_`` prefix) are the ``*_NAME`` constants; the Grafana
dashboard and the tests read them from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from ray.util.metrics import Counter, Gauge, Histogram

SONGS_DONE_NAME = "lacquer_farm_songs_done"
SONGS_FAILED_NAME = "lacquer_farm_songs_failed"
RETRIES_NAME = "lacquer_farm_retries"
AUDIO_SECONDS_NAME = "lacquer_farm_audio_seconds"
SONGS_PER_S_NAME = "lacquer_farm_songs_per_second"
REALTIME_X_NAME = "lacquer_farm_realtime_x"
IN_FLIGHT_NAME = "lacquer_farm_songs_in_flight"
PENDING_NAME = "lacquer_farm_songs_pending"
STEP_LATENCY_NAME = "lacquer_farm_step_latency_s"
SONG_LATENCY_NAME = "lacquer_farm_song_latency_s"
BATCH_SIZE_NAME = "lacquer_farm_batch_size"
GPU_UTILIZATION_NAME = "lacquer_farm_gpu_utilization_percent"

#: Step-latency buckets (seconds one step — a stage, decode, write, a hop — takes for a batch).
STEP_BOUNDARIES = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
#: Song-latency buckets (seconds from submission to written file).
SONG_BOUNDARIES = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
#: Batch-size buckets, songs.
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64]


class FarmMetrics:
    """The farm's metrics (see the module docstring). Tags: ``kind`` of a failure (``input``:
    the song's own fault; ``crash``: lost with its workers too many times), ``stage`` of a
    step (a stage name, or ``decode``/``begin``/``h2d``/``d2h``/``hop``), ``gpu`` (the
    CUDA device index inside the worker's process)."""

    def __init__(self) -> None:
        self.done = Counter(SONGS_DONE_NAME, description="Songs mastered and written.")
        self.failed = Counter(
            SONGS_FAILED_NAME,
            description="Songs failed for good, by kind (input, crash).",
            tag_keys=("kind",),
        )
        self.retries = Counter(
            RETRIES_NAME, description="Songs sent again after their workers died."
        )
        self.audio_seconds = Counter(
            AUDIO_SECONDS_NAME, description="Seconds of audio mastered (its rate: x real time)."
        )
        self.songs_per_s = Gauge(
            SONGS_PER_S_NAME, description="Songs per second since the job's loop started."
        )
        self.realtime_x = Gauge(
            REALTIME_X_NAME,
            description="Audio seconds mastered per wall second since the job's loop started.",
        )
        self.in_flight = Gauge(
            IN_FLIGHT_NAME, description="Songs submitted to pipelines and not yet finished."
        )
        self.pending = Gauge(PENDING_NAME, description="Songs waiting to be submitted.")
        self.step_latency = Histogram(
            STEP_LATENCY_NAME,
            description="Seconds one step (stage, decode, hop...) takes for one batch.",
            boundaries=STEP_BOUNDARIES,
            tag_keys=("stage",),
        )
        self.song_latency = Histogram(
            SONG_LATENCY_NAME,
            description="Seconds from a song's submission to its written master.",
            boundaries=SONG_BOUNDARIES,
        )
        self.batch_size = Histogram(
            BATCH_SIZE_NAME,
            description="Songs per batch submitted to a pipeline.",
            boundaries=BATCH_BOUNDARIES,
        )
        self.gpu_utilization = Gauge(
            GPU_UTILIZATION_NAME,
            description="GPU utilization (percent of time a kernel ran), per stage worker GPU.",
            tag_keys=("gpu",),
        )


@cache
def farm_metrics() -> FarmMetrics:
    """This process's metrics (created on first use)."""
    return FarmMetrics()


# -- the driver ----------------------------------------------------------------------------------
def song_done(duration_s: float, wall_s: float | None = None) -> None:
    """One song written: ``duration_s`` seconds of audio, ``wall_s`` seconds after submission."""
    m = farm_metrics()
    m.done.inc(1)
    if duration_s > 0:
        m.audio_seconds.inc(duration_s)
    if wall_s is not None and wall_s >= 0:
        m.song_latency.observe(wall_s)


def song_failed(kind: str) -> None:
    """One song failed for good (``kind``: ``input`` or ``crash``)."""
    farm_metrics().failed.inc(1, {"kind": kind or "unknown"})


def song_retried(n: int = 1) -> None:
    """``n`` songs requeued after their workers died."""
    if n > 0:
        farm_metrics().retries.inc(n)


def batch_submitted(songs: int) -> None:
    """A batch of ``songs`` songs went to a pipeline."""
    if songs > 0:
        farm_metrics().batch_size.observe(songs)


def progress(songs_per_s: float, realtime_x: float, in_flight: int, pending: int) -> None:
    """The job's rates (songs/s, × real time) and queue depths (songs in flight, pending)."""
    m = farm_metrics()
    m.songs_per_s.set(max(0.0, songs_per_s))
    m.realtime_x.set(max(0.0, realtime_x))
    m.in_flight.set(max(0, in_flight))
    m.pending.set(max(0, pending))


# -- the stage workers ---------------------------------------------------------------------------
def stage_batch(timings_s: Mapping[str, float]) -> None:
    """Seconds each step took for one batch (step name -> seconds), e.g. this worker's
    stages ``{"eq": 0.01, "compressor": 0.02}``."""
    hist = farm_metrics().step_latency
    for stage, seconds in timings_s.items():
        if seconds >= 0:
            hist.observe(float(seconds), {"stage": stage})


def read_gpu_utilization(device: Any = None) -> float | None:
    """Utilization of a CUDA device over the last sample period, percent (0-100), from NVML
    through ``torch.cuda.utilization`` (needs ``pynvml``/``nvidia-ml-py``); ``None`` without
    CUDA or NVML."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # NVML absent or the query failed: not available here
        return None


def gpu_utilization(device: Any = None) -> float | None:
    """Read this worker's GPU utilization (:func:`read_gpu_utilization`) and export it;
    returns the value, or ``None`` (nothing exported) where it is unavailable."""
    import torch

    value = read_gpu_utilization(device)
    if value is not None:
        index = torch.device("cuda" if device is None else device).index
        index = torch.cuda.current_device() if index is None else index
        farm_metrics().gpu_utilization.set(value, {"gpu": str(index)})
    return value
