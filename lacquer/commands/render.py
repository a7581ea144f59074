"""``lacquer render INPUT_DIR|MANIFEST -o OUT_DIR``: master many songs on a Ray render farm.

No ``--address``: an embedded local Ray is started for the job and shut down after (or the
cluster in ``RAY_ADDRESS``, as under ``ray job submit -- lacquer render ...``); with an
address the job joins that cluster. Running the same command again resumes a killed job
(the manifest ``OUT_DIR/lacquer-manifest.parquet`` records every song's state). The exit code
is 1 when any song failed; the others still complete.

As in ``lacquer master``: every master is scored and re-mastered while below the threshold
(auto-retry on the pipeline's last worker, :mod:`actors.retry_step`; ``--no-retry``,
``--retry-attempts``, ``--retry-threshold``; the tuned policy of the feedback store), the
promoted genre adapters of ``lacquer improve`` are used (``--models``), and ``--feedback DIR``
appends every song's attempts to the feedback tables from the driver. The per-song metrics
table ``OUT_DIR/lacquer-metrics.parquet`` has ``attempts``, ``first_score`` and ``score``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from actors.io_tasks import IO_MODES
from lacquer.commands.master import (
    AUDIO_EXTENSIONS,
    add_conditioning_arguments,
    add_retry_arguments,
    expand_inputs,
    options_from_args,
    promoted_adapters,
    retry_policy,
)
from mastering.errors import InvalidParameterError

MANIFEST_SUFFIXES = {".parquet", ".csv"}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("render", help="master many songs on a Ray render farm")
    p.add_argument("input", metavar="INPUT_DIR|MANIFEST", help="folder of songs or a manifest")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--address", help="Ray cluster to join (auto, host:6379, ray://host:10001)")
    p.add_argument("--gpus", type=int, help="GPUs to use (default: all; 0: CPU workers)")
    p.add_argument(
        "--mode",
        default="replicated",
        choices=("replicated", "pipeline"),
        help="replicated: the whole chain on every GPU (default, measured faster); "
        "pipeline: stage groups on separate GPUs",
    )
    p.add_argument("--batch", type=int, default=1, help="songs per batch (default 1)")
    p.add_argument(
        "--max-padding",
        type=float,
        default=0.0,
        help="how much longer than a song its batch may be, as a fraction of its length "
        "(default 0: batches of equal lengths, so a master never depends on its batch)",
    )
    p.add_argument("--max-in-flight", type=int, help="songs in flight per pipeline")
    p.add_argument("--max-attempts", type=int, default=3, help="tries per song (worker deaths)")
    p.add_argument(
        "--transport",
        default="object_store",
        choices=("object_store", "gloo", "nccl"),
        help="how batches move between stage workers (default: the object store)",
    )
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per stage worker")
    p.add_argument(
        "--io",
        choices=IO_MODES,
        default="threads",
        help="decode/write in the worker's threads (default) or in Ray tasks on its CPUs "
        "(needs --cpus-per-worker >= 2)",
    )
    add_conditioning_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_retry_arguments(p)
    return p


def songs_for(source: str, out_dir: Path):
    """Songs of a folder (recursively; earlier masters in it are left out) or a manifest."""
    from cluster.inputs import songs_from_files, songs_from_manifest

    path = Path(source)
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        return songs_from_manifest(path)
    if not path.is_dir():
        raise InvalidParameterError("not a folder of songs nor a .parquet/.csv manifest", path)
    out = out_dir.resolve()
    files = [
        f
        for f in expand_inputs([str(path)])
        if f.suffix.lower() in AUDIO_EXTENSIONS
        and not (f.parent.resolve() == out and ".mastered" in f.suffixes)
    ]
    if not files:
        raise InvalidParameterError("no audio files in the folder", path)
    return songs_from_files(files, root=path)


def run(args: argparse.Namespace) -> int:
    from cluster.job import RenderConfig, RenderJob
    from cluster.runtime import ray_session

    options = options_from_args(args)
    out_dir = Path(args.out)
    songs = songs_for(args.input, out_dir)
    adapters = promoted_adapters(args)
    config = RenderConfig(
        out_dir=out_dir,
        options=options,
        gpus=args.gpus,
        mode=args.mode,
        batch=args.batch,
        max_padding=args.max_padding,
        max_in_flight=args.max_in_flight,
        max_attempts=args.max_attempts,
        transport=args.transport,
        cpus_per_group=args.cpus_per_worker,
        io=args.io,
        progress=False if args.no_progress else None,
        retry=retry_policy(args),
        adapter_dir=None if adapters is None else str(adapters.folder),
    ).validate()
    on_song = None
    if args.feedback:
        on_song = feedback_recorder(args.feedback, options, adapters)
    with ray_session(args.address, num_gpus=args.gpus):
        job = RenderJob(songs, config)
        summary = job.run(on_song=on_song)
    print(job.plan.describe() if job.plan else "", file=sys.stderr)
    for line in summary.lines():
        print(line, file=sys.stderr)
    return 1 if summary.failed else 0


def feedback_recorder(store: str, options, adapters):
    """``on_song`` for :meth:`cluster.job.RenderJob.run`: append each done song's attempts to
    the feedback tables (:class:`tuning.store.FeedbackStore`, one file per song, as
    ``lacquer master`` does). The song id is the input file's stem (what ``lacquer improve``
    matches pair manifests by); node and GPU are the last stage worker's."""
    from dataclasses import asdict

    from cluster.inputs import SongInput
    from cluster.job import song_attempts
    from mastering.retry import Attempt
    from tuning.store import FeedbackStore, attempt_rows, chain_version

    feedback, version = FeedbackStore(store), chain_version()

    def record(rec, result) -> None:
        song = SongInput(rec.song_id, Path(rec.input_path), rec.conditioning)
        cond = song.resolve_conditioning(options.conditioning)
        adapter = ""
        if adapters is not None and adapters.adapter(cond.resolved_genre()) is not None:
            adapter = adapters.version
        rows = attempt_rows(
            song_id=Path(rec.input_path).stem,
            input_hash=rec.input_hash,
            conditioning={**asdict(cond), "genre": cond.resolved_genre()},
            attempts=[Attempt.from_dict(a) for a in song_attempts(result)],
            metrics_before=None,
            metrics_after=result.after,
            chain_version=version,
            adapter_version=adapter,
            node=rec.node_id,
            gpu=rec.gpu_ids,
        )
        feedback.append(rows)

    return record
