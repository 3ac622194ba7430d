"""One of the paper's effects on real Fashion-MNIST, short enough for `make test` (two runs: this file took 169 s
on the 2-core AVX2 CPU at load 2-5, beside a `make demo`; 29 s on an idle 2-core AVX-512 one, 2026-12-05).

At a large batch with few optimizer steps, ghost batch norm + the linear scaling rule (exp3) beats the
baseline (exp1: lr 0.01 constant, no batch norm), as in Table I (bs 1024: 79.07% vs 39.46%). Here: bs 256,
VGG13 at width 0.125, the first 4,096 images of the 59,000/1,000 split, 10 epochs = 160 steps; exp3's lr is
0.01 * 256 / 32 = 0.08. With the authors' classifier init (normal(0, 0.01)) the network starts on a loss
plateau at ln 10; at lr 0.01 the baseline never leaves it in 160 steps (train loss 2.302 throughout), exp3
leaves it after 30-50 steps.

MEASURED (2026-11-24 23:34-23:45 UTC, 2-core AMD EPYC VM, torch 2.14.1, 1 thread, load 7-10; the runs are
deterministic on a CPU, so the test's seed 0 reproduces its row), test accuracy %, seeds 0, 1, 2:

    exp1 (baseline):            9.80, 10.00, 12.42   mean 10.74 +- 1.46
    exp3 (ghost BN + linear):  32.61, 33.89, 54.44   mean 40.31 +- 12.25
    exp3 - exp1, per seed:     22.81, 23.89, 42.02   (smallest 22.81)

Again on 2026-12-05, another 2-core AMD EPYC VM (Zen 5, AVX-512: oneDNN rounds differently, so the digits
differ from the AVX2 VM's at the same code; runs on one kind of CPU stay deterministic), after ghost batch
norm became one F.batch_norm call and the model channels_last on CPUs (160f698 and the next commit), idle:

    exp1 (baseline):            9.80, 10.00, 12.42   mean 10.74 +- 1.46
    exp3 (ghost BN + linear):  29.60, 31.53, 55.68   mean 38.94 +- 14.53
    exp3 - exp1, per seed:     19.80, 21.53, 43.26   (smallest 19.80)

The assertion: exp3 - exp1 >= MARGIN = 12 points, 8x the baseline's seed spread and about half the smallest
measured difference; and exp3 >= 20% (twice chance). exp3's own spread is large (when it leaves the plateau
varies by seed), which is why the margin is not set nearer the mean difference (29.6).
Re-measure one cell with `python tests/test_real_data.py exp3 1`.

Data: $BIGBATCH_DATA_DIR, else ../shared/data/fashion-mnist beside the repository, else a download
(sweeps.table1.find_fashion_mnist, the presets' own search). Skipped, with the reason, only when none
works; under CI (CI set) it fails instead, since CI has the data.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bigbatch.experiments import load_experiment  # noqa: E402

BATCH_SIZE = 256
SETTINGS = {
    "dataset": "fashion-mnist",
    "download": False,
    "width_mult": 0.125,
    "train_subset": 4096,
    "val_size": 1000,
    "epochs": 10,
    "eval_batch_size": 1000,
    "device": "cpu",
    "gns_images": 0,
    "sharpness_images": 0,
}
MARGIN = 12.0  # points of test accuracy, exp3 over exp1 (measured: see the module docstring)


def fashion_mnist_dir() -> str:
    """The data folder, or skip (fail under CI) with the reason."""
    from sweeps.table1 import find_fashion_mnist

    choice = find_fashion_mnist()
    if choice.data_dir is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI: {choice.note}")
        pytest.skip(choice.note)
    return choice.data_dir


def short_run_accuracy(exp: str, seed: int, data_dir: str) -> float:
    """Test accuracy (%) of one short run of ``exp`` at BATCH_SIZE (its best-validation model)."""
    import torch

    from bigbatch.train import train

    cfg = load_experiment(exp).run_config(batch_size=BATCH_SIZE, seed=seed, data_dir=data_dir, **SETTINGS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as measured (and immune to a busy peer thread); restored for the other tests
    try:
        return float(train(cfg)["test_acc"])
    finally:
        torch.set_num_threads(threads)



@pytest.mark.slow
def test_ghost_bn_and_linear_scaling_beat_the_baseline_at_a_large_batch():
    data_dir = fashion_mnist_dir()
    base = short_run_accuracy("exp1", 0, data_dir)
    ghost = short_run_accuracy("exp3", 0, data_dir)
    assert ghost >= 20.0, f"exp3 learned too little: {ghost:.2f}% (measured 32.61% and 29.60% for seed 0)"
    assert ghost - base >= MARGIN, f"exp3 {ghost:.2f}% vs exp1 {base:.2f}%: margin {ghost - base:.2f} < {MARGIN}"


@pytest.mark.parametrize("ci", ["", "true"])
def test_missing_data_skips_with_the_reason_but_fails_under_ci(monkeypatch, ci):
    import _pytest.outcomes

    import sweeps.table1 as t1

    monkeypatch.setattr(t1, "find_fashion_mnist", lambda: t1.DataChoice(None, "none", "no files (test)"))
    monkeypatch.setenv("CI", ci) if ci else monkeypatch.delenv("CI", raising=False)
    expected = _pytest.outcomes.Failed if ci else _pytest.outcomes.Skipped
    with pytest.raises(expected, match="no files \\(test\\)"):
        fashion_mnist_dir()


if __name__ == "__main__":  # the measurement behind MARGIN: python tests/test_real_data.py exp3 0 (one run per call)
    from sweeps.table1 import find_fashion_mnist

    exp, seed = sys.argv[1], int(sys.argv[2])
    print(f"{exp} seed {seed}: test acc {short_run_accuracy(exp, seed, find_fashion_mnist().data_dir):.2f}", flush=True)
