"""Reference matching: Lacquer vs matchering 2.0 on held-out songs and held-out references.

Pairs: every held-out (``val``/``test`` split) raw mix of the offline corpus
(:mod:`mastering.data.corpus`, default ``/work/corpus``) is mastered toward the reference
master (pedalboard chain, :mod:`mastering.data.reference`) of *another* held-out song, so
neither the song nor the reference was seen in training and the references come from a
chain Lacquer does not contain. Without a corpus, synthetic songs
(:func:`mastering.testsignals.music_like`) and externally shaped references are used.

Methods: the raw mix (baseline), Lacquer with the reference encoder only, Lacquer with
``--match-steps`` refinement, and matchering 2.0 (its own 44.1 kHz processing, default
config, limiter on). Every output is loudness-matched to -14 LUFS before its features are
compared with the reference's (:func:`mastering.reference.distance_terms`: spectrum / side /
width / correlation / dynamics, dB), so loudness itself is not part of the score.
Lacquer's own loudness target and true-peak ceiling are checked on its unnormalized output.

Run: ``.venv/bin/python benchmarks/reference_match.py [--corpus DIR] [--seconds 20]
[--match-steps 3] [--pairs 4]``; prints one table (mean over pairs) and one row per pair.
Also prints section detection against the corpus' composed section plan (boundaries found
within one beat).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from mastering.chain import Chain
from mastering.conditioning import Conditioning
from mastering.io import read_audio
from mastering.loudness import measure
from mastering.matching import master_guided
from mastering.reference import (
    distance_terms,
    measure_features,
    normalize_loudness,
    reference_features,
)
from mastering.sections import detect_sections

SR = 48_000
TERMS = ("spectrum", "side", "width", "correlation", "dynamics")


def held_out_pairs(corpus: Path, n: int, seconds: float):
    """(name, raw [2, n], reference [2, m]) pairs: song i toward song i+1's master."""
    import pandas as pd

    rows = pd.read_parquet(corpus / "songs.parquet")
    rows = rows[rows["split"] != "train"].reset_index(drop=True)
    out = []
    for i in range(min(n, len(rows))):
        song, ref = rows.iloc[i], rows.iloc[(i + 1) % len(rows)]
        raw, _ = read_audio(corpus / song["raw_path"])
        master, _ = read_audio(corpus / "mastered" / Path(ref["raw_path"]).name)
        out.append(
            (
                f"{song['song_id']}({song['genre']})<-{ref['song_id']}({ref['genre']})",
                raw[:, : int(seconds * SR)],
                master[:, : int(seconds * SR)],
            )
        )
    return out


def synthetic_pairs(n: int, seconds: float):
    from scipy import signal as sps

    from mastering.testsignals import music_like

    out = []
    for i in range(n):
        raw = music_like(seconds, seed=500 + i)
        ref = music_like(seconds, seed=600 + i).double().numpy()
        b, a = sps.butter(1, 3000 * (1 + i), btype="highpass", fs=SR)
        ref = ref + (0.6 - 0.3 * i) * sps.lfilter(b, a, ref, axis=-1)
        m, s = 0.5 * (ref[0] + ref[1]), 0.5 * (ref[0] - ref[1]) * (0.5 + 0.5 * i)
        ref = np.tanh(2.0 * np.stack([m + s, m - s]))
        out.append((f"synthetic{i}", raw, torch.from_numpy(ref).float()))
    return out


def run_matchering(raw: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    import matchering as mg

    mg.log(info_handler=None, warning_handler=None, debug_handler=None)
    with tempfile.TemporaryDirectory() as tmp:
        t, r, o = (Path(tmp) / n for n in ("target.wav", "reference.wav", "out.wav"))
        for path, x in ((t, raw), (r, ref)):
            sf.write(path, soxr.resample(x.T.double().numpy(), SR, 44_100), 44_100, "FLOAT")
        mg.process(target=str(t), reference=str(r), results=[mg.pcm24(str(o))])
        y, _ = read_audio(o)
    return y


def score(y: torch.Tensor, target: dict) -> dict[str, float]:
    with torch.no_grad():
        f = measure_features(normalize_loudness(y.unsqueeze(0)))
        terms = {k: float(v[0]) for k, v in distance_terms(f, target).items()}
    terms["total"] = sum(terms.values())
    return terms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=Path("/work/corpus"))
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20.0, help="crop songs to this long")
    p.add_argument("--match-steps", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args()
    torch.manual_seed(0)
    have_corpus = (args.corpus / "songs.parquet").exists()
    pairs = (
        held_out_pairs(args.corpus, args.pairs, args.seconds)
        if have_corpus
        else synthetic_pairs(args.pairs, args.seconds)
    )
    chain = Chain.pretrained()
    rows = []
    for name, raw, ref in pairs:
        feats = reference_features(ref, name=name)
        target = feats.batch()
        x = raw.unsqueeze(0)
        outs, secs = {"raw mix": raw}, {}
        for label, steps in (("lacquer (encoder)", 0), ("lacquer (+match)", args.match_steps)):
            t0 = time.perf_counter()
            out = master_guided(chain, x, Conditioning(), reference=feats, match_steps=steps)
            secs[label] = time.perf_counter() - t0
            outs[label] = out.audio[0]
        t0 = time.perf_counter()
        outs["matchering 2.0"] = run_matchering(raw, ref)
        secs["matchering 2.0"] = time.perf_counter() - t0
        for label, y in outs.items():
            m = measure(y)
            rows.append(
                {
                    "pair": name,
                    "method": label,
                    **score(y, target),
                    "lufs": m.integrated_lufs,
                    "true_peak": m.true_peak_dbtp,
                    "seconds": secs.get(label, 0.0),
                }
            )
        print(f"done {name}", flush=True)

    methods = list(dict.fromkeys(r["method"] for r in rows))
    src = f"corpus {args.corpus}" if have_corpus else "synthetic"
    print(f"\nReference matching, {len(pairs)} held-out pairs ({src}), first {args.seconds:.0f} s,")
    print("features compared after loudness-matching to -14 LUFS (distance to reference, dB;")
    print("correlation term = 10 x |diff|). Lower is closer.\n")
    head = f"{'method':<20}" + "".join(f"{t:>12}" for t in (*TERMS, "total"))
    head += f"{'LUFS':>9}{'max TP':>9}{'s/song':>8}"
    print(head)
    print("-" * len(head))
    for mth in methods:
        rs = [r for r in rows if r["method"] == mth]
        line = f"{mth:<20}" + "".join(
            f"{np.mean([r[t] for r in rs]):>12.2f}" for t in (*TERMS, "total")
        )
        line += f"{np.mean([r['lufs'] for r in rs]):>9.2f}{max(r['true_peak'] for r in rs):>9.2f}"
        line += f"{np.mean([r['seconds'] for r in rs]):>8.1f}"
        print(line)
    print("\nper pair (total distance):")
    for name, *_ in pairs:
        print(
            f"  {name:<44}"
            + "".join(
                f"{mth}: {r['total']:.2f}  "
                for mth in methods
                for r in rows
                if r["pair"] == name and r["method"] == mth
            )
        )
    if have_corpus:
        sections_table(args.corpus)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def sections_table(corpus: Path) -> None:
    """Detected boundaries vs the composed section plan of every corpus song."""
    import pandas as pd

    rows = pd.read_parquet(corpus / "songs.parquet")
    hits = total = found = 0
    print("\nSection boundaries vs the corpus' composed plan (hit = within one beat):")
    for _, row in rows.iterrows():
        plan = json.loads(row["sections"]) if isinstance(row["sections"], str) else row["sections"]
        true = [float(s[1]) for s in plan[1:]]
        raw, _ = read_audio(corpus / row["raw_path"])
        a = detect_sections(raw)  # tempo estimated, as when mastering
        beat = 60.0 / float(row["tempo_bpm"])
        h = sum(any(abs(b - t) <= beat for b in a.boundaries_s) for t in true)
        hits, total, found = hits + h, total + len(true), found + len(a.boundaries_s)
    print(
        f"  {len(rows)} songs: {hits}/{total} true boundaries found within a beat "
        f"(recall {hits / max(total, 1):.2f}); {found} boundaries reported "
        f"(precision {hits / max(found, 1):.2f})"
    )


if __name__ == "__main__":
    main()
