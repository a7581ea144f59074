"""``lacquer evaluate --pairs MANIFEST --split test``: compare mastering systems with the
reference masters of a held-out split.

Rows: raw input, untrained chain, trained chain, trained chain + genre adapter, a fixed
pedalboard preset chain and matchering (given the reference). Columns: mel and MR-STFT
distance, LUFS error, true-peak overs, crest-factor, spectral-centroid and stereo-width
errors (see :mod:`mastering.training.evaluate`). Prints the table and writes it as
``OUT/evaluation.parquet`` and ``OUT/evaluation.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluation table of mastering systems against reference masters",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--pairs", required=True, help="pair manifest (.parquet or .csv)")
    p.add_argument(
        "--split", default="test", choices=("train", "val", "test", "all"), help="rows to use"
    )
    p.add_argument(
        "--weights",
        default=None,
        help="trained chain weights (default: the shipped mastering/weights/chain.safetensors)",
    )
    p.add_argument(
        "--adapters",
        default=None,
        help="folder of genre adapters (default: the installed ones, see LACQUER_ADAPTER_DIR)",
    )
    p.add_argument("--out", default=".", help="folder for evaluation.parquet / .md")
    p.add_argument(
        "--max-seconds", type=float, default=30.0, help="evaluate the middle N s of each song"
    )
    p.add_argument("--systems", nargs="+", default=None, metavar="SYSTEM", help="only these rows")
    return p


def run(args: argparse.Namespace) -> int:
    import os

    from mastering import adapters as A
    from mastering.chain import WEIGHTS_DIR, Chain
    from mastering.errors import InvalidParameterError
    from mastering.training.evaluate import evaluate, load_songs, markdown_table, write_table

    weights = Path(args.weights) if args.weights else WEIGHTS_DIR / "chain.safetensors"
    if args.weights and not weights.exists():
        raise InvalidParameterError("weights file not found", weights)
    trained = Chain.pretrained(weights=weights) if weights.exists() else None
    if trained is None:
        print(f"note: no trained weights at {weights}; trained rows are skipped")
    if args.adapters:
        os.environ[A.ENV_DIR] = str(Path(args.adapters).resolve())

    def adapted(genre: str):
        if trained is None:
            return None
        name = A.genre_adapter_name(genre)
        return A.apply_adapter(trained, name) if name in A.available_adapters() else None

    songs = load_songs(args.pairs, None if args.split == "all" else args.split, args.max_seconds)
    print(f"{len(songs)} songs of the {args.split} split of {args.pairs}")
    rows = evaluate(songs, trained, adapted, tuple(args.systems) if args.systems else None)
    print(markdown_table(rows))
    pq_path, md_path = write_table(rows, args.out)
    print(f"wrote {pq_path} and {md_path}")
    return 0
