"""The placement planner (pure Python, no Ray): stage groups, pipelines, GPU shares."""

from __future__ import annotations

import itertools
import random

import pytest

from actors.placement import (
    DEFAULT_ORDER,
    STAGE_COSTS,
    plan_farm,
    plan_stage_groups,
)
from mastering.errors import InvalidParameterError

S = len(DEFAULT_ORDER)


def brute_force_best(costs: list[float], k: int) -> float:
    """Smallest possible max group cost over every split of ``costs`` into ``k`` runs."""
    best = float("inf")
    for cuts in itertools.combinations(range(1, len(costs)), k - 1):
        bounds = (0, *cuts, len(costs))
        worst = max(sum(costs[a:b]) for a, b in itertools.pairwise(bounds))
        best = min(best, worst)
    return best


def test_enough_gpus_gives_one_stage_per_group():
    for gpus in (S, S + 1, 4 * S):
        assert plan_stage_groups(DEFAULT_ORDER, gpus) == [(s,) for s in DEFAULT_ORDER]
    assert plan_stage_groups(DEFAULT_ORDER, 0) == [(s,) for s in DEFAULT_ORDER]


@pytest.mark.parametrize("gpus", range(1, S))
def test_fewer_gpus_groups_consecutive_stages_optimally(gpus):
    rng = random.Random(gpus)
    for trial in range(20):
        costs = (
            dict(STAGE_COSTS)
            if trial == 0
            else {s: rng.choice([0.1, 0.5, 1.0, 3.0]) * rng.random() for s in DEFAULT_ORDER}
        )
        groups = plan_stage_groups(DEFAULT_ORDER, gpus, costs)
        assert len(groups) == gpus
        assert all(groups)
        assert tuple(itertools.chain.from_iterable(groups)) == DEFAULT_ORDER
        worst = max(sum(costs[s] for s in g) for g in groups)
        assert worst == pytest.approx(brute_force_best([costs[s] for s in DEFAULT_ORDER], gpus))


def test_heavy_stage_gets_its_own_group():
    costs = {s: 1.0 for s in DEFAULT_ORDER} | {"exciter": 10.0}
    groups = plan_stage_groups(DEFAULT_ORDER, 3, costs)
    assert ("exciter",) in groups


def test_pipeline_mode_on_one_node_adds_whole_extra_pipelines():
    plan = plan_farm(DEFAULT_ORDER, gpus=2 * S + 3)
    widths = [len(p.groups) for p in plan.pipelines]
    assert widths == [S, S, 3]
    assert sum(p.gpus for p in plan.pipelines) == 2 * S + 3
    for p in plan.pipelines:
        assert p.strategy == "STRICT_PACK"
        assert [g.num_gpus for g in p.groups] == [1.0] * len(p.groups)
        assert [b["GPU"] for b in p.bundles] == [1.0] * len(p.groups)
        assert tuple(itertools.chain.from_iterable(g.stages for g in p.groups)) == DEFAULT_ORDER


def test_pipelines_never_wider_than_a_node():
    plan = plan_farm(DEFAULT_ORDER, gpus=8, gpus_per_node=4)
    assert [len(p.groups) for p in plan.pipelines] == [4, 4]
    plan = plan_farm(DEFAULT_ORDER, gpus=10, gpus_per_node=8)
    # Node 1: one 7-wide pipeline + one of 1; node 2 (2 GPUs): one of 2.
    assert [len(p.groups) for p in plan.pipelines] == [7, 1, 2]
    assert all(p.gpus <= 8 for p in plan.pipelines)


def test_replicated_mode_runs_the_whole_chain_per_gpu():
    plan = plan_farm(DEFAULT_ORDER, gpus=3, mode="replicated")
    assert len(plan.pipelines) == 3
    for p in plan.pipelines:
        assert [g.stages for g in p.groups] == [DEFAULT_ORDER]
        assert p.groups[0].num_gpus == 1.0


def test_more_groups_than_gpus_share_gpus_fractionally():
    plan = plan_farm(DEFAULT_ORDER, gpus=2, groups=S)
    (pipe,) = plan.pipelines
    shares = [g.num_gpus for g in pipe.groups]
    assert len(shares) == S
    assert all(0 < s < 1 for s in shares)
    assert sum(shares) <= 2.0
    # Ray counts resources in units of 1e-4: every share is a whole number of them.
    assert all(abs(s * 1e4 - round(s * 1e4)) < 1e-6 for s in shares)


def test_cpu_plan_has_no_gpus():
    plan = plan_farm(DEFAULT_ORDER, gpus=0, cpu_pipelines=2)
    assert len(plan.pipelines) == 2
    for p in plan.pipelines:
        assert all(g.num_gpus == 0 for g in p.groups)
        assert all("GPU" not in b for b in p.bundles)
    replicated = plan_farm(DEFAULT_ORDER, gpus=0, mode="replicated")
    assert [g.stages for g in replicated.pipelines[0].groups] == [DEFAULT_ORDER]


def test_bad_plans_are_clear_errors():
    with pytest.raises(InvalidParameterError, match="mode"):
        plan_farm(DEFAULT_ORDER, gpus=2, mode="sideways")
    with pytest.raises(InvalidParameterError, match="gpus"):
        plan_farm(DEFAULT_ORDER, gpus=-1)
    with pytest.raises(InvalidParameterError, match="groups"):
        plan_farm(DEFAULT_ORDER, gpus=2, groups=S + 1)
    with pytest.raises(InvalidParameterError, match="no stages"):
        plan_stage_groups((), 2)
