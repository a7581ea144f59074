"""Style adapters: one micro-adapter per genre and one per cluster of songs.

* **Genre**: for each genre with training songs, a fresh :class:`mastering.adapters.
  StyleAdapter` is attached to the trained chain and only its weights learn, on that genre's
  crops, with the full-chain loss (:func:`mastering.training.render.master_batch` +
  :class:`mastering.losses.MasteringLoss`). Saved as ``genre-<genre>``.
* **Cluster** ("artist cluster adaptation"): the training songs are embedded by their mixing
  features (:func:`mastering.adapters.mix_embedding` of their raw crops, averaged per song,
  standardized), grouped by k-means (:func:`kmeans`), and a micro-adapter is trained per
  cluster on its songs' crops. Saved as ``cluster-<k>`` with the centroid and the
  standardization, so :func:`mastering.adapters.choose_adapter` routes a new song to it.

An adapter is only saved if it lowers the loss on its own crops (it is tiny and starts as the
identity, so it normally does); the report lists every adapter with its loss before/after.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mastering.adapters import StyleAdapter, attach, mix_embedding, save_adapter
from mastering.training.pool import CropPool
from mastering.training.render import master_batch

if TYPE_CHECKING:
    from mastering.training.trainer import Trainer


def kmeans(x: Tensor, k: int, seed: int = 0, iters: int = 50) -> tuple[Tensor, Tensor]:
    """k-means (k-means++ initialization, Lloyd iterations) of ``x [n, d]``.

    Returns ``(centroids [k', d], labels [n])`` with ``k' = min(k, n)``; deterministic for a
    seed."""
    n = x.shape[0]
    k = max(1, min(k, n))
    g = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=g))
    cent = [x[first]]
    for _ in range(1, k):
        d = torch.cdist(x, torch.stack(cent)).amin(1).square()
        if float(d.sum()) <= 0:
            break
        cent.append(x[int(torch.multinomial(d / d.sum(), 1, generator=g))])
    c = torch.stack(cent)
    labels = torch.cdist(x, c).argmin(1)
    for _ in range(iters):
        new = torch.stack(
            [x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(c.shape[0])]
        )
        labels_new = torch.cdist(x, new).argmin(1)
        c = new
        if torch.equal(labels_new, labels):
            break
        labels = labels_new
    return c, labels


def song_embeddings(pool: CropPool) -> tuple[Tensor, Tensor]:
    """Per-song mean :func:`mix_embedding` of the raw crops: ``(songs [S], emb [S, d])``."""
    emb = torch.cat([mix_embedding(pool.raw[i : i + 8]) for i in range(0, len(pool), 8)])
    songs = pool.song.unique()
    return songs, torch.stack([emb[pool.song == s].mean(0) for s in songs])


def _loss(trainer: Trainer, chain, pool: CropPool, idx: list[int]) -> Tensor:
    dev = trainer.device
    y = master_batch(chain, pool.raw[idx].to(dev), [pool.conditioning[i] for i in idx],
                     pool.target_lufs[idx])  # fmt: skip
    loss, _ = trainer.loss(y.float(), pool.mastered[idx].to(dev), pool.target_lufs[idx].to(dev))
    return loss


def train_adapter(
    trainer: Trainer, pool: CropPool, adapter: StyleAdapter, phase_id: int
) -> tuple[float, float]:
    """Train ``adapter`` (attached to ``trainer.chain``, all other weights frozen) on
    ``pool``; returns the mean loss over ``pool`` before and after. Detaches it at the end."""
    c = trainer.config
    chain = trainer.chain
    adapter = adapter.to(trainer.device)
    attach(chain, adapter)
    for p in chain.parameters():
        p.requires_grad_(False)
    params = list(adapter.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=c.adapter_lr)
    every = list(range(len(pool)))

    def mean_loss() -> float:
        with torch.no_grad():
            chunks = [every[i : i + c.batch_size] for i in range(0, len(every), c.batch_size)]
            return sum(float(_loss(trainer, chain, pool, ch)) * len(ch) for ch in chunks) / len(
                every
            )

    before = mean_loss()
    chain.train()
    for step in range(c.adapter_steps):
        idx = pool.batch_indices(c.batch_size, c.seed, 1000 + phase_id, step)
        opt.zero_grad(set_to_none=True)
        loss = _loss(trainer, chain, pool, idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        opt.step()
    chain.eval()
    after = mean_loss()
    attach(chain, None)
    for p in chain.parameters():
        p.requires_grad_(True)
    return before, after


def train_style_adapters(trainer: Trainer, out_dir: str | Path) -> list[dict[str, Any]]:
    """Train and save the genre and cluster adapters of ``trainer``'s training pool into
    ``out_dir``; returns one report row per adapter."""
    pool = trainer.train_pool
    cfg = trainer.config
    out = Path(out_dir)
    report: list[dict[str, Any]] = []

    def fit(name: str, kind: str, target: str, idx: list[int], phase: int, cluster=None):
        sub = pool.subset(idx)
        adapter = StyleAdapter(name, kind, target)
        adapter.cluster = cluster
        before, after = train_adapter(trainer, sub, adapter, phase)
        songs = len(set(sub.song.tolist()))
        adapter.info.update(crops=str(len(sub)), songs=str(songs), config=cfg.name,
                            loss_before=f"{before:.4f}", loss_after=f"{after:.4f}")  # fmt: skip
        saved = after < before
        if saved:
            save_adapter(adapter, out)
        report.append(dict(name=name, kind=kind, target=target, crops=len(sub), songs=songs,
                           loss_before=before, loss_after=after, saved=saved))  # fmt: skip
        trainer.log(
            f"adapter {name}: {len(sub)} crops of {songs} songs, loss {before:.4f} -> "
            f"{after:.4f} ({'saved' if saved else 'not saved: no improvement'})"
        )

    genres = pool.genres()
    for i, g in enumerate(sorted(set(genres))):
        fit(f"genre-{g}", "genre", g, [j for j, x in enumerate(genres) if x == g], i)

    songs, emb = song_embeddings(pool)
    mean, std = emb.mean(0), emb.std(0, unbiased=False) + 1e-3
    z = (emb - mean) / std
    cent, labels = kmeans(z, cfg.n_clusters, seed=cfg.seed)
    for k in range(cent.shape[0]):
        members = set(songs[labels == k].tolist())
        idx = [j for j, s in enumerate(pool.song.tolist()) if s in members]
        if idx:
            fit(f"cluster-{k}", "cluster", str(k), idx, 100 + k,
                cluster={"centroid": cent[k], "mean": mean, "std": std})  # fmt: skip
    return report
