"""A fixed, seeded pool of aligned training crops, held in memory.

Training on a CPU in minutes needs every crop decoded and aligned once, not per step: the
pool draws ``crops_per_song`` crops of every song of a split with the pair loader
(:class:`mastering.data.pairs.PairCrops`: alignment, level checks, crops) and keeps them as
tensors. Batches are then index draws from a generator seeded by ``(seed, phase, step)``, so a
run resumed from a checkpoint sees the same batches as one that never stopped.

:func:`synthetic_manifest` writes a small pair corpus of real files (raw mixes from
:func:`mastering.testsignals.music_like`, made raw-like with random level, tilt and width,
and their reference masters by the conventional pedalboard chain of
:func:`mastering.data.reference.master_reference`) for tests and smoke runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mastering.conditioning import Conditioning
from mastering.errors import LacquerError

# The pair loader (and its audio I/O) is imported where it is used, so a saved pool can be
# trained on where only torch is installed.


@dataclass
class CropPool:
    """Crops of a split.

    Attributes:
        raw, mastered: ``[N, 2, samples]`` float32, 48 kHz, aligned.
        conditioning: one :class:`Conditioning` per crop (genre, tempo, vocal ratio).
        target_lufs: ``[N]`` the masters' loudness targets, LUFS.
        song: ``[N]`` index into :attr:`records`.
        records: the songs (:class:`mastering.data.pairs.PairRecord`, or plain dicts of their
            fields when read back by :func:`load_pools`).
    """

    raw: Tensor
    mastered: Tensor
    conditioning: list[Conditioning]
    target_lufs: Tensor
    song: Tensor
    records: list

    def __len__(self) -> int:
        return self.raw.shape[0]

    def genres(self) -> list[str]:
        return [c.genre or "unknown" for c in self.conditioning]

    def subset(self, index: list[int] | Tensor) -> CropPool:
        idx = torch.as_tensor(index, dtype=torch.long)
        return CropPool(
            raw=self.raw[idx],
            mastered=self.mastered[idx],
            conditioning=[self.conditioning[i] for i in idx.tolist()],
            target_lufs=self.target_lufs[idx],
            song=self.song[idx],
            records=self.records,
        )

    def batch_indices(self, batch_size: int, seed: int, phase: int, step: int) -> list[int]:
        """The crops of step ``step`` of phase ``phase``: a function of the seed only."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + phase * 10_007 + step)
        return torch.randint(len(self), (min(batch_size, len(self)),), generator=g).tolist()


def save_pools(pools: dict[str, CropPool], path: str | Path, half: bool = True) -> Path:
    """Write pools (``{"train": ..., "val": ...}``) to one file (audio as float16 when
    ``half``: 2 bytes a sample, for carrying a pool to another machine), atomically."""
    import json
    import os
    from dataclasses import asdict

    payload: dict = {}
    for name, pool in pools.items():
        dt = torch.float16 if half else torch.float32
        payload[f"{name}.raw"] = pool.raw.to(dt)
        payload[f"{name}.mastered"] = pool.mastered.to(dt)
        payload[f"{name}.target_lufs"] = pool.target_lufs
        payload[f"{name}.song"] = pool.song
        payload[f"{name}.conditioning"] = json.dumps([asdict(c) for c in pool.conditioning])
        payload[f"{name}.records"] = json.dumps(
            [{**asdict(r), "raw_path": str(r.raw_path), "mastered_path": str(r.mastered_path),
              "extras": {}} for r in pool.records]
        )  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_pools(path: str | Path) -> dict[str, CropPool]:
    """Read what :func:`save_pools` wrote (audio back to float32)."""
    import json

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LacquerError(f"cannot read crop pool ({exc})", path) from exc
    pools = {}
    for name in {k.split(".")[0] for k in payload}:
        conds = []
        for c in json.loads(payload[f"{name}.conditioning"]):
            c["rule_breaks"] = tuple(c["rule_breaks"])
            conds.append(Conditioning(**c))
        records = json.loads(payload[f"{name}.records"])
        pools[name] = CropPool(
            raw=payload[f"{name}.raw"].float(),
            mastered=payload[f"{name}.mastered"].float(),
            conditioning=conds,
            target_lufs=payload[f"{name}.target_lufs"],
            song=payload[f"{name}.song"],
            records=records,
        )
    return pools


def build_pool(
    manifest: str | Path,
    split: str,
    crops_per_song: int,
    crop_seconds: float,
    seed: int,
    max_crops: int | None = None,
) -> CropPool:
    """Draw ``crops_per_song`` crops of each song of ``split`` (at most ``max_crops`` in all).

    Raises :class:`mastering.data.pairs.PairDataError` (naming the manifest or file) when the
    split is empty or a pair is unusable."""
    from mastering.data.pairs import CropConfig, PairCrops

    cfg = CropConfig(crop_seconds=crop_seconds, batch_size=1, cache_pairs=2)
    crops = PairCrops(manifest, cfg, seed=seed, split=split, n_crops=1)
    n_songs = len(crops.records)
    crops.n_crops = n_songs * crops_per_song
    # Song-major order, so each song is loaded and aligned once (the loader's cache is small).
    order = [k * n_songs + s for s in range(n_songs) for k in range(crops_per_song)]
    if max_crops is not None and len(order) > max_crops:
        keep = torch.randperm(len(order), generator=torch.Generator().manual_seed(seed))
        order = sorted((order[i] for i in keep[:max_crops].tolist()), key=lambda i: i % n_songs)
    items = [crops[i] for i in order]
    return CropPool(
        raw=torch.cat([b.raw for b in items]),
        mastered=torch.cat([b.mastered for b in items]),
        conditioning=[c for b in items for c in b.conditioning],
        target_lufs=torch.cat([b.target_lufs for b in items]),
        song=torch.cat([b.song for b in items]),
        records=list(crops.records),
    )


def has_split(manifest: str | Path, split: str) -> bool:
    from mastering.data.pairs import read_pair_manifest

    return bool(read_pair_manifest(manifest, split=split))


# -- synthetic pairs ------------------------------------------------------------------------


def _raw_like(x: Tensor, g: torch.Generator) -> Tensor:
    """Make ``x [2, n]`` raw-like: random tilt (+-6 dB at Nyquist), width (x0.3..x2 side)
    and level (peak -12..-3 dBFS)."""
    from mastering.dsp.stereo import from_mid_side, to_mid_side

    u = torch.rand(3, generator=g)
    spec = torch.fft.rfft(x.double(), dim=-1)
    f = torch.linspace(0.0, 1.0, spec.shape[-1], dtype=torch.float64)
    spec = spec * torch.pow(10.0, (12.0 * float(u[0]) - 6.0) * f / 20.0)
    y = torch.fft.irfft(spec, n=x.shape[-1]).float()
    ms = to_mid_side(y)
    ms = torch.stack([ms[0], ms[1] * (0.3 + 1.7 * float(u[1]))])
    y = from_mid_side(ms)
    peak = -12.0 + 9.0 * float(u[2])
    return y * (10.0 ** (peak / 20.0) / y.abs().max().clamp(min=1e-9))


def synthetic_manifest(
    out_dir: str | Path,
    n_songs: int = 4,
    seconds: float = 4.0,
    seed: int = 0,
    genres: tuple[str, ...] = ("pop", "jazz", "edm", "cinematic"),
    splits: tuple[str, ...] | None = None,
) -> Path:
    """Write ``n_songs`` raw/master pairs (float WAV) and ``pairs.parquet``
    under ``out_dir``; returns the manifest path. Songs are dealt genres round-robin and
    the splits ``splits`` (default: all ``train`` but the last, ``test``)."""
    from mastering.data.pairs import PairDataError, PairRecord, write_pair_manifest
    from mastering.data.reference import GENRE_TARGET_LUFS, master_reference
    from mastering.io import write_audio
    from mastering.testsignals import music_like

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    if splits is None:
        splits = ("train",) * (n_songs - 1) + ("test",)
    records = []
    for i in range(n_songs):
        genre = genres[i % len(genres)]
        bpm = float(torch.randint(80, 150, (1,), generator=g))
        raw = _raw_like(music_like(seconds, seed=seed * 1000 + i, tempo_bpm=bpm), g)
        try:
            master, _ = master_reference(raw, genre)
        except LacquerError as exc:
            raise PairDataError(f"song {i}: reference master failed: {exc}") from exc
        raw_path, master_path = out / f"song{i:03d}_raw.wav", out / f"song{i:03d}_master.wav"
        write_audio(raw_path, raw, format="wav32f")
        write_audio(master_path, master, format="wav32f")
        records.append(
            PairRecord(
                raw_path=raw_path,
                mastered_path=master_path,
                genre=genre,
                bpm=bpm,
                mix_balance=0.3,
                target_lufs=GENRE_TARGET_LUFS.get(genre, -12.0),
                split=splits[i % len(splits)],
            )
        )
    return write_pair_manifest(records, out / "pairs.parquet")
