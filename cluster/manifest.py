"""The job manifest: one row per song with its state, kept as a Parquet file next to the
outputs and rewritten atomically (temp file + rename) whenever a state changes, so a job
killed at any moment can be resumed by running the same command again.

States: ``pending`` -> ``running`` -> ``done`` | ``failed``. On resume (:meth:`Manifest.resume`):

* ``done`` songs whose output file still exists and whose input bytes still hash the same are
  skipped; otherwise they are redone;
* ``running`` songs (the job died while they were in flight) go back to ``pending``; their
  output, if the last worker had already renamed it into place, is complete (writes are
  atomic) and is simply overwritten by the retry;
* ``failed`` songs whose error came from the song itself (``error_kind == "input"``: corrupt
  file, NaN samples) stay failed while their bytes are unchanged; songs that failed because
  workers kept dying (``error_kind == "crash"``) go back to ``pending``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mastering.errors import InvalidParameterError

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATES = (PENDING, RUNNING, DONE, FAILED)
#: File name of the manifest inside the output folder.
MANIFEST_NAME = "lacquer-manifest.parquet"


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of the file's bytes ("" when it cannot be read)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError:
        return ""
    return h.hexdigest()


@dataclass
class SongRecord:
    """One manifest row.

    Attributes:
        song_id: unique id within the job (the input's path relative to the input folder).
        input_path: the audio file.
        input_hash: SHA-256 of the input's bytes when the job saw it.
        output_path: the master's path.
        state: one of :data:`STATES`.
        error: the one-line error of a failed song.
        error_kind: ``input`` (the song itself is bad) or ``crash`` (workers died) or ``""``.
        attempts: times the song was sent to a pipeline.
        node_id, gpu_ids: where its last stage group ran (GPU ids comma-separated).
        duration_s: song length, s.
        started_at, finished_at: Unix times, s (0 when unset).
        seconds: wall time from submission to result, s.
        conditioning: per-song conditioning values from an input manifest (JSON-able dict).
    """

    song_id: str
    input_path: str
    input_hash: str = ""
    output_path: str = ""
    state: str = PENDING
    error: str = ""
    error_kind: str = ""
    attempts: int = 0
    node_id: str = ""
    gpu_ids: str = ""
    duration_s: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    seconds: float = 0.0
    conditioning: dict[str, Any] = field(default_factory=dict)


_SCHEMA = pa.schema(
    [
        ("song_id", pa.string()),
        ("input_path", pa.string()),
        ("input_hash", pa.string()),
        ("output_path", pa.string()),
        ("state", pa.string()),
        ("error", pa.string()),
        ("error_kind", pa.string()),
        ("attempts", pa.int32()),
        ("node_id", pa.string()),
        ("gpu_ids", pa.string()),
        ("duration_s", pa.float64()),
        ("started_at", pa.float64()),
        ("finished_at", pa.float64()),
        ("seconds", pa.float64()),
        ("conditioning", pa.string()),
    ]
)


class Manifest:
    """The songs of one job, by id, persisted at ``path`` (Parquet)."""

    def __init__(self, path: str | Path, records: Iterable[SongRecord] = ()):
        self.path = Path(path)
        self.records: dict[str, SongRecord] = {}
        for r in records:
            if r.song_id in self.records:
                raise InvalidParameterError(f"song id {r.song_id!r} appears twice", self.path)
            self.records[r.song_id] = r

    # -- persistence ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read a manifest written by :meth:`save` (an empty one when the file is absent)."""
        import json

        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            rows = pq.read_table(path).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise InvalidParameterError(f"not a readable job manifest: {exc}", path) from None
        names = {f.name for f in fields(SongRecord)}
        records = []
        for row in rows:
            row = {k: v for k, v in row.items() if k in names}
            row["conditioning"] = json.loads(row.get("conditioning") or "{}")
            records.append(SongRecord(**row))
        return cls(path, records)

    def save(self) -> None:
        """Rewrite the file atomically: a temp file in the same folder, then a rename."""
        import json

        rows = []
        for r in self.records.values():
            d = asdict(r)
            d["conditioning"] = json.dumps(d["conditioning"], sort_keys=True)
            rows.append(d)
        table = pa.Table.from_pylist(rows, schema=_SCHEMA)
        write_parquet_atomic(table, self.path)

    # -- queries -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[SongRecord]:
        return iter(self.records.values())

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, song_id: str) -> SongRecord:
        return self.records[song_id]

    def in_state(self, state: str) -> list[SongRecord]:
        return [r for r in self.records.values() if r.state == state]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for r in self.records.values():
            out[r.state] += 1
        return out

    # -- resume --------------------------------------------------------------------------------
    def merge(self, songs: Iterable[SongRecord]) -> Manifest:
        """The manifest for a (re)run over ``songs`` (fresh records with hashes and output
        paths), keeping what this manifest knows about each, per the resume rules in the
        module docstring. Songs no longer in the input are dropped."""
        merged = []
        for new in songs:
            old = self.records.get(new.song_id)
            merged.append(new if old is None else _resumed(old, new))
        return Manifest(self.path, merged)


def _resumed(old: SongRecord, new: SongRecord) -> SongRecord:
    same_input = bool(old.input_hash) and old.input_hash == new.input_hash
    same_place = old.output_path == new.output_path
    if old.state == DONE and same_input and same_place and Path(old.output_path).is_file():
        return old
    if old.state == FAILED and old.error_kind == "input" and same_input:
        return old
    # Redo: keep the attempt count for the record, reset the rest.
    return SongRecord(**{**asdict(new), "attempts": old.attempts if same_input else 0})


def write_parquet_atomic(table: pa.Table, path: str | Path) -> None:
    """Write ``table`` to ``path`` via a temp file in the same folder and :func:`os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
