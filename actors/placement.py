"""Placing the mastering chain's stages on GPUs: stage groups, pipelines, placement groups.

Two modes share one actor class (:class:`actors.stage_actor.StageWorker`):

* ``pipeline``: a pipeline is a row of stage-group workers, each on its own GPU, songs
  streaming through them (EQ -> ... -> master out across devices). S stages on G GPUs:
  G >= S gives one stage per GPU and whole extra pipelines on the remaining GPUs; G < S groups
  consecutive stages by measured cost so the slowest group is as fast as possible
  (:func:`plan_stage_groups`).
* ``replicated``: the whole chain in one worker per GPU (data parallel); each GPU is a
  pipeline of one group.

Each pipeline is one Ray placement group with ``STRICT_PACK`` strategy (one bundle per stage
group), so a pipeline never spans nodes and its GPU-to-GPU hops stay inside one host.
Pipelines never span nodes: with ``gpus_per_node`` given, a pipeline is at most that wide.

This module only plans (pure Python, no Ray); :mod:`cluster.job` creates the placement groups
and actors from a :class:`FarmPlan`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mastering.chain import DEFAULT_ORDER
from mastering.errors import InvalidParameterError

Mode = Literal["pipeline", "replicated"]
MODES: tuple[str, ...] = ("pipeline", "replicated")

#: Relative cost of each stage: seconds to run it on a 30 s stereo 48 kHz song (``music_like``),
#: batch 1, one CPU thread (torch 2.13 CPU, the 2-core dev machine, mean of the steady-state
#: runs; ``Chain.begin`` - DC removal, conditioning estimates - took a further ~0.11 s and runs
#: with decode on the first group's worker). Measured with ``Chain.run_stages(state, [name])``
#: one stage at a time. Only the ratios matter to the planner. The exciter (oversampled
#: waveshaping) dominates on CPU; pass GPU-measured costs (``benchmarks/farm.py`` prints them)
#: to :func:`plan_stage_groups` when planning for GPUs.
STAGE_COSTS: dict[str, float] = {
    "eq": 0.07,
    "compressor": 0.08,
    "exciter": 3.4,
    "imager": 0.33,
    "reverb": 0.07,
    "limiter": 0.25,
    "master_out": 0.52,
}
#: Cost assumed for a stage missing from the cost table.
UNKNOWN_STAGE_COST = 1.0
#: Ray rounds resource amounts to 1e-4; fractional GPU shares are rounded down to this.
RESOURCE_QUANTUM = 1e-4


def plan_stage_groups(
    stages: Sequence[str], gpus: int, costs: Mapping[str, float] | None = None
) -> list[tuple[str, ...]]:
    """Split ``stages`` (in chain order) into consecutive groups, one per GPU.

    Args:
        stages: stage names in processing order.
        gpus: GPUs available to one pipeline. ``gpus >= len(stages)`` (or ``gpus <= 0``: CPU
            workers, one per stage) gives one stage per group; otherwise ``gpus`` groups.
        costs: stage -> relative cost (default :data:`STAGE_COSTS`).

    Returns:
        Groups of consecutive stages whose largest total cost is the smallest possible
        (contiguous linear partition, exact dynamic programme; ties keep earlier groups
        smaller). Every group is non-empty.
    """
    stages = tuple(stages)
    if not stages:
        raise InvalidParameterError("no stages to place")
    if gpus <= 0 or gpus >= len(stages):
        return [(s,) for s in stages]
    table = STAGE_COSTS if costs is None else costs
    cost = [float(table.get(s, UNKNOWN_STAGE_COST)) for s in stages]
    if any(c < 0 or not math.isfinite(c) for c in cost):
        raise InvalidParameterError(f"stage costs must be finite and >= 0, got {cost}")
    n, k = len(stages), gpus
    prefix = [0.0]
    for c in cost:
        prefix.append(prefix[-1] + c)
    # best[j][i]: minimal max-group cost of stages[:i] in j non-empty groups; cut[j][i]: start
    # of the last group in that optimum.
    inf = math.inf
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for j in range(1, k + 1):
        for i in range(j, n - (k - j) + 1):
            for m in range(j - 1, i):
                value = max(best[j - 1][m], prefix[i] - prefix[m])
                if value < best[j][i] - 1e-12:
                    best[j][i], cut[j][i] = value, m
    groups: list[tuple[str, ...]] = []
    i = n
    for j in range(k, 0, -1):
        m = cut[j][i]
        groups.append(stages[m:i])
        i = m
    return groups[::-1]


@dataclass(frozen=True)
class GroupPlan:
    """One stage-group worker.

    Attributes:
        stages: consecutive stage names it runs.
        num_gpus: GPUs it reserves (1, a share such as 0.5 when groups share a GPU, 0 on CPU).
        num_cpus: CPUs it reserves.
        bundle_index: its bundle in the pipeline's placement group.
    """

    stages: tuple[str, ...]
    num_gpus: float
    num_cpus: float
    bundle_index: int


@dataclass(frozen=True)
class PipelinePlan:
    """One pipeline: stage groups in order, placed as one ``STRICT_PACK`` placement group."""

    groups: tuple[GroupPlan, ...]
    strategy: str = "STRICT_PACK"

    @property
    def bundles(self) -> list[dict[str, float]]:
        """Placement-group bundles, one per group (``{"CPU": c, "GPU": g}``)."""
        out = []
        for g in self.groups:
            bundle = {"CPU": g.num_cpus}
            if g.num_gpus > 0:
                bundle["GPU"] = g.num_gpus
            out.append(bundle)
        return out

    @property
    def gpus(self) -> float:
        return sum(g.num_gpus for g in self.groups)


@dataclass(frozen=True)
class FarmPlan:
    """Where every stage of every pipeline runs.

    Attributes:
        mode: ``pipeline`` or ``replicated``.
        stages: the chain's stage order.
        gpus: GPUs the plan uses in total (0: CPU workers).
        pipelines: the pipelines; songs are spread over them.
    """

    mode: str
    stages: tuple[str, ...]
    gpus: int
    pipelines: tuple[PipelinePlan, ...]

    def describe(self) -> str:
        """One line per pipeline, e.g. ``pipeline 0: [eq,compressor]@1 | [exciter]@1``."""
        lines = []
        for i, p in enumerate(self.pipelines):
            parts = [f"[{','.join(g.stages)}]@{g.num_gpus:g}gpu" for g in p.groups]
            lines.append(f"pipeline {i}: " + " -> ".join(parts))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "gpus": self.gpus,
            "pipelines": [[list(g.stages) for g in p.groups] for p in self.pipelines],
            "num_gpus": [[g.num_gpus for g in p.groups] for p in self.pipelines],
        }


def plan_farm(
    stages: Sequence[str] = DEFAULT_ORDER,
    gpus: int = 0,
    mode: str = "pipeline",
    *,
    costs: Mapping[str, float] | None = None,
    gpus_per_node: int | None = None,
    groups: int | None = None,
    cpu_pipelines: int = 1,
    cpus_per_group: float = 1.0,
) -> FarmPlan:
    """Plan the farm for ``gpus`` GPUs.

    Args:
        stages: stage order of the chain.
        gpus: GPUs to use (0: CPU only).
        mode: ``pipeline`` (stage groups on separate GPUs, songs streamed through) or
            ``replicated`` (the whole chain on every GPU).
        costs: per-stage relative costs for grouping (default :data:`STAGE_COSTS`).
        gpus_per_node: GPUs on each node; pipelines are cut to fit one node. ``None``: all
            ``gpus`` are on one node.
        groups: force this many stage groups per pipeline (pipeline mode). More groups than a
            pipeline's GPUs share GPUs fractionally; default: one group per GPU, at most one per
            stage.
        cpu_pipelines: pipelines (or replicas) when ``gpus == 0``.
        cpus_per_group: CPUs each worker reserves.
    """
    if mode not in MODES:
        raise InvalidParameterError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    stages = tuple(stages)
    if not stages:
        raise InvalidParameterError("no stages to place")
    if gpus < 0:
        raise InvalidParameterError(f"gpus must be >= 0, got {gpus}")
    if groups is not None and not 1 <= groups <= len(stages):
        raise InvalidParameterError(f"groups must be within 1..{len(stages)}, got {groups}")
    if cpu_pipelines < 1:
        raise InvalidParameterError(f"cpu_pipelines must be >= 1, got {cpu_pipelines}")

    if gpus == 0:
        n_groups = 1 if mode == "replicated" else (groups or len(stages))
        cpu_groups = _groups_of(stages, n_groups, costs)
        pipeline = PipelinePlan(
            tuple(GroupPlan(g, 0.0, cpus_per_group, i) for i, g in enumerate(cpu_groups))
        )
        return FarmPlan(mode, stages, 0, (pipeline,) * cpu_pipelines)

    per_node = gpus if gpus_per_node is None else max(1, min(gpus_per_node, gpus))
    node_gpus = [per_node] * (gpus // per_node) + ([gpus % per_node] if gpus % per_node else [])
    if mode == "replicated":
        widths = [1] * gpus
    else:
        widths = []
        for n in node_gpus:
            w = min(len(stages), n)
            widths += [w] * (n // w) + ([n % w] if n % w else [])
    pipelines = tuple(
        _pipeline(stages, w, groups if mode == "pipeline" else 1, costs, cpus_per_group)
        for w in widths
    )
    return FarmPlan(mode, stages, gpus, pipelines)


def _groups_of(
    stages: tuple[str, ...], n: int, costs: Mapping[str, float] | None
) -> list[tuple[str, ...]]:
    return [stages] if n <= 1 else plan_stage_groups(stages, n, costs)


def _pipeline(
    stages: tuple[str, ...],
    width: int,
    groups: int | None,
    costs: Mapping[str, float] | None,
    cpus_per_group: float,
) -> PipelinePlan:
    """A pipeline on ``width`` GPUs: ``groups`` stage groups (default ``width``, at most one
    per stage); more groups than GPUs share them, consecutive groups on the same GPU."""
    n_groups = min(len(stages), width) if groups is None else groups
    stage_groups = _groups_of(stages, n_groups, costs)
    if len(stage_groups) <= width:
        shares = [1.0] * len(stage_groups)
    else:
        # k groups on one GPU -> 1/k each (rounded down to Ray's resource quantum).
        counts = [
            len(stage_groups) // width + (i < len(stage_groups) % width) for i in range(width)
        ]
        shares = []
        for k in counts:
            share = math.floor(1.0 / k / RESOURCE_QUANTUM) * RESOURCE_QUANTUM
            shares += [round(share, 4)] * k
    return PipelinePlan(
        tuple(GroupPlan(g, shares[i], cpus_per_group, i) for i, g in enumerate(stage_groups))
    )
