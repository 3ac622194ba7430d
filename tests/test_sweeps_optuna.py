"""sweeps.optuna_factor_lr: TPE over factor_lr per batch size with ASHA, the study persisted in SQLite
(a second run with the same --name continues it), trials in MLflow, the best f beside eq. 2's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_sweeps_e2e import trial_runs

REPO = Path(__file__).resolve().parent.parent


def test_optuna_smoke_search_persists_and_continues(tmp_path):
    import optuna

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    base = [sys.executable, "-m", "sweeps.optuna_factor_lr", "--smoke-test", "--storage-path", str(tmp_path / "rr"),
            "--name", "opt", "--tracking-uri", uri, "--factor-lr-min", "1", "--factor-lr-max", "20"]
    r = subprocess.run(base + ["--batch-sizes", "64", "128", "--num-samples", "2"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    head = next(i for i, l in enumerate(lines) if l.startswith("best factor per batch size"))  # f after eq. 2 (exp5: = factor_lr)
    table = {int(l.split()[0]): l.split() for l in lines[head + 2: head + 4]}
    assert set(table) == {64, 128}
    assert float(table[64][-1]) == 7.07 and float(table[128][-1]) == 5.0  # eq. 2: 10 * sqrt(32 / bs)
    for bs in (64, 128):
        assert 1.0 <= float(table[bs][2]) <= 20.0

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'rr' / 'opt' / 'optuna.db'}")
    study = optuna.load_study(study_name="opt-bs64", storage=storage)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 2
    assert all(1.0 <= t.params["factor_lr"] <= 20.0 for t in study.trials)

    _, parents, children = trial_runs(uri, "bigbatch-optuna-factor-lr")
    assert len(parents) == 1 and len(children) == 4
    assert all(c.data.tags["bigbatch.search"] == "optuna" for c in children)
    assert all(c.data.tags["bigbatch.status"] in ("completed", "diverged", "stopped") for c in children)

    # the same --name continues the persisted study: 2 done, 1 more to reach 3
    r = subprocess.run(base + ["--batch-sizes", "64", "--num-samples", "3"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "batch size 64: 2 trials already in study opt-bs64, running 1 more" in r.stdout
    study = optuna.load_study(study_name="opt-bs64", storage=storage)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 3
