"""bigbatch.schedules against the torch schedulers they re-implement, table-driven.

Each case builds the torch reference exactly as a training loop would (an SGD optimizer over a
dummy parameter, the scheduler(s) stepped per iteration or per epoch as the recipe says), records
the lr and momentum that every optimizer step would use, and compares the pure functions with it
over the whole run and, explicitly, at steps b-1, b, b+1 of every boundary (end of warmup, each
milestone, each half-cycle turn and cycle end). Small steps_per_epoch keep it fast.
"""

from __future__ import annotations

import math
import pickle
import warnings

import pytest
import torch

from bigbatch.config import RunConfig
from bigbatch.experiments import load_experiment
from bigbatch.schedules import cyclic_step_size, epoch_of, lr_schedule, momentum_schedule

BASE = RunConfig(lr=0.01, batch_size=256, base_batch_size=32, lr_scaling="linear", epochs=8)  # scaled lr 0.08


def torch_reference(cfg: RunConfig, spe: int, n_steps: int) -> tuple[list[float], list[float]]:
    """(lr, momentum) used by optimizer steps 0..n_steps-1 according to torch's schedulers."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.scaled_lr, momentum=cfg.momentum)
    per_iteration = True
    if cfg.schedule == "constant":
        sched = None
    elif cfg.schedule == "warmup_step":
        per_iteration = cfg.warmup_per_iteration
        unit = spe if per_iteration else 1  # scheduler steps per epoch
        parts = []
        if cfg.warmup_epochs:
            parts.append(
                torch.optim.lr_scheduler.LinearLR(
                    opt, start_factor=cfg.lr / cfg.scaled_lr, end_factor=1.0, total_iters=cfg.warmup_epochs * unit
                )
            )
        parts.append(torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[m * unit for m in cfg.milestones], gamma=cfg.gamma))
        sched = torch.optim.lr_scheduler.ChainedScheduler(parts)
    elif cfg.schedule == "cyclic":
        lr, f = cfg.scaled_lr, cfg.scaled_factor_lr
        sched = torch.optim.lr_scheduler.CyclicLR(
            opt,
            base_lr=lr / f,
            max_lr=lr * f,
            step_size_up=round(cfg.cyclic_step_epochs * spe),
            mode=cfg.cyclic_mode,
            gamma=cfg.cyclic_gamma,
            cycle_momentum=cfg.cycle_momentum,
            base_momentum=cfg.base_momentum,
            max_momentum=cfg.max_momentum,
        )
    else:
        raise AssertionError(cfg.schedule)
    lrs, moms = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in range(n_steps):
            lrs.append(float(opt.param_groups[0]["lr"]))
            moms.append(float(opt.param_groups[0]["momentum"]))
            opt.step()  # no grad: a no-op, but keeps torch's step-order bookkeeping honest
            if sched is not None and (per_iteration or (s + 1) % spe == 0):
                sched.step()
    return lrs, moms


def boundaries(cfg: RunConfig, spe: int, n_steps: int) -> list[int]:
    """Steps where the schedule changes regime."""
    if cfg.schedule == "warmup_step":
        b = [cfg.warmup_epochs * spe] + [m * spe for m in cfg.milestones]
    elif cfg.schedule == "cyclic":
        half = cyclic_step_size(cfg, spe)
        b = list(range(half, n_steps + 1, half))
    else:
        b = [spe * e for e in range(1, cfg.total_epochs)]
    return [x for x in b if 0 < x < n_steps - 1]


# name, RunConfig changes, steps_per_epoch
CASES = [
    ("constant", dict(schedule="constant"), 3),
    ("constant-momentum", dict(schedule="constant", momentum=0.9), 7),
    (
        "warmup-per-iteration",
        dict(schedule="warmup_step", warmup_epochs=2, milestones=[3, 5, 7], gamma=0.1, warmup_per_iteration=True),
        7,
    ),
    (
        "warmup-per-epoch",
        dict(schedule="warmup_step", warmup_epochs=2, milestones=[3, 5, 7], gamma=0.1, warmup_per_iteration=False),
        3,
    ),
    (
        "warmup-per-iteration-milestone-inside-warmup",
        dict(schedule="warmup_step", warmup_epochs=3, milestones=[2, 5], gamma=0.5, warmup_per_iteration=True, momentum=0.5),
        3,
    ),
    (
        "warmup-per-epoch-milestone-inside-warmup",
        dict(schedule="warmup_step", warmup_epochs=3, milestones=[2, 5], gamma=0.5, warmup_per_iteration=False),
        7,
    ),
    ("no-warmup-step-decay", dict(schedule="warmup_step", warmup_epochs=0, milestones=[2, 4], gamma=0.1), 3),
    ("cyclic-triangular", dict(schedule="cyclic", cyclic_mode="triangular", cyclic_step_epochs=1, factor_lr=4), 3),
    ("cyclic-triangular2", dict(schedule="cyclic", cyclic_mode="triangular2", cyclic_step_epochs=1, factor_lr=10), 7),
    (
        "cyclic-triangular2-fractional-half-cycle",
        dict(schedule="cyclic", cyclic_mode="triangular2", cyclic_step_epochs=4 / 3, factor_lr=10),
        3,
    ),
    (
        "cyclic-exp-range",
        dict(schedule="cyclic", cyclic_mode="exp_range", cyclic_gamma=0.97, cyclic_step_epochs=1, factor_lr=3),
        3,
    ),
    (
        "cyclic-triangular-momentum",
        dict(schedule="cyclic", cyclic_mode="triangular", cyclic_step_epochs=1, cycle_momentum=True),
        3,
    ),
    (
        "cyclic-triangular2-momentum",
        dict(schedule="cyclic", cyclic_mode="triangular2", cyclic_step_epochs=1, cycle_momentum=True, base_momentum=0.8, max_momentum=0.95),
        7,
    ),
    (
        "cyclic-exp-range-momentum",
        dict(schedule="cyclic", cyclic_mode="exp_range", cyclic_gamma=0.95, cyclic_step_epochs=1, cycle_momentum=True),
        3,
    ),
    (
        "cyclic-momentum-off-keeps-sgd-momentum",
        dict(schedule="cyclic", cyclic_mode="triangular2", cyclic_step_epochs=1, cycle_momentum=False, momentum=0.3),
        3,
    ),
    (
        "cyclic-sqrt-factor",
        dict(schedule="cyclic", cyclic_mode="triangular2", cyclic_step_epochs=1, factor_lr_scaling="sqrt"),
        3,
    ),
]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


@pytest.mark.parametrize("name,changes,spe", CASES, ids=[c[0] for c in CASES])
def test_matches_torch_scheduler(name, changes, spe):
    cfg = BASE.replace(**changes)
    n_steps = cfg.total_epochs * spe
    ref_lr, ref_mom = torch_reference(cfg, spe, n_steps)
    lr_fn, mom_fn = lr_schedule(cfg, spe), momentum_schedule(cfg, spe)
    ours_lr = [lr_fn(s) for s in range(n_steps)]
    ours_mom = [mom_fn(s) for s in range(n_steps)]
    for s in range(n_steps):
        assert _close(ours_lr[s], ref_lr[s]), f"{name}: lr at step {s}: {ours_lr[s]} != torch {ref_lr[s]}"
        assert _close(ours_mom[s], ref_mom[s]), f"{name}: momentum at step {s}: {ours_mom[s]} != torch {ref_mom[s]}"
    # explicitly on both sides of every boundary
    bs = boundaries(cfg, spe, n_steps)
    assert bs, f"{name}: the run is too short to cross a boundary"
    for b in bs:
        for s in (b - 1, b, b + 1):
            assert _close(lr_fn(s), ref_lr[s]), f"{name}: lr at boundary {b}, step {s}"
            assert _close(mom_fn(s), ref_mom[s]), f"{name}: momentum at boundary {b}, step {s}"
    # the callables pickle (Ray ships them) and are deterministic
    assert pickle.loads(pickle.dumps(lr_fn))(n_steps - 1) == ours_lr[-1]


def test_warmup_boundaries_land_where_the_recipe_says():
    """Not only equal to torch: the warmup ends and the decays happen at the intended steps."""
    spe = 7
    cfg = BASE.replace(schedule="warmup_step", warmup_epochs=2, milestones=[3, 5, 7], gamma=0.1)
    lr = lr_schedule(cfg, spe)
    assert lr(0) == pytest.approx(0.01)  # the unscaled base lr
    assert lr(2 * spe - 1) < 0.08 and lr(2 * spe) == pytest.approx(0.08)  # per iteration: reached at step 14
    assert lr(2 * spe - 1) == pytest.approx(0.01 + 0.07 * 13 / 14)
    for k, m in enumerate([3, 5, 7]):
        assert lr(m * spe - 1) == pytest.approx(0.08 * 0.1**k)
        assert lr(m * spe) == pytest.approx(0.08 * 0.1 ** (k + 1))
    per_epoch = lr_schedule(cfg.replace(warmup_per_iteration=False), spe)
    assert [per_epoch(s) for s in range(spe)] == [pytest.approx(0.01)] * spe  # flat within an epoch
    assert per_epoch(spe) == pytest.approx(0.045) and per_epoch(2 * spe - 1) == pytest.approx(0.045)
    assert per_epoch(2 * spe) == pytest.approx(0.08)


def test_cyclic_turns_where_the_recipe_says():
    spe = 3
    cfg = BASE.replace(schedule="cyclic", cyclic_mode="triangular2", cyclic_step_epochs=1, factor_lr=10, cycle_momentum=True)
    lr, mom = lr_schedule(cfg, spe), momentum_schedule(cfg, spe)
    lo, hi = 0.008, 0.8
    assert lr(0) == pytest.approx(lo) and mom(0) == pytest.approx(0.9)
    assert lr(3) == pytest.approx(hi) and mom(3) == pytest.approx(0.8)  # first peak, momentum trough
    assert lr(2) < lr(3) > lr(4)
    assert lr(6) == pytest.approx(lo) and mom(6) == pytest.approx(0.9)  # cycle end
    assert lr(9) == pytest.approx(lo + (hi - lo) / 2) and mom(9) == pytest.approx(0.85)  # peak halves
    assert lr(15) == pytest.approx(lo + (hi - lo) / 4)


def test_paper_exp5_bs1024_bounds_and_full_run():
    """exp5 at bs 1024: lr 0.32, f 10 -> CyclicLR between 0.032 and 3.2, 12-epoch half cycles."""
    cfg = load_experiment("exp5").run_config(batch_size=1024)
    assert cfg.scaled_lr == pytest.approx(0.32) and cfg.scaled_factor_lr == 10
    spe = 40000 // 1024  # 39 with drop_last
    lr = lr_schedule(cfg, spe)
    half = 12 * spe
    assert cyclic_step_size(cfg, spe) == half == 468
    assert lr(0) == pytest.approx(0.032)
    assert lr(half) == pytest.approx(3.2)
    assert lr(2 * half) == pytest.approx(0.032)
    assert lr(3 * half) == pytest.approx(0.032 + (3.2 - 0.032) / 2)  # triangular2: second peak 1.616
    assert lr(5 * half) == pytest.approx(0.032 + (3.2 - 0.032) / 4)
    assert momentum_schedule(cfg, spe)(half) == 0.0  # text recipe: no momentum
    # the authors' code: torch's default cycle_momentum=True; compare the whole 100-epoch run
    code = load_experiment("exp5", recipe="authors-code").run_config(batch_size=1024)
    assert code.cycle_momentum
    n = code.total_epochs * spe
    ref_lr, ref_mom = torch_reference(code, spe, n)
    lr_c, mom_c = lr_schedule(code, spe), momentum_schedule(code, spe)
    assert all(_close(lr_c(s), ref_lr[s]) for s in range(n))
    assert all(_close(mom_c(s), ref_mom[s]) for s in range(n))
    assert mom_c(0) == pytest.approx(0.9) and mom_c(half) == pytest.approx(0.8)


@pytest.mark.parametrize(
    "bs,f", [(32, 10.0), (64, 7.0711), (128, 5.0), (256, 3.5355), (512, 2.5), (1024, 1.7678)]
)
def test_paper_exp6_eq2_factors(bs, f):
    """exp6, eq. 2: f = 10 * sqrt(32 / bs) -> 10, 7.07, 5, 3.54, 2.5, 1.77; bounds lr/f .. lr*f."""
    cfg = load_experiment("exp6").run_config(batch_size=bs)
    assert cfg.scaled_factor_lr == pytest.approx(f, abs=1e-4)
    spe = 40000 // bs
    lr = lr_schedule(cfg, spe)
    scaled = 0.01 * bs / 32
    assert lr(0) == pytest.approx(scaled / f, rel=1e-4)
    assert lr(12 * spe) == pytest.approx(scaled * f, rel=1e-4)


def test_paper_exp4_full_run_matches_torch():
    """exp4 at bs 1024, both recipes, the whole 100 epochs against LinearLR + MultiStepLR."""
    spe = 40000 // 1024
    for recipe in ("text", "authors-code"):
        cfg = load_experiment("exp4", recipe=recipe).run_config(batch_size=1024)
        assert cfg.warmup_per_iteration == (recipe == "text")
        n = cfg.total_epochs * spe
        ref_lr, _ = torch_reference(cfg, spe, n)
        lr = lr_schedule(cfg, spe)
        assert all(_close(lr(s), ref_lr[s]) for s in range(n)), recipe
        assert lr(0) == pytest.approx(0.01)
        assert lr(5 * spe) == pytest.approx(0.32)
        assert lr(30 * spe) == pytest.approx(0.032) and lr(90 * spe) == pytest.approx(0.00032)


def test_epoch_of_and_input_checks():
    assert [epoch_of(s, 3) for s in range(7)] == [0, 0, 0, 1, 1, 1, 2]
    with pytest.raises(ValueError):
        lr_schedule(BASE, 0)
    with pytest.raises(ValueError):
        lr_schedule(BASE, 3)(-1)
