"""Shared test set-up. Keep it small: area-specific fixtures live in their own test modules."""
import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def exp6_smoke(tmp_path_factory):
    """One ``python -m sweeps.exp6 --smoke-test`` (six trials) into the default SQLite store of its working
    directory, shared by every module that only reads a finished exp6 smoke store (tests/test_sweeps_e2e.py,
    tests/test_models_registry.py). Returns (working directory, CompletedProcess, wall seconds).
    Readers that write to the store (the Model Registry) work on a copy of ``mlflow.db``."""
    tmp = tmp_path_factory.mktemp("exp6")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "sweeps.exp6", "--smoke-test", "--storage-path", str(tmp / "rr"), "--name", "smoke6"],
                       cwd=tmp, env=env, capture_output=True, text=True, timeout=400)
    wall = time.time() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp, r, wall
