"""Feedback tables: an append-only Parquet dataset of every mastering attempt, plus ratings.

Layout under the store's root (hive partitioning by UTC date)::

    attempts/date=2026-11-22/part-<host>-<pid>-<uuid>.parquet
    ratings/date=2026-11-22/part-<host>-<pid>-<uuid>.parquet

Many writers (farm actors, Serve replicas, the CLI) append at once without coordination:
every :meth:`FeedbackStore.append` writes its rows to a *new* uniquely named file, first as a
dot-prefixed temporary file in the same folder, flushed and fsynced, then renamed into place
(``os.replace``: atomic on POSIX). Readers ignore dot-prefixed files, so they only ever see
complete files; a writer killed mid-write leaves at most a ``.tmp`` file, which
:meth:`FeedbackStore.cleanup` removes. Rows are never updated in place; each has a unique
``record_id``, so a reader can verify there are no duplicates.

Schema (:data:`ATTEMPT_SCHEMA`, version :data:`SCHEMA_VERSION`, stored in every file's
metadata and in the ``schema_version`` column): song id, input hash, conditioning (JSON),
every stage's parameters (JSON ``{stage: {param: {value|mean.., unit}}}``), loudness
measurements before/after (JSON), score and sub-scores (a struct), attempt number, whether it
was the kept attempt, chain and adapter versions, timings (JSON, s), node and GPU. Readers read
every file with the current schema, so columns added by a later version read as null in older
files. Human ratings (1-5) are their own append-only table; :meth:`FeedbackStore.read` joins
the latest rating of each song as the ``rating`` column.

The same data with pyarrow alone::

    import pyarrow.dataset as ds
    t = ds.dataset("feedback/attempts", format="parquet", partitioning="hive").to_table(
        filter=(ds.field("date") >= "2026-11-01") & (ds.field("score") < 70))
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cluster.manifest import file_sha256
from mastering.errors import InvalidParameterError, LacquerError
from mastering.evaluation import SUB_SCORES

SCHEMA_VERSION = 1
ATTEMPTS = "attempts"
RATINGS = "ratings"

ATTEMPT_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("schema_version", pa.int16()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("song_id", pa.string()),
        ("input_hash", pa.string()),
        ("conditioning", pa.string()),
        ("params", pa.string()),
        ("metrics_before", pa.string()),
        ("metrics_after", pa.string()),
        ("score", pa.float64()),
        ("rule_score", pa.float64()),
        ("learned_score", pa.float64()),
        ("sub_scores", pa.struct([(k, pa.float64()) for k in SUB_SCORES])),
        ("attempt", pa.int32()),
        ("kept", pa.bool_()),
        ("chain_version", pa.string()),
        ("adapter_version", pa.string()),
        ("timings", pa.string()),
        ("node", pa.string()),
        ("gpu", pa.string()),
    ],
    metadata={"lacquer_schema_version": str(SCHEMA_VERSION)},
)
RATING_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("schema_version", pa.int16()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("song_id", pa.string()),
        ("rating", pa.int8()),
        ("rater", pa.string()),
    ],
    metadata={"lacquer_schema_version": str(SCHEMA_VERSION)},
)
_SCHEMAS = {ATTEMPTS: ATTEMPT_SCHEMA, RATINGS: RATING_SCHEMA}
_JSON_FIELDS = ("conditioning", "params", "metrics_before", "metrics_after", "timings")
_PARTITIONING = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")


class FeedbackStoreError(LacquerError):
    """A feedback table cannot be read or written."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex): the render manifest's input hash, so feedback rows
    and manifest rows of one file match."""
    return file_sha256(path)


def node_and_gpu() -> tuple[str, str]:
    """This host's name and its first CUDA device's name ("" without one)."""
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA install must not stop recording
        gpu = ""
    return socket.gethostname(), gpu


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


class FeedbackStore:
    """The feedback tables under ``root`` (created on first write)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- writing ---------------------------------------------------------------------------
    def append(self, rows: Sequence[Mapping[str, Any]], table: str = ATTEMPTS) -> Path | None:
        """Append ``rows`` (dicts keyed by the schema's column names; ``record_id``,
        ``schema_version`` and ``created_at`` are filled in when absent, JSON columns accept
        dicts) as one new file. Returns its path (``None`` for no rows).

        All rows of one call land in one file dated by the first row's ``created_at``; the
        file is visible to readers only once complete."""
        if table not in _SCHEMAS:
            raise InvalidParameterError(f"unknown table {table!r}; valid: {', '.join(_SCHEMAS)}")
        if not rows:
            return None
        schema = _SCHEMAS[table]
        now = _utcnow()
        cols: dict[str, list[Any]] = {f.name: [] for f in schema}
        for row in rows:
            unknown = set(row) - set(cols)
            if unknown:
                raise InvalidParameterError(f"unknown {table} columns: {sorted(unknown)}")
            full = {
                "record_id": uuid.uuid4().hex,
                "schema_version": SCHEMA_VERSION,
                "created_at": now,
                **row,
            }
            for name in cols:
                value = full.get(name)
                if name in _JSON_FIELDS and value is not None:
                    value = _json(value)
                cols[name].append(value)
        try:
            data = pa.Table.from_pydict(cols, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InvalidParameterError(f"bad {table} row: {exc}") from None
        first = cols["created_at"][0]
        day = (first if isinstance(first, dt.datetime) else now).astimezone(dt.UTC).date()
        folder = self.root / table / f"date={day.isoformat()}"
        name = f"part-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}.parquet"
        return self._commit(data, folder, name)

    def _commit(self, data: pa.Table, folder: Path, name: str) -> Path:
        """Write ``data`` to ``folder/.name.tmp``, fsync, rename to ``folder/name``."""
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp"
        dest = folder / name
        try:
            with open(tmp, "wb") as f:
                pq.write_table(data, f, compression="zstd")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise FeedbackStoreError(f"{dest}: cannot write feedback file: {exc}") from None
        try:  # make the rename itself durable
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
        return dest

    def rate(self, song_id: str, rating: int, rater: str = "") -> Path:
        """Record a human rating 1-5 of ``song_id`` (append-only; the latest one counts)."""
        if not isinstance(rating, int) or not 1 <= rating <= 5:
            raise InvalidParameterError(f"rating must be an integer 1-5, got {rating!r}")
        if not song_id:
            raise InvalidParameterError("song id must not be empty")
        path = self.append([{"song_id": song_id, "rating": rating, "rater": rater}], RATINGS)
        assert path is not None
        return path

    def cleanup(self, older_than_s: float = 3600.0) -> list[Path]:
        """Remove temporary files left by killed writers (older than ``older_than_s``)."""
        removed = []
        cutoff = time.time() - older_than_s
        for tmp in self.root.glob("*/date=*/.*.tmp"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed.append(tmp)
            except FileNotFoundError:
                continue
        return removed

    # -- reading ---------------------------------------------------------------------------
    def _dataset(self, table: str) -> ds.Dataset | None:
        folder = self.root / table
        if not folder.is_dir():
            return None
        try:
            return ds.dataset(
                folder,
                schema=_SCHEMAS[table].append(pa.field("date", pa.string())),
                format="parquet",
                partitioning=_PARTITIONING,
                ignore_prefixes=[".", "_"],
            )
        except (pa.ArrowInvalid, OSError) as exc:
            raise FeedbackStoreError(f"{folder}: cannot read feedback table: {exc}") from None

    def ratings(self) -> pa.Table:
        """Every rating, oldest first."""
        dataset = self._dataset(RATINGS)
        schema = RATING_SCHEMA.append(pa.field("date", pa.string()))
        if dataset is None:
            return schema.empty_table()
        return dataset.to_table().sort_by("created_at")

    def read(
        self,
        *,
        since: dt.date | str | None = None,
        until: dt.date | str | None = None,
        song: str | None = None,
        min_score: float | None = None,
        max_score: float | None = None,
        kept_only: bool = False,
        columns: Iterable[str] | None = None,
    ) -> pa.Table:
        """Attempts matching the filters (dates inclusive, UTC), oldest first (then by song
        and attempt), with the
        latest human rating of each song joined as ``rating`` (null when unrated)."""
        dataset = self._dataset(ATTEMPTS)
        out_schema = ATTEMPT_SCHEMA.append(pa.field("date", pa.string()))
        if dataset is None:
            table = out_schema.empty_table()
        else:
            expr = None

            def both(e):
                return e if expr is None else expr & e

            if since is not None:
                expr = both(ds.field("date") >= _iso_date(since))
            if until is not None:
                expr = both(ds.field("date") <= _iso_date(until))
            if song is not None:
                expr = both(ds.field("song_id") == song)
            if min_score is not None:
                expr = both(ds.field("score") >= float(min_score))
            if max_score is not None:
                expr = both(ds.field("score") <= float(max_score))
            if kept_only:
                expr = both(ds.field("kept") == True)  # noqa: E712 (an Arrow expression)
            try:
                table = dataset.to_table(filter=expr)
            except (pa.ArrowInvalid, OSError) as exc:
                raise FeedbackStoreError(f"{self.root}: cannot read feedback: {exc}") from None
        table = table.sort_by(
            [("created_at", "ascending"), ("song_id", "ascending"), ("attempt", "ascending")]
        )
        table = table.append_column("rating", self._latest_ratings(table["song_id"]))
        if columns is not None:
            table = table.select(list(columns))
        return table

    def _latest_ratings(self, song_ids: pa.ChunkedArray) -> pa.Array:
        latest: dict[str, int] = {}
        r = self.ratings()
        for sid, rating in zip(r["song_id"].to_pylist(), r["rating"].to_pylist(), strict=True):
            latest[sid] = rating  # sorted oldest first: the last one wins
        return pa.array([latest.get(s) for s in song_ids.to_pylist()], type=pa.int8())


def _iso_date(value: dt.date | str) -> str:
    if isinstance(value, dt.date):
        return value.isoformat()
    try:
        return dt.date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise InvalidParameterError(f"not a date (YYYY-MM-DD): {value!r}") from None


def attempt_rows(
    *,
    song_id: str,
    input_hash: str,
    conditioning: Mapping[str, Any],
    attempts: Sequence[Any],
    metrics_before: Mapping[str, Any] | None,
    metrics_after: Mapping[str, Any] | None,
    chain_version: str,
    adapter_version: str = "",
    node: str | None = None,
    gpu: str | None = None,
) -> list[dict[str, Any]]:
    """Rows for :meth:`FeedbackStore.append` from :class:`mastering.retry.Attempt` records.

    Each row's ``params`` is ``{"overrides": what the retry set, "parameters": every stage's
    parameters}``; ``metrics_after`` is the attempt's evaluator measurements, plus for the kept
    attempt the given ``metrics_after`` (e.g. :func:`mastering.render.summary`)."""
    host, device = node_and_gpu() if node is None or gpu is None else (node, gpu)
    rows = []
    for a in attempts:
        rows.append(
            {
                "song_id": song_id,
                "input_hash": input_hash,
                "conditioning": conditioning,
                "params": {"overrides": a.overrides, "parameters": a.parameters},
                "metrics_before": metrics_before,
                "metrics_after": {**(metrics_after or {}), **a.measurements}
                if a.best
                else a.measurements,
                "score": a.score,
                "rule_score": a.rule,
                "learned_score": a.learned,
                "sub_scores": dict(a.sub_scores),
                "attempt": a.number,
                "kept": a.best,
                "chain_version": chain_version,
                "adapter_version": adapter_version,
                "timings": a.timings_s,
                "node": node if node is not None else host,
                "gpu": gpu if gpu is not None else device,
            }
        )
    return rows


def chain_version(weights: Path | None = None) -> str:
    """``<lacquer version>+<first 12 hex of the chain weights' SHA-256>`` (``+priors`` when
    no weights are shipped)."""
    from mastering import __version__
    from mastering.chain import WEIGHTS_DIR

    path = Path(weights or WEIGHTS_DIR / "chain.safetensors")
    return f"{__version__}+{hash_file(path)[:12] if path.exists() else 'priors'}"


def _unique(values: Iterable[str]) -> bool:
    values = list(values)
    return len(values) == len(set(values))


def check_integrity(store: FeedbackStore) -> dict[str, int]:
    """Read every complete file; raise :class:`FeedbackStoreError` on an unreadable file or
    a duplicated ``record_id``. Returns row and file counts."""
    files = sorted(p for p in store.root.glob("*/date=*/*.parquet"))
    for f in files:
        try:
            pq.read_metadata(f)
        except Exception as exc:
            raise FeedbackStoreError(f"{f}: corrupt feedback file: {exc}") from None
    table = store.read()
    ids = table["record_id"].to_pylist()
    if not _unique(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise FeedbackStoreError(f"{store.root}: duplicated record ids: {dup[:5]}")
    return {"files": len(files), "rows": table.num_rows}
