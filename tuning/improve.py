"""``lacquer improve``: retrain style adapters on weak cases, promote only a measured win.

One cycle (:func:`improve`):

1. **Weak cases**: the kept attempt of every song in the feedback tables
   (:class:`tuning.store.FeedbackStore`) whose score is below ``threshold`` (0-100, default
   :data:`mastering.evaluation.PASS_SCORE`) or whose latest human rating is at most
   ``max_rating`` (1-5). Songs are matched to the pair manifest by the raw file's stem (the
   song id ``lacquer master`` records); only songs outside the held-out split are trained on.
2. **Candidate**: for each genre of the weak songs, the current version's ``genre-<g>``
   adapter (a fresh one if the current version has none) is fine-tuned on the weak songs'
   crops of that genre with :func:`mastering.training.style.train_adapter` (learning rate and
   steps: the best found by ``lacquer tune adapters`` for that genre when saved, else
   ``lr``/``steps``). The candidate version holds the current version's adapters plus these.
3. **Held-out evaluation**: every song of the manifest's ``heldout`` split (default
   ``test``), cropped to ``seconds`` from its middle, is mastered by the base chain with the
   version's adapter of its genre (none: the base chain) and scored by
   :class:`mastering.evaluation.Evaluator`; the version's score is the mean (0-100).
4. **Decision**: promote when ``candidate >= current + margin`` (score points, default 1.0);
   otherwise keep the current version. Either way the candidate is kept under ``versions/``
   and the decision is appended to the decision table.

Layout (``root``: default ``<store>/models``)::

    versions/v0001/genre-pop.safetensors ... version.json   (parent, genres, scores)
    CURRENT                                                   JSON {"version": "v0001", ...}
    <store>/decisions/part-<uuid>.parquet                     one row per decision

``CURRENT`` is written to a temporary file and renamed, so readers see the old or the new
pointer, never a partial one; a version folder is built under a dot-prefixed name and renamed
into place when complete. :func:`rollback` points ``CURRENT`` at the current version's parent
(the version that was current when it was made; none: the base chain without adapters) and
records a ``rollback`` decision. :func:`current_adapter_dir` is the folder to use as
``LACQUER_ADAPTER_DIR`` for the promoted adapters.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mastering.errors import InvalidParameterError, LacquerError
from mastering.evaluation import PASS_SCORE

POINTER = "CURRENT"
VERSIONS = "versions"
DECISIONS = "decisions"
DECISION_SCHEMA = pa.schema(
    [
        ("decision_id", pa.string()),
        ("decided_at", pa.timestamp("us", tz="UTC")),
        ("action", pa.string()),  # promote | reject | rollback | skip
        ("candidate", pa.string()),
        ("previous", pa.string()),
        ("current", pa.string()),
        ("genres", pa.string()),  # JSON list
        ("weak_songs", pa.string()),  # JSON list of song ids trained on
        ("heldout_songs", pa.int32()),
        ("score_current", pa.float64()),
        ("score_candidate", pa.float64()),
        ("margin", pa.float64()),
        ("reason", pa.string()),
    ],
    metadata={"lacquer_decision_schema": "1"},
)


class ImproveError(LacquerError):
    """An improvement cycle or rollback cannot run."""


@dataclass
class ImproveConfig:
    """One improvement cycle.

    Attributes:
        store: feedback store root.
        manifest: pair manifest (raw mixes + reference masters) of the songs.
        root: versions folder (default ``<store>/models``).
        threshold: a kept score below this (0-100) is weak.
        max_rating: a latest human rating at or below this (1-5) is weak.
        margin: score points the candidate must win by on the held-out set.
        heldout: manifest split evaluated on (never trained on).
        seconds: held-out crop length, s.
        base: training config (crop settings, batch size, seed).
        lr, steps: adapter fine-tuning when no tuned best exists for a genre.
    """

    store: str
    manifest: str
    root: str | None = None
    threshold: float = PASS_SCORE
    max_rating: int = 2
    margin: float = 1.0
    heldout: str = "test"
    seconds: float = 2.0
    base: str = "test-tiny"
    lr: float = 1e-2
    steps: int = 8

    @property
    def models(self) -> Path:
        return Path(self.root) if self.root else Path(self.store) / "models"


# -- versions and the pointer --------------------------------------------------------------


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_version(root: str | Path) -> str | None:
    """The promoted version's name, ``None`` when none (the base chain without adapters)."""
    path = Path(root) / POINTER
    if not path.exists():
        return None
    try:
        version = json.loads(path.read_text()).get("version")
    except (OSError, ValueError, AttributeError) as exc:
        raise ImproveError(f"{path}: unreadable version pointer ({exc})") from None
    if version is not None and not (Path(root) / VERSIONS / version).is_dir():
        raise ImproveError(f"{path}: points at missing version {version!r}")
    return version


def set_current(root: str | Path, version: str | None) -> None:
    """Point ``CURRENT`` at ``version`` (``None``: the base chain), atomically."""
    data = {"version": version, "updated_at": _utcnow().isoformat()}
    _write_atomic(Path(root) / POINTER, json.dumps(data).encode())


def version_info(root: str | Path, version: str) -> dict[str, Any]:
    path = Path(root) / VERSIONS / version / "version.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ImproveError(f"{path}: unreadable version record ({exc})") from None


def list_versions(root: str | Path) -> list[str]:
    folder = Path(root) / VERSIONS
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("v"))


def current_adapter_dir(root: str | Path) -> Path | None:
    """The promoted version's adapter folder (use as ``LACQUER_ADAPTER_DIR``), or ``None``."""
    version = current_version(root)
    return None if version is None else Path(root) / VERSIONS / version


def _new_version(root: Path, parent: str | None, adapters: dict[str, Any], info: dict) -> str:
    """Write a complete version folder (parent's adapters + ``adapters``) and return its name."""
    from mastering.adapters import save_adapter

    versions = root / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    existing = list_versions(root)
    number = 1 + max((int(v[1:]) for v in existing if v[1:].isdigit()), default=0)
    name = f"v{number:04d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=versions))
    try:
        if parent is not None:
            for f in (versions / parent).glob("*.safetensors"):
                shutil.copy(f, tmp / f.name)
        for adapter in adapters.values():
            save_adapter(adapter, tmp)
        record = {"version": name, "parent": parent, "created_at": _utcnow().isoformat(), **info}
        (tmp / "version.json").write_text(json.dumps(record, indent=2, default=str))
        os.chmod(tmp, 0o755)
        os.rename(tmp, versions / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return name


# -- decisions -------------------------------------------------------------------------------


def record_decision(store: str | Path, row: dict[str, Any]) -> Path:
    """Append one decision row as a new Parquet file (temp + rename)."""
    full = {
        "decision_id": uuid.uuid4().hex,
        "decided_at": _utcnow(),
        **{k: (json.dumps(v) if k in ("genres", "weak_songs") else v) for k, v in row.items()},
    }
    table = pa.Table.from_pylist([full], schema=DECISION_SCHEMA)
    folder = Path(store) / DECISIONS
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"part-{full['decision_id']}.parquet"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def read_decisions(store: str | Path) -> pa.Table:
    """Every decision, oldest first."""
    folder = Path(store) / DECISIONS
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    if not files:
        return DECISION_SCHEMA.empty_table()
    table = pa.concat_tables([pq.read_table(f, schema=DECISION_SCHEMA) for f in files])
    return table.sort_by("decided_at")


# -- the cycle -------------------------------------------------------------------------------


def weak_songs(store: str | Path, threshold: float, max_rating: int) -> list[str]:
    """Song ids whose latest kept attempt scores below ``threshold`` or whose latest rating
    is at most ``max_rating``."""
    from tuning.store import FeedbackStore

    table = FeedbackStore(store).read(kept_only=True, columns=["song_id", "score", "rating"])
    latest: dict[str, tuple[float | None, int | None]] = {}
    for sid, score, rating in zip(*(table[c].to_pylist() for c in table.column_names),
                                  strict=True):  # fmt: skip
        latest[sid] = (score, rating)  # oldest first: the last row wins
    return sorted(
        sid
        for sid, (score, rating) in latest.items()
        if (score is not None and score < threshold)
        or (rating is not None and rating <= max_rating)
    )


def _version_adapter(root: Path, version: str | None, genre: str):
    from mastering.adapters import read_adapter_file

    if version is None:
        return None
    path = root / VERSIONS / version / f"genre-{genre}.safetensors"
    return read_adapter_file(path) if path.exists() else None


def heldout_score(cfg: ImproveConfig, version_adapters, records) -> float:
    """Mean evaluator score (0-100) of the held-out songs mastered with a version's adapters
    (``version_adapters(genre) -> StyleAdapter | None``)."""
    from mastering.adapters import apply_adapter
    from mastering.chain import Chain
    from mastering.conditioning import Conditioning
    from mastering.evaluation import Evaluator
    from mastering.io import read_audio
    from mastering.render import MasterOptions, master_tensor
    from tuning.tune_retry import crop_middle

    base = Chain.pretrained()
    evaluator = Evaluator()
    chains: dict[str, Any] = {}
    scores = []
    for rec in records:
        if rec.genre not in chains:
            adapter = version_adapters(rec.genre)
            chains[rec.genre] = base if adapter is None else apply_adapter(base, adapter)
        audio, _ = read_audio(rec.raw_path)
        options = MasterOptions(conditioning=Conditioning(genre=rec.genre),
                                target_lufs=float(rec.target_lufs))  # fmt: skip
        master, _ = master_tensor(chains[rec.genre], crop_middle(audio, cfg.seconds), options)
        ev = evaluator(master.unsqueeze(0), [rec.genre], target_lufs=options.target_lufs)
        scores.append(float(ev.item(0)["score"]))
    return sum(scores) / len(scores)


def _tuned(cfg: ImproveConfig, genre: str) -> tuple[float, int]:
    from tuning.trials import load_best

    best = load_best(cfg.store, "adapters", genre)
    if best is None:
        return cfg.lr, cfg.steps
    total = int(best.get("total_steps") or best["config"]["steps"])
    return float(best["config"]["lr"]), max(1, total)


def improve(cfg: ImproveConfig) -> dict[str, Any]:
    """Run one cycle (see the module docstring); returns the decision row (plus paths)."""
    from mastering.adapters import StyleAdapter
    from mastering.chain import Chain
    from mastering.data.pairs import read_pair_manifest
    from mastering.training.config import get_config
    from mastering.training.style import train_adapter
    from mastering.training.trainer import Trainer
    from tuning.tune_adapters import build_pools

    if not Path(cfg.manifest).is_file():
        raise InvalidParameterError(f"{cfg.manifest}: no such pair manifest")
    root = cfg.models
    current = current_version(root)
    weak = set(weak_songs(cfg.store, cfg.threshold, cfg.max_rating))
    records = read_pair_manifest(cfg.manifest)
    heldout = [r for r in records if r.split == cfg.heldout]
    if not heldout:
        raise ImproveError(f"{cfg.manifest}: no held-out songs (split {cfg.heldout!r})")
    train_recs = [r for r in records if r.split != cfg.heldout and Path(r.raw_path).stem in weak]
    base_row = {"previous": current, "current": current, "margin": cfg.margin,
                "heldout_songs": len(heldout)}  # fmt: skip
    if not train_recs:
        reason = f"{len(weak)} weak songs, none in the manifest's training songs"
        row = {**base_row, "action": "skip", "genres": [], "weak_songs": sorted(weak),
               "reason": reason}  # fmt: skip
        record_decision(cfg.store, row)
        return row

    pool_file = build_pools(cfg.manifest, root / "pools", cfg.base)
    stems = {Path(r.raw_path).stem for r in train_recs}
    genres = sorted({r.genre for r in train_recs})
    candidates: dict[str, StyleAdapter] = {}
    trained: dict[str, dict[str, float]] = {}
    for i, genre in enumerate(genres):
        lr, steps = _tuned(cfg, genre)
        tc = get_config(cfg.base, adapter_lr=lr, adapter_steps=steps)
        trainer = Trainer(tc, cfg.manifest, root / "pools", chain=Chain.pretrained(),
                          log=lambda _: None, pool_file=pool_file)  # fmt: skip
        trainer.load_data()
        pool = trainer.train_pool
        song_stem = [Path(_raw_path(pool.records[s])).stem for s in pool.song.tolist()]
        idx = [j for j in range(len(pool)) if song_stem[j] in stems and pool.genres()[j] == genre]
        if not idx:
            continue
        adapter = _version_adapter(root, current, genre) or StyleAdapter(
            f"genre-{genre}", "genre", genre
        )
        before, after = train_adapter(trainer, pool.subset(idx), adapter, 2000 + i)
        adapter.info.update(improve_lr=f"{lr:.6g}", improve_steps=str(steps))
        candidates[genre] = adapter
        trained[genre] = {"loss_before": before, "loss_after": after, "crops": len(idx)}
    if not candidates:
        row = {**base_row, "action": "skip", "genres": genres, "weak_songs": sorted(stems),
               "reason": "no training crops of the weak songs"}  # fmt: skip
        record_decision(cfg.store, row)
        return row

    score_current = heldout_score(cfg, lambda g: _version_adapter(root, current, g), heldout)

    def candidate_adapter(genre: str):
        return candidates.get(genre) or _version_adapter(root, current, genre)

    score_candidate = heldout_score(cfg, candidate_adapter, heldout)
    promote = score_candidate >= score_current + cfg.margin
    info = {"genres": genres, "weak_songs": sorted(stems), "trained": trained,
            "score_current": score_current, "score_candidate": score_candidate,
            "margin": cfg.margin, "promoted": promote}  # fmt: skip
    version = _new_version(root, current, candidates, info)
    if promote:
        set_current(root, version)
    row = {
        **base_row,
        "action": "promote" if promote else "reject",
        "candidate": version,
        "current": version if promote else current,
        "genres": genres,
        "weak_songs": sorted(stems),
        "score_current": score_current,
        "score_candidate": score_candidate,
        "reason": (
            f"candidate {score_candidate:.2f} vs current {score_current:.2f} on "
            f"{len(heldout)} held-out songs; needs +{cfg.margin:g}"
        ),
    }
    record_decision(cfg.store, row)
    return {**row, "trained": trained, "version_dir": str(root / VERSIONS / version)}


def _raw_path(record) -> str:
    return str(record["raw_path"] if isinstance(record, dict) else record.raw_path)


def rollback(store: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """Point ``CURRENT`` back at the current version's parent; records a ``rollback``."""
    root = Path(root) if root else Path(store) / "models"
    current = current_version(root)
    if current is None:
        raise ImproveError(f"{root / POINTER}: nothing to roll back (no promoted version)")
    parent = version_info(root, current).get("parent")
    set_current(root, parent)
    row = {"action": "rollback", "previous": current, "current": parent, "candidate": None,
           "reason": f"rolled back {current} -> {parent or 'base chain'}"}  # fmt: skip
    record_decision(store, row)
    return row


__all__ = [
    "ImproveConfig",
    "ImproveError",
    "current_adapter_dir",
    "current_version",
    "improve",
    "read_decisions",
    "record_decision",
    "rollback",
    "set_current",
    "weak_songs",
]
