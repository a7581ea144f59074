"""The device work of one stage group, without Ray: what a :class:`serving.stages.StageGroup`
replica does with a dynamic batch, and what the in-process path (:mod:`serving.direct`) does
with one song, so both run the same code.

For the jobs of one chain key (:meth:`serving.batch.SongJob.chain_key`) on ``device``:

* the first group moves each input to the device, measures it there when asked
  (``measure_input``) and begins the chain on it alone (``Chain.begin``: DC removal,
  conditioning estimated on the song itself, the attempt's overrides);
* the stages run on the padded batch (:func:`serving.batch.run_group`); each song keeps its
  parameters and stage reports (moved to the CPU: they are small);
* the last group finishes each song, measures the master and scores it (when asked) on the
  device, from one loudness measurement, then moves the master to the CPU, or, for a job
  that asks for a format of :data:`serving.codec.DEVICE_FORMATS` when this runner encodes
  (``encode``), encodes it on the device and sends back only its WAV data; other groups
  hand the state on, on the CPU.

Measuring and scoring take songs of equal length as one batch (``[batch, 2, n]``; the meters
and the evaluator are batched): on a GPU a batch costs about what one song costs, most of it
kernel launches, so a burst of equal-length clips is measured and scored once per batch.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch
from torch import Tensor

from mastering.chain import Chain
from mastering.dsp.warmup import warm_up
from mastering.evaluation import Evaluation, Evaluator
from mastering.grouping import equal_length_groups
from mastering.loudness import measure_batch
from serving.batch import SongJob, conditioning_used, run_group
from serving.codec import device_data, measurements_batch


class GroupRunner:
    """Runs ``stages`` (consecutive, in chain order) on lists of :class:`SongJob`.

    Args:
        stages: the stage names of this group.
        first: it starts the chain. last: it ends the chain.
        device: ``"cpu"`` or ``"cuda"``.
        encode: whether the last group encodes the masters of jobs that ask for it
            (``SongJob.encode``); ``None``: on GPUs only (there it takes ~1 ms against ~40 ms
            on the ingress's host; on a CPU it is no faster than the ingress's encoder).
    """

    def __init__(
        self,
        stages: tuple[str, ...],
        first: bool,
        last: bool,
        device: str = "cpu",
        encode: bool | None = None,
    ):
        self.stages = tuple(stages)
        self.first, self.last = first, last
        self.device = device
        self.encode = device != "cpu" if encode is None else encode
        self._evaluator: Evaluator | None = None
        warm_up(device)  # compile the fused GPU kernels while the replica starts

    @property
    def name(self) -> str:
        return "+".join(self.stages)

    def evaluator(self) -> Evaluator:
        """The scorer of the masters (the shipped learned model when present), made once."""
        if self._evaluator is None:
            self._evaluator = Evaluator()
        return self._evaluator

    def run(self, chain: Chain, jobs: list[SongJob]) -> None:
        """Run this group's stages on ``jobs`` (one chain key) as one tensor batch, in place."""
        chain.configure_output(jobs[0].target_lufs, jobs[0].ceiling_dbtp)
        with torch.no_grad():
            if self.first:
                self._begin(chain, jobs)
            songs = [job.state.to(self.device) for job in jobs]
            states, params, info = run_group(chain, songs, self.stages)
            for job, p, r in zip(jobs, params, info, strict=True):
                job.params.update(
                    {s: {k: v.cpu() for k, v in values.items()} for s, values in p.items()}
                )
                job.info.update(r)
            if self.last:
                self._finish(chain, jobs, states)
            else:
                for job, state in zip(jobs, states, strict=True):
                    job.state = state.to("cpu")

    def _begin(self, chain: Chain, jobs: list[SongJob]) -> None:
        """Inputs to the device, measured (songs of equal length together), each begun alone
        (its conditioning estimated on itself)."""
        inputs = [job.audio.to(self.device, torch.float32) for job in jobs]
        asked = [i for i, job in enumerate(jobs) if job.measure_input]
        reports = self._measure([inputs[i] for i in asked], jobs, asked)
        for i, report in zip(asked, reports, strict=True):
            jobs[i].before = report
        for job, x in zip(jobs, inputs, strict=True):
            job.state = chain.begin(x.unsqueeze(0), job.conditioning, job.overrides)
            job.audio = None

    def _finish(self, chain: Chain, jobs: list[SongJob], states: list) -> None:
        """Each song finished; masters measured and scored on the device (equal lengths
        together), then moved to the CPU."""
        masters = []
        for job, state in zip(jobs, states, strict=True):
            job.cond = state.cond.to("cpu")
            job.conditioning_used = conditioning_used(job, state.cond)
            masters.append(chain.finish(state).audio[0])
            job.state = None
        for group in equal_lengths(masters):
            x = stack([masters[i] for i in group])
            loudness = measure_batch(x)  # for the reports and the scores alike
            monos = [jobs[i].mono for i in group]
            for i, report in zip(group, measurements_batch(x, monos, loudness), strict=True):
                jobs[i].after = report
            scored = [k for k, i in enumerate(group) if jobs[i].score]
            if not scored:
                continue
            songs = [group[k] for k in scored]
            ev = self.evaluator()(
                x if len(scored) == len(group) else x[scored],
                [jobs[i].conditioning.resolved_genre() for i in songs],
                target_lufs=jobs[songs[0]].target_lufs,
                ceiling_dbtp=jobs[songs[0]].ceiling_dbtp,
                reports=[loudness[k] for k in scored],
            )
            for k, i in enumerate(songs):
                jobs[i].evaluation = evaluation_of(ev, k)
        for job, master in zip(jobs, masters, strict=True):
            data = device_data(master, job.encode) if self.encode and job.encode else None
            if data is None:
                job.audio = master.cpu()
            else:
                job.encoded = data

    @staticmethod
    def _measure(audio: list[Tensor], jobs: list[SongJob], index) -> list[dict[str, Any]]:
        """:func:`serving.codec.measurements` of each ``[2, n]`` of ``audio`` (the songs
        ``index`` of ``jobs``), equal lengths as one batch."""
        index = list(index)
        out: list[dict[str, Any]] = [{} for _ in audio]
        for group in equal_lengths(audio):
            x = stack([audio[k] for k in group])
            monos = [jobs[index[k]].mono for k in group]
            for k, report in zip(group, measurements_batch(x, monos), strict=True):
                out[k] = report
        return out


def equal_lengths(audio: list[Tensor]) -> list[list[int]]:
    """Indices of ``audio`` grouped by length (samples), first appearance first."""
    return equal_length_groups(range(len(audio)), lambda i: audio[i].shape[-1])


def stack(audio: list[Tensor]) -> Tensor:
    """``[2, n]`` tensors as one ``[batch, 2, n]`` (a view for a single one)."""
    return audio[0].unsqueeze(0) if len(audio) == 1 else torch.stack(audio)


def evaluation_of(ev: Evaluation, i: int) -> Evaluation:
    """Song ``i`` of a batch's :class:`Evaluation`, as an evaluation of a batch of one."""

    def one(t: Tensor) -> Tensor:
        return t[i : i + 1]

    m = ev.measurements
    return Evaluation(
        score=one(ev.score),
        rule=one(ev.rule),
        learned=None if ev.learned is None else one(ev.learned),
        sub_scores={k: one(v) for k, v in ev.sub_scores.items()},
        measurements=type(m)(**{f.name: one(getattr(m, f.name)) for f in fields(m)}),
    )
