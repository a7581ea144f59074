"""``lacquer demo [-o demo]``: make a few raw demo mixes and master them on the render farm.

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
    p.add_argument("--address", help="Ray cluster to join (default: an embedded local Ray)")
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
    """Write the raw demo mixes and a manifest of their genres, then master them with the
    render farm (``lacquer render``) on an embedded local Ray, or on ``--address``."""
    import csv

    from lacquer.cli import main as lacquer_main
    from mastering.io import write_audio

    out = Path(args.out)
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    manifest = raw / "demo.csv"
    with open(manifest, "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["input_path", "genre"])
        for seed, (name, genre, seconds, gain, tilt, width) in enumerate(DEMO_SONGS):
            write_audio(
                raw / f"{name}.wav",
                make_demo_mix(seconds, gain, tilt, width, seed),
                format="wav24",
            )
            rows.writerow([f"{name}.wav", genre])
    print(f"wrote {len(DEMO_SONGS)} raw demo mixes and {manifest.name} to {raw}")
    argv = ["render", str(manifest), "-o", str(out / "mastered")]
    if args.address:
        argv += ["--address", args.address]
    return lacquer_main(argv)
