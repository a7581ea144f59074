"""Trial tables and best configurations of the Ray Tune searches, beside the feedback store.

Layout under the feedback store's root (the folder of :class:`tuning.store.FeedbackStore`)::

    trials/kind=retry/part-<experiment>-<uuid>.parquet      one row per trial
    trials/kind=adapters/part-<experiment>-<uuid>.parquet
    best/retry.json                                          the best retry policy found
    best/adapters/<genre>.json (+ genre-<genre>.safetensors) the best adapter per genre
    tune/<experiment>/                                       Ray Tune's experiment folders

Every table file is written once, complete, to a dot-prefixed temporary file, fsynced and
renamed into place; readers skip dot-prefixed files, so they never see a partial file. A
trial row holds the experiment name, the trial id, its status, the configuration (JSON, plus
one ``config/<key>`` column per scalar key), the last reported metrics (one column each,
float64) and the number of reported iterations. Best files are JSON written the same way.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from mastering.errors import InvalidParameterError, LacquerError

TRIALS = "trials"
BEST = "best"
#: Search kinds with a trial table.
KINDS = ("retry", "adapters")
TRIAL_SCHEMA_VERSION = 1

_BASE_FIELDS = [
    ("experiment", pa.string()),
    ("trial_id", pa.string()),
    ("status", pa.string()),
    ("recorded_at", pa.timestamp("us", tz="UTC")),
    ("config", pa.string()),
    ("iterations", pa.int32()),
    ("error", pa.string()),
]


class TrialTableError(LacquerError):
    """A trial table or best-configuration file cannot be read or written."""


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidParameterError(f"unknown search kind {kind!r}; valid: {', '.join(KINDS)}")
    return kind


def _scalar(v: Any) -> bool:
    return isinstance(v, (bool, int, float, str)) or v is None


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return None


def trial_table(
    experiment: str, rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]
) -> pa.Table:
    """An Arrow table of trials.

    Args:
        experiment: the Tune experiment name.
        rows: one dict per trial: ``trial_id``, ``status``, ``config`` (dict), ``metrics``
            (dict of the last report), ``iterations`` (int), ``error`` (str or None).
        metrics: metric names to keep as float64 columns (missing: null).
    """
    now = dt.datetime.now(dt.UTC)
    config_keys = sorted(
        {k for r in rows for k, v in r.get("config", {}).items() if _scalar(v) and k != "corpus"}
    )
    cols: dict[str, list[Any]] = {name: [] for name, _ in _BASE_FIELDS}
    cols.update({f"config/{k}": [] for k in config_keys})
    cols.update({m: [] for m in metrics})
    for r in rows:
        config = dict(r.get("config", {}))
        cols["experiment"].append(experiment)
        cols["trial_id"].append(str(r["trial_id"]))
        cols["status"].append(str(r.get("status", "")))
        cols["recorded_at"].append(now)
        cols["config"].append(json.dumps(config, sort_keys=True, default=str))
        cols["iterations"].append(int(r.get("iterations") or 0))
        cols["error"].append(r.get("error"))
        for k in config_keys:
            v = config.get(k)
            cols[f"config/{k}"].append(None if v is None else str(v))
        for m in metrics:
            v = _as_float(r.get("metrics", {}).get(m))
            cols[m].append(None if v is None or math.isnan(v) else v)
    fields = list(_BASE_FIELDS) + [(f"config/{k}", pa.string()) for k in config_keys]
    fields += [(m, pa.float64()) for m in metrics]
    schema = pa.schema(fields, metadata={"lacquer_trial_schema": str(TRIAL_SCHEMA_VERSION)})
    return pa.Table.from_pydict(cols, schema=schema)


def _atomic_write(folder: Path, name: str, write) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    dest = folder / name
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise TrialTableError(f"{dest}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def write_trials(store: str | Path, kind: str, table: pa.Table) -> Path:
    """Append ``table`` (from :func:`trial_table`) as a new file of ``kind``'s trial table."""
    _check_kind(kind)
    experiment = table["experiment"][0].as_py() if table.num_rows else "empty"
    folder = Path(store) / TRIALS / f"kind={kind}"
    name = f"part-{experiment}-{uuid.uuid4().hex[:12]}.parquet"
    return _atomic_write(folder, name, lambda f: pq.write_table(table, f, compression="zstd"))


def read_trials(store: str | Path, kind: str, experiment: str | None = None) -> pa.Table:
    """Every trial row of ``kind`` (all files; columns unified, missing ones null), optionally
    of one experiment. An empty table when there is none."""
    _check_kind(kind)
    folder = Path(store) / TRIALS / f"kind={kind}"
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    if not files:
        return pa.schema(_BASE_FIELDS).empty_table()
    try:
        tables = [pq.read_table(f) for f in files]
        table = pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, OSError) as exc:
        raise TrialTableError(f"{folder}: cannot read trial table: {exc}") from None
    if experiment is not None:
        table = table.filter(ds.field("experiment") == experiment)
    return table


def best_path(store: str | Path, kind: str, key: str | None = None) -> Path:
    """``<store>/best/retry.json`` or ``<store>/best/adapters/<key>.json``."""
    _check_kind(kind)
    root = Path(store) / BEST
    return root / f"{kind}.json" if key is None else root / kind / f"{key}.json"


def save_best(store: str | Path, kind: str, record: Mapping[str, Any], key: str | None = None):
    """Write the best configuration (``record``: JSON-able dict) atomically; returns the path."""
    path = best_path(store, kind, key)
    data = json.dumps(dict(record), indent=2, sort_keys=True, default=str).encode()
    return _atomic_write(path.parent, path.name, lambda f: f.write(data))


def load_best(store: str | Path, kind: str, key: str | None = None) -> dict[str, Any] | None:
    """The saved best record, or ``None`` when there is none; a corrupt file raises
    :class:`TrialTableError` naming it."""
    path = best_path(store, kind, key)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrialTableError(f"{path}: not a readable best-configuration file ({exc})") from None
    if not isinstance(data, dict) or "config" not in data:
        raise TrialTableError(f"{path}: best-configuration file has no 'config'")
    return data
