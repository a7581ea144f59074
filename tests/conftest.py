"""Shared fixtures.

Ray: one real local cluster per test session (``ray_cluster``), built with
``ray.cluster_utils.Cluster`` so multi-node behaviour is real: a head node with CPUs only and
two worker nodes with four *logical* GPUs each (``num_gpus`` is a Ray resource; no CUDA
needed). Every Ray test module uses it; tests that remove nodes add their own extra node first
and remove only that one, so later modules see the same cluster.
"""

from __future__ import annotations

import os

import pytest

#: Logical GPUs per worker node of the shared test cluster.
GPUS_PER_NODE = 4
WORKER_NODES = 2


@pytest.fixture(scope="session")
def ray_cluster():
    """A running multi-node local Ray cluster, connected; yields the ``Cluster``."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 4, "num_gpus": 0, "resources": {"head": 1.0}},
    )
    for _ in range(WORKER_NODES):
        cluster.add_node(num_cpus=4, num_gpus=GPUS_PER_NODE)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
