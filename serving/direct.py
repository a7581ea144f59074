"""The work of one ``POST /v1/master`` in the calling process, without Serve or HTTP: decode,
master with auto-retry, measure and score on ``device``, encode, report
(:func:`serving.request.master_upload` with one :class:`~serving.runner.GroupRunner` running
the whole chain here). ``benchmarks/serving.py`` takes it as the baseline Serve's overhead is
measured against, and the tests compare the served masters with its masters.
"""

from __future__ import annotations

import time
from pathlib import Path

from mastering.chain import DEFAULT_ORDER, Chain
from mastering.retry import RetryPolicy
from serving.api import MasterParams
from serving.batch import SongJob
from serving.config import serve_retry_policy
from serving.models import load_chain, spec_chain
from serving.request import Mastered, master_upload, request_policy
from serving.runner import GroupRunner


class DirectMaster:
    """Masters uploads like the Serve app does, in this process.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        policy: the auto-retry policy (default: the Serve app's default).
        max_attempts_limit: the most attempts a request may ask for.
        genre_folder: the folder whose genre adapters master requests that name no adapter
            (its adapters must be found by name: ``LACQUER_ADAPTER_DIR``).
        encode_on_device: see :class:`serving.config.ServingConfig` (``None``: on GPUs).
    """

    def __init__(
        self,
        device: str = "cpu",
        policy: RetryPolicy | None = None,
        max_attempts_limit: int = 4,
        genre_folder: str | None = None,
        encode_on_device: bool | None = None,
    ):
        self.device = device
        self.genre_folder = genre_folder
        self.policy = policy or serve_retry_policy()
        self.max_attempts_limit = max_attempts_limit
        self.runner = GroupRunner(DEFAULT_ORDER, True, True, device, encode_on_device)
        self._chains: dict[str, Chain] = {}

    def chain(self, adapter: str) -> Chain:
        """The chain of ``adapter`` on the device (loaded once)."""
        if adapter not in self._chains:
            self._chains[adapter] = load_chain(adapter, self.device)
        return self._chains[adapter]

    def send(self, job: SongJob) -> SongJob:
        """One attempt through the whole chain, here (a batch of one)."""
        t0 = time.perf_counter()
        self.runner.run(self.chain(job.adapter), [job])
        job.group_seconds.append(round(time.perf_counter() - t0, 4))
        job.batch_sizes.append(1)
        return job

    def master(self, path: Path, params: MasterParams, filename: str | None = None) -> Mastered:
        """Master the audio file at ``path`` with the request parameters ``params``."""
        policy = request_policy(params, self.policy, self.max_attempts_limit)
        return master_upload(
            Path(path),
            filename or Path(path).name,
            params,
            policy,
            spec_chain,  # specs and config from a CPU copy, as the ingress takes them
            self.send,
            genre_folder=self.genre_folder,
        )
