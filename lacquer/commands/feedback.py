"""``lacquer feedback query|rate``: read the feedback tables, record human ratings.

``lacquer feedback query [--since DATE] [--until DATE] [--song ID] [--min-score X]
[--max-score X] [--kept] [--json] [--limit N]`` prints the recorded mastering attempts (one
line each, or one JSON object per line), with each song's latest human rating.
``lacquer feedback rate SONG_ID 1-5 [--rater NAME]`` appends a rating.

The store is ``--store DIR`` (default: ``$LACQUER_FEEDBACK_DIR``, else ``./feedback``), the
folder ``lacquer master --feedback DIR`` and the farm write to (:mod:`tuning.store`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

DEFAULT_STORE_ENV = "LACQUER_FEEDBACK_DIR"


def default_store() -> str:
    return os.environ.get(DEFAULT_STORE_ENV, "feedback")


def _rating(value: str) -> int:
    try:
        r = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"rating must be an integer 1-5, got {value!r}") from None
    if not 1 <= r <= 5:
        raise argparse.ArgumentTypeError(f"rating must be 1-5, got {r}")
    return r


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "feedback", help="query the feedback tables or rate a song", description=__doc__
    )
    p.add_argument("--store", default=None, help="feedback folder (default: ./feedback)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = sub.add_parser("query", help="print recorded attempts")
    q.add_argument("--since", help="first date, YYYY-MM-DD (UTC, inclusive)")
    q.add_argument("--until", help="last date, YYYY-MM-DD (UTC, inclusive)")
    q.add_argument("--song", help="only this song id")
    q.add_argument("--min-score", type=float, help="only scores >= this (0-100)")
    q.add_argument("--max-score", type=float, help="only scores <= this (0-100)")
    q.add_argument("--kept", action="store_true", help="only the kept (best) attempt per song")
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q.add_argument("--limit", type=int, help="at most this many rows (the newest)")
    r = sub.add_parser("rate", help="record a human rating 1-5 of a song")
    r.add_argument("song_id", metavar="SONG_ID")
    r.add_argument("rating", type=_rating, metavar="RATING", help="1 (bad) to 5 (great)")
    r.add_argument("--rater", default="", help="who rated")
    return p


_LINE_COLUMNS = ("date", "song_id", "attempt", "kept", "score", "rating")


def _line(row: dict[str, Any]) -> str:
    subs = row.get("sub_scores") or {}
    sub = " ".join(f"{k[:4]} {v:5.1f}" for k, v in subs.items() if v is not None)
    rating = "-" if row["rating"] is None else str(row["rating"])
    return (
        f"{row['date']}  {row['song_id']:<24.24}  #{row['attempt']}{'*' if row['kept'] else ' '}"
        f"  score {row['score']:5.1f}  rating {rating}  {sub}"
    )


def run(args: argparse.Namespace) -> int:
    from tuning.store import FeedbackStore

    store = FeedbackStore(args.store or default_store())
    if args.action == "rate":
        store.rate(args.song_id, args.rating, args.rater)
        print(f"rated {args.song_id}: {args.rating}", file=sys.stderr)
        return 0
    table = store.read(
        since=args.since,
        until=args.until,
        song=args.song,
        min_score=args.min_score,
        max_score=args.max_score,
        kept_only=args.kept,
    )
    if args.limit is not None:
        table = table.slice(max(0, table.num_rows - args.limit))
    rows = table.to_pylist()
    for row in rows:
        if args.json:
            row["created_at"] = row["created_at"].isoformat()
            for key in ("conditioning", "params", "metrics_before", "metrics_after", "timings"):
                if row.get(key) is not None:
                    row[key] = json.loads(row[key])
            print(json.dumps(row, sort_keys=True))
        else:
            print(_line(row))
    print(f"{len(rows)} attempts", file=sys.stderr)
    return 0
