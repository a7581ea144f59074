"""``lacquer improve``: one continuous-improvement cycle, or ``--rollback``
(:mod:`tuning.improve`).

``lacquer improve --manifest PAIRS [--store DIR] [--margin 1.0] [--threshold 70]
[--max-rating 2]`` selects the weak songs of the feedback tables (kept score below the
threshold, or a human rating at or below ``--max-rating``), fine-tunes the genre adapters on
their pairs, scores candidate and current versions on the manifest's held-out split and
promotes the candidate only if it wins by ``--margin`` score points. Versions live in
``<store>/models/versions/``, the promoted one is named by ``<store>/models/CURRENT``; every
decision is appended to ``<store>/decisions/``.

``lacquer improve --rollback`` points ``CURRENT`` back at the previous version.
``lacquer improve --history`` prints the decisions.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("improve", help="retrain adapters on weak cases; promote a win",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--store", default=None, help="feedback store (default: ./feedback)")
    p.add_argument("--manifest", help="pair manifest of the songs (raw stem = song id)")
    p.add_argument("--models", default=None, help="versions folder (default: STORE/models)")
    p.add_argument("--margin", type=float, default=1.0, help="score points to win by")
    p.add_argument("--threshold", type=float, default=None, help="weak below this score")
    p.add_argument("--max-rating", type=int, default=2, help="weak at or below this rating")
    p.add_argument("--heldout", default="test", help="manifest split evaluated on")
    p.add_argument("--seconds", type=float, default=2.0, help="held-out crop length, s")
    p.add_argument("--config", default="test-tiny", help="training config (crops, batch)")
    p.add_argument("--lr", type=float, default=1e-2, help="adapter lr without a tuned best")
    p.add_argument("--steps", type=int, default=8, help="adapter steps without a tuned best")
    p.add_argument("--rollback", action="store_true", help="restore the previous version")
    p.add_argument("--history", action="store_true", help="print the decisions")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def run(args: argparse.Namespace) -> int:
    from lacquer.commands.feedback import default_store
    from mastering.errors import InvalidParameterError
    from tuning import improve as imp

    store = args.store or default_store()
    if args.history:
        for row in imp.read_decisions(store).to_pylist():
            line = (
                f"{row['decided_at']:%Y-%m-%d %H:%M:%S} {row['action']:8s} "
                f"current={row['current']} candidate={row['candidate']} {row['reason']}"
            )
            print(json.dumps(row, default=str) if args.json else line)
        return 0
    if args.rollback:
        row = imp.rollback(store, args.models)
        print(json.dumps(row, default=str) if args.json else row["reason"])
        return 0
    if not args.manifest:
        raise InvalidParameterError("--manifest is required (the pairs of the feedback songs)")
    cfg = imp.ImproveConfig(store=store, manifest=args.manifest, root=args.models,
                            margin=args.margin, max_rating=args.max_rating, heldout=args.heldout,
                            seconds=args.seconds, base=args.config, lr=args.lr,
                            steps=args.steps)  # fmt: skip
    if args.threshold is not None:
        cfg.threshold = args.threshold
    row = imp.improve(cfg)
    if args.json:
        print(json.dumps(row, default=str))
    elif row["action"] == "skip":
        print(f"no candidate: {row['reason']}")
    else:
        print(f"{row['action']}: {row['candidate']} ({row['reason']}); current version: "
              f"{row['current'] or 'base chain'}")  # fmt: skip
    return 0
