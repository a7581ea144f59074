"""Raw/mastered training pairs: the manifest users bring, alignment, level checks and crops.

**Manifest** (Parquet ``.parquet`` or CSV ``.csv``), one row per song, columns
:data:`PAIR_COLUMNS`:

============== ===========================================================================
raw_path       the unmastered mix (any format :func:`mastering.io.read_audio` reads);
               relative paths are relative to the manifest's folder
mastered_path  its master (same song; may be offset by up to ``max_lag_s``)
genre          one of :data:`mastering.conditioning.GENRES`
bpm            tempo in beats per minute, 20..400
mix_balance    vocal-to-instrument balance 0..1 (the conditioning's ``vocal_ratio``)
target_lufs    integrated loudness of the master in LUFS, -40..0
split          ``train``, ``val`` or ``test`` (split by song, never by crop)
============== ===========================================================================

Extra columns are kept in :attr:`PairRecord.extras`. Every problem is a
:class:`PairDataError` naming the manifest (or audio file) and the row.

**Loading** (:func:`load_pair`): both files are read at 48 kHz stereo, the master is aligned
to the raw mix by the peak of their FFT cross-correlation within ``±max_lag_s``
(:func:`estimate_lag`; the lag is reported), both are trimmed to their overlap, and the pair is
rejected if either side is silent or clipped, if the lengths differ by more than
``max_length_mismatch_s``, or if the aligned signals do not correlate (not the same song).

**Crops**: :class:`PairStream` (an ``IterableDataset`` of ready batches, for training) and
:class:`PairCrops` (a map-style ``Dataset`` of single crops, for validation) draw fixed-length
crops ``raw [B, 2, N]``, ``mastered [B, 2, N]`` with the songs' :class:`Conditioning`. Both are
deterministic for a seed (a ``torch.Generator``; per worker and per epoch).
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from mastering import SAMPLE_RATE
from mastering.conditioning import GENRES, Conditioning
from mastering.errors import LacquerError
from mastering.io import read_audio

#: Required manifest columns, in order.
PAIR_COLUMNS: tuple[str, ...] = (
    "raw_path",
    "mastered_path",
    "genre",
    "bpm",
    "mix_balance",
    "target_lufs",
    "split",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")
_RANGES: dict[str, tuple[float, float]] = {
    "bpm": (20.0, 400.0),
    "mix_balance": (0.0, 1.0),
    "target_lufs": (-40.0, 0.0),
}


class PairDataError(LacquerError):
    """A pair manifest or a pair's audio is unusable (names the file and the row/problem)."""


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairRecord:
    """One manifest row. Paths are absolute (resolved against the manifest's folder).

    Attributes:
        raw_path, mastered_path: audio files.
        genre: a :data:`GENRES` name.
        bpm: tempo in BPM.
        mix_balance: vocal-to-instrument balance 0..1.
        target_lufs: the master's integrated loudness target in LUFS.
        split: ``train`` / ``val`` / ``test``.
        extras: any further columns of the row.
        row: 1-based data row in the manifest (for messages).
    """

    raw_path: Path
    mastered_path: Path
    genre: str
    bpm: float
    mix_balance: float
    target_lufs: float
    split: str
    extras: Mapping[str, Any] = field(default_factory=dict)
    row: int = 0

    def conditioning(self) -> Conditioning:
        """What this song is mastered for (energy is left to the chain's estimator)."""
        return Conditioning(genre=self.genre, tempo_bpm=self.bpm, vocal_ratio=self.mix_balance)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise PairDataError("pair manifest not found", path)
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise PairDataError(f"cannot read pair manifest: {exc}", path) from exc
    raise PairDataError(f"unknown manifest format {suffix!r}; use .parquet or .csv", path)


def _number(value: Any, column: str, row: int, path: Path) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise PairDataError(f"row {row}: {column} {value!r} is not a number", path) from None
    lo, hi = _RANGES[column]
    if not (math.isfinite(x) and lo <= x <= hi):
        raise PairDataError(f"row {row}: {column} {value!r} is outside {lo:g}..{hi:g}", path)
    return x


def _audio_path(value: Any, column: str, row: int, path: Path, check_files: bool) -> Path:
    if value is None or not str(value).strip():
        raise PairDataError(f"row {row}: {column} is empty", path)
    p = Path(str(value).strip())
    p = p if p.is_absolute() else path.parent / p
    if check_files and not p.is_file():
        raise PairDataError(f"row {row}: {column} {str(value)!r} does not exist ({p})", path)
    return p


def read_pair_manifest(
    path: str | Path, *, split: str | None = None, check_files: bool = True
) -> list[PairRecord]:
    """Read and validate a pair manifest.

    Args:
        path: ``.parquet`` or ``.csv``.
        split: keep only this split (after validating every row).
        check_files: also require both audio files of every row to exist.

    Raises:
        PairDataError: unreadable manifest, missing columns, no rows, or a bad row (the
            message names the manifest, the row and the column).
    """
    path = Path(path)
    rows = _read_rows(path)
    if split is not None and split not in SPLITS:
        raise PairDataError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}", path)
    if not rows:
        raise PairDataError("pair manifest has no rows", path)
    missing = [c for c in PAIR_COLUMNS if c not in rows[0]]
    if missing:
        raise PairDataError(f"missing column(s): {', '.join(missing)}", path)
    records = []
    for i, r in enumerate(rows, start=1):
        genre = str(r["genre"]).strip() if r["genre"] is not None else ""
        if genre not in GENRES:
            raise PairDataError(
                f"row {i}: unknown genre {genre!r}; valid: {', '.join(GENRES)}", path
            )
        sp = str(r["split"]).strip() if r["split"] is not None else ""
        if sp not in SPLITS:
            raise PairDataError(f"row {i}: split {sp!r} is not one of {', '.join(SPLITS)}", path)
        raw = _audio_path(r["raw_path"], "raw_path", i, path, check_files)
        mastered = _audio_path(r["mastered_path"], "mastered_path", i, path, check_files)
        if raw == mastered:
            raise PairDataError(f"row {i}: raw_path and mastered_path are the same file", path)
        records.append(
            PairRecord(
                raw_path=raw,
                mastered_path=mastered,
                genre=genre,
                bpm=_number(r["bpm"], "bpm", i, path),
                mix_balance=_number(r["mix_balance"], "mix_balance", i, path),
                target_lufs=_number(r["target_lufs"], "target_lufs", i, path),
                split=sp,
                extras={k: v for k, v in r.items() if k not in PAIR_COLUMNS},
                row=i,
            )
        )
    return [r for r in records if split is None or r.split == split]


def _relative(p: Path, base: Path) -> str:
    try:
        return str(Path(os.path.relpath(p, base)))
    except ValueError:  # different drive
        return str(p)


def write_pair_manifest(records: Sequence[PairRecord], path: str | Path) -> Path:
    """Write ``records`` as a manifest (``.parquet`` or ``.csv`` by suffix), atomically.

    Audio paths are stored relative to the manifest's folder. Extras become columns (missing
    values as nulls / empty cells).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise PairDataError(f"unknown manifest format {suffix!r}; use .parquet or .csv", path)
    extra_cols: list[str] = []
    for r in records:
        extra_cols += [k for k in r.extras if k not in extra_cols]
    base = path.parent.resolve()
    rows = [
        {
            "raw_path": _relative(r.raw_path.resolve(), base),
            "mastered_path": _relative(r.mastered_path.resolve(), base),
            "genre": r.genre,
            "bpm": float(r.bpm),
            "mix_balance": float(r.mix_balance),
            "target_lufs": float(r.target_lufs),
            "split": r.split,
            **{k: r.extras.get(k) for k in extra_cols},
        }
        for r in records
    ]
    return write_table(rows, path, columns=[*PAIR_COLUMNS, *extra_cols])


def write_table(rows: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str]) -> Path:
    """Write dict rows as Parquet or CSV (by ``path``'s suffix) via a temp file + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows])
            pq.write_table(table, tmp)
        else:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------------------------
# Alignment and level checks
# --------------------------------------------------------------------------------------------


def estimate_lag(
    reference: Tensor,
    delayed: Tensor,
    max_lag: int,
    *,
    analysis_samples: int = 10 * SAMPLE_RATE,
) -> int:
    """Offset ``k`` (samples) with ``delayed[n + k] ≈ reference[n]``, ``|k| <= max_lag``.

    The peak of the FFT cross-correlation of the channel sums over a window of up to
    ``analysis_samples`` from the middle of ``reference``. Positive: ``delayed`` starts late.

    Args:
        reference, delayed: ``[channels, samples]`` or ``[samples]``.
        max_lag: largest offset searched, in samples.
    """
    a = reference.reshape(-1, reference.shape[-1]).sum(0).to(torch.float64)
    b = delayed.reshape(-1, delayed.shape[-1]).sum(0).to(torch.float64)
    length = min(a.shape[-1], analysis_samples)
    start = max(0, (a.shape[-1] - length) // 2)
    a_seg = a[start : start + length]
    b0 = max(0, start - max_lag)
    b_seg = b[b0 : start + length + max_lag]
    n_fft = 1 << math.ceil(math.log2(a_seg.shape[-1] + b_seg.shape[-1]))
    # c[j mod n_fft] = sum_n a_seg[n] b_seg[n + j]; lag k = b0 + j - start.
    c = torch.fft.irfft(torch.fft.rfft(a_seg, n_fft).conj() * torch.fft.rfft(b_seg, n_fft), n_fft)
    lags = torch.arange(-max_lag, max_lag + 1)
    j = lags + start - b0
    valid = (j > -a_seg.shape[-1]) & (j < b_seg.shape[-1])  # negative j wrap around (n_fft)
    scores = torch.full(lags.shape, -math.inf, dtype=torch.float64)
    scores[valid] = c[j[valid] % n_fft]
    return int(lags[int(torch.argmax(scores))])


def _correlation(a: Tensor, b: Tensor) -> float:
    a = a.to(torch.float64).flatten()
    b = b.to(torch.float64).flatten()
    den = math.sqrt(float(a.square().sum()) * float(b.square().sum()))
    return float((a * b).sum()) / den if den > 0 else 0.0


def _rms_dbfs(x: Tensor) -> float:
    ms = float(x.to(torch.float64).square().mean()) if x.numel() else 0.0
    return 10.0 * math.log10(ms) if ms > 0 else -math.inf


def clipped_fraction(x: Tensor, level: float = 0.999, run: int = 3) -> float:
    """Share of samples inside runs of at least ``run`` consecutive samples at ``|x| >= level``
    (flat tops of hard clipping; an unclipped float signal above 1.0 does not count)."""
    at = x.abs() >= level
    if x.shape[-1] < run or not bool(at.any()):
        return 0.0
    runs = at[..., : x.shape[-1] - run + 1].clone()
    for k in range(1, run):
        runs &= at[..., k : x.shape[-1] - run + 1 + k]
    return float(runs.sum()) * run / x.numel()


@dataclass(frozen=True)
class PairChecks:
    """Thresholds of :func:`align_pair`.

    Attributes:
        max_lag_s: largest alignment offset searched, in seconds.
        max_length_mismatch_s: largest allowed difference of the two lengths, in seconds.
        silence_dbfs: a side whose RMS is below this (dBFS) is silent.
        clip_fraction: a side with more than this share of samples in flat full-scale runs
            (:func:`clipped_fraction`) is clipped.
        min_correlation: the aligned pair's normalized correlation must reach this.
    """

    max_lag_s: float = 0.5
    max_length_mismatch_s: float = 1.0
    silence_dbfs: float = -60.0
    clip_fraction: float = 1e-3
    min_correlation: float = 0.2


@dataclass(frozen=True)
class AlignedPair:
    """A checked pair trimmed to its overlap: ``raw``/``mastered`` ``[2, samples]`` at 48 kHz.

    Attributes:
        lag_samples: the master's offset found (positive: the master started late).
        correlation: normalized correlation of the aligned pair, -1..1.
    """

    raw: Tensor
    mastered: Tensor
    lag_samples: int
    correlation: float
    record: PairRecord | None = None

    @property
    def lag_ms(self) -> float:
        return 1000.0 * self.lag_samples / SAMPLE_RATE


def align_pair(
    raw: Tensor,
    mastered: Tensor,
    checks: PairChecks = PairChecks(),
    *,
    raw_name: str | Path | None = None,
    mastered_name: str | Path | None = None,
) -> AlignedPair:
    """Check levels, align ``mastered`` to ``raw`` and trim both to the overlap.

    Args:
        raw, mastered: ``[2, samples]`` float at 48 kHz.
        raw_name, mastered_name: file names for the error messages.

    Raises:
        PairDataError: silent or clipped side, lengths too different, no correlation.
    """
    sr = SAMPLE_RATE
    for x, name in ((raw, raw_name), (mastered, mastered_name)):
        if _rms_dbfs(x) < checks.silence_dbfs:
            raise PairDataError(
                f"silent (RMS {_rms_dbfs(x):.1f} dBFS < {checks.silence_dbfs:g})", name
            )
        frac = clipped_fraction(x)
        if frac > checks.clip_fraction:
            raise PairDataError(
                f"clipped ({100 * frac:.2f}% of samples in flat full-scale runs)", name
            )
    diff = abs(raw.shape[-1] - mastered.shape[-1]) / sr
    if diff > checks.max_length_mismatch_s:
        raise PairDataError(
            f"length {mastered.shape[-1] / sr:.2f} s does not match the raw mix's "
            f"{raw.shape[-1] / sr:.2f} s (differs by more than {checks.max_length_mismatch_s} s)",
            mastered_name,
        )
    lag = estimate_lag(raw, mastered, round(checks.max_lag_s * sr))
    r0, m0 = max(0, -lag), max(0, lag)
    n = min(raw.shape[-1] - r0, mastered.shape[-1] - m0)
    raw_a = raw[..., r0 : r0 + n]
    mas_a = mastered[..., m0 : m0 + n]
    corr = _correlation(raw_a, mas_a)
    if corr < checks.min_correlation:
        raise PairDataError(
            f"does not match its raw mix {raw_name} (correlation {corr:.2f} after aligning "
            f"by {1000 * lag / sr:.1f} ms; expected >= {checks.min_correlation})",
            mastered_name,
        )
    return AlignedPair(raw_a.contiguous(), mas_a.contiguous(), lag, corr)


def load_pair(record: PairRecord, checks: PairChecks = PairChecks()) -> AlignedPair:
    """Read, check and align one manifest row (see :func:`align_pair`)."""
    raw, _ = read_audio(record.raw_path)
    mastered, _ = read_audio(record.mastered_path)
    pair = align_pair(
        raw, mastered, checks, raw_name=record.raw_path, mastered_name=record.mastered_path
    )
    return AlignedPair(pair.raw, pair.mastered, pair.lag_samples, pair.correlation, record)


# --------------------------------------------------------------------------------------------
# Crops and batches
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropConfig:
    """How crops are drawn.

    Attributes:
        crop_seconds: crop length in seconds (``N = round(crop_seconds * 48000)``).
        batch_size: crops per batch (:class:`PairStream`).
        min_rms_dbfs: a crop of the raw mix quieter than this (dBFS RMS) is redrawn (up to
            ``max_redraws`` times), so intros and tails of silence are not trained on.
        max_redraws: redraw attempts before a quiet crop is accepted.
        cache_pairs: aligned pairs kept in memory (least recently used dropped).
        checks: the pair checks of :func:`align_pair`.
    """

    crop_seconds: float = 4.0
    batch_size: int = 8
    min_rms_dbfs: float = -50.0
    max_redraws: int = 4
    cache_pairs: int = 32
    checks: PairChecks = field(default_factory=PairChecks)

    @property
    def crop_samples(self) -> int:
        return round(self.crop_seconds * SAMPLE_RATE)


@dataclass
class PairBatch:
    """A batch of aligned crops.

    Attributes:
        raw, mastered: ``[B, 2, N]`` float32 at 48 kHz.
        conditioning: one :class:`Conditioning` per crop (genre, tempo, vocal ratio).
        target_lufs, tempo_bpm, vocal_ratio: ``[B]`` float32 (LUFS, BPM, 0..1).
        song: ``[B]`` index into the dataset's records; start: ``[B]`` crop start in samples of
            the aligned pair.
    """

    raw: Tensor
    mastered: Tensor
    conditioning: list[Conditioning]
    target_lufs: Tensor
    tempo_bpm: Tensor
    vocal_ratio: Tensor
    song: Tensor
    start: Tensor

    def to(self, device: torch.device | str) -> PairBatch:
        """The same batch with its tensors on ``device``."""
        moved = {k: getattr(self, k).to(device) for k in _TENSORS}
        return PairBatch(conditioning=list(self.conditioning), **moved)

    @staticmethod
    def collate(items: Sequence[PairBatch]) -> PairBatch:
        """Concatenate batches (e.g. single crops from :class:`PairCrops`) along dim 0."""
        cat = {k: torch.cat([getattr(b, k) for b in items]) for k in _TENSORS}
        return PairBatch(conditioning=[c for b in items for c in b.conditioning], **cat)


_TENSORS = ("raw", "mastered", "target_lufs", "tempo_bpm", "vocal_ratio", "song", "start")


class _PairSource:
    """Loads aligned pairs of ``records`` on demand, with a small LRU cache."""

    def __init__(self, records: Sequence[PairRecord], config: CropConfig):
        if not records:
            raise PairDataError("no pairs to load (empty manifest or split)")
        self.records = list(records)
        self.config = config
        self._cache: OrderedDict[int, AlignedPair] = OrderedDict()
        self.lags: dict[int, int] = {}

    def get(self, index: int) -> AlignedPair:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        rec = self.records[index]
        pair = load_pair(rec, self.config.checks)
        if pair.raw.shape[-1] < self.config.crop_samples:
            raise PairDataError(
                f"{pair.raw.shape[-1] / SAMPLE_RATE:.2f} s after alignment is shorter than the "
                f"{self.config.crop_seconds} s crop",
                rec.raw_path,
            )
        self.lags[index] = pair.lag_samples
        self._cache[index] = pair
        while len(self._cache) > max(1, self.config.cache_pairs):
            self._cache.popitem(last=False)
        return pair

    def crop(self, index: int, generator: torch.Generator) -> PairBatch:
        """One crop ``[1, 2, N]`` of song ``index`` at a random start drawn from ``generator``."""
        pair = self.get(index)
        n = self.config.crop_samples
        span = pair.raw.shape[-1] - n + 1
        for _ in range(self.config.max_redraws + 1):
            start = int(torch.randint(span, (1,), generator=generator))
            raw = pair.raw[:, start : start + n]
            if _rms_dbfs(raw) >= self.config.min_rms_dbfs:
                break
        rec = self.records[index]
        return PairBatch(
            raw=raw.unsqueeze(0).float(),
            mastered=pair.mastered[:, start : start + n].unsqueeze(0).float(),
            conditioning=[rec.conditioning()],
            target_lufs=torch.tensor([rec.target_lufs], dtype=torch.float32),
            tempo_bpm=torch.tensor([rec.bpm], dtype=torch.float32),
            vocal_ratio=torch.tensor([rec.mix_balance], dtype=torch.float32),
            song=torch.tensor([index]),
            start=torch.tensor([start]),
        )


def _records(source: str | Path | Sequence[PairRecord], split: str | None) -> list[PairRecord]:
    if isinstance(source, (str, Path)):
        return read_pair_manifest(source, split=split)
    return [r for r in source if split is None or r.split == split]


class PairStream(IterableDataset):
    """Endless (or ``steps``-long) stream of random-crop :class:`PairBatch` es.

    Use with ``DataLoader(stream, batch_size=None, num_workers=k)``: each worker gets its own
    generator (``seed``, worker id, epoch), so the stream is deterministic for a seed and a
    worker count. Call :meth:`set_epoch` to draw a different (still deterministic) sequence.

    Args:
        source: a manifest path or records.
        config: crop settings.
        seed: generator seed.
        split: keep only this split.
        steps: batches per iteration (per worker); ``None``: endless.
    """

    def __init__(
        self,
        source: str | Path | Sequence[PairRecord],
        config: CropConfig = CropConfig(),
        *,
        seed: int = 0,
        split: str | None = "train",
        steps: int | None = None,
    ):
        super().__init__()
        self.source = _PairSource(_records(source, split), config)
        self.config = config
        self.seed = int(seed)
        self.steps = steps
        self.epoch = 0

    @property
    def records(self) -> list[PairRecord]:
        return self.source.records

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[PairBatch]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7919 + worker)
        n_songs = len(self.records)
        step = 0
        while self.steps is None or step < self.steps:
            songs = torch.randint(n_songs, (self.config.batch_size,), generator=g).tolist()
            yield PairBatch.collate([self.source.crop(s, g) for s in songs])
            step += 1


class PairCrops(Dataset):
    """``n_crops`` fixed crops (crop ``i`` is from song ``i % n_songs`` at a start drawn from
    ``seed`` and ``i``): a deterministic validation set. Items are single-crop
    :class:`PairBatch` es; use ``DataLoader(..., collate_fn=PairBatch.collate)``."""

    def __init__(
        self,
        source: str | Path | Sequence[PairRecord],
        config: CropConfig = CropConfig(),
        *,
        seed: int = 0,
        split: str | None = "val",
        n_crops: int | None = None,
    ):
        self.source = _PairSource(_records(source, split), config)
        self.seed = int(seed)
        self.n_crops = len(self.source.records) if n_crops is None else int(n_crops)

    @property
    def records(self) -> list[PairRecord]:
        return self.source.records

    def __len__(self) -> int:
        return self.n_crops

    def __getitem__(self, i: int) -> PairBatch:
        if not 0 <= i < self.n_crops:
            raise IndexError(i)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return self.source.crop(i % len(self.records), g)
