"""``lacquer train --config cpu-small --pairs MANIFEST --out DIR [--resume]``: train the chain.

Runs sequential per-module pretraining and joint fine-tuning
(:class:`mastering.training.Trainer`) on the ``train`` split of a pair manifest, validating on
its ``val`` split (the ``test`` split is never read), checkpointing to ``DIR/checkpoint.pt``.
Writes ``DIR/chain.safetensors`` (the weights :meth:`mastering.chain.Chain.pretrained` loads
when copied to ``mastering/weights/``), ``DIR/train_log.jsonl`` and ``DIR/summary.json``.
With ``--adapters`` it then trains a style adapter per genre of the training songs and one per
k-means cluster of their mixing features, written to ``DIR/adapters/``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from mastering.training.config import CONFIGS

    p = subparsers.add_parser(
        "train",
        help="train the chain's controllers on raw/master pairs",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--config", default="cpu-small", choices=sorted(CONFIGS), help="config")
    p.add_argument("--pairs", required=True, help="pair manifest (.parquet or .csv)")
    p.add_argument(
        "--pool",
        default=None,
        help="crop-pool file: read instead of decoding the manifest's audio if it exists, "
        "else written after building (float16; carries a pool to a GPU machine)",
    )
    p.add_argument("--pool-only", action="store_true", help="only build/write --pool, then exit")
    p.add_argument("--out", required=True, help="output folder (checkpoints, weights, logs)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.add_argument("--device", default=None, choices=("cpu", "cuda", "auto"), help="device")
    p.add_argument(
        "--adapters", action="store_true", help="also train genre and cluster style adapters"
    )
    p.add_argument(
        "--adapters-only",
        action="store_true",
        help="skip chain training: train adapters on DIR/chain.safetensors",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from mastering.chain import Chain
    from mastering.errors import InvalidParameterError
    from mastering.training import Trainer, export_weights, get_config

    overrides = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.device is not None:
        overrides["device"] = args.device
    config = get_config(args.config, **overrides)
    out = Path(args.out)
    t0 = time.time()
    trainer = Trainer(
        config, args.pairs, out, log=lambda s: print(s, flush=True), pool_file=args.pool
    )
    if args.pool_only:
        if not args.pool:
            raise InvalidParameterError("--pool-only needs --pool FILE")
        trainer.load_data()
        return 0
    weights = out / "chain.safetensors"
    summary: dict[str, Any] = {}
    if args.adapters_only and (out / "summary.json").exists():
        summary = json.loads((out / "summary.json").read_text())  # keep the training summary
    summary.update(config=config.name, pairs=str(args.pairs))
    if not args.adapters_only:
        result = trainer.run(resume=args.resume)
        export_weights(
            result.chain,
            weights,
            {"config": config.name, "seed": config.seed, "pairs": Path(args.pairs).name},
        )
        summary.update(
            val_before=result.val_before,
            val_after=result.val_after,
            history=result.history,
            train_seconds=round(result.seconds, 1),
        )
        print(
            f"validation loss {result.val_before:.4f} -> {result.val_after:.4f} in "
            f"{result.seconds / 60:.1f} min; weights: {weights}"
        )
    if args.adapters or args.adapters_only:
        from mastering.training.style import train_style_adapters

        chain = Chain.pretrained(weights=weights)
        if trainer.train_pool is None:
            trainer.load_data()
        trainer.chain = chain.to(trainer.device)
        report = train_style_adapters(trainer, out / "adapters")
        summary["adapters"] = report
    summary["seconds"] = round(time.time() - t0, 1)
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    tmp.replace(out / "summary.json")
    return 0


if __name__ == "__main__":  # ``python -m lacquer.commands.train ...`` (without the other commands)
    import sys

    _parser = argparse.ArgumentParser(prog="train")
    _sub = _parser.add_subparsers()
    add_parser(_sub)
    sys.exit(run(_parser.parse_args(["train", *sys.argv[1:]])))
