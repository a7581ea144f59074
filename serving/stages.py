"""The stage-group deployment: a consecutive group of chain stages on one (logical) GPU; with
the fused placement (:class:`serving.config.ServingConfig`), one group holds the whole chain.

Requests reaching a replica concurrently are batched (``@serve.batch``) and run together
(:mod:`serving.batch`, :mod:`serving.runner`); the chain each song needs is loaded by name
with model multiplexing (``@serve.multiplexed``, the adapter name is the model id), so songs
asking for one adapter are routed to replicas that already hold it. Resources (``num_gpus``)
are declared where the app is built (:func:`serving.config.build_app`). Tensors leave the
replica as NumPy arrays (:mod:`serving.wire`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict

from ray import serve

from mastering.chain import Chain
from serving import wire
from serving.batch import SongJob
from serving.metrics import metrics
from serving.models import load_chain, use_adapter_dir
from serving.runner import GroupRunner

#: Chains (adapters / variants) one replica holds; the least recently used is dropped beyond.
MAX_CHAINS_PER_REPLICA = 4


@serve.deployment
class StageGroup:
    """Runs ``stages`` (consecutive, in chain order) on batches of :class:`SongJob`.

    Args:
        stages: the stage names this group runs.
        first: it starts the chain (``Chain.begin`` on each song's audio; measures the input).
        last: it ends the chain (``Chain.finish``; measures and scores the master; the job's
            ``audio`` becomes the master).
        device: ``"cpu"`` or ``"cuda"``.
        max_batch_size: songs per dynamic batch. batch_wait_timeout_s: seconds a batch
            waits to fill.
        adapter_dir: folder of user style adapters (``None``: the environment's).
        batch_while_busy, encode_on_device: see :class:`serving.config.ServingConfig`.
    """

    def __init__(
        self,
        stages: tuple[str, ...],
        first: bool,
        last: bool,
        device: str = "cpu",
        max_batch_size: int = 8,
        batch_wait_timeout_s: float = 0.0,
        adapter_dir: str | None = None,
        batch_while_busy: bool | None = None,
        encode_on_device: bool | None = None,
    ):
        wire.install()
        use_adapter_dir(adapter_dir)
        self.runner = GroupRunner(stages, first, last, device, encode_on_device)
        self.device = device
        self.name = self.runner.name
        self.run_batch.set_max_batch_size(max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        # Whether songs wait for the running batch (see __call__; None: on GPUs), whether a
        # batch is on the device, and the event its end sets.
        self._gate = device != "cpu" if batch_while_busy is None else batch_while_busy
        self._running = False
        self._batch_done = asyncio.Event()

    @serve.multiplexed(max_num_models_per_replica=MAX_CHAINS_PER_REPLICA)
    async def chain(self, adapter: str) -> Chain:
        """The chain for ``adapter`` on this replica's device (loaded once, LRU-cached)."""
        return await asyncio.to_thread(load_chain, adapter, self.device)

    def pid(self) -> int:
        """This replica's process id (the fault tests kill it)."""
        return os.getpid()

    async def __call__(self, job: SongJob) -> SongJob:
        """Batch ``job`` with the songs that arrive while the device is busy.

        ``@serve.batch`` forms a batch as soon as songs are queued and only then waits for
        the device, so songs arriving one by one during a batch would each make a batch of
        one behind it. A song that arrives while a batch runs therefore waits for that
        batch's end; then every waiting song enters the queue at once and they make the next
        batch together. A lone song starts at once. (``batch_while_busy``; on GPUs by
        default, see :class:`serving.config.ServingConfig`.)"""
        if self._gate and self._running:
            await self._batch_done.wait()
        return await self.run_batch(job)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def run_batch(self, jobs: list[SongJob]) -> list[SongJob]:
        t0 = time.perf_counter()
        by_key: dict[tuple, list[SongJob]] = defaultdict(list)
        for job in jobs:
            by_key[job.chain_key()].append(job)
        self._running = True
        try:
            for key, group in by_key.items():
                chain = await self.chain(key[0])
                await asyncio.to_thread(self.runner.run, chain, group)
        finally:
            self._running = False
            done, self._batch_done = self._batch_done, asyncio.Event()
            done.set()
        seconds = time.perf_counter() - t0
        metrics().batch(self.name, len(jobs), seconds)
        for job in jobs:
            job.group_seconds.append(round(seconds, 4))
            job.batch_sizes.append(len(jobs))
        return jobs
