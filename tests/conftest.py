"""Shared test set-up. Keep it small: area-specific fixtures live in their own test modules."""
import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    """make test runs the modules on two pytest-xdist workers, each module whole on one worker (--dist loadfile,
    in collection order): the modules with the most slow tests go first, so that no long one starts last while
    the other worker idles. Within a module the order is unchanged."""
    slow = Counter(item.module.__name__ for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.module.__name__])  # stable: ties keep the collection order


@pytest.fixture(scope="session")
def exp6_smoke(tmp_path_factory, request):
    """One ``python -m sweeps.exp6 --smoke-test`` (six trials) into the default SQLite store of its working
    directory, shared by every module that only reads a finished exp6 smoke store (tests/test_sweeps_e2e.py,
    tests/test_models_registry.py), across pytest-xdist workers too: the first to ask runs it under a file lock,
    the others read its result. Returns (working directory, CompletedProcess, wall seconds).
    Readers that write to the store (the Model Registry) work on a copy of ``mlflow.db``."""
    from filelock import FileLock  # a Ray dependency

    # one directory per pytest session: under xdist the parent of the worker's base temp (the session's), else ours
    xdist_worker = hasattr(request.config, "workerinput")
    shared = tmp_path_factory.getbasetemp().parent if xdist_worker else tmp_path_factory.getbasetemp()
    tmp, done = shared / "exp6-smoke", shared / "exp6-smoke.json"
    with FileLock(str(shared / "exp6-smoke.lock")):
        if not done.exists():
            tmp.mkdir()
            env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
            t0 = time.time()
            r = subprocess.run([sys.executable, "-m", "sweeps.exp6", "--smoke-test", "--storage-path", str(tmp / "rr"),
                                "--name", "smoke6"], cwd=tmp, env=env, capture_output=True, text=True, timeout=400)
            done.write_text(json.dumps({"args": r.args, "returncode": r.returncode, "stdout": r.stdout,
                                        "stderr": r.stderr, "wall": time.time() - t0}))
        d = json.loads(done.read_text())
    r = subprocess.CompletedProcess(d["args"], d["returncode"], d["stdout"], d["stderr"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp, r, d["wall"]

