"""Determinism (issue 6; docs/reliability.md#determinism).

On CPU the same config and seed give bit-identical metrics, run to run and process to process; a
different seed gives different ones. ``deterministic=true`` switches torch to deterministic algorithms
(and off cuDNN autotuning) for the run only, and changes nothing on CPU. On a GPU (skipped without
one) two ``deterministic=true`` runs are bit-identical.

Also recorded elsewhere: tests/test_train.py (same seed in one process, exact resume), and
tests/test_reliability_faults.py (sweeps killed and resumed, or with a worker killed, end with the
same metrics as an uninterrupted sweep: determinism across Ray workers and restores).
"""

from __future__ import annotations

import json

import pytest
import torch

from bigbatch.config import RunConfig
from bigbatch.train import train
from reliability_helpers import TIMING_KEYS, run

# Every source of randomness at once: ghost BN, cyclic lr with cycling momentum, every augmentation
# (also on validation), dropout, weight decay, a kept partial batch.
STATEFUL = dict(dataset="synthetic", synthetic_size=256, val_size=64, width_mult=0.125, eval_batch_size=256,
                device="cpu", norm="ghost", virtual_batch_size=16, schedule="cyclic", factor_lr=4.0,
                cyclic_step_epochs=1, cycle_momentum=True, rotate_p=1.0, translate_p=1.0, augment_val=True,
                weight_decay=1e-4, drop_last=False, epochs=2, batch_size=40, lr=0.05, seed=0,
                gns_images=80, sharpness_images=32, sharpness_iters=2)  # the measurements on, small


def _cli(tmp_path, name, **changes):
    cfg = {**STATEFUL, **changes}
    d = tmp_path / name
    d.mkdir()
    r = run(["-m", "bigbatch.train", "--set", *(f"{k}={json.dumps(v)}" for k, v in cfg.items())], cwd=d, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    epochs = [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in lines[:-1]]
    summary = {k: v for k, v in lines[-1]["summary"].items() if k not in TIMING_KEYS}
    return epochs, summary


@pytest.mark.slow
def test_same_config_and_seed_identical_metrics_in_separate_processes(tmp_path):
    a_epochs, a_summary = _cli(tmp_path, "a")
    b_epochs, b_summary = _cli(tmp_path, "b")
    assert len(a_epochs) == 2
    assert a_epochs == b_epochs  # every loss, accuracy, lr and momentum, bit for bit
    assert a_summary == b_summary  # test_acc, test_loss, best epoch, ...
    c_epochs, _ = _cli(tmp_path, "c", seed=1, epochs=1)  # the seed is really used
    assert c_epochs[0]["train_loss"] != a_epochs[0]["train_loss"]


@pytest.fixture
def restore_torch_flags():
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


def test_deterministic_key_sets_torch_for_the_run_and_changes_nothing_on_cpu(restore_torch_flags):
    seen = {}

    def spy(tag):
        def report(m):
            seen[tag] = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                         torch.backends.cudnn.benchmark)
        return report

    cfg = RunConfig(**dict(STATEFUL, epochs=1))
    on = train(cfg.replace(deterministic=True), report=spy("on"))
    off = train(cfg, report=spy("off"))  # the next run in the same process (a reused Ray actor) is back to default
    assert seen == {"on": (True, True, False), "off": (False, False, False)}
    strip = lambda h: [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in h]  # noqa: E731
    assert strip(on["history"]) == strip(off["history"]) and on["test_loss"] == off["test_loss"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_deterministic_mode_on_gpu_is_bit_identical(restore_torch_flags):
    cfg = RunConfig(**dict(STATEFUL, device="cuda", deterministic=True, epochs=2, width_mult=0.25))
    a, b = train(cfg), train(cfg)
    strip = lambda h: [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"]) and a["test_loss"] == b["test_loss"]
