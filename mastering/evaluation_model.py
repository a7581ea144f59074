"""The learned part of the evaluator: a small MLP over the evaluator's measurements.

``QualityModel`` maps :class:`mastering.evaluation.Measurements` (16 numbers per song,
standardized with the training set's mean and spread) through 16 -> 32 -> 32 -> 1 (GELU) to a
quality logit ``q``; the learned score is ``100 * sigmoid(q)``. It is trained with a pairwise
ranking loss (RankNet: ``softplus(q_worse - q_better)``) on pairs from
:mod:`mastering.degradations`: a good master beats each of its degraded versions, and a milder
degradation beats a stronger one of the same kind.

Good masters: the chain (alternately with its shipped weights and with its analytic priors
only) run on :func:`mastering.testsignals.music_like` songs (6 s, one seed and genre each), or
on the audio files of ``--corpus DIR``. Held-out calibration uses other songs (other seeds) only.

Retrain (seeded; about 4 CPU-minutes) and print the calibration on the held-out songs::

    python -m mastering.evaluation_model train   # writes mastering/weights/evaluator.safetensors
    python -m mastering.evaluation_model report  # calibration of the shipped weights
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from mastering.errors import InvalidParameterError
from mastering.evaluation import Measurements

WEIGHTS_PATH = Path(__file__).parent / "weights" / "evaluator.safetensors"
N_FEATURES = len(Measurements.names())
HIDDEN = 32
#: Measurements are clamped to this many training standard deviations (and non-finite values
#: such as the -inf loudness of silence to the clamp) before the MLP.
CLAMP_SIGMAS = 6.0
GENRES_CYCLE = ("pop", "rock", "edm", "jazz", "ambient", "hiphop", "classical", "lofi")
SEVERITIES = (0.3, 0.6, 1.0)


class QualityModel(nn.Module):
    """``score(measurements) -> [batch]`` in 0-100 (higher is better)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(N_FEATURES))
        self.register_buffer("std", torch.ones(N_FEATURES))
        self.net = nn.Sequential(
            nn.Linear(N_FEATURES, HIDDEN),
            nn.GELU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.GELU(),
            nn.Linear(HIDDEN, 1),
        )

    @classmethod
    def pretrained(cls, path: Path | None = None) -> QualityModel | None:
        """The shipped weights, or ``None`` when the file does not exist."""
        path = Path(path or WEIGHTS_PATH)
        if not path.exists():
            return None
        from safetensors.torch import load_file

        model = cls()
        model.load_state_dict(load_file(str(path)))
        return model.eval()

    def standardize(self, features: Tensor) -> Tensor:
        z = (features - self.mean) / self.std
        return torch.nan_to_num(z, nan=0.0, posinf=CLAMP_SIGMAS, neginf=-CLAMP_SIGMAS).clamp(
            -CLAMP_SIGMAS, CLAMP_SIGMAS
        )

    def logit(self, features: Tensor) -> Tensor:
        """``[batch, N_FEATURES]`` raw measurements -> ``[batch]`` quality logit."""
        return self.net(self.standardize(features)).squeeze(-1)

    @torch.no_grad()
    def score(self, m: Measurements) -> Tensor:
        """Learned score 0-100 ``[batch]``."""
        return 100.0 * torch.sigmoid(self.logit(m.matrix()))


# ------------------------------------------------------------------------------------------
# Data: good masters, their degraded versions, and ranking pairs
# ------------------------------------------------------------------------------------------


@dataclass
class Bank:
    """Measured items of a set of songs: ``features [n, N_FEATURES]``, and per item the song
    index, the degradation name (``""`` for the reference master) and severity."""

    features: Tensor
    song: list[int]
    kind: list[str]
    severity: list[float]

    def pairs(self) -> list[tuple[int, int]]:
        """(better, worse) item indices: reference > every degraded version of the same song;
        milder > stronger of the same song and degradation."""
        out = []
        by_song: dict[int, list[int]] = {}
        for i, s in enumerate(self.song):
            by_song.setdefault(s, []).append(i)
        for items in by_song.values():
            refs = [i for i in items if not self.kind[i]]
            for r in refs:
                out += [(r, i) for i in items if self.kind[i]]
            for i in items:
                for j in items:
                    same = self.kind[i] and self.kind[i] == self.kind[j]
                    if same and self.severity[i] < self.severity[j]:
                        out.append((i, j))
        return out

    def reference_pairs(self) -> list[tuple[int, int]]:
        """Only (reference, degraded) pairs: what the calibration figure counts."""
        return [(a, b) for a, b in self.pairs() if not self.kind[a]]


def good_masters(seeds: list[int], duration_s: float = 6.0, corpus: Path | None = None):
    """``(audio [n, 2, samples], genres)``: masters of music-like songs (``seeds``, genres
    cycling through :data:`GENRES_CYCLE`) or of the files in ``corpus``. Songs alternate
    between the chain with its shipped weights and the chain's analytic priors alone (no
    weights), so the scorer does not learn one chain version's signature as "good"."""
    from mastering.chain import Chain
    from mastering.conditioning import Conditioning
    from mastering.testsignals import music_like

    n = round(duration_s * 48_000)
    if corpus is not None:
        from mastering.io import read_audio

        files = sorted(p for p in Path(corpus).rglob("*") if p.suffix.lower() in {".wav", ".flac"})
        raws = []
        for k in seeds:
            if k >= len(files):
                break
            audio, _ = read_audio(files[k])
            audio = audio[:, :n]
            raws.append(torch.nn.functional.pad(audio, (0, n - audio.shape[-1])))
    else:
        raws = [music_like(duration_s, seed=s, tempo_bpm=90.0 + (s * 7) % 60) for s in seeds]
    genres = [GENRES_CYCLE[s % len(GENRES_CYCLE)] for s in seeds[: len(raws)]]
    chains = (Chain.pretrained(), Chain().eval())
    outs = []
    with torch.no_grad():
        for i, (raw, genre) in enumerate(zip(raws, genres, strict=True)):
            chain = chains[i % len(chains)]
            outs.append(chain(raw.unsqueeze(0), Conditioning(genre=genre)).audio)
    return torch.cat(outs), genres


def build_bank(
    audio: Tensor,
    genres: list[str],
    song_offset: int = 0,
    severities: tuple[float, ...] = SEVERITIES,
) -> Bank:
    """Measure every master and each degradation at each of ``severities`` (0..1)."""
    from mastering.degradations import DEGRADATIONS, degrade
    from mastering.evaluation import measure

    feats, song, kind, sev = [], [], [], []
    variants = [("", 0.0)] + [(k, s) for k in DEGRADATIONS for s in severities]
    for name, severity in variants:
        x = audio if not name else degrade(audio, name, severity)
        feats.append(measure(x, genres).matrix())
        song += [song_offset + i for i in range(audio.shape[0])]
        kind += [name] * audio.shape[0]
        sev += [severity] * audio.shape[0]
    return Bank(torch.cat(feats), song, kind, sev)


# ------------------------------------------------------------------------------------------
# Training and calibration
# ------------------------------------------------------------------------------------------


def pair_accuracy(scores: Tensor, pairs: list[tuple[int, int]]) -> float:
    """Share of ``(better, worse)`` pairs with ``score[better] > score[worse]``."""
    if not pairs:
        raise InvalidParameterError("no pairs to measure")
    a = torch.tensor([p[0] for p in pairs])
    b = torch.tensor([p[1] for p in pairs])
    return float((scores[a] > scores[b]).float().mean())


def train_model(bank: Bank, seed: int = 0, steps: int = 1500, lr: float = 3e-3) -> QualityModel:
    """Fit a :class:`QualityModel` on ``bank``'s pairs (full batch AdamW, seeded)."""
    torch.manual_seed(seed)
    random.seed(seed)
    model = QualityModel()
    finite = torch.nan_to_num(bank.features, nan=0.0, posinf=0.0, neginf=-100.0)
    model.mean.copy_(finite.mean(0))
    model.std.copy_(finite.std(0).clamp(min=1e-3))
    pairs = bank.pairs()
    a = torch.tensor([p[0] for p in pairs])
    b = torch.tensor([p[1] for p in pairs])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    for _ in range(steps):
        q = model.logit(bank.features)
        loss = torch.nn.functional.softplus(q[b] - q[a]).mean()
        # Anchor the scale: references near +3 (score ~95), keeps sigmoid out of saturation.
        ref = torch.tensor([not k for k in bank.kind])
        loss = loss + 0.01 * (q[ref] - 3.0).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def calibration(model: QualityModel | None, bank: Bank, genres: list[str]) -> dict[str, float]:
    """Held-out pair accuracies: learned score, rule score and combined score."""
    from mastering.evaluation import LEARNED_WEIGHT, combine, sub_scores

    fields = Measurements.names()
    m = Measurements(**{n: bank.features[:, i] for i, n in enumerate(fields)})
    song_genres = [genres[s % len(genres)] for s in range(max(bank.song) + 1)]
    per_item = [song_genres[s] for s in bank.song]
    rule = combine(sub_scores(m, genres=per_item))
    pairs = bank.reference_pairs()
    out = {"pairs": float(len(pairs)), "rule": pair_accuracy(rule, pairs)}
    if model is not None:
        learned = model.score(m)
        out["learned"] = pair_accuracy(learned, pairs)
        combined = (1 - LEARNED_WEIGHT) * rule + LEARNED_WEIGHT * learned
        out["combined"] = pair_accuracy(combined, pairs)
        out["all_pairs_learned"] = pair_accuracy(learned, bank.pairs())
    return out


TRAIN_SEEDS = list(range(0, 24))
TEST_SEEDS = list(range(1000, 1012))


def _bank(seeds: list[int], corpus: Path | None, offset: int) -> tuple[Bank, list[str]]:
    audio, genres = good_masters(seeds, corpus=corpus)
    return build_bank(audio, genres), genres


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mastering.evaluation_model")
    p.add_argument("action", choices=("train", "report"))
    p.add_argument("--corpus", type=Path, help="folder of good masters' raw mixes (wav/flac)")
    p.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    test, test_genres = _bank(TEST_SEEDS, args.corpus, 0)
    if args.action == "train":
        train, _ = _bank(TRAIN_SEEDS, args.corpus, 0)
        model = train_model(train, seed=args.seed)
        from safetensors.torch import save_file

        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        tmp.replace(args.out)
    else:
        model = QualityModel.pretrained(args.out)
    result = calibration(model, test, test_genres)
    print(json.dumps({k: (round(v, 4) if not math.isnan(v) else None) for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
