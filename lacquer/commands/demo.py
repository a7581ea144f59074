"""``lacquer demo [-o demo]``: make a few raw demo mixes and master them, end to end.

The demo songs are synthesized (``mastering.testsignals.music_like``) and then deliberately
"mixed like raw generator output": uneven loudness (about ±6 LU), tilted tonal balance,
narrow or over-wide stereo. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEMO_SONGS = (
    # name, genre, seconds, gain dB, tilt dB/oct, width (side gain)
    ("dull_narrow_pop", "pop", 20.0, -6.0, -1.5, 0.3),
    ("bright_wide_rock", "rock", 20.0, 0.0, 1.0, 1.8),
    ("quiet_ambient", "ambient", 20.0, -12.0, -0.5, 0.8),
)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="make demo mixes and master them (no input needed)")
    p.add_argument("-o", "--out", default="demo", help="folder for demo mixes and masters")
    return p


def make_demo_mix(seconds: float, gain_db: float, tilt_db_oct: float, width: float, seed: int):
    """A raw-sounding stereo mix ``[2, samples]`` at 48 kHz."""
    import torch

    from mastering.testsignals import music_like

    x = music_like(seconds, seed=seed).float()
    spec = torch.fft.rfft(x)
    f = torch.fft.rfftfreq(x.shape[-1], 1 / 48_000).clamp(min=20.0)
    spec = spec * 10 ** (tilt_db_oct * torch.log2(f / 1000.0) / 20.0)
    x = torch.fft.irfft(spec, x.shape[-1])
    mid, side = 0.5 * (x[0] + x[1]), 0.5 * (x[0] - x[1]) * width
    x = torch.stack([mid + side, mid - side])
    return x / x.abs().max() * 10 ** ((gain_db - 1.0) / 20.0)


def run(args: argparse.Namespace) -> int:
    from lacquer.cli import main as lacquer_main
    from mastering.io import write_audio

    raw = Path(args.out) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for seed, (name, _genre, seconds, gain, tilt, width) in enumerate(DEMO_SONGS):
        write_audio(
            raw / f"{name}.wav", make_demo_mix(seconds, gain, tilt, width, seed), format="wav24"
        )
    print(f"wrote {len(DEMO_SONGS)} raw demo mixes to {raw}")
    return lacquer_main(
        [
            "master",
            str(raw),
            "-o",
            str(Path(args.out) / "mastered"),
            "--report",
            str(Path(args.out) / "report.json"),
        ]
    )
