"""Perceived loudness at equal LUFS: how many sone (ISO 532-1) and how much PLR each chain
setting gives when every master is normalized to the same integrated loudness.

    .venv/bin/python benchmarks/perceived_loudness.py [--seconds 20] [--songs 2] [--target -14]

Each synthetic song (:func:`mastering.testsignals.music_like`) is mastered by the chain at the
target (LUFS, master out normalizes) under several settings: the chain's own choice, the
limiter's drive forced to 0/3/6/9 dB, the compressor or the exciter bypassed, a bright and a
warm EQ balance (style macros), and the binaural headphone render of the default master.
For each: the measured integrated loudness (LUFS; equal by construction), PLR (dB: true peak
minus loudness), the ISO 532-1 time-varying loudness N5 (sone) and its loudness level (phon),
and the change in sone against the default master. Loudness calibration: a digital RMS of 1.0
plays at 100 dB SPL (:data:`mastering.psychoacoustic.FULL_SCALE_DB_SPL`).

Reading the table: at equal LUFS, settings that give more sone are perceived louder; "same
perceived loudness with less limiting" is a row with a higher PLR and no fewer sone.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from mastering.binaural import render_binaural
from mastering.chain import Chain, ChainConfig
from mastering.conditioning import Conditioning
from mastering.loudness import integrated_loudness, true_peak
from mastering.psychoacoustic import loudness_time_varying
from mastering.testsignals import music_like

#: name -> (conditioning changes, overrides, bypass)
SETTINGS: dict[str, tuple[dict[str, Any], dict[str, dict[str, float]], tuple[str, ...]]] = {
    "default": ({}, {}, ()),
    "drive 0 dB": ({}, {"limiter": {"drive_db": 0.0}}, ()),
    "drive 3 dB": ({}, {"limiter": {"drive_db": 3.0}}, ()),
    "drive 6 dB": ({}, {"limiter": {"drive_db": 6.0}}, ()),
    "drive 9 dB": ({}, {"limiter": {"drive_db": 9.0}}, ()),
    "no compressor": ({}, {}, ("compressor",)),
    "no exciter": ({}, {}, ("exciter",)),
    "bright style": ({"style": "bright"}, {}, ()),
    "warm style": ({"style": "warm dark"}, {}, ()),
}


def master(
    x: torch.Tensor, setting: str, target: float, ceiling: float
) -> tuple[torch.Tensor, str]:
    cond_kw, overrides, bypass = SETTINGS[setting]
    chain = Chain.pretrained(ChainConfig(target_lufs=target, ceiling_dbtp=ceiling, bypass=bypass))
    with torch.no_grad():
        out = chain(x, Conditioning(**cond_kw), overrides=overrides)
    status = out.info.get("master_out", [{}])[0].get("status", "-")
    return out.audio, status


def row(name: str, y: torch.Tensor, status: str, ref_sone: float | None) -> dict[str, Any]:
    lufs = float(integrated_loudness(y)[0])
    tp = float(true_peak(y)[0])
    perceived = loudness_time_varying(y)
    sone = float(perceived.sone[0])
    return {
        "setting": name,
        "lufs": lufs,
        "plr": tp - lufs,
        "sone": sone,
        "phon": float(perceived.phon[0]),
        "delta": 0.0 if ref_sone is None else 100.0 * (sone / ref_sone - 1.0),
        "status": status,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--songs", type=int, default=2)
    ap.add_argument("--target", type=float, default=-14.0, help="LUFS")
    ap.add_argument("--ceiling", type=float, default=-1.0, help="dBTP")
    args = ap.parse_args()
    print(
        f"{'song':>4} {'setting':<14} {'LUFS':>7} {'PLR dB':>7} {'N5 sone':>8} {'phon':>6} "
        f"{'d sone %':>8}  master_out"
    )
    for song in range(args.songs):
        x = music_like(args.seconds, seed=100 + song).unsqueeze(0)
        rows = []
        ref: float | None = None
        default_master = None
        for name in SETTINGS:
            y, status = master(x, name, args.target, args.ceiling)
            r = row(name, y, status, ref)
            if name == "default":
                ref, default_master = r["sone"], y
            rows.append(r)
        assert default_master is not None
        y, reports = render_binaural(default_master, target_lufs=args.target)
        rows.append(
            row(
                f"binaural ({reports[0]['hrirs']})",
                y,
                reports[0]["normalization"]["status"],
                ref,
            )
        )
        for r in rows:
            print(
                f"{song:>4} {r['setting']:<14} {r['lufs']:>7.2f} {r['plr']:>7.2f} "
                f"{r['sone']:>8.2f} {r['phon']:>6.1f} {r['delta']:>+8.1f}  {r['status']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
