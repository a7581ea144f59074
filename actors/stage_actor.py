"""A worker that hosts one group of consecutive mastering stages (on one GPU, or a CPU).

:class:`StageWorker` is a plain class, made a Ray actor at the call site, as in Ray's own
examples::

    Worker = ray.remote(StageWorker).options(num_gpus=1, max_restarts=3, placement_group=pg, ...)
    w = Worker.remote(("eq", "compressor"), options, first=True, last=False)

Songs travel through a pipeline of workers as :class:`StageBatch` objects:

* the **first** worker takes :class:`SongSpec` items (paths, not samples), decodes each file
  (``mastering.io.read_audio``), runs ``Chain.begin`` per song (a bad file fails alone, here,
  with its error), pads the survivors to the longest and concatenates them into one batch;
* every worker runs ``Chain.run_stages(state, its_stages)`` on the batch;
* the **last** worker calls ``Chain.finish``, cuts each song back to its own length, encodes
  and writes it atomically (``mastering.render.output_path`` / ``write_audio``) and returns
  only small per-song report dicts.

So raw float audio goes worker -> worker (object store, or GPU -> GPU with Ray Direct
Transport), never through the driver. :meth:`StageWorker.process` is the one entry point for
all three roles; a one-group pipeline (``replicated`` mode) does all three in one call.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from actors.io_tasks import IOTasks
from actors.retry_step import retry_weak_songs
from mastering import SAMPLE_RATE
from mastering.adapter_folder import GenreAdapters
from mastering.chain import Chain, ChainState
from mastering.conditioning import Conditioning, ConditioningBatch
from mastering.dsp.warmup import warm_up
from mastering.errors import LacquerError
from mastering.grouping import equal_length_groups
from mastering.io import WRITE_FORMATS, quantize_tensor, read_audio, write_audio
from mastering.loudness import measure_batch
from mastering.render import MasterOptions, summary
from mastering.retry import RetryPolicy

#: GIL switch interval of a worker process, s (Python's default is 0.005).
GIL_SWITCH_INTERVAL_S = 0.0002


@dataclass(frozen=True)
class SongSpec:
    """One song to master: what the first worker needs (no samples).

    Attributes:
        song_id: the job's id for the song (unique within a job).
        input_path: audio file to read.
        output_path: final file to write (derived with ``mastering.render.output_path``).
        conditioning: what the song is mastered for (per song; unset fields are estimated).
    """

    song_id: str
    input_path: str
    output_path: str
    conditioning: Conditioning = field(default_factory=Conditioning)


@dataclass
class SongResult:
    """What happened to one song (small; returned to the driver).

    Attributes:
        song_id: as in :class:`SongSpec`.
        ok: written successfully.
        error: the one-line error when not ``ok``.
        output_path: file written.
        duration_s: song length, seconds.
        after: measurements of the master (``mastering.render.summary``: LUFS, dBTP, ...).
        scores: the evaluation model's scores of the master (``score`` and one per sub-score,
            0-100; :mod:`mastering.evaluation`).
        timings_s: seconds spent per step for the batch it was in, divided by its size.
        workers: ``[{stages, node_id, gpu_ids, pid, device}]`` of the workers it went through.
        attempts: with auto-retry, every mastering attempt (small dicts: number, score,
            sub_scores, overrides, best...; :mod:`actors.retry_step`); empty without.
        batch_size: songs in the batch it was mastered in.
    """

    song_id: str
    ok: bool
    error: str | None = None
    output_path: str | None = None
    duration_s: float = 0.0
    after: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    batch_size: int = 1


@dataclass
class _Finished:
    """A finished batch on the host: ``audio [batch, 2, samples]`` (CPU) and per song the
    master's measurements and scores."""

    audio: torch.Tensor
    afters: list[dict[str, Any]]
    scores: list[dict[str, float]]
    attempts: list[list[dict[str, Any]]] | None = None


@dataclass
class StageBatch:
    """Songs part-way through a pipeline: what one worker hands the next.

    Attributes:
        songs: the songs still alive, in batch order.
        state: their chain state (``audio [len(songs), 2, samples]``, padded to the longest);
            ``None`` when no song survived decoding.
        lengths: each song's length in samples (48 kHz) before padding.
        source_rates: each song's source sample rate, Hz (the default output rate).
        failed: songs already failed (with their errors).
        timings_s: step name -> seconds for the whole batch so far.
        workers: the workers the batch went through.
        sent_at: wall-clock time (``time.time()``) the previous worker returned it.
    """

    songs: list[SongSpec]
    state: ChainState | None
    lengths: list[int]
    source_rates: list[int]
    failed: list[SongResult] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)
    sent_at: float = 0.0


class StageWorker:
    """Hosts ``stages`` (consecutive, in chain order) of one chain, on this worker's device.

    Args:
        stages: the stage group this worker runs.
        options: how songs are mastered and written (chain config, format, output rate,
            overrides); the conditioning comes per song with each :class:`SongSpec`.
        first: decode songs from paths and begin the chain.
        last: finish the chain, encode and write the files, return :class:`SongResult` s.
        profile: synchronize the device around each step so per-step timings are exact on
            GPU (slightly slower).
        keep_on_device: hand batches on still on this worker's device (GPU -> GPU transport
            with Ray Direct Transport over NCCL); otherwise they leave through host memory
            (the object store, or gloo on CPU).
        retry: auto-retry policy of the last worker (``None``: off; :mod:`actors.retry_step`).
        adapter_dir: folder of ``genre-<genre>`` adapters; each batch (of one genre) runs
            with its genre's (:class:`mastering.adapter_folder.GenreAdapters`).
        io_scheduling: a Ray scheduling strategy (this worker's placement-group bundle): the
            first worker decodes and the last writes in Ray tasks placed with it
            (:mod:`actors.io_tasks`), not in this process's threads. ``None``: threads.
        io_slots: CPUs those tasks have (their processes are started with the worker).
    """

    def __init__(
        self,
        stages: tuple[str, ...],
        options: MasterOptions,
        *,
        first: bool,
        last: bool,
        profile: bool = False,
        keep_on_device: bool = False,
        retry: RetryPolicy | None = None,
        adapter_dir: str | None = None,
        io_scheduling: Any = None,
        io_slots: int = 1,
    ):
        self.stages = tuple(stages)
        self.options = options
        self.first, self.last, self.profile = first, last, profile
        self.keep_on_device = keep_on_device
        self.device = torch.device(_device_for_this_worker())
        self.chain = Chain.pretrained(options.chain_config()).to(self.device)
        warm_up(self.device)  # compile the fused GPU kernels while starting
        self.batches = 0
        #: Threads that decode and encode files: the CPUs Ray gave this worker.
        self.io_threads = _assigned_cpus()
        #: Held while a batch is on the device (see :meth:`process`).
        self.device_lock = threading.Lock()
        if _in_ray_actor():
            # Torch releases the GIL around every op; with I/O threads running Python, the
            # device thread would wait up to the default 5 ms interval to get it back, once
            # per kernel launch. Hand the GIL over sooner in this worker process.
            sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self._evaluator = None
        self.retry = retry
        self.adapters = None if adapter_dir is None else GenreAdapters(adapter_dir)
        use_tasks = io_scheduling is not None and (first or last) and _in_ray_actor()
        self.io_tasks = IOTasks(io_scheduling) if use_tasks else None
        if self.io_tasks is not None:
            self.io_tasks.warm_up(io_slots)

    # -- facts about this worker ---------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Where this worker runs: ``{stages, node_id, gpu_ids, pid, device, batches}``."""
        return {**self._short_info(), "device": str(self.device), "batches": self.batches}

    def pid(self) -> int:
        return os.getpid()

    # -- work ----------------------------------------------------------------------------------
    def process(self, item: list[SongSpec] | StageBatch) -> StageBatch | list[SongResult]:
        """Run this worker's part on a batch: songs (first worker) or a :class:`StageBatch`.

        Returns the :class:`StageBatch` for the next worker, or (last worker) one
        :class:`SongResult` per song. Errors of single songs (unreadable, NaN samples) are
        results; an error of the whole batch (a stage failed) is raised, so the driver can
        retry its songs one by one.

        Thread-safe: the host work (decoding, encoding and writing files) runs outside
        :attr:`device_lock`, the device work inside it, so an actor made with
        ``max_concurrency > 1`` decodes the next batch and writes the previous one while the
        GPU runs this one, with one batch on the device at a time.
        """
        received = time.time()
        decoded = self._decode(item) if self.first else None
        t_wait = time.perf_counter()
        with self.device_lock:
            waited = time.perf_counter() - t_wait
            batch = self._begin(item, decoded) if self.first else item
            if self.adapters is not None:
                self.adapters.attach(self.chain, [s.conditioning for s in batch.songs])
            before = dict(batch.timings_s)
            if not self.first and batch.sent_at:
                _add(batch.timings_s, "hop", max(0.0, received - batch.sent_at - waited))
            _add(batch.timings_s, "wait", waited)
            batch.workers.append(self._short_info())
            self.batches += 1
            if batch.state is not None:
                if not self.first:
                    batch.state = self._timed(batch, "h2d", lambda: batch.state.to(self.device))
                with torch.no_grad():
                    for name in self.stages:
                        batch.state = self._timed(
                            batch, name, lambda n=name: self.chain.run_stages(batch.state, [n])
                        )
                if not self.last:
                    batch.state = self._timed(batch, "d2h", lambda: self._outgoing(batch.state))
            finished = self._finish_on_device(batch) if self.last else None
        out = self._write(batch, finished) if self.last else batch
        _export_metrics(
            {k: v - before.get(k, 0.0) for k, v in batch.timings_s.items() if v != before.get(k)},
            self.device,
        )
        if self.last:
            return out
        batch.sent_at = time.time()
        return batch

    def _decode(self, specs: list[SongSpec]) -> list[tuple[Any, float]]:
        """Read the songs' files in parallel threads (libsndfile and soxr release the GIL):
        per song ``((audio, info) | its LacquerError, seconds)``; on a GPU worker the audio is
        put in page-locked memory (a faster, asynchronous copy to the device). Host only."""
        pin = self.device.type == "cuda"
        if self.io_tasks is not None:
            return self.io_tasks.decode([spec.input_path for spec in specs], pin)
        with ThreadPoolExecutor(min(self.io_threads, max(1, len(specs)))) as pool:
            return list(pool.map(lambda spec: _decode(spec, pin), specs))

    def _begin(self, specs: list[SongSpec], decoded: list[tuple[Any, float]]) -> StageBatch:
        """Begin the decoded songs on the device, songs of equal length together, then batch
        the survivors. When a group fails (a song with NaN samples, say) its songs begin one
        by one, so each error stays its own song's."""
        ready = [
            (spec, result, seconds)
            for spec, (result, seconds) in zip(specs, decoded, strict=True)
            if not isinstance(result, LacquerError)
        ]
        failed = [
            SongResult(spec.song_id, ok=False, error=str(result))
            for spec, (result, _) in zip(specs, decoded, strict=True)
            if isinstance(result, LacquerError)
        ]
        timings: dict[str, float] = {}
        begun: list[tuple[list[tuple[SongSpec, Any, float]], ChainState]] = []
        for group in equal_length_groups(ready, lambda r: r[1][0].shape[-1]):
            try:
                begun.append((group, self._begin_group(group, timings)))
            except LacquerError:
                for one in group:
                    try:
                        begun.append(([one], self._begin_group([one], timings)))
                    except LacquerError as exc:
                        failed.append(SongResult(one[0].song_id, ok=False, error=str(exc)))
        songs = [spec for group, _ in begun for spec, _, _ in group]
        for group, _ in begun:
            _add(timings, "decode", sum(seconds for _, _, seconds in group))
        return StageBatch(
            songs=songs,
            state=concat_states([state for _, state in begun]) if begun else None,
            lengths=[state.length for group, state in begun for _ in group],
            source_rates=[info.sample_rate for group, _ in begun for _, (_, info), _ in group],
            failed=failed,
            timings_s=timings,
        )

    def _begin_group(self, group: list[tuple[SongSpec, Any, float]], timings) -> ChainState:
        """``Chain.begin`` on songs of one length (each with its own conditioning)."""
        t1 = time.perf_counter()
        # Each (pinned) song to the device on its own, stacked there: a host-side stack
        # would be a pageable copy, synchronous and several times slower to send.
        x = torch.stack([a.to(self.device, non_blocking=True) for _, (a, _), _ in group])
        self._sync()
        t2 = time.perf_counter()
        with torch.no_grad():
            conditioning = [spec.conditioning for spec, _, _ in group]
            state = self.chain.begin(x, conditioning, self.options.overrides)
        self._sync()
        _add(timings, "h2d", t2 - t1)
        _add(timings, "begin", time.perf_counter() - t2)
        return state

    def _finish_on_device(self, batch: StageBatch) -> _Finished | None:
        """Finish the chain, measure and score the masters where they are (on the GPU the
        meter is ~10 ms a song; on one CPU thread it was the farm's largest per-song cost),
        songs of equal length together, then copy the batch to the host. ``None`` when no
        song survived decoding."""
        if batch.state is None:
            return None
        out = self.chain.finish(batch.state)
        t_measure = time.perf_counter()
        n = len(batch.songs)
        afters: list[dict[str, Any]] = [{}] * n
        scores: list[dict[str, float]] = [{}] * n
        with torch.no_grad():
            for group in equal_length_groups(list(range(n)), lambda i: batch.lengths[i]):
                masters = out.audio[group, :, : batch.lengths[group[0]]].detach()
                genres = [batch.songs[i].conditioning.genre for i in group]
                loudness = measure_batch(masters)  # for the report and the score alike
                afters_group = summary(masters, loudness)
                scores_group = self._score(masters, genres, loudness)
                for i, after, score in zip(group, afters_group, scores_group, strict=True):
                    afters[i], scores[i] = after, score
        self._sync()
        _add(batch.timings_s, "measure", time.perf_counter() - t_measure)
        attempts = None
        if self.retry is not None:  # re-master weak songs; the best replace theirs in place
            attempts = retry_weak_songs(self.chain, self._evaluator, self.retry, self.options,
                                        batch.songs, batch.lengths, out, afters, scores,
                                        batch.timings_s)  # fmt: skip
        audio = out.audio.detach()
        if self._quantize_here(batch, audio):
            audio = self._timed(batch, "quantize", lambda: quantize_tensor(audio))
        audio = self._timed(batch, "d2h", lambda: _to_host(audio))
        return _Finished(audio, afters, scores, attempts)

    def _quantize_here(self, batch: StageBatch, audio: torch.Tensor) -> bool:
        """Whether to quantize the masters on the device (bit-identical to the writer's own
        quantization, and it leaves the host only the encoding): on a GPU, for an undithered
        24-bit format written at 48 kHz, when every sample is finite (else the writer names
        the bad file)."""
        fmt = WRITE_FORMATS[self.options.format]
        rates = {self.options.out_rate or r for r in batch.source_rates}
        return (
            self.device.type == "cuda"
            and fmt.bits == 24
            and not fmt.dither
            and rates == {SAMPLE_RATE}
            and bool(torch.isfinite(audio).all())
        )

    def _write(self, batch: StageBatch, finished: _Finished | None) -> list[SongResult]:
        """Encode and write every master atomically, in parallel threads (libsndfile
        releases the GIL); one :class:`SongResult` per song. Host only."""
        results = list(batch.failed)
        if finished is None:
            return results
        n = len(batch.songs)
        per_song = {k: v / n for k, v in batch.timings_s.items()}

        def write(i: int) -> tuple[Path | LacquerError, float]:
            t0 = time.perf_counter()
            try:
                dest = write_audio(
                    batch.songs[i].output_path,
                    finished.audio[i, :, : batch.lengths[i]],
                    sample_rate=SAMPLE_RATE,
                    out_rate=self.options.out_rate or batch.source_rates[i],
                    format=self.options.format,
                )
            except LacquerError as exc:
                return exc, time.perf_counter() - t0
            return dest, time.perf_counter() - t0

        if self.io_tasks is not None:
            written = self.io_tasks.write(
                [
                    (
                        finished.audio[i, :, : batch.lengths[i]],
                        batch.songs[i].output_path,
                        self.options.out_rate or batch.source_rates[i],
                        self.options.format,
                    )
                    for i in range(n)
                ]
            )
        else:
            with ThreadPoolExecutor(min(self.io_threads, max(1, n))) as pool:
                written = list(pool.map(write, range(n)))
        for i, (spec, (dest, seconds)) in enumerate(zip(batch.songs, written, strict=True)):
            if isinstance(dest, LacquerError):
                results.append(SongResult(spec.song_id, ok=False, error=str(dest)))
                continue
            results.append(
                SongResult(
                    spec.song_id,
                    ok=True,
                    output_path=str(dest),
                    duration_s=batch.lengths[i] / SAMPLE_RATE,
                    after=finished.afters[i],
                    scores=finished.scores[i],
                    timings_s={
                        **{k: round(v, 5) for k, v in per_song.items()},
                        "write": round(seconds, 5),
                    },
                    workers=batch.workers,
                    batch_size=n,
                    attempts=finished.attempts[i] if finished.attempts else [],
                )
            )
        return results

    def _score(
        self, masters: torch.Tensor, genres: list[str | None], loudness: list | None = None
    ) -> list[dict[str, float]]:
        """Every master is scored (the quality loop's evaluation model, made once per worker
        with the job's loudness target and ceiling): per song ``score`` and ``score_<sub>``."""
        if self._evaluator is None:
            from mastering.evaluation import Evaluator

            self._evaluator = Evaluator(self.options.target_lufs, self.options.ceiling_dbtp)
        ev = self._evaluator(masters, genres, reports=loudness)
        items = [ev.item(i) for i in range(masters.shape[0])]
        return [
            {"score": e["score"], **{f"score_{k}": v for k, v in e["sub_scores"].items()}}
            for e in items
        ]

    # -- helpers -------------------------------------------------------------------------------
    def _outgoing(self, state: ChainState) -> ChainState:
        """The state as it leaves this worker: on the host unless ``keep_on_device``, every
        tensor contiguous (collective transports send contiguous buffers only)."""
        if not self.keep_on_device:
            state = state.to("cpu")
        return ChainState(
            audio=state.audio.contiguous(),
            dry=None if state.dry is None else state.dry.contiguous(),
            cond=ConditioningBatch(**{k: v.contiguous() for k, v in vars(state.cond).items()}),
            overrides=state.overrides,
            length=state.length,
            params={k: {n: t.contiguous() for n, t in p.items()} for k, p in state.params.items()},
            info=state.info,
            done=state.done,
        )

    def _short_info(self) -> dict[str, Any]:
        """``{stages, node_id, gpu_ids, pid}`` (node and GPUs empty outside Ray)."""
        node_id, gpu_ids = _ray_placement()
        return {
            "stages": list(self.stages),
            "node_id": node_id,
            "gpu_ids": gpu_ids,
            "pid": os.getpid(),
        }

    def _sync(self) -> None:
        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _timed(self, batch: StageBatch, name: str, fn):
        self._sync()
        t0 = time.perf_counter()
        result = fn()
        self._sync()
        _add(batch.timings_s, name, time.perf_counter() - t0)
        return result


def concat_states(states: list[ChainState]) -> ChainState:
    """One batch state from per-song states that have run the same stages (``begin`` only,
    typically): audio (and dry) zero-padded at the end to the longest, conditioning
    concatenated. ``length`` becomes the longest song's; keep per-song lengths yourself.
    Per-song overrides must be equal (the batch shares them)."""
    if len(states) == 1:
        return states[0]
    longest = max(s.audio.shape[-1] for s in states)

    def padded(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, longest - t.shape[-1]))

    dry = None if states[0].dry is None else torch.cat([padded(s.dry) for s in states])
    return ChainState(
        audio=torch.cat([padded(s.audio) for s in states]),
        dry=dry,
        cond=ConditioningBatch.cat([s.cond for s in states]),
        overrides=states[0].overrides,
        length=max(s.length for s in states),
        params={},
        info={},
        done=states[0].done,
    )


def _decode(spec: SongSpec, pin: bool = False) -> tuple[Any, float]:
    """``((audio, info) | the LacquerError, seconds)`` of reading one song; ``pin``: the
    audio in page-locked memory."""
    t0 = time.perf_counter()
    try:
        result: Any = read_audio(spec.input_path)
        if pin:
            result = (result[0].pin_memory(), result[1])
    except LacquerError as exc:
        result = exc
    return result, time.perf_counter() - t0


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the host; from a GPU through page-locked memory (several times faster than a
    pageable copy; torch's caching host allocator reuses the buffers batch after batch)."""
    if t.device.type != "cuda":
        return t.to("cpu")
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    torch.cuda.current_stream(t.device).synchronize()
    return host


def _in_ray_actor() -> bool:
    """Whether this code runs inside a Ray actor's own process."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def _assigned_cpus() -> int:
    """Whole CPUs Ray assigned to this worker (1 outside a Ray actor)."""
    import ray

    if not _in_ray_actor():
        return 1
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus))


def _ray_placement() -> tuple[str, list[str]]:
    """This process's Ray node id and GPU ids (``("", [])`` outside a Ray worker, e.g. when a
    :class:`StageWorker` is used directly in one process)."""
    import ray

    if not ray.is_initialized():
        return "", []
    return ray.get_runtime_context().get_node_id(), [str(g) for g in ray.get_gpu_ids()]


def _device_for_this_worker() -> str:
    """``cuda`` when Ray gave this worker a GPU and CUDA is usable, else ``cpu`` (logical GPUs
    in tests have ids but no CUDA). Outside Ray: ``cuda`` when available."""
    import ray

    if not _in_ray_actor():
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def _export_metrics(steps: dict[str, float], device: torch.device) -> None:
    """This batch's step times (and the GPU's utilization) to Ray's metrics, inside Ray."""
    import ray

    if not ray.is_initialized():
        return
    from actors import metrics

    metrics.stage_batch(steps)
    if device.type == "cuda":
        metrics.gpu_utilization(device)


def _add(timings: dict[str, float], key: str, seconds: float) -> None:
    timings[key] = timings.get(key, 0.0) + seconds
