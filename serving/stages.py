"""The stage-group deployment: a consecutive group of chain stages on one (logical) GPU.

Requests reaching a replica concurrently are batched (``@serve.batch``) and run together
(:mod:`serving.batch`); the chain each song needs is loaded by name with model multiplexing
(``@serve.multiplexed``, the adapter name is the model id), so songs asking for one adapter
are routed to replicas that already hold it. Resources (``num_gpus``) are declared where the
app is built (:func:`serving.config.build_app`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict

import torch
from ray import serve

from mastering.chain import Chain
from serving.batch import SongJob, conditioning_used, run_group
from serving.codec import measurements
from serving.metrics import metrics
from serving.models import load_chain, use_adapter_dir

#: Chains (adapters / variants) one replica holds; the least recently used is dropped beyond.
MAX_CHAINS_PER_REPLICA = 4


@serve.deployment
class StageGroup:
    """Runs ``stages`` (consecutive, in chain order) on batches of :class:`SongJob`.

    Args:
        stages: the stage names this group runs.
        first: it starts the chain (``Chain.begin`` on each song's audio).
        last: it ends the chain (``Chain.finish``; the job's ``audio`` becomes the master).
        The first group measures each input, the last each master (on their device).
        device: ``"cpu"`` or ``"cuda"``.
        max_batch_size: songs per dynamic batch. batch_wait_timeout_s: seconds a batch
            waits to fill.
        adapter_dir: folder of user style adapters (``None``: the environment's).
    """

    def __init__(
        self,
        stages: tuple[str, ...],
        first: bool,
        last: bool,
        device: str = "cpu",
        max_batch_size: int = 8,
        batch_wait_timeout_s: float = 0.02,
        adapter_dir: str | None = None,
    ):
        use_adapter_dir(adapter_dir)
        self.stages = tuple(stages)
        self.first, self.last = first, last
        self.device = device
        self.name = "+".join(self.stages)
        self.run_batch.set_max_batch_size(max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.multiplexed(max_num_models_per_replica=MAX_CHAINS_PER_REPLICA)
    async def chain(self, adapter: str) -> Chain:
        """The chain for ``adapter`` on this replica's device (loaded once, LRU-cached)."""
        return await asyncio.to_thread(load_chain, adapter, self.device)

    def pid(self) -> int:
        """This replica's process id (the fault tests kill it)."""
        return os.getpid()

    async def __call__(self, job: SongJob) -> SongJob:
        return await self.run_batch(job)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def run_batch(self, jobs: list[SongJob]) -> list[SongJob]:
        t0 = time.perf_counter()
        by_key: dict[tuple, list[SongJob]] = defaultdict(list)
        for job in jobs:
            by_key[job.chain_key()].append(job)
        for key, group in by_key.items():
            chain = await self.chain(key[0])
            await asyncio.to_thread(self._run, chain, group)
        seconds = time.perf_counter() - t0
        metrics().batch(self.name, len(jobs), seconds)
        for job in jobs:
            job.group_seconds.append(round(seconds, 4))
            job.batch_sizes.append(len(jobs))
        return jobs

    def _run(self, chain: Chain, jobs: list[SongJob]) -> None:
        """Run this group's stages on ``jobs`` (one chain key) as one tensor batch."""
        _, target_lufs, ceiling_dbtp = jobs[0].chain_key()
        if "master_out" in self.stages:
            chain.stages["master_out"].configure(target_lufs=target_lufs, ceiling_dbtp=ceiling_dbtp)
        with torch.no_grad():
            if self.first:
                for job in jobs:
                    x = job.audio.to(self.device, torch.float32)
                    job.before = measurements(x, job.mono)
                    job.state = chain.begin(x.unsqueeze(0), job.conditioning)
                    job.audio = None
            songs = [job.state.to(self.device) for job in jobs]
            states, params = run_group(chain, songs, self.stages)
            for job, p in zip(jobs, params, strict=True):
                job.parameters.update(p)
            for job, state in zip(jobs, states, strict=True):
                if self.last:
                    job.conditioning_used = conditioning_used(job, state.cond)
                    master = chain.finish(state).audio[0]
                    job.after = measurements(master, job.mono)
                    job.audio = master.cpu()
                    job.state = None
                else:
                    job.state = state.to("cpu")
