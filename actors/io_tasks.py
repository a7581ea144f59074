"""Decoding and writing songs in Ray tasks beside a stage worker, instead of in its threads.

A GPU stage worker launches every kernel from one Python thread. When the same process also
decodes and encodes files in threads, those threads hold the GIL between their C calls and the
device thread waits for it, kernel launch after kernel launch: on a 4-GPU host the chain ran
at ~40 % of its speed alone. :class:`IOTasks` moves that work into tasks, each in its own
worker process, placed in the stage worker's own placement-group bundle (so on its node, on
the CPUs the pipeline reserved):

* ``read_song`` decodes one file and returns its float32 samples as a NumPy array: it goes
  into the node's shared-memory object store once, and the stage worker maps it without a
  copy, then copies it to page-locked memory for the device;
* ``write_song`` takes one master's samples (from the object store) and writes the file
  atomically.

Both return their errors as values (a bad file fails alone, with its message), never raise
them.

Measured (``benchmarks/farm.py --io threads,tasks``, 4xH200, 64 cores, 3-minute songs): on
one GPU tasks rendered 30-40 % faster than threads; on four they were ~35 % slower, no faster
than on one, because every song crosses the node's object store twice (~140 MB) and that store
became the limit. Threads stay the default (:class:`cluster.job.RenderConfig`).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch

from mastering import SAMPLE_RATE
from mastering.errors import LacquerError
from mastering.io import read_audio, write_audio

IO_MODES = ("threads", "tasks")


def read_song(path: str) -> tuple[Any, float]:
    """``((samples [2, n] float32 ndarray, info) | the LacquerError, seconds)``."""
    t0 = time.perf_counter()
    try:
        audio, info = read_audio(path)
        result: Any = (audio.numpy(), info)
    except LacquerError as exc:
        result = exc
    return result, time.perf_counter() - t0


def write_song(audio: np.ndarray, path: str, out_rate: int, fmt: str) -> tuple[Any, float]:
    """``(final path | the LacquerError, seconds)`` of writing one master (float samples at
    48 kHz, or int32 quantized for 24-bit)."""
    t0 = time.perf_counter()
    try:
        result: Any = write_audio(
            path, audio, sample_rate=SAMPLE_RATE, out_rate=out_rate, format=fmt
        )
    except LacquerError as exc:
        result = exc
    return result, time.perf_counter() - t0


def _ready(seconds: float) -> None:
    """A task that only occupies its worker process (see :meth:`IOTasks.warm_up`)."""
    time.sleep(seconds)


class IOTasks:
    """Submits :func:`read_song` / :func:`write_song` tasks (one CPU each) with the given
    scheduling strategy (the stage worker's placement-group bundle)."""

    def __init__(self, scheduling_strategy: Any):
        import ray

        opts = {"num_cpus": 1, "scheduling_strategy": scheduling_strategy, "max_retries": 2}
        self._read = ray.remote(read_song).options(**opts)
        self._write = ray.remote(write_song).options(**opts)
        self._ready = ray.remote(_ready).options(**opts)

    def warm_up(self, slots: int) -> None:
        """Start the ``slots`` task processes now (each imports torch and the audio stack, a
        few seconds), so the first songs do not wait for them."""
        import ray

        ray.get([self._ready.remote(0.5) for _ in range(max(1, slots))])

    def decode(self, paths: list[str], pin: bool) -> list[tuple[Any, float]]:
        """Per path ``((audio tensor [2, n], info) | LacquerError, seconds)``, in order;
        ``pin``: the audio in page-locked memory."""
        import ray

        out = []
        for result, seconds in ray.get([self._read.remote(p) for p in paths]):
            if not isinstance(result, LacquerError):
                samples, info = result
                result = (_owned_tensor(samples, pin), info)
            out.append((result, seconds))
        return out

    def write(self, jobs: list[tuple[torch.Tensor, str, int, str]]) -> list[tuple[Any, float]]:
        """Per ``(audio, path, out_rate, format)``: ``(Path | LacquerError, seconds)``."""
        import ray

        refs = [
            self._write.remote(np.ascontiguousarray(audio.numpy()), path, rate, fmt)
            for audio, path, rate, fmt in jobs
        ]
        return ray.get(refs)


def _owned_tensor(samples: np.ndarray, pin: bool) -> torch.Tensor:
    """A tensor of its own (page-locked when ``pin``) holding ``samples``, which is a
    read-only view of the object store."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # not writable: it is copied next
        view = torch.from_numpy(samples)
    out = torch.empty(view.shape, dtype=view.dtype, pin_memory=pin)
    return out.copy_(view)
