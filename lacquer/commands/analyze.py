"""``lacquer analyze FILE... [--json]``: loudness, loudness range and peaks of audio files.

Each file is read with :func:`mastering.io.read_audio`, i.e. resampled to 48 kHz (soxr VHQ), the
rate the mastering chain works at, and measured there with :func:`mastering.loudness.measure`
(BS.1770-4 / EBU R 128: integrated loudness in LUFS, loudness range in LU, true peak in dBTP
with 4x oversampling, sample peak in dBFS, momentary/short-term maxima in LUFS, PLR in dB). The
source's own rate and channel count are reported beside the values. Mono files are measured
as one channel (as BS.1770 defines), not as the dual-mono stereo pair ``read_audio`` returns;
files with more than two channels are folded to stereo first (``read_audio(downmix=True)``),
which a note says. Beside BS.1770, the perceived loudness of ISO 532-1 (Zwicker, time-varying;
:mod:`mastering.psychoacoustic`): ``N5`` in sone (the loudness exceeded 5 % of the time), its
loudness level in phon, and the maximum ``N(t)``, under the calibration that a digital RMS of
1.0 plays at ``--full-scale-spl`` dB SPL (default 100); computed with ``--perceived`` only
(about 0.5 s of CPU per second of audio), ``null`` otherwise.

Output: a table (one line per file) or, with ``--json``, one JSON object per line per file with
the keys of :meth:`mastering.loudness.LoudnessReport.to_dict` (``null`` where undefined) plus
``file``, ``source_sample_rate``, ``source_channels`` and ``notes``. A file that cannot be
read or measured prints one line naming it on stderr and the others go on; the exit code is 1
if any file failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

#: Errors from reading/measuring one file that are reported as a one-line failure.
_FILE_ERRORS: tuple[type[BaseException], ...] = (OSError, RuntimeError, ValueError, EOFError)

_COLUMNS = (
    ("integrated_lufs", "I LUFS", 8),
    ("lra_lu", "LRA LU", 7),
    ("true_peak_dbtp", "TP dBTP", 8),
    ("sample_peak_dbfs", "SP dBFS", 8),
    ("momentary_max_lufs", "M max", 7),
    ("short_term_max_lufs", "S max", 7),
    ("plr_db", "PLR dB", 7),
    ("loudness_sone", "N5 sone", 8),
    ("loudness_phon", "LN phon", 8),
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "analyze",
        help="measure loudness (LUFS), loudness range (LU) and peaks (dBTP) of audio files",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files")
    p.add_argument("--json", action="store_true", help="one JSON object per line per file")
    p.add_argument(
        "--true-peak-oversample",
        type=int,
        default=4,
        choices=(4, 8, 16),
        help="true-peak oversampling factor (default 4, the BS.1770 minimum at 48 kHz)",
    )
    p.add_argument(
        "--perceived",
        action="store_true",
        help="also measure ISO 532-1 perceived loudness (sone/phon; slow: ~0.5 s per s of audio)",
    )
    p.add_argument(
        "--full-scale-spl",
        type=float,
        default=100.0,
        metavar="DB",
        help="dB SPL a digital RMS of 1.0 plays at, for the sone/phon columns (default 100)",
    )
    return p


def analyze_file(
    path: str,
    *,
    true_peak_oversample: int = 4,
    full_scale_spl: float = 100.0,
    perceived: bool = False,
) -> dict[str, Any]:
    """Measurements of one file as a JSON-ready dict (see the module docstring).

    Raises:
        LacquerError: the file cannot be read or holds NaN/Inf samples.
    """
    from mastering.io import probe_audio, read_audio
    from mastering.loudness import measure
    from mastering.psychoacoustic import loudness_time_varying

    info = probe_audio(path)
    notes: list[str] = []
    audio, info = read_audio(path, downmix=info.channels > 2)
    if info.channels == 1:
        audio = audio[:1]
    elif info.channels > 2:
        notes.append(f"{info.channels} channels folded to stereo before measuring")
    if info.sample_rate != 48_000:
        notes.append(f"resampled from {info.sample_rate} Hz to 48000 Hz before measuring")
    report = measure(audio, 48_000, true_peak_oversample=true_peak_oversample)
    zwicker = loudness_time_varying(audio, full_scale_db_spl=full_scale_spl) if perceived else None
    return {
        "file": str(path),
        **report.to_dict(),
        "loudness_sone": round(float(zwicker.sone), 3) if zwicker else None,
        "loudness_phon": round(float(zwicker.phon), 2) if zwicker else None,
        "loudness_max_sone": round(float(zwicker.sone_max), 3) if zwicker else None,
        "full_scale_spl": full_scale_spl,
        "source_sample_rate": info.sample_rate,
        "source_channels": info.channels,
        "notes": [*notes, *report.notes],
    }


def _cell(value: float | None, width: int) -> str:
    return f"{'-' if value is None else f'{value:.1f}':>{width}}"


def format_row(row: dict[str, Any]) -> str:
    """One table line: the values (``-`` where undefined), the source format and the file."""
    cells = " ".join(_cell(row[key], width) for key, _, width in _COLUMNS)
    source = f"{row['source_sample_rate'] / 1000:g}k/{row['source_channels']}ch"
    return f"{cells}  {source:>9} {row['duration_s']:8.1f}  {row['file']}"


def format_header() -> str:
    cells = " ".join(f"{title:>{width}}" for _, title, width in _COLUMNS)
    return f"{cells}  {'source':>9} {'dur s':>8}  file"


def run(args: argparse.Namespace) -> int:
    from mastering.errors import LacquerError

    failed = 0
    if not args.json:
        print(format_header(), flush=True)
    for path in args.files:
        try:
            row = analyze_file(
                path,
                true_peak_oversample=args.true_peak_oversample,
                full_scale_spl=args.full_scale_spl,
                perceived=args.perceived,
            )
        except LacquerError as exc:
            failed += 1
            message = str(exc) if exc.path else f"{path}: {exc.problem}"
            print(f"lacquer analyze: error: {message}", file=sys.stderr, flush=True)
            continue
        except _FILE_ERRORS as exc:
            failed += 1
            print(f"lacquer analyze: error: {path}: {exc}", file=sys.stderr, flush=True)
            continue
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(format_row(row), flush=True)
    return 1 if failed else 0
