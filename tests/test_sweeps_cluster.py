"""sweeps on a Ray cluster: two nodes on this machine (ray.cluster_utils.Cluster), a smoke sweep joins
it with --address and runs to the end; a trial that no single node can fit is refused at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_sweeps_e2e import trial_runs

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def run_cli(cluster, tmp_path, *argv, timeout=300):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "sweeps.exp3", "--smoke-test", "--address", cluster.address,
                           "--storage-path", str(tmp_path / "rr"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", *argv],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_smoke_sweep_on_a_two_node_cluster(cluster, tmp_path):
    r = run_cli(cluster, tmp_path, "--batch-sizes", "32", "64", "--name", "two-nodes")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "/2 CPUs" in r.stdout  # the driver joined the 2-node cluster (1 CPU each), it did not start its own Ray
    assert len(cluster.list_all_nodes()) == 2
    _, parents, children = trial_runs(f"sqlite:///{tmp_path / 'm.db'}", "bigbatch-exp3")
    assert len(parents) == 1 and len(children) == 2
    assert all(c.data.tags["bigbatch.status"] == "completed" for c in children)


def test_a_trial_no_node_fits_is_refused(cluster, tmp_path):
    # 2 CPUs in the cluster, but 1 per node: a 2-CPU trial would stay PENDING forever
    t0 = time.time()
    r = run_cli(cluster, tmp_path, "--cpus-per-trial", "2", timeout=120)
    assert r.returncode == 2
    assert "error: --cpus-per-trial 2 but no Ray node has more than 1 CPUs" in r.stderr
    assert time.time() - t0 < 90
