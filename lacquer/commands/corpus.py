"""``lacquer corpus --n 50 --out corpus/``: render an offline training corpus.

Songs are composed procedurally across genres (drums, bass, chords, pad, lead as General MIDI
parts rendered by FluidSynth, and a vocal line sung by Festival), mixed like raw generator
output (random part levels, loudness spread around a centre, uneven tonal balance, narrow or
over-wide stereo, no limiting) and written with a Parquet manifest (``songs.parquet``). By
default each song is also mastered by the reference chain (``mastered/``) and the pair
manifest ``pairs.parquet`` (train/val/test by song) is written for training; ``--demaster``
also writes self-supervised pairs (``pairs_demaster.parquet``) from those masters. ``--rirs N``
also writes a bank of N simulated stereo room impulse responses with RT60 labels (``rir/``).
Deterministic per ``--seed``, whatever ``--workers``. Needs the Debian packages
``fluidsynth fluid-soundfont-gm festival festvox-kallpc16k`` (without Festival the vocal line
is played on a GM voice and the manifest says so).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from mastering.data.corpus import CORPUS_GENRES

    p = subparsers.add_parser(
        "corpus",
        help="render an offline training corpus (songs, reference masters, pair manifest)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--n", type=int, default=50, help="number of songs (default 50)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    p.add_argument(
        "--seconds",
        nargs=2,
        type=float,
        default=(30.0, 120.0),
        metavar=("MIN", "MAX"),
        help="song length range in seconds (default 30 120)",
    )
    p.add_argument(
        "--genres",
        nargs="+",
        default=list(CORPUS_GENRES),
        metavar="GENRE",
        help=f"genres to deal round-robin (default all: {' '.join(CORPUS_GENRES)})",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=max(1, min(4, os.cpu_count() or 1)),
        help="parallel processes (default: CPU count, at most 4)",
    )
    p.add_argument(
        "--centre-lufs", type=float, default=-18.0, help="raw-mix loudness centre (LUFS)"
    )
    p.add_argument("--spread-lu", type=float, default=6.0, help="raw-mix loudness ± spread (LU)")
    p.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="do not render reference masters nor write pairs.parquet",
    )
    p.add_argument("--stems", action="store_true", help="also write each part (stems/)")
    p.add_argument(
        "--demaster",
        action="store_true",
        help="also de-master the reference masters (route a): demastered/ and "
        "pairs_demaster.parquet",
    )
    p.add_argument(
        "--rirs",
        type=int,
        default=0,
        metavar="N",
        help="also write N simulated room impulse responses to rir/ (default 0)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from mastering.data import synth
    from mastering.data.corpus import CorpusConfig, generate_corpus

    config = CorpusConfig(
        n=args.n,
        out=args.out,
        seed=args.seed,
        seconds=(float(args.seconds[0]), float(args.seconds[1])),
        genres=tuple(args.genres),
        workers=args.workers,
        centre_lufs=args.centre_lufs,
        spread_lu=args.spread_lu,
        reference=args.reference,
        stems=args.stems,
    ).validate()
    engines = synth.available_engines()
    if not engines["fluidsynth"]:
        from mastering.data.synth import RenderError

        raise RenderError(
            "fluidsynth and a GM soundfont are required (Debian: fluidsynth fluid-soundfont-gm)"
        )
    if not engines["festival"]:
        print(
            "lacquer corpus: festival not installed; vocals played on a GM voice", file=sys.stderr
        )
    t0 = time.perf_counter()
    done = 0

    def progress(row: dict) -> None:
        nonlocal done
        done += 1
        print(
            f"[{done}/{config.n}] {row['song_id']} {row['genre']:<9} {row['tempo_bpm']:5.0f} BPM "
            f"{row['key']:<8} {row['duration_s']:6.1f} s  raw {row['lufs']:6.1f} LUFS"
            + (f"  master {row['ref_measured_lufs']:6.1f} LUFS" if config.reference else ""),
            flush=True,
        )

    rows = generate_corpus(config, progress)
    elapsed = time.perf_counter() - t0
    audio_min = sum(r["duration_s"] for r in rows) / 60.0
    print(
        f"wrote {len(rows)} songs ({audio_min:.1f} min of audio) to {config.out} in "
        f"{elapsed:.0f} s ({60.0 * len(rows) / elapsed:.1f} songs/min, {config.workers} workers)"
    )
    if args.demaster and config.reference:
        from mastering.data.demaster import write_demastered_pairs
        from mastering.data.pairs import read_pair_manifest

        out = Path(args.out)
        recs = write_demastered_pairs(
            read_pair_manifest(out / "pairs.parquet"),
            out / "demastered",
            out / "pairs_demaster.parquet",
            seed=args.seed,
        )
        print(f"wrote {len(recs)} de-mastered pairs to {out / 'pairs_demaster.parquet'}")
    if args.rirs > 0:
        from mastering.data.rir import RirBankConfig, generate_rir_bank

        bank = generate_rir_bank(RirBankConfig(n=args.rirs, seed=args.seed), Path(args.out) / "rir")
        print(f"wrote {len(bank)} room impulse responses to {Path(args.out) / 'rir'}")
    return 0
