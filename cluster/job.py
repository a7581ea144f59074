"""A render job: master many songs on a Ray cluster, streaming them through stage pipelines,
and never lose one.

The driver (this module) keeps only song ids, paths and small reports; audio goes from the
first stage worker (which decodes from the path) through the pipeline to the last (which
writes the file). Per pipeline at most ``max_in_flight`` songs are submitted and not yet
finished (back-pressure), so neither the driver nor the object store holds more than that.

What can go wrong and what the job does:

* a song is bad (unreadable, NaN samples, a stage raising on it): it fails alone with its
  error in the manifest; when a whole batch raised, its songs are retried one by one so only
  the culprit fails;
* a worker process dies (SIGKILL, OOM, a lost node): Ray restarts the actor
  (``max_restarts``; a pipeline's placement group is re-placed on another node when its node
  is gone) and the songs it had in flight go back to the queue, up to ``max_attempts`` tries;
  a pipeline whose actors are dead for good is retired and the others carry on;
* the driver dies: the manifest (:mod:`cluster.manifest`) is rewritten atomically after every
  change, outputs are written atomically by the workers, so the same command resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from actors import metrics
from actors.io_tasks import IO_MODES
from actors.placement import FarmPlan, PipelinePlan, plan_farm
from actors.retry_step import first_attempt
from actors.stage_actor import SongResult, SongSpec, StageWorker
from cluster.inputs import SongInput
from cluster.manifest import (
    DONE,
    FAILED,
    MANIFEST_NAME,
    PENDING,
    RUNNING,
    Manifest,
    SongRecord,
    file_sha256,
    write_parquet_atomic,
)
from mastering import SAMPLE_RATE
from mastering.adapter_folder import GenreAdapters
from mastering.audio.info import resampled_length
from mastering.errors import InvalidParameterError, LacquerError
from mastering.io import probe_audio
from mastering.render import MasterOptions, output_path
from mastering.retry import RetryPolicy

#: Per-song metrics file in the output folder (rows are appended run after run).
METRICS_NAME = "lacquer-metrics.parquet"
TRANSPORTS: tuple[str, ...] = ("object_store", "gloo", "nccl")
#: Times a pipeline whose workers are dead for good is rebuilt from scratch.
MAX_RESPAWNS = 2
#: Batches' worth of queued songs the driver searches for songs that fit a batch.
BATCH_WINDOW = 8


class PlacementError(LacquerError):
    """The cluster cannot host the planned pipelines (not enough free GPUs/CPUs on a node)."""


class JobError(LacquerError):
    """The job cannot go on (every pipeline lost)."""


@dataclass
class RenderConfig:
    """How a render job runs.

    Attributes:
        out_dir: output folder (masters, the manifest, the metrics table).
        options: mastering options shared by all songs (target LUFS, ceiling dBTP, format...);
            ``options.conditioning`` is the default each song's own values override.
        gpus: GPUs to use; ``None``: all GPUs of the cluster; 0: CPU workers.
        mode: ``replicated`` (default: the whole chain on every GPU) or ``pipeline`` (stage
            groups on separate GPUs, songs streamed through; see :mod:`actors.placement`).
            Replicated is the default because it measured faster: on 2 H200s, 32 one-minute
            songs at batch 8, replicated ran 226x real time (88 % scaling from 1 GPU) and
            pipeline 141x, whose object-store hop between GPUs cost ~0.4 s a song.
        batch: songs per batch (run through the stages together, padded to the longest).
        max_in_flight: songs submitted and unfinished per pipeline; default
            ``batch * (groups + overlap)`` (every worker busy, plus the batches its host
            threads decode and write meanwhile).
        max_attempts: tries per song when workers die under it.
        max_restarts: restarts per stage worker (``-1``: unlimited).
        overlap: batches a worker holds at once: with 3 (default) it decodes the next batch
            and writes the previous one on its CPUs while the device runs this one (one batch
            on the device at a time); 1 runs them one after another. Ray Direct Transport
            (``gloo``/``nccl``) needs 1: its actors may not run calls concurrently.
        transport: ``object_store`` (default), or Ray Direct Transport over ``gloo`` (CPU
            tensors) or ``nccl`` (GPU tensors stay on the GPU).
        groups: stage groups per pipeline (default: one per GPU; see ``plan_farm``).
        costs: per-stage relative costs for grouping (default ``actors.placement.STAGE_COSTS``).
        cpus_per_group: CPUs each worker reserves (its placement-group bundle).
        io: where the first worker decodes and the last writes: ``threads`` (default) in
            their own process, or ``tasks``: Ray tasks of one CPU each in the worker's bundle
            (:mod:`actors.io_tasks`; the worker keeps one of ``cpus_per_group``, which must be
            at least 2), so file work never holds the GIL the device thread needs; meant for
            GPU workers (a CPU worker's chain then runs on its one CPU). On 4×H200
            ``tasks`` was 30-40 % faster on 1 GPU and ~35 % slower on 4, where every song
            crossing the node's object store twice (~140 MB) was the limit.
        cpu_pipelines: pipelines when ``gpus == 0``.
        placement_timeout_s: how long to wait for the cluster to place a pipeline (or to
            re-place one whose worker died), s.
        checkpoint_interval_s: the manifest and metrics table are rewritten at most this
            often (s) and at the end; songs finished since the last checkpoint of a killed
            job are redone on resume (their outputs are overwritten atomically).
        progress: show a progress bar (``None``: when stderr is a terminal).
        profile: synchronize GPUs around each step so per-step timings are exact.
        retry: the auto-retry policy (:mod:`mastering.retry`; ``None``: off). The pipeline's
            last worker re-masters each song scoring below ``retry.threshold`` with altered
            parameters, up to ``retry.max_attempts`` attempts in all, and writes the best
            (never worse than the first); every attempt is in the song's result and its
            metrics row (``attempts``, ``first_score``, ``score``).
        adapter_dir: a folder of ``genre-<genre>`` style adapters (e.g. the version
            ``lacquer improve`` promoted; :class:`mastering.adapter_folder.GenreAdapters`):
            each song is mastered with its genre's adapter, the base chain when the folder has
            none. Batches then hold songs of one genre. ``None``: no adapters.
        max_padding: how much longer than a song its batch may be, as a fraction of the
            song's length (0: songs batch only with songs of exactly their length). A batch is
            padded with silence to its longest song, and a shorter song's controllers hear
            that silence (a 1.5 s clip padded to 2 s came out 0.4 dB quieter than mastered
            alone), so by default a master does not depend on what it was batched with. The
            driver looks :data:`BATCH_WINDOW` batches ahead in the queue for songs that fit.
    """

    out_dir: Path
    options: MasterOptions = field(default_factory=MasterOptions)
    gpus: int | None = None
    mode: str = "replicated"
    batch: int = 1
    max_in_flight: int | None = None
    max_attempts: int = 3
    max_restarts: int = 3
    overlap: int = 3
    transport: str = "object_store"
    groups: int | None = None
    costs: Mapping[str, float] | None = None
    cpus_per_group: float = 1.0
    io: str = "threads"
    cpu_pipelines: int = 1
    placement_timeout_s: float = 120.0
    checkpoint_interval_s: float = 1.0
    progress: bool | None = None
    profile: bool = False
    retry: RetryPolicy | None = None
    adapter_dir: str | None = None
    max_padding: float = 0.0

    def validate(self) -> RenderConfig:
        self.out_dir = Path(self.out_dir)
        self.options.validate()
        if self.retry is not None:
            self.retry.validate()
        if self.adapter_dir is not None:
            self.adapter_dir = str(GenreAdapters(self.adapter_dir).folder.resolve())
        if self.batch < 1:
            raise InvalidParameterError(f"batch must be >= 1, got {self.batch}")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise InvalidParameterError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.max_attempts < 1:
            raise InvalidParameterError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.transport not in TRANSPORTS:
            raise InvalidParameterError(
                f"unknown transport {self.transport!r}; valid: {', '.join(TRANSPORTS)}"
            )
        if self.overlap < 1:
            raise InvalidParameterError(f"overlap must be >= 1, got {self.overlap}")
        if self.io not in IO_MODES:
            raise InvalidParameterError(f"unknown io {self.io!r}; valid: {', '.join(IO_MODES)}")
        if self.io == "tasks" and self.cpus_per_group < 2:
            raise InvalidParameterError(
                f"io='tasks' needs cpus_per_group >= 2 (one for the worker, the rest for its "
                f"decode/write tasks), got {self.cpus_per_group:g}"
            )
        if not self.max_padding >= 0.0:
            raise InvalidParameterError(f"max_padding must be >= 0, got {self.max_padding}")
        if self.transport != "object_store":
            self.overlap = 1
        return self


@dataclass
class JobSummary:
    """What a job did. ``seconds`` is the wall time of the rendering loop; rates count only
    songs done in this run (skipped ones were done before). ``retries`` counts songs sent
    again after a worker died under them; ``songs_retried`` songs the auto-retry re-mastered
    (more than one attempt) and ``mean_attempts`` the mean mastering attempts per rendered
    song (1.0 without auto-retry)."""

    total: int
    done: int
    failed: int
    skipped: int
    rendered: int
    seconds: float
    audio_seconds: float
    plan: dict[str, Any]
    failures: list[tuple[str, str]]
    retries: int
    manifest_path: str
    metrics_path: str
    songs_retried: int = 0
    mean_attempts: float = 1.0

    @property
    def songs_per_s(self) -> float:
        return self.rendered / self.seconds if self.seconds > 0 else 0.0

    @property
    def realtime_x(self) -> float:
        return self.audio_seconds / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        out = [
            f"{self.done}/{self.total} done ({self.skipped} already done), {self.failed} failed, "
            f"{self.retries} requeued after worker losses; {self.rendered} rendered in "
            f"{self.seconds:.1f} s: {self.songs_per_s:.2f} songs/s, "
            f"{self.realtime_x:.1f}x real time",
            f"auto-retry: {self.songs_retried} of {self.rendered} songs re-mastered, "
            f"{self.mean_attempts:.2f} attempts per song",
        ]
        out += [f"FAILED {sid}: {err}" for sid, err in self.failures]
        out.append(f"manifest: {self.manifest_path}; metrics: {self.metrics_path}")
        return out


@dataclass
class _Batch:
    song_ids: list[str]
    submitted_at: float


@dataclass
class _Pipeline:
    index: int
    plan: PipelinePlan
    placement_group: Any
    workers: list[Any]
    pids: list[int] = field(default_factory=list)
    in_flight: dict[Any, _Batch] = field(default_factory=dict)
    retired: bool = False
    #: Set while a worker is restarting: since when (s), the liveness probes, next probe time.
    recovering_since: float | None = None
    probes: list[Any] | None = None
    probe_at: float = 0.0
    respawns: int = 0

    @property
    def songs_in_flight(self) -> int:
        return sum(len(b.song_ids) for b in self.in_flight.values())


class RenderJob:
    """Master ``songs`` into ``config.out_dir`` on the connected Ray cluster.

    Call :meth:`run` inside :func:`cluster.runtime.ray_session`.
    """

    def __init__(self, songs: Sequence[SongInput], config: RenderConfig):
        if not songs:
            raise InvalidParameterError("no input songs")
        self.songs = list(songs)
        self.config = config.validate()
        self.manifest_path = self.config.out_dir / MANIFEST_NAME
        self.metrics_path = self.config.out_dir / METRICS_NAME
        self.plan: FarmPlan | None = None
        self.pipelines: list[_Pipeline] = []
        self.metrics: list[dict[str, Any]] = []
        self._on_result: Callable[[RenderJob, Manifest], None] | None = None
        self._on_song: Callable[[SongRecord, SongResult], None] | None = None
        self._saved_at = 0.0
        self._lengths: dict[str, int | None] = {}

    # -- set-up ----------------------------------------------------------------------------
    def prepare_manifest(self) -> Manifest:
        """Fresh records for the inputs (hashes, output names), merged with a previous run's
        manifest in the output folder; saved."""
        self.config.out_dir.mkdir(parents=True, exist_ok=True)
        fmt = self.config.options.format
        names: dict[Path, str] = {}
        fresh = []
        for song in self.songs:
            dest = output_path(song.path, self.config.out_dir, fmt)
            if dest in names:
                # Two inputs with the same stem: disambiguate by the song id, deterministically.
                tag = hashlib.sha256(song.song_id.encode()).hexdigest()[:8]
                dest = dest.with_name(f"{dest.stem}-{tag}{dest.suffix}")
            names[dest] = song.song_id
            fresh.append(
                SongRecord(
                    song_id=song.song_id,
                    input_path=str(song.path),
                    input_hash=file_sha256(song.path),
                    output_path=str(dest),
                    conditioning=dict(song.conditioning),
                )
            )
        manifest = Manifest.load(self.manifest_path).merge(fresh)
        manifest.save()
        _remove_stale_parts(self.config.out_dir, [Path(r.output_path).name for r in fresh])
        return manifest

    def make_plan(self) -> FarmPlan:
        import ray

        cfg = self.config
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        node_gpus = [int(n.get("Resources", {}).get("GPU", 0)) for n in nodes]
        gpus = int(sum(node_gpus)) if cfg.gpus is None else cfg.gpus
        groups = cfg.groups
        if gpus == 0 and groups is None and cfg.mode == "pipeline":
            # CPU workers: as many stage groups as one node's CPUs hold (a laptop's 2 cores
            # get a 2-group pipeline instead of seven workers that cannot be placed).
            node_cpus = max((n.get("Resources", {}).get("CPU", 0.0) for n in nodes), default=1)
            stages = self.config.options.chain_config().order
            groups = max(1, min(len(stages), int(node_cpus // cfg.cpus_per_group)))
        return plan_farm(
            self.config.options.chain_config().order,
            gpus,
            cfg.mode,
            costs=cfg.costs,
            gpus_per_node=max(node_gpus, default=0) or None,
            groups=groups,
            cpu_pipelines=cfg.cpu_pipelines,
            cpus_per_group=cfg.cpus_per_group,
        )

    def start_pipelines(self, plan: FarmPlan) -> list[_Pipeline]:
        """One ``STRICT_PACK`` placement group per pipeline, one worker per stage group;
        returns when every worker has loaded its chain."""
        pipelines = [self._place(i, p) for i, p in enumerate(plan.pipelines)]
        for pipe in pipelines:
            self._ready(pipe)
        return pipelines

    def _place(self, index: int, p: PipelinePlan) -> _Pipeline:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        cfg = self.config
        if cfg.transport == "object_store":
            remote_cls = ray.remote(StageWorker)
        else:
            remote_cls = ray.remote(enable_tensor_transport=True)(StageWorker)
        pg = placement_group(p.bundles, strategy=p.strategy)
        try:
            ray.get(pg.ready(), timeout=cfg.placement_timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(pg)
            raise PlacementError(
                f"pipeline {index} needs {p.bundles} on one node; the cluster could not "
                f"place it within {cfg.placement_timeout_s:g} s (free GPUs/CPUs too few)"
            ) from None
        last = len(p.groups) - 1

        def bundle(g) -> PlacementGroupSchedulingStrategy:
            return PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=g.bundle_index
            )

        tasks = cfg.io == "tasks"
        workers = [
            remote_cls.options(
                num_cpus=1 if tasks else g.num_cpus,
                num_gpus=g.num_gpus,
                max_concurrency=cfg.overlap,
                max_restarts=cfg.max_restarts,
                max_task_retries=0,
                scheduling_strategy=bundle(g),
            ).remote(
                g.stages,
                cfg.options,
                first=i == 0,
                last=i == last,
                profile=cfg.profile,
                keep_on_device=cfg.transport == "nccl",
                retry=cfg.retry if i == last else None,
                adapter_dir=cfg.adapter_dir,
                io_scheduling=bundle(g) if tasks else None,
                io_slots=max(1, int(g.num_cpus) - 1),
            )
            for i, g in enumerate(p.groups)
        ]
        return _Pipeline(index, p, pg, workers)

    def _ready(self, pipe: _Pipeline) -> None:
        """Wait for the workers (they load the chain), then connect them for RDT."""
        import ray

        pipe.pids = ray.get([w.pid.remote() for w in pipe.workers])
        if self.config.transport != "object_store" and len(pipe.workers) > 1:
            self._connect(pipe)

    def _respawn(self, pipe: _Pipeline) -> bool:
        """Replace a pipeline whose workers are dead for good (restarts exhausted, or killed
        by Ray after a failed RDT transfer) with a new one; ``False`` when out of respawns
        or the cluster cannot place it."""
        import ray

        if pipe.respawns >= MAX_RESPAWNS:
            return False
        self._release(pipe)
        try:
            fresh = self._place(pipe.index, pipe.plan)
            fresh.respawns = pipe.respawns + 1
            self._ready(fresh)
        except (LacquerError, ray.exceptions.RayError):
            return False
        self.pipelines[self.pipelines.index(pipe)] = fresh
        return True

    @staticmethod
    def _release(pipe: _Pipeline) -> None:
        import ray

        for w in pipe.workers:
            with contextlib.suppress(Exception):  # already dead
                ray.kill(w, no_restart=True)
        with contextlib.suppress(Exception):
            ray.util.remove_placement_group(pipe.placement_group)

    def _connect(self, pipe: _Pipeline) -> None:
        """(Re)build the pipeline's collective group for Ray Direct Transport."""
        from ray.experimental.collective import (
            create_collective_group,
            destroy_collective_group,
        )

        name = f"lacquer-{id(self)}-{pipe.index}-{pipe.respawns}"
        with contextlib.suppress(Exception):  # no such group yet
            destroy_collective_group(name)
        create_collective_group(pipe.workers, backend=self.config.transport, name=name)

    def worker_info(self) -> list[list[dict[str, Any]]]:
        """Per pipeline, per stage group: where the worker runs (node, GPU ids, pid)."""
        import ray

        return [ray.get([w.info.remote() for w in p.workers]) for p in self.pipelines]

    def stop(self) -> None:
        """Kill the workers and release the placement groups."""
        for pipe in self.pipelines:
            self._release(pipe)
        self.pipelines = []

    # -- the job ---------------------------------------------------------------------------
    def run(
        self,
        *,
        keep_workers: bool = False,
        on_result: Callable[[RenderJob, Manifest], None] | None = None,
        on_song: Callable[[SongRecord, SongResult], None] | None = None,
    ) -> JobSummary:
        """Render every song not already done; returns the summary.

        Args:
            keep_workers: leave the pipelines up afterwards (call :meth:`stop` later).
            on_result: called in the driver loop after each finished batch (progress hooks,
                fault-injection in tests).
            on_song: called in the driver loop with each song done (its manifest record and
                its result, attempts included), e.g. to record them in the feedback tables.
        """
        self._on_result = on_result
        self._on_song = on_song
        manifest = self.prepare_manifest()
        skipped = len(manifest.in_state(DONE)) + len(manifest.in_state(FAILED))
        self.plan = self.make_plan()
        todo = [r.song_id for r in manifest if r.state in (PENDING, RUNNING)]
        if self.config.batch > 1:
            # Similar lengths batch together (less padding): sort by file size (by genre
            # first with genre adapters: a batch holds one genre).
            todo.sort(
                key=lambda sid: (self._batch_key(manifest[sid]), _size(manifest[sid].input_path))
            )
        for sid in todo:
            manifest[sid].state = PENDING
        try:
            if todo:
                self.pipelines = self.start_pipelines(self.plan)
            t0 = time.perf_counter()
            stats = self._loop(manifest, deque(todo))
            seconds = time.perf_counter() - t0
        finally:
            self._checkpoint(manifest, force=True)
            if not keep_workers:
                self.stop()
        counts = manifest.counts()
        return JobSummary(
            total=len(manifest),
            done=counts[DONE],
            failed=counts[FAILED],
            skipped=skipped,
            rendered=stats["rendered"],
            seconds=seconds,
            audio_seconds=stats["audio_s"],
            plan=self.plan.to_dict(),
            failures=[(r.song_id, r.error) for r in manifest.in_state(FAILED)],
            retries=stats["retries"],
            manifest_path=str(self.manifest_path),
            metrics_path=str(self.metrics_path),
            songs_retried=stats["songs_retried"],
            mean_attempts=stats["attempts"] / stats["rendered"] if stats["rendered"] else 1.0,
        )

    def _loop(self, manifest: Manifest, pending: deque[str]) -> dict[str, Any]:
        import ray

        cfg = self.config
        alone: set[str] = set()  # songs to run in a batch of their own (after a batch error)
        stats = {"rendered": 0, "audio_s": 0.0, "retries": 0, "songs_retried": 0, "attempts": 0}
        bar = _progress(len(manifest), len(manifest) - len(pending), cfg.progress)
        t0 = time.perf_counter()
        try:
            while pending or any(p.in_flight for p in self.pipelines):
                for pipe in self.pipelines:
                    if pipe.recovering_since is not None and not pipe.retired:
                        self._check_recovery(pipe, manifest, pending, stats)
                live = [p for p in self.pipelines if not p.retired]
                if not live:
                    raise JobError(
                        f"every pipeline was lost; {len(pending)} songs left pending "
                        "(run the same command again to resume)"
                    )
                healthy = [p for p in live if p.recovering_since is None]
                if self._submit(healthy, manifest, pending, alone):
                    self._checkpoint(manifest)
                refs = {ref: p for p in live for ref in p.in_flight}
                if not refs:
                    time.sleep(0.2)  # every pipeline is recovering
                    continue
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
                for ref in ready:
                    pipe = refs[ref]
                    batch = pipe.in_flight.pop(ref)
                    self._collect(ref, batch, pipe, manifest, pending, alone, stats)
                if ready:
                    self._checkpoint(manifest)
                    elapsed = time.perf_counter() - t0
                    _update(bar, stats, elapsed, manifest)
                    metrics.progress(
                        stats["rendered"] / elapsed,
                        stats["audio_s"] / elapsed,
                        sum(p.songs_in_flight for p in self.pipelines),
                        len(pending),
                    )
                    if self._on_result is not None:
                        self._on_result(self, manifest)
        finally:
            if bar is not None:
                bar.close()
        return stats

    def _submit(
        self,
        live: list[_Pipeline],
        manifest: Manifest,
        pending: deque[str],
        alone: set[str],
    ) -> bool:
        cfg = self.config
        submitted = False
        for pipe in live:
            cap = cfg.max_in_flight or cfg.batch * (len(pipe.plan.groups) + cfg.overlap)
            while pending and pipe.songs_in_flight < cap:
                ids = self._take_batch(manifest, pending, alone)
                specs = []
                for sid in ids:
                    rec = manifest[sid]
                    try:
                        cond = SongInput(sid, Path(rec.input_path), rec.conditioning)
                        cond = cond.resolve_conditioning(cfg.options.conditioning)
                    except LacquerError as exc:
                        _fail(rec, f"{rec.input_path}: {exc}", "input")
                        continue
                    rec.state, rec.attempts = RUNNING, rec.attempts + 1
                    rec.started_at, rec.error = time.time(), ""
                    specs.append(SongSpec(sid, rec.input_path, rec.output_path, cond))
                if specs:
                    metrics.batch_submitted(len(specs))
                    ref = self._chain_call(pipe, specs)
                    pipe.in_flight[ref] = _Batch([s.song_id for s in specs], time.time())
                submitted = True
        return submitted

    def _take_batch(self, manifest: Manifest, pending: deque[str], alone: set[str]) -> list[str]:
        """The next batch: the first queued song, and then, from the next
        ``BATCH_WINDOW * batch`` queued songs, those that may share its batch
        (:meth:`_fits`), in queue order; the others keep their places."""
        first = pending.popleft()
        ids = [first]
        if first in alone or self.config.batch == 1:
            return ids
        skipped: list[str] = []
        for _ in range(min(len(pending), BATCH_WINDOW * self.config.batch)):
            if len(ids) == self.config.batch:
                break
            sid = pending.popleft()
            if sid not in alone and self._fits(manifest, first, sid):
                ids.append(sid)
            else:
                skipped.append(sid)
        pending.extendleft(reversed(skipped))
        return ids

    def _fits(self, manifest: Manifest, first: str, other: str) -> bool:
        """Whether ``other`` may join ``first``'s batch: the same batch key, and lengths
        within ``max_padding`` of each other (an unreadable song batches alone)."""
        a, b = self._length(manifest[first]), self._length(manifest[other])
        if a is None or b is None:
            return False
        if abs(a - b) > self.config.max_padding * min(a, b):
            return False
        return self._batch_key(manifest[first]) == self._batch_key(manifest[other])

    def _length(self, rec: SongRecord) -> int | None:
        """The song's length at 48 kHz, samples, from its header (cached); ``None`` when it
        cannot be read (the worker then fails it with the reason)."""
        if rec.song_id not in self._lengths:
            try:
                info = probe_audio(rec.input_path)
                length = resampled_length(info.frames, info.sample_rate, SAMPLE_RATE)
            except LacquerError:
                length = None
            self._lengths[rec.song_id] = length
        return self._lengths[rec.song_id]

    def _batch_key(self, rec: SongRecord) -> str:
        """Songs batch together only with equal keys: with genre adapters the resolved genre
        (a batch runs through one adapter), else one key for all."""
        if self.config.adapter_dir is None:
            return ""
        try:
            song = SongInput(rec.song_id, Path(rec.input_path), rec.conditioning)
            return song.resolve_conditioning(self.config.options.conditioning).resolved_genre()
        except LacquerError:
            return ""  # fails on submission with its error

    def _chain_call(self, pipe: _Pipeline, specs: list[SongSpec]):
        """Submit ``specs`` through the pipeline's workers; the last call's ref."""
        ref: Any = specs
        last = len(pipe.workers) - 1
        for i, w in enumerate(pipe.workers):
            method = w.process
            if self.config.transport != "object_store" and i < last:
                method = method.options(tensor_transport=self.config.transport)
            ref = method.remote(ref)
        return ref

    def _collect(self, ref, batch, pipe, manifest, pending, alone, stats) -> None:
        import ray

        try:
            results: list[SongResult] = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, ray.exceptions.RayError):
                self._lost(batch, pipe, manifest, pending, stats, exc)
            elif len(batch.song_ids) > 1:
                # Some song in the batch broke a stage: retry each alone to find which.
                alone.update(batch.song_ids)
                for sid in reversed(batch.song_ids):
                    manifest[sid].state = PENDING
                    pending.appendleft(sid)
            else:
                rec = manifest[batch.song_ids[0]]
                msg = str(cause) if isinstance(cause, LacquerError) else f"{rec.input_path}: "
                if not isinstance(cause, LacquerError):
                    msg += f"{type(cause).__name__}: {cause}"
                _fail(rec, msg, "input")
            return
        except ray.exceptions.RayError as exc:
            self._lost(batch, pipe, manifest, pending, stats, exc)
            return
        now = time.time()
        for r in results:
            rec = manifest[r.song_id]
            rec.finished_at, rec.seconds = now, now - batch.submitted_at
            if not r.ok:
                _fail(rec, r.error or "failed", "input")
                continue
            last = r.workers[-1] if r.workers else {}
            rec.state, rec.error, rec.error_kind = DONE, "", ""
            rec.output_path = r.output_path or rec.output_path
            rec.node_id, rec.gpu_ids = last.get("node_id", ""), ",".join(last.get("gpu_ids", []))
            rec.duration_s = r.duration_s
            stats["rendered"] += 1
            stats["audio_s"] += r.duration_s
            made = len(r.attempts) or 1
            stats["attempts"] += made
            stats["songs_retried"] += made > 1
            metrics.song_done(r.duration_s, rec.seconds)
            self.metrics.append(_metrics_row(rec, r, pipe.index))
            if self._on_song is not None:
                self._on_song(rec, r)

    def _lost(self, batch, pipe, manifest, pending, stats, exc) -> None:
        """Workers died under ``batch``: requeue its songs (or fail those out of attempts);
        retire the pipeline when one of its actors is dead for good."""
        for sid in reversed(batch.song_ids):
            rec = manifest[sid]
            if rec.attempts >= self.config.max_attempts:
                _fail(
                    rec, f"{rec.input_path}: lost {rec.attempts} times ({exc_line(exc)})", "crash"
                )
            else:
                rec.state = PENDING
                pending.appendleft(sid)
                stats["retries"] += 1
                metrics.song_retried()
        if pipe.recovering_since is None:
            pipe.recovering_since, pipe.probes, pipe.probe_at = time.time(), None, 0.0

    def _check_recovery(self, pipe, manifest, pending, stats) -> None:
        """Probe a pipeline whose worker died: healthy again once every worker answers
        (then its pids are refreshed and, for Ray Direct Transport, its collective group is
        rebuilt); retired when a worker is dead for good or it takes longer than
        ``placement_timeout_s``."""
        import ray

        if pipe.probes is None:
            if time.time() >= pipe.probe_at:
                pipe.probes = [w.pid.remote() for w in pipe.workers]
            return
        _, waiting = ray.wait(pipe.probes, num_returns=len(pipe.probes), timeout=0)
        if waiting:
            return
        try:
            pids = ray.get(pipe.probes)
        except ray.exceptions.RayError as exc:
            pipe.probes, pipe.probe_at = None, time.time() + 0.5
            too_long = time.time() - pipe.recovering_since > self.config.placement_timeout_s
            if too_long or any(_actor_state(w) == "DEAD" for w in pipe.workers):
                for ref, b in list(pipe.in_flight.items()):
                    del pipe.in_flight[ref]
                    self._lost(b, pipe, manifest, pending, stats, exc)
                if not self._respawn(pipe):
                    pipe.retired = True
            return
        pipe.pids, pipe.probes, pipe.recovering_since = pids, None, None
        if self.config.transport != "object_store" and len(pipe.workers) > 1:
            self._connect(pipe)

    def _checkpoint(self, manifest: Manifest, *, force: bool = False) -> None:
        """Save the metrics rows, then the manifest (so a song the manifest calls done always
        has its metrics row), at most every ``checkpoint_interval_s`` unless ``force``."""
        now = time.monotonic()
        if not force and now - self._saved_at < self.config.checkpoint_interval_s:
            return
        self._save_metrics()
        manifest.save()
        self._saved_at = now

    def _save_metrics(self) -> None:
        if not self.metrics:
            return
        table = pa.Table.from_pylist(self.metrics)
        if self.metrics_path.exists():
            try:
                old = pq.read_table(self.metrics_path)
                table = pa.concat_tables([old, table], promote_options="permissive")
            except (OSError, pa.ArrowException):
                pass  # an unreadable old table is replaced
        write_parquet_atomic(table, self.metrics_path)
        self.metrics = []


def exc_line(exc: BaseException) -> str:
    """The first line of an exception's message, with its type."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:200]}"


def _remove_stale_parts(out_dir: Path, names: list[str]) -> None:
    """Remove temp files a killed job left behind (``.<output>.*.part`` from ``write_audio``,
    ``.lacquer-*.tmp`` from the tables). Assumes one job per output folder at a time."""
    stale = [p for n in names for p in out_dir.glob(f".{n}.*.part")]
    stale += out_dir.glob(".lacquer-*.tmp")
    for p in stale:
        p.unlink(missing_ok=True)


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def _fail(rec: SongRecord, error: str, kind: str) -> None:
    rec.state, rec.error, rec.error_kind = FAILED, error, kind
    rec.finished_at = time.time()
    metrics.song_failed(kind)


def _actor_state(actor) -> str:
    """``ALIVE``, ``RESTARTING``, ``DEAD`` ... from the GCS (``""`` when unknown)."""
    try:
        from ray._private.state import actors

        return str(actors(actor_id=actor._actor_id.hex()).get("State", ""))
    except Exception:  # the state table is best effort
        return ""


def song_attempts(r: SongResult) -> list[dict[str, Any]]:
    """A done song's mastering attempts (small dicts, :meth:`mastering.retry.Attempt.brief`;
    ``best`` marks the kept one); without auto-retry its one attempt, from its scores."""
    if r.attempts:
        return list(r.attempts)
    return [first_attempt(r.scores)]


def _metrics_row(rec: SongRecord, r: SongResult, pipeline: int) -> dict[str, Any]:
    """One song's row of the metrics table: where and how long it ran (``tries``: times sent
    to a pipeline), its loudness, its scores (``score``: the kept master's; ``first_score``:
    the first attempt's; ``attempts``: mastering attempts made), the size of the batch it ran
    in and per-step seconds."""
    attempts = song_attempts(r)
    row: dict[str, Any] = {
        "song_id": rec.song_id,
        "finished_at": rec.finished_at,
        "pipeline": pipeline,
        "batch_size": r.batch_size,
        "tries": rec.attempts,
        "attempts": len(attempts),
        "first_score": attempts[0]["score"],
        "node_id": rec.node_id,
        "gpu_ids": rec.gpu_ids,
        "duration_s": r.duration_s,
        "wall_s": rec.seconds,
        "integrated_lufs": r.after.get("integrated_lufs"),
        "true_peak_dbtp": r.after.get("true_peak_dbtp"),
        "lra_lu": r.after.get("lra_lu"),
        **{k: float(v) for k, v in sorted(r.scores.items())},
    }
    row.update({f"t_{k}_s": float(v) for k, v in sorted(r.timings_s.items())})
    return row


def _progress(total: int, initial: int, enabled: bool | None):
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    return tqdm(total=total, initial=initial, unit="song", file=sys.stderr, smoothing=0.1)


def _update(bar, stats: dict[str, Any], elapsed: float, manifest: Manifest) -> None:
    if bar is None:
        return
    counts = manifest.counts()
    bar.n = counts[DONE] + counts[FAILED]
    rate = stats["rendered"] / elapsed if elapsed > 0 else 0.0
    bar.set_postfix(
        {
            "songs/s": f"{rate:.2f}",
            "xRT": f"{stats['audio_s'] / elapsed if elapsed > 0 else 0.0:.1f}",
            "failed": counts[FAILED],
        },
        refresh=False,
    )
    bar.refresh()
