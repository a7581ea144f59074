"""The evaluation table: how close each mastering system gets to the reference masters of a
held-out split.

Systems (each masters the raw mix of every pair; all but "raw" to the pair's
``target_lufs``):

* ``raw`` -- the raw mix as it is;
* ``untrained chain`` -- :class:`mastering.chain.Chain` with its analytic priors only;
* ``trained chain`` -- the chain with trained weights;
* ``trained + genre adapter`` -- plus the ``genre-<genre>`` adapter when one exists (else
  the trained chain; the table says for how many songs one existed);
* ``pedalboard preset`` -- a fixed conventional chain (high-pass 25 Hz, +1 dB low shelf at
  100 Hz, +2 dB high shelf at 8 kHz, compressor -20 dB / 3:1 / 10 ms / 120 ms), gained to the
  target loudness, then pedalboard's limiter at -1 dB;
* ``matchering`` -- matchering 2 given the reference master itself as its reference (an
  oracle-flavoured baseline: it sees the answer's spectrum and loudness).

Metrics against the aligned reference master (mean over songs; lower is better):
``mel_db`` (:func:`mastering.losses.mel_distance_db`, left/right), ``mrstft``
(:func:`mastering.losses.mrstft_distance`), ``lufs_err_lu`` (|integrated loudness
difference|), ``tp_overs`` (4x-oversampled samples above -1 dBTP, per song),
``crest_err_db`` (|peak-to-RMS difference|), ``centroid_err_hz`` (|spectral centroid
difference|), ``width_err_db`` (|side-to-mid energy ratio difference|).
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mastering import SAMPLE_RATE
from mastering.chain import Chain
from mastering.data.pairs import PairDataError, PairRecord, load_pair, read_pair_manifest
from mastering.dsp.resample import oversample
from mastering.dsp.stereo import side_to_mid_ratio_db
from mastering.features import crest_factor_db, spectral_centroid_hz
from mastering.losses import mel_distance_db, mrstft_distance
from mastering.loudness import integrated_loudness
from mastering.training.render import master_batch, resolve_conditioning

CEILING_DBTP = -1.0
METRICS: tuple[str, ...] = (
    "mel_db",
    "mrstft",
    "lufs_err_lu",
    "tp_overs",
    "crest_err_db",
    "centroid_err_hz",
    "width_err_db",
)


@torch.no_grad()
def metrics(y: Tensor, ref: Tensor) -> dict[str, float]:
    """The metrics of one master ``y [1, 2, n]`` against its reference ``[1, 2, n]``."""
    y, ref = y.float(), ref.float()
    ceiling = 10.0 ** (CEILING_DBTP / 20.0)
    return {
        "mel_db": float(mel_distance_db(y, ref)),
        "mrstft": float(mrstft_distance(y, ref)),
        "lufs_err_lu": abs(float(integrated_loudness(y)) - float(integrated_loudness(ref))),
        "tp_overs": float((oversample(y, 4).abs() > ceiling).sum()),
        "crest_err_db": float((crest_factor_db(y) - crest_factor_db(ref)).abs()),
        "centroid_err_hz": float((spectral_centroid_hz(y) - spectral_centroid_hz(ref)).abs()),
        "width_err_db": float((side_to_mid_ratio_db(y) - side_to_mid_ratio_db(ref)).abs()),
    }


def _gain_to(y: np.ndarray, target_lufs: float) -> np.ndarray:
    lufs = float(integrated_loudness(torch.from_numpy(y)))
    return y if not math.isfinite(lufs) else y * 10.0 ** ((target_lufs - lufs) / 20.0)


def pedalboard_preset(raw: Tensor, target_lufs: float) -> Tensor:
    """The fixed preset chain (see the module docstring): ``[2, n] -> [2, n]``."""
    import pedalboard as pb

    board = pb.Pedalboard(
        [
            pb.HighpassFilter(cutoff_frequency_hz=25.0),
            pb.LowShelfFilter(cutoff_frequency_hz=100.0, gain_db=1.0),
            pb.HighShelfFilter(cutoff_frequency_hz=8000.0, gain_db=2.0),
            pb.Compressor(threshold_db=-20.0, ratio=3.0, attack_ms=10.0, release_ms=120.0),
        ]
    )
    x = raw.numpy().astype(np.float32)
    y = _gain_to(board(x, SAMPLE_RATE), target_lufs).astype(np.float32)
    y = pb.Pedalboard([pb.Limiter(threshold_db=CEILING_DBTP, release_ms=100.0)])(y, SAMPLE_RATE)
    return torch.from_numpy(np.ascontiguousarray(y[:, : raw.shape[-1]]))


def matchering_master(raw: Tensor, reference: Tensor) -> Tensor:
    """matchering 2 (raw as its target, the reference master as its reference)."""
    import matchering as mg
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        t, r, o = (str(Path(tmp) / n) for n in ("target.wav", "reference.wav", "out.wav"))
        sf.write(t, raw.T.numpy(), SAMPLE_RATE, subtype="FLOAT")
        sf.write(r, reference.T.numpy(), SAMPLE_RATE, subtype="FLOAT")
        mg.log(None)
        # Work at 48 kHz: the default internal 44.1 kHz would resample and return 44.1 kHz.
        mg.process(
            target=t,
            reference=r,
            results=[mg.Result(o, subtype="FLOAT")],
            config=mg.Config(internal_sample_rate=SAMPLE_RATE),
        )
        y, sr = sf.read(o, dtype="float32", always_2d=True)
    if sr != SAMPLE_RATE:
        raise RuntimeError(f"matchering returned {sr} Hz audio")
    y = torch.from_numpy(y.T.copy())
    n = raw.shape[-1]
    return torch.nn.functional.pad(y, (0, max(0, n - y.shape[-1])))[:, :n]


@dataclass
class EvalSong:
    record: PairRecord
    raw: Tensor  # [2, n]
    mastered: Tensor  # [2, n]


def load_songs(
    manifest: str | Path,
    split: str | None,
    max_seconds: float,
    log: Callable[[str], None] = print,
) -> list[EvalSong]:
    """Aligned pairs of ``split`` (``None``: every row), each cut to its middle
    ``max_seconds``; pairs the loader rejects (clipped, silent, misaligned) are skipped and
    logged."""
    records = read_pair_manifest(manifest, split=split)
    songs = []
    for rec in records:
        try:
            pair = load_pair(rec)
        except PairDataError as exc:  # an unusable pair is reported and left out
            log(f"skipped: {exc}")
            continue
        n = pair.raw.shape[-1]
        keep = min(n, int(max_seconds * SAMPLE_RATE))
        s = (n - keep) // 2
        songs.append(EvalSong(rec, pair.raw[:, s : s + keep].float(),
                              pair.mastered[:, s : s + keep].float()))  # fmt: skip
    return songs


def evaluate(
    songs: list[EvalSong],
    trained: Chain | None,
    adapters: Callable[[str], Chain | None] | None = None,
    systems: tuple[str, ...] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Rows ``{"system", "songs", <metric>: mean}`` of the table, in the systems' order."""
    untrained = Chain().eval()
    per: dict[str, list[dict[str, float]]] = {}
    notes: dict[str, str] = {}
    n_adapted = 0
    for k, song in enumerate(songs):
        raw, ref, rec = song.raw, song.mastered, song.record
        cond = resolve_conditioning(raw.unsqueeze(0), [rec.conditioning()])
        chains: dict[str, Chain] = {"untrained chain": untrained}
        if trained is not None:
            adapted = adapters(rec.genre) if adapters is not None else None
            n_adapted += adapted is not None
            chains["trained chain"] = trained
            chains["trained + genre adapter"] = adapted if adapted is not None else trained

        def master(name: str, raw=raw, ref=ref, rec=rec, cond=cond, chains=chains) -> Tensor:
            if name == "raw":
                return raw
            if name in chains:
                return master_batch(chains[name], raw[None], cond, [rec.target_lufs])[0]
            if name == "pedalboard preset":
                return pedalboard_preset(raw, rec.target_lufs)
            return matchering_master(raw, ref)

        names = ["raw", *chains, "pedalboard preset", "matchering"]
        outs = {name: functools.partial(master, name) for name in names}
        for name, fn in outs.items():
            if systems is not None and name not in systems:
                continue
            try:
                with torch.no_grad():
                    y = fn()
                per.setdefault(name, []).append(metrics(y[None], ref[None]))
            except Exception as exc:  # a baseline failing must not hide the others
                notes[name] = f"failed on {rec.raw_path.name}: {exc}"
                log(f"  {name} failed on {rec.raw_path.name}: {exc}")
        log(f"evaluated song {k + 1}/{len(songs)} ({rec.genre}, {rec.raw_path.name})")
    rows = []
    for name, items in per.items():
        row: dict[str, Any] = {"system": name, "songs": len(items)}
        for m in METRICS:
            row[m] = float(np.mean([it[m] for it in items]))
        if name == "trained + genre adapter":
            row["note"] = f"adapter for {n_adapted} of {len(items)} songs"
        elif name in notes:
            row["note"] = notes[name]
        else:
            row["note"] = ""
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (3 significant decimals)."""
    cols = ["system", "songs", *METRICS, "note"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(rows: list[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``evaluation.parquet`` and ``evaluation.md`` (atomically) into ``out_dir``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pq_path, md_path = out / "evaluation.parquet", out / "evaluation.md"
    tmp = out / ".evaluation.parquet.tmp"
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(pq_path)
    tmp = out / ".evaluation.md.tmp"
    tmp.write_text(markdown_table(rows) + "\n")
    tmp.replace(md_path)
    return pq_path, md_path
