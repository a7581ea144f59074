"""The offline corpus: procedurally composed songs rendered to raw mixes, with metadata, and
(optionally) their reference masters and the pair manifest.

``generate_corpus(CorpusConfig(n=50, out=Path("corpus")))`` writes::

    corpus/
      songs.parquet        one row per song (genre, tempo, key, stem gains, mix settings,
                           seed, duration, measured LUFS/peaks, vocal engine, split ...)
      pairs.parquet        the pair manifest (mastering.data.pairs) of raw -> reference master
      raw/song_0000.wav    raw mix, 32-bit float WAV (may peak above 0 dBFS: not limited)
      mastered/song_0000.wav  reference master, 24-bit WAV (route b, mastering.data.reference)
      midi/song_0000.mid   the composed MIDI parts
      stems/song_0000/{drums,bass,chords,pad,lead,vocal}.wav  (with ``stems=True``)

Song ``i`` depends only on ``(seed, i)`` and the config, so the corpus is the same whatever the
worker count; songs are rendered in parallel processes. Genres are dealt round-robin from a
seeded shuffle so every genre appears. If Festival is missing the vocal line is played on a GM
voice preset and ``vocal_engine`` records ``"gm_voice"``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mastering import SAMPLE_RATE
from mastering.conditioning import GENRES
from mastering.data import compose, mixing, synth
from mastering.data.pairs import PairRecord, write_pair_manifest, write_table
from mastering.errors import InvalidParameterError, LacquerError
from mastering.io import write_audio
from mastering.loudness import integrated_loudness, loudness_range, true_peak

#: Genres the generator composes (all of GENRE_MACROS but "unknown").
CORPUS_GENRES: tuple[str, ...] = tuple(g for g in GENRES if g in compose.STYLES)


@dataclass(frozen=True)
class CorpusConfig:
    """What to generate.

    Attributes:
        n: number of songs. out: output folder. seed: corpus seed.
        seconds: (min, max) song length in seconds (uniform; whole bars).
        genres: genres to deal (default :data:`CORPUS_GENRES`).
        workers: processes (1: in this process).
        centre_lufs, spread_lu: raw-mix loudness centre (LUFS) and ± spread (LU).
        reference: also write reference masters and ``pairs.parquet``.
        stems: also write each part as it entered the mix.
        split: (val, test) shares of songs; the rest is train.
    """

    n: int
    out: Path
    seed: int = 0
    seconds: tuple[float, float] = (30.0, 120.0)
    genres: tuple[str, ...] = CORPUS_GENRES
    workers: int = 1
    centre_lufs: float = -18.0
    spread_lu: float = 6.0
    reference: bool = True
    stems: bool = False
    split: tuple[float, float] = (0.1, 0.1)

    def validate(self) -> CorpusConfig:
        if self.n < 1:
            raise InvalidParameterError(f"--n must be at least 1, got {self.n}")
        lo, hi = self.seconds
        if not 2.0 <= lo <= hi <= 600.0:
            raise InvalidParameterError(f"--seconds {lo} {hi}: need 2 <= MIN <= MAX <= 600")
        bad = [g for g in self.genres if g not in compose.STYLES]
        if bad or not self.genres:
            raise InvalidParameterError(
                f"unknown genre(s) {', '.join(bad) or '(none)'}; valid: {', '.join(CORPUS_GENRES)}"
            )
        if self.workers < 1:
            raise InvalidParameterError(f"--workers must be at least 1, got {self.workers}")
        return self


def song_seed(corpus_seed: int, index: int) -> int:
    """The seed of song ``index`` (independent streams per song)."""
    return int(np.random.SeedSequence([int(corpus_seed), int(index)]).generate_state(1)[0])


def song_genres(config: CorpusConfig) -> list[str]:
    """Genre of each song: round-robin over a seeded shuffle of ``config.genres``."""
    order = list(config.genres)
    np.random.default_rng(config.seed).shuffle(order)
    return [order[i % len(order)] for i in range(config.n)]


def assign_splits(n: int, seed: int, val: float = 0.1, test: float = 0.1) -> list[str]:
    """``train``/``val``/``test`` per song (by song, seeded): at least one val song from 2 songs
    on and one test song from 3 on."""
    n_val = max(1 if n >= 2 else 0, round(val * n)) if val > 0 else 0
    n_test = max(1 if n >= 3 else 0, round(test * n)) if test > 0 else 0
    labels = ["val"] * n_val + ["test"] * n_test
    labels += ["train"] * (n - len(labels))
    perm = np.random.default_rng([int(seed), 7]).permutation(n)
    out = [""] * n
    for rank, i in enumerate(perm):
        out[int(i)] = labels[rank]
    return out


def _trim_tail(x: torch.Tensor, floor_db: float = -70.0, fade_s: float = 0.05) -> torch.Tensor:
    """Cut trailing samples quieter than ``floor_db`` re the peak and fade the last 50 ms."""
    env = x.abs().amax(0)
    peak = float(env.max())
    above = torch.nonzero(env > peak * 10.0 ** (floor_db / 20.0))
    end = int(above[-1]) + 1 if len(above) else x.shape[-1]
    y = x[:, :end].clone()
    n = min(end, round(fade_s * SAMPLE_RATE))
    if n > 1:
        y[:, -n:] *= torch.linspace(1.0, 0.0, n, dtype=y.dtype)
    return y


def _energy(x: torch.Tensor) -> float:
    return float(x.to(torch.float64).square().sum())


class CorpusError(LacquerError):
    """A song of the corpus could not be made (names the song, genre and seed)."""


def render_song(index: int, config: CorpusConfig, genre: str, split: str) -> dict:
    """Compose, render, mix (and master) song ``index``; write its files; return its row.

    Raises:
        CorpusError: any failure, naming the song.
    """
    torch.set_num_threads(1)
    try:
        return _render_song(index, config, genre, split)
    except (LacquerError, ValueError, OSError) as exc:
        seed = song_seed(config.seed, index)
        raise CorpusError(f"song {index} ({genre}, seed {seed}): {exc}") from exc


def _render_song(index: int, config: CorpusConfig, genre: str, split: str) -> dict:
    t0 = time.perf_counter()
    seed = song_seed(config.seed, index)
    rng = np.random.default_rng(seed)
    duration = float(rng.uniform(*config.seconds))
    song = compose.compose_song(genre, seed, duration)
    name = f"song_{index:04d}"
    out = Path(config.out)
    length = round(song.duration_s * SAMPLE_RATE) + SAMPLE_RATE  # room for release tails

    stems: dict[str, torch.Tensor] = {}
    for part in ("drums", "bass", "chords", "pad", "lead"):
        audio = synth.render_midi(song.midi((part,)), length, reverb=part in ("chords", "pad"))
        stems[part] = torch.from_numpy(audio)
    engines = synth.available_engines()
    if song.vocal and engines["festival"]:
        stems["vocal"] = torch.from_numpy(synth.render_vocal(song.vocal, length))
        vocal_engine = "festival"
    elif song.vocal:
        m = song.midi(())
        m.instruments.append(song.vocal_instrument())
        stems["vocal"] = torch.from_numpy(synth.render_midi(m, length))
        vocal_engine = "gm_voice"
    else:
        vocal_engine = "none"
    silent = [k for k, v in stems.items() if float(v.abs().max()) == 0.0]
    for k in silent:  # a part that did not sound (e.g. a missing preset) is dropped and recorded
        del stems[k]

    settings = mixing.draw_mix(
        rng, tuple(stems), centre_lufs=config.centre_lufs, spread_lu=config.spread_lu
    )
    leveled = mixing.normalized_stems(stems, settings)
    raw, _ = mixing.process_bus(sum(leveled.values()), settings)
    raw = _trim_tail(raw)
    lufs = float(integrated_loudness(raw))
    total = sum(_energy(v) for v in leveled.values())
    vocal_ratio = _energy(leveled["vocal"]) / total if "vocal" in leveled else 0.0

    (out / "raw").mkdir(parents=True, exist_ok=True)
    (out / "midi").mkdir(parents=True, exist_ok=True)
    raw_path = write_audio(out / "raw" / f"{name}.wav", raw, format="wav32f")
    midi = song.midi()
    if "vocal" in stems:
        midi.instruments.append(song.vocal_instrument())
    midi.write(str(out / "midi" / f"{name}.mid"))
    if config.stems:
        (out / "stems" / name).mkdir(parents=True, exist_ok=True)
        for k, v in leveled.items():
            write_audio(out / "stems" / name / f"{k}.wav", v.float(), format="wav32f")

    row = {
        "song_id": name,
        "index": index,
        "seed": seed,
        "genre": genre,
        "split": split,
        "tempo_bpm": song.tempo_bpm,
        "key": song.key,
        "duration_s": raw.shape[-1] / SAMPLE_RATE,
        "raw_path": str(raw_path.relative_to(out)),
        "midi_path": f"midi/{name}.mid",
        "stems": ",".join(stems),
        "silent_parts": ",".join(silent),
        "vocal_engine": vocal_engine,
        "vocal_rendered": vocal_engine == "festival",
        "vocal_ratio": vocal_ratio,
        "sections": json.dumps([[s, round(a, 3), round(b, 3)] for s, a, b in song.sections]),
        "lufs": lufs,
        "lra_lu": float(loudness_range(raw)),
        "true_peak_dbtp": float(true_peak(raw)),
        "sample_peak_dbfs": 20.0 * math.log10(float(raw.abs().max())),
        "target_lufs_raw": settings.target_lufs,
    }
    for k in compose.STEMS:
        row[f"gain_{k}_db"] = settings.stem_gains_db.get(k)
        row[f"program_{k}"] = song.programs.get(k, 53 if k == "vocal" else None)
    for k, v in settings.to_dict().items():
        if k not in ("stem_gains_db", "target_lufs"):
            row[f"mix_{k}"] = v
    if config.reference:
        from mastering.data.reference import master_reference

        master, ref = master_reference(raw, genre)
        (out / "mastered").mkdir(parents=True, exist_ok=True)
        m_path = write_audio(out / "mastered" / f"{name}.wav", master, format="wav24")
        row["mastered_path"] = str(m_path.relative_to(out))
        for k, v in ref.to_dict().items():
            if k != "genre":
                row[f"ref_{k}"] = v
    row["render_s"] = time.perf_counter() - t0
    return row


def _render_star(args: tuple) -> dict:
    return render_song(*args)


def generate_corpus(
    config: CorpusConfig, progress: Callable[[dict], None] | None = None
) -> list[dict]:
    """Render the corpus (see the module docstring); returns the song rows in index order.

    Args:
        config: what to generate (validated here).
        progress: called with each song's row as it finishes (in completion order).
    """
    config.validate()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    genres = song_genres(config)
    splits = assign_splits(config.n, config.seed, *config.split)
    jobs = [(i, config, genres[i], splits[i]) for i in range(config.n)]
    rows: list[dict] = []
    if config.workers == 1:
        for job in jobs:
            rows.append(_render_star(job))
            if progress:
                progress(rows[-1])
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=config.workers, mp_context=ctx) as pool:
            for row in pool.map(_render_star, jobs):
                rows.append(row)
                if progress:
                    progress(row)
    rows.sort(key=lambda r: r["index"])
    columns = list(dict.fromkeys(k for r in rows for k in r))
    write_table(rows, out / "songs.parquet", columns)
    if config.reference:
        write_pair_manifest(pair_records(rows, out), out / "pairs.parquet")
    return rows


def pair_records(rows: Sequence[dict], out: Path) -> list[PairRecord]:
    """Pair-manifest records (raw -> reference master) of corpus rows."""
    records = []
    for r in rows:
        records.append(
            PairRecord(
                raw_path=out / r["raw_path"],
                mastered_path=out / r["mastered_path"],
                genre=r["genre"],
                bpm=float(r["tempo_bpm"]),
                mix_balance=float(min(1.0, max(0.0, r["vocal_ratio"]))),
                target_lufs=float(r["ref_target_lufs"]),
                split=r["split"],
                extras={
                    "song_id": r["song_id"],
                    "seed": r["seed"],
                    "key": r["key"],
                    "route": "reference",
                },
            )
        )
    return records
