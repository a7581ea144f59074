"""``lacquer master INPUT... -o OUT``: master files on this machine (no Ray).

Inputs are files, folders (searched for audio files) and glob patterns. Each output keeps
the input's stem. One line per file with before -> after measurements; ``--report`` writes
every file's full JSON report, ``--params-out`` the parameters used, ``--plot`` a PNG.
The exit code is 1 when any file failed; the others still complete.

Each master is scored (:mod:`mastering.evaluation`) and re-mastered with altered parameters
while below the threshold, up to ``--retry-attempts`` attempts in all, keeping the best
(:mod:`mastering.retry`); ``--no-retry`` turns scoring and retries off. ``--feedback DIR`` appends
every attempt to the feedback tables (:mod:`tuning.store`).

What the quality loop found is used: the retry policy ``lacquer tune retry`` saved in the
feedback store, and the genre adapters of the version ``lacquer improve`` promoted
(``STORE/models``, or ``--models DIR``; ``--models none``: the base chain): a song is mastered
with the promoted adapter of its genre, the base chain when the version has none for it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from mastering.errors import InvalidParameterError, LacquerError

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc", ".mp3"}


def add_conditioning_arguments(p: argparse.ArgumentParser) -> None:
    """The flags shared by ``master``, ``render`` and friends."""
    p.add_argument("--genre", help="genre (see GET /v1/presets or the error listing them)")
    p.add_argument("--tempo", type=float, help="tempo in BPM (default: estimated)")
    p.add_argument("--energy", type=float, help="energy 0..1 (default: estimated)")
    p.add_argument("--vocal-ratio", type=float, help="vocal/instrument ratio 0..1")
    p.add_argument("--style", help='style phrase, e.g. "aggressive rock"')
    p.add_argument("--emotion", help="grief, rage, hope, calm or joy")
    p.add_argument("--rule-break", nargs="+", default=[], metavar="NAME", help="rule-breaks")
    p.add_argument("--target-lufs", type=float, default=-14.0, help="loudness target, LUFS")
    p.add_argument("--ceiling-dbtp", type=float, default=-1.0, help="true-peak ceiling, dBTP")
    p.add_argument("--format", default="wav24", help="wav16|wav24|wav32f|flac16|flac24")
    p.add_argument("--out-rate", type=int, help="output sample rate, Hz (default: the source's)")
    p.add_argument("--bypass", nargs="+", default=[], metavar="STAGE", help="stages to skip")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="STAGE.PARAM=VALUE",
        help="override a parameter, e.g. --set limiter.drive_db=3 (repeatable)",
    )


def options_from_args(args: argparse.Namespace):
    from mastering.conditioning import Conditioning
    from mastering.render import MasterOptions

    return MasterOptions(
        conditioning=Conditioning(
            genre=args.genre,
            tempo_bpm=args.tempo,
            energy=args.energy,
            vocal_ratio=args.vocal_ratio,
            style=args.style,
            emotion=args.emotion,
            rule_breaks=tuple(args.rule_break),
        ),
        target_lufs=args.target_lufs,
        ceiling_dbtp=args.ceiling_dbtp,
        format=args.format,
        out_rate=args.out_rate,
        overrides=parse_overrides(args.set),
        bypass=tuple(args.bypass),
        device=getattr(args, "device", "cpu"),
        reference=getattr(args, "reference", None),
        match_steps=getattr(args, "match_steps", 0),
        sections=getattr(args, "sections", "off") == "on",
    ).validate()


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["limiter.drive_db=3", "eq.band_gain_db=1,0,0,..."]`` -> ``{stage: {param: value}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        stage, dot, param = key.partition(".")
        if not sep or not dot:
            raise InvalidParameterError(f"--set takes STAGE.PARAM=VALUE, got {item!r}")
        try:
            nums = [float(v) for v in value.split(",")]
        except ValueError:
            raise InvalidParameterError(f"--set {key}: {value!r} is not a number") from None
        out.setdefault(stage, {})[param] = nums[0] if len(nums) == 1 else nums
    return out


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (recursively, audio extensions only) and globs -> sorted unique paths.
    A pattern or path that matches nothing is kept, so it fails with a clear error."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out += sorted(
                p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
            )
        elif any(ch in item for ch in "*?[") and not path.exists():
            out += sorted(Path(p) for p in glob.glob(item, recursive=True))
        else:
            out.append(path)
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("master", help="master audio files on this machine")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="files, folders or globs")
    p.add_argument("-o", "--out", default="mastered", help="output folder (default: mastered/)")
    add_conditioning_arguments(p)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--params-out", help="write the parameters used (JSON) here")
    p.add_argument("--report", help="write the full per-file report (JSON) here")
    p.add_argument("--plot", help="write a PNG of before/after spectra and loudness here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_spatial_arguments(p)
    add_guidance_arguments(p)
    add_retry_arguments(p)
    return p


def add_spatial_arguments(p: argparse.ArgumentParser) -> None:
    """Stem-aware mastering (:mod:`mastering.stems`) and headphone renders
    (:mod:`mastering.binaural`)."""
    p.add_argument(
        "--stems",
        nargs="+",
        metavar="FILE",
        help="master time-aligned stems together (vocals/drums/bass/other by name); writes "
        "each processed stem and their summed master stems_mix",
    )
    p.add_argument(
        "--binaural",
        action="store_true",
        help="also write <name>.binaural: the master rendered for headphones (KEMAR HRIRs)",
    )


def run_stems(args: argparse.Namespace, options, chain, out_dir: Path) -> int:
    """``--stems``: one stem-aware master; one line, or one error line naming the file."""
    from mastering.stems import master_stem_files

    try:
        report = master_stem_files(chain, args.stems, out_dir, options)
        if args.binaural:
            report["binaural"] = binaural_output(report["output"], out_dir, options)
    except LacquerError as exc:
        print(f"stems: FAILED: {exc}", file=sys.stderr)
        return 1
    if args.report:
        write_json_atomic(args.report, {"stems": report})
    report["input"] = "stems_mix"
    print(
        describe_line(report)
        + f" | remix error {report['remix_error_db']:.1f} dB | {len(report['outputs'])} stems"
    )
    print(f"{len(report['outputs'])} stems mastered -> {out_dir}", file=sys.stderr)
    return 0


def binaural_output(master: str, out_dir: Path, options) -> dict[str, Any]:
    """Render a written master for headphones (``--binaural``); its report."""
    from mastering.binaural import binaural_file

    return binaural_file(
        master,
        out_dir,
        target_lufs=options.target_lufs,
        ceiling_dbtp=options.ceiling_dbtp,
        format=options.format,
        out_rate=options.out_rate,
    )


def add_guidance_arguments(p: argparse.ArgumentParser) -> None:
    """Reference matching and section-aware dynamics (:mod:`mastering.matching`)."""
    p.add_argument("--reference", metavar="PATH", help="master like this reference track")
    p.add_argument(
        "--match-steps", type=int, default=0, metavar="N", help="refine the match: N steps"
    )
    p.add_argument(
        "--sections",
        choices=("on", "off"),
        default="off",
        help="per-section conditioning (on) or one setting for the whole song (off, default)",
    )


def add_retry_arguments(p: argparse.ArgumentParser) -> None:
    """Auto-retry flags (:mod:`mastering.retry`): on by default with a small cap."""
    p.add_argument(
        "--no-retry",
        action="store_true",
        help="no auto-retry: one attempt per song (lacquer master then skips scoring too)",
    )
    p.add_argument(
        "--retry-attempts",
        type=int,
        default=None,
        help="attempts per song, the first included (default: the tuned policy's, else 3)",
    )
    p.add_argument(
        "--retry-threshold",
        type=float,
        default=None,
        help="retry below this score, 0-100 (default: the tuned policy's, else the pass score)",
    )
    p.add_argument("--feedback", metavar="DIR", help="record every attempt in this feedback store")
    p.add_argument(
        "--models",
        metavar="DIR",
        help="lacquer improve's versions folder whose promoted genre adapters are used "
        "(default: STORE/models of the feedback store; 'none': the base chain)",
    )


def feedback_store(args: argparse.Namespace) -> str:
    """The feedback store: ``--feedback``, else ``$LACQUER_FEEDBACK_DIR``, else ./feedback."""
    from tuning.tune_retry import default_store

    return args.feedback or default_store()


def retry_policy(args: argparse.Namespace):
    """The :class:`mastering.retry.RetryPolicy` to use, ``None`` with ``--no-retry``: the one
    ``lacquer tune retry`` saved in the feedback store, else the default (3 attempts), capped
    by ``--retry-attempts``, its threshold replaced by ``--retry-threshold``."""
    if args.no_retry:
        return None
    from tuning.tune_retry import load_retry_policy

    policy = load_retry_policy(feedback_store(args), max_attempts=args.retry_attempts)
    if args.retry_threshold is not None:
        policy.threshold = args.retry_threshold
    return policy.validate()


def promoted_adapter_dir(args: argparse.Namespace) -> Path | None:
    """The adapter folder of the version ``lacquer improve`` promoted (``--models``, else
    ``STORE/models``), ``None`` when none is promoted or ``--models none``."""
    if args.models == "none":
        return None
    from tuning.improve import current_adapter_dir

    return current_adapter_dir(args.models or Path(feedback_store(args)) / "models")


def promoted_adapters(args: argparse.Namespace):
    """The genre adapters of the version ``lacquer improve`` promoted
    (:class:`mastering.adapter_folder.GenreAdapters`), ``None`` when none is promoted or
    ``--models none``."""
    folder = promoted_adapter_dir(args)
    if folder is None:
        return None
    from mastering.adapter_folder import GenreAdapters

    return GenreAdapters(folder)


def retry_runner(chain, args: argparse.Namespace):
    """The chain wrapped in :class:`mastering.retry.RetryingChain` unless ``--no-retry``."""
    policy = retry_policy(args)
    if policy is None:
        return chain
    from mastering.retry import RetryingChain

    return RetryingChain(chain, policy)


def record_attempts(runner, report: dict[str, Any], args: argparse.Namespace) -> None:
    """Add the retry attempts to ``report`` and, with ``--feedback``, to the store."""
    attempts = getattr(runner, "last_attempts", None)
    if not attempts:
        return  # --no-retry, or a guided master (reference/sections), which is not retried
    runner.last_attempts = []  # never reported again for the next file
    kept = next(a for a in attempts[0] if a.best)
    report["evaluation"] = {"score": kept.score, "attempt": kept.number, "of": len(attempts[0])}
    report["attempts"] = [a.brief() for a in attempts[0]]
    if args.feedback:
        from tuning.store import FeedbackStore, attempt_rows, chain_version, hash_file

        rows = attempt_rows(
            song_id=Path(report["input"]).stem,
            input_hash=hash_file(report["input"]),
            conditioning=report["conditioning"],
            attempts=attempts[0],
            metrics_before=report["before"],
            metrics_after=report["after"],
            chain_version=chain_version(),
            adapter_version=report.get("adapter", {}).get("version", ""),
        )
        FeedbackStore(args.feedback).append(rows)


def _fmt(v: float | None, spec: str = "6.1f") -> str:
    return " " * (len(format(0.0, spec)) - 3) + "n/a" if v is None else format(v, spec)


def describe_line(report: dict[str, Any]) -> str:
    """``name: I -20.1 -> -14.0 LUFS | LRA ... | TP ... | PLR ... | tilt ... | corr ...``."""
    b, a = report["before"], report["after"]

    def pair(key: str, unit: str, spec: str = "6.1f") -> str:
        return f"{_fmt(b.get(key), spec)} -> {_fmt(a.get(key), spec)} {unit}"

    return (
        f"{Path(report['input']).name}: I {pair('integrated_lufs', 'LUFS')} | "
        f"LRA {pair('lra_lu', 'LU', '4.1f')} | TP {pair('true_peak_dbtp', 'dBTP')} | "
        f"PLR {pair('plr_db', 'dB', '4.1f')} | "
        f"tilt {pair('spectral_tilt_db_oct', 'dB/oct', '5.2f')} | "
        f"corr {pair('correlation', '', '5.2f')}"
    )


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to ``path`` via a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def promoted_chain(chain, options, args: argparse.Namespace) -> tuple[Any, dict[str, str]]:
    """``chain`` with the promoted adapter of the songs' genre (:func:`promoted_adapters`) and
    ``{"name", "version"}`` of it; ``chain`` itself and ``{}`` when there is none."""
    adapters = promoted_adapters(args)
    if adapters is None:
        return chain, {}
    adapted = adapters.chain_for(chain, options.conditioning.resolved_genre())
    name = getattr(adapted, "adapter_name", None)
    return adapted, ({"name": name, "version": adapters.version} if name else {})


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mastering.chain import Chain
    from mastering.render import master_file

    options = options_from_args(args)
    chain, adapter = promoted_chain(Chain.pretrained(options.chain_config()), options, args)
    chain = chain.to(options.device)
    if args.stems:
        if args.inputs:
            raise InvalidParameterError("give either INPUT files or --stems, not both")
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        return run_stems(args, options, chain, out_dir)
    files = expand_inputs(args.inputs)
    if not files:
        raise InvalidParameterError("no input files")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    runner = retry_runner(chain, args)
    reports, failures = [], []
    bar = tqdm(files, unit="file", disable=args.no_progress or not sys.stderr.isatty())
    for path in bar:
        bar.set_description(path.name)
        try:
            report = master_file(runner, path, out_dir, options)
            if adapter:
                report["adapter"] = adapter
            record_attempts(runner, report, args)
            if args.binaural:
                report["binaural"] = binaural_output(report["output"], out_dir, options)
        except LacquerError as exc:
            failures.append({"input": str(path), "error": str(exc)})
            tqdm.write(f"{path.name}: FAILED: {exc}", file=sys.stderr)
            continue
        reports.append(report)
        score = report.get("evaluation")
        tqdm.write(
            describe_line(report)
            + ("" if not score else f" | score {score['score']:.1f} ({score['of']} att.)")
        )
    if args.report:
        write_json_atomic(args.report, {"files": reports, "failures": failures})
    if args.params_out:
        write_json_atomic(args.params_out, {r["input"]: r["parameters"] for r in reports})
    if args.plot and reports:
        from lacquer.plots import plot_before_after

        plot_before_after(
            [Path(r["input"]) for r in reports], [Path(r["output"]) for r in reports], args.plot
        )
    print(f"{len(reports)} mastered, {len(failures)} failed -> {out_dir}", file=sys.stderr)
    return 1 if failures else 0
