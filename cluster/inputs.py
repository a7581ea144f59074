"""What a render job masters: songs from a list of files or from an input manifest.

An input manifest is a Parquet or CSV file with one row per song: an ``input_path`` column
(relative paths are taken from the manifest's folder), an optional ``song_id`` and optional
per-song conditioning columns named like :class:`mastering.conditioning.Conditioning` fields
(``genre``, ``tempo_bpm``, ``energy``, ``vocal_ratio``, ``style``, ``emotion``,
``rule_breaks`` - a list or a comma-separated string). Empty cells fall back to the job's
flags.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mastering.conditioning import Conditioning
from mastering.errors import InvalidParameterError

#: Conditioning fields an input manifest may set per song.
CONDITIONING_COLUMNS: tuple[str, ...] = (
    "genre",
    "tempo_bpm",
    "energy",
    "vocal_ratio",
    "style",
    "emotion",
    "rule_breaks",
)


@dataclass(frozen=True)
class SongInput:
    """One song of a job: its id, file and per-song conditioning values (may be empty)."""

    song_id: str
    path: Path
    conditioning: Mapping[str, Any] = field(default_factory=dict)

    def resolve_conditioning(self, default: Conditioning) -> Conditioning:
        """``default`` with this song's values put in, validated."""
        values = dict(self.conditioning)
        if isinstance(values.get("rule_breaks"), str):
            values["rule_breaks"] = tuple(
                s.strip() for s in values["rule_breaks"].split(",") if s.strip()
            )
        elif values.get("rule_breaks") is not None:
            values["rule_breaks"] = tuple(values["rule_breaks"])
        return replace(default, **values).validate()


def songs_from_files(files: Sequence[Path], root: Path | None = None) -> list[SongInput]:
    """Songs for ``files``; ids are paths relative to ``root`` (default: the file names)."""
    songs = []
    for f in files:
        f = Path(f)
        sid = f.relative_to(root).as_posix() if root is not None else f.name
        songs.append(SongInput(sid, f))
    return _unique(songs)


def songs_from_manifest(path: str | Path) -> list[SongInput]:
    """Songs listed in an input manifest (Parquet or CSV; see the module docstring)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".csv":
            import pyarrow.csv as pacsv

            rows = pacsv.read_csv(path).to_pylist()
        else:
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise InvalidParameterError(f"cannot read the manifest: {exc}", path) from None
    if rows and "input_path" not in rows[0]:
        raise InvalidParameterError("the manifest has no 'input_path' column", path)
    known = {f.name for f in fields(Conditioning)}
    songs = []
    for i, row in enumerate(rows):
        if not row.get("input_path"):
            raise InvalidParameterError(f"row {i}: empty input_path", path)
        p = Path(row["input_path"])
        p = p if p.is_absolute() else path.parent / p
        cond = {k: row[k] for k in CONDITIONING_COLUMNS if k in known and _present(row.get(k))}
        songs.append(SongInput(str(row.get("song_id") or row["input_path"]), p, cond))
    return _unique(songs)


def _present(v: Any) -> bool:
    return v is not None and v != "" and not (isinstance(v, float) and math.isnan(v))


def _unique(songs: list[SongInput]) -> list[SongInput]:
    seen: set[str] = set()
    for s in songs:
        if s.song_id in seen:
            raise InvalidParameterError(f"song id {s.song_id!r} appears twice in the job")
        seen.add(s.song_id)
    return songs
