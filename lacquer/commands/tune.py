"""``lacquer tune retry|adapters``: Ray Tune searches (:mod:`tuning.tune_retry`,
:mod:`tuning.tune_adapters`).

``lacquer tune retry [INPUT...]`` searches the auto-retry policy (threshold, perturbation
scales, max attempts) on a corpus sample: INPUT is one pair manifest, or audio files/folders;
none: ``--songs`` synthetic degraded songs. Objective: ``mean_score - attempt_cost *
(mean_attempts - 1)``. The best policy goes to ``<store>/best/retry.json``, which
``lacquer master`` reads through :func:`tuning.tune_retry.load_retry_policy`.

``lacquer tune adapters [--manifest PAIRS] [--genre G ...]`` searches the style adapters'
learning rate, steps and loss weights per genre; the best adapter and its record go to
``<store>/best/adapters/``. Without ``--manifest`` a small synthetic pair corpus is written to
``<store>/tune/corpus/``.

Both write every trial to ``<store>/trials/kind=<kind>/`` (Parquet) and keep Tune's
experiment in ``<store>/tune/<name>/``: running the same command again resumes it
(``Tuner.restore``); ``--fresh`` refuses to resume. ``--address`` joins a running Ray cluster
(default: ``$RAY_ADDRESS`` if set, else a local one).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def _common(p: argparse.ArgumentParser, default_name: str) -> None:
    p.add_argument("--store", default=None, help="feedback store (default: ./feedback)")
    p.add_argument("--name", default=default_name, help=f"experiment name (default {default_name})")
    p.add_argument("--samples", type=int, default=8, help="trials (default 8)")
    p.add_argument("--gpus-per-trial", type=float, default=1.0, help="GPUs per trial if any")
    p.add_argument("--seed", type=int, default=0, help="seed of the random search")
    p.add_argument("--fresh", action="store_true", help="do not resume an existing experiment")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tune", help="Ray Tune searches", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="search", metavar="SEARCH", required=True)
    r = sub.add_parser("retry", help="search the auto-retry policy")
    r.add_argument("inputs", nargs="*", metavar="INPUT", help="pair manifest or audio files")
    _common(r, "retry")
    r.add_argument("--songs", type=int, default=8, help="synthetic songs without INPUT")
    r.add_argument("--seconds", type=float, default=2.0, help="song crop length, s")
    r.add_argument("--genre", default=None, help="genre of INPUT audio files")
    r.add_argument("--batches", type=int, default=4, help="iterations (song batches) per trial")
    r.add_argument("--batch-size", type=int, default=2, help="songs per iteration")
    r.add_argument("--attempt-cost", type=float, default=2.0, help="points per extra attempt")
    r.add_argument("--attempts", type=int, nargs="+", default=[1, 2, 3, 4],
                   help="max_attempts choices")  # fmt: skip
    a = sub.add_parser("adapters", help="search style-adapter hyperparameters per genre")
    a.add_argument("--manifest", default=None, help="pair manifest (default: synthetic)")
    _common(a, "adapters")
    a.add_argument("--genre", nargs="+", default=[], help="genres (default: all)")
    a.add_argument("--iterations", type=int, default=4, help="iterations per trial")
    a.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8], help="steps/iteration")
    a.add_argument("--config", default="test-tiny", help="training config (crops, batch)")
    return p


def _connect(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    from tuning.search import SearchError

    address = address or os.environ.get("RAY_ADDRESS")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SearchError(f"cannot start or join Ray at {address or 'local'}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from lacquer.commands.feedback import default_store

    store = str(Path(args.store or default_store()).resolve())
    if args.search == "retry":
        from lacquer.commands.master import expand_inputs
        from mastering.errors import InvalidParameterError
        from tuning.tune_retry import RetrySearch, corpus_from_inputs

        manifest = len(args.inputs) == 1 and Path(args.inputs[0]).suffix in (".parquet", ".csv")
        inputs = args.inputs if manifest else expand_inputs(args.inputs)
        if args.inputs and not inputs:
            raise InvalidParameterError(f"no audio files in {', '.join(args.inputs)}")
        corpus = corpus_from_inputs(inputs, args.seconds, args.songs, args.seed, args.genre)
        _connect(args.address)
        result: Any = RetrySearch(
            store=store, name=args.name, corpus=corpus, num_samples=args.samples,
            batches=args.batches, batch_size=args.batch_size, attempt_cost=args.attempt_cost,
            attempts=tuple(args.attempts), gpus_per_trial=args.gpus_per_trial, seed=args.seed,
            resume=not args.fresh,
        ).run()  # fmt: skip
        if args.json:
            print(json.dumps(result, default=str))
        else:
            c, m = result["config"], result["metrics"]
            print(
                f"best retry policy ({result['trials']} trials"
                f"{', resumed' if result['restored'] else ''}): threshold "
                f"{c['threshold']:.1f}, max_attempts {c['max_attempts']}, scales dynamics "
                f"{c['scale_dynamics']:.2f} tone {c['scale_tone']:.2f} stereo "
                f"{c['scale_stereo']:.2f} | objective {m['objective']:.2f} = score "
                f"{m['mean_score']:.2f} - {result['attempt_cost']:g} x "
                f"({m['mean_attempts']:.2f} - 1) | saved {result['path']}"
            )
        return 0
    from tuning.tune_adapters import AdapterSearch

    manifest = args.manifest
    if manifest is not None and not Path(manifest).is_file():
        from mastering.errors import InvalidParameterError

        raise InvalidParameterError(f"{manifest}: no such pair manifest")
    if manifest is None:
        from mastering.training.pool import synthetic_manifest

        folder = Path(store) / "tune" / "corpus"
        manifest = folder / "pairs.parquet"
        if not manifest.exists():
            manifest = synthetic_manifest(folder, n_songs=6, seconds=3.0, seed=args.seed,
                                          genres=("pop", "jazz"),
                                          splits=("train",) * 4 + ("val",) * 2)  # fmt: skip
    _connect(args.address)
    results = AdapterSearch(
        store=store, manifest=str(manifest), genres=list(args.genre), name=args.name,
        num_samples=args.samples, iterations=args.iterations, steps=tuple(args.steps),
        base=args.config, gpus_per_trial=args.gpus_per_trial, seed=args.seed,
        resume=not args.fresh,
    ).run()  # fmt: skip
    for r in results:
        if args.json:
            print(json.dumps(r, default=str))
            continue
        c, m = r["config"], r["metrics"]
        print(
            f"{r['genre']}: best of {r['trials']} trials: lr {c['lr']:.2g}, "
            f"{r['total_steps']} steps, weights dyn {c['w_dynamic']:.2f} img {c['w_image']:.2f} "
            f"loud {c['w_loudness']:.2f} harm {c['w_harmonic']:.2f} | val loss "
            f"{m['val_loss_start']:.4f} -> {m['val_loss']:.4f}"
            f"{'' if r['improves'] else ' (no gain, adapter not kept)'} | saved {r['path']}"
        )
    return 0
