"""bigbatch.schedules against the torch schedulers they re-implement, table-driven.

Each case builds the torch reference exactly as a training loop would (an SGD optimizer over a
dummy parameter, the scheduler(s) stepped per iteration or per epoch as the recipe says), records
the lr and momentum that every optimizer step would use, and compares the pure functions with it
over the whole run and, explicitly, at steps b-1, b, b+1 of every boundary (end of warmup, each
milestone, each half-cycle turn and cycle end). Small steps_per_epoch keep it fast. CyclicLR's
step_size_up is built from the number of FULL batches per epoch (the authors' ``12 * (40000 // bs)``),
which is one less than steps_per_epoch when the short last batch is kept (drop_last false).
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


def torch_reference(cfg: RunConfig, spe: int, n_steps: int, full: int | None = None) -> tuple[list[float], list[float]]:
    """(lr, momentum) used by optimizer steps 0..n_steps-1 according to torch's schedulers; ``spe``
    optimizer steps per epoch, ``full`` of them full batches (default: all)."""
    full = spe if full is None else full
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
            step_size_up=round(cfg.cyclic_step_epochs * full),
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


def boundaries(cfg: RunConfig, spe: int, n_steps: int, full: int) -> list[int]:
    """Steps where the schedule changes regime."""
    if cfg.schedule == "warmup_step":
        b = [cfg.warmup_epochs * spe] + [m * spe for m in cfg.milestones]
    elif cfg.schedule == "cyclic":
        half = cyclic_step_size(cfg, full)
        b = list(range(half, n_steps + 1, half))
    else:
        b = [spe * e for e in range(1, cfg.total_epochs)]
    return [x for x in b if 0 < x < n_steps - 1]


# name, RunConfig changes, steps_per_epoch[, full batches per epoch when the last batch is short]
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
    # drop_last false: a short last batch is a step of its own, but the half-cycle counts full batches
    (
        "cyclic-triangular2-short-last-batch",
        dict(schedule="cyclic", cyclic_mode="triangular2", cyclic_step_epochs=2, factor_lr=10),
        4, 3,
    ),
    (
        "cyclic-triangular2-momentum-short-last-batch",
        dict(schedule="cyclic", cyclic_mode="triangular2", cyclic_step_epochs=1, cycle_momentum=True),
        8, 7,
    ),
    (
        "cyclic-exp-range-fractional-short-last-batch",
        dict(schedule="cyclic", cyclic_mode="exp_range", cyclic_gamma=0.97, cyclic_step_epochs=4 / 3, factor_lr=3),
        5, 3,
    ),
    (
        "warmup-per-iteration-short-last-batch",
        dict(schedule="warmup_step", warmup_epochs=2, milestones=[3, 5, 7], gamma=0.1, warmup_per_iteration=True),
        4, 3,
    ),
    (
        "warmup-per-epoch-short-last-batch",
        dict(schedule="warmup_step", warmup_epochs=2, milestones=[3, 5, 7], gamma=0.1, warmup_per_iteration=False),
        4, 3,
    ),
]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


@pytest.mark.parametrize("name,changes,spe,full", [(*c, c[2]) if len(c) == 3 else c for c in CASES],
                         ids=[c[0] for c in CASES])
def test_matches_torch_scheduler(name, changes, spe, full):
    cfg = BASE.replace(**changes)
    n_steps = cfg.total_epochs * spe
    ref_lr, ref_mom = torch_reference(cfg, spe, n_steps, full)
    lr_fn, mom_fn = lr_schedule(cfg, spe, full), momentum_schedule(cfg, spe, full)
    ours_lr = [lr_fn(s) for s in range(n_steps)]
    ours_mom = [mom_fn(s) for s in range(n_steps)]
    for s in range(n_steps):
        assert _close(ours_lr[s], ref_lr[s]), f"{name}: lr at step {s}: {ours_lr[s]} != torch {ref_lr[s]}"
        assert _close(ours_mom[s], ref_mom[s]), f"{name}: momentum at step {s}: {ours_mom[s]} != torch {ref_mom[s]}"
    # explicitly on both sides of every boundary
    bs = boundaries(cfg, spe, n_steps, full)
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
    lr = lr_schedule(cfg, spe, spe)
    assert lr(0) == pytest.approx(0.01)  # the unscaled base lr
    assert lr(2 * spe - 1) < 0.08 and lr(2 * spe) == pytest.approx(0.08)  # per iteration: reached at step 14
    assert lr(2 * spe - 1) == pytest.approx(0.01 + 0.07 * 13 / 14)
    for k, m in enumerate([3, 5, 7]):
        assert lr(m * spe - 1) == pytest.approx(0.08 * 0.1**k)
        assert lr(m * spe) == pytest.approx(0.08 * 0.1 ** (k + 1))
    per_epoch = lr_schedule(cfg.replace(warmup_per_iteration=False), spe, spe)
    assert [per_epoch(s) for s in range(spe)] == [pytest.approx(0.01)] * spe  # flat within an epoch
    assert per_epoch(spe) == pytest.approx(0.045) and per_epoch(2 * spe - 1) == pytest.approx(0.045)
    assert per_epoch(2 * spe) == pytest.approx(0.08)


def test_cyclic_turns_where_the_recipe_says():
    spe = 3
    cfg = BASE.replace(schedule="cyclic", cyclic_mode="triangular2", cyclic_step_epochs=1, factor_lr=10, cycle_momentum=True)
    lr, mom = lr_schedule(cfg, spe, spe), momentum_schedule(cfg, spe, spe)
    lo, hi = 0.008, 0.8
    assert lr(0) == pytest.approx(lo) and mom(0) == pytest.approx(0.9)
    assert lr(3) == pytest.approx(hi) and mom(3) == pytest.approx(0.8)  # first peak, momentum trough
    assert lr(2) < lr(3) > lr(4)
    assert lr(6) == pytest.approx(lo) and mom(6) == pytest.approx(0.9)  # cycle end
    assert lr(9) == pytest.approx(lo + (hi - lo) / 2) and mom(9) == pytest.approx(0.85)  # peak halves
    assert lr(15) == pytest.approx(lo + (hi - lo) / 4)


def test_cyclic_half_period_counts_full_batches():
    """A half-cycle of 2 epochs on 3 full batches + 1 short one per epoch: 6 steps, not 8; the peak
    falls inside epoch 2 (steps 4..7), at step 6."""
    cfg = BASE.replace(schedule="cyclic", cyclic_mode="triangular", cyclic_step_epochs=2, factor_lr=10)
    assert cyclic_step_size(cfg, 3) == 6
    lr = lr_schedule(cfg, 4, 3)
    assert lr(5) < lr(6) > lr(7) and lr(6) == pytest.approx(0.8) and lr(12) == pytest.approx(0.008)


def test_paper_exp5_bs1024_bounds_and_full_run():
    """exp5 at bs 1024: lr 0.32, f 10 -> CyclicLR between 0.032 and 3.2; half a cycle is
    12 * (40000 // 1024) = 468 steps, while an epoch is 40 steps (39 full batches + the last 64 images)."""
    cfg = load_experiment("exp5").run_config(batch_size=1024)
    assert cfg.scaled_lr == pytest.approx(0.32) and cfg.scaled_factor_lr == 10 and not cfg.drop_last
    spe, full = math.ceil(40000 / 1024), 40000 // 1024
    assert (spe, full) == (40, 39)
    lr = lr_schedule(cfg, spe, full)
    half = 12 * full
    assert cyclic_step_size(cfg, full) == half == 468  # the authors' 12 * (40000 // bs)
    assert lr(0) == pytest.approx(0.032)
    assert lr(half - 1) < lr(half) > lr(half + 1)
    assert lr(half) == pytest.approx(3.2)
    assert lr(2 * half) == pytest.approx(0.032)
    assert lr(3 * half) == pytest.approx(0.032 + (3.2 - 0.032) / 2)  # triangular2: second peak 1.616
    assert lr(5 * half) == pytest.approx(0.032 + (3.2 - 0.032) / 4)
    assert momentum_schedule(cfg, spe, full)(half) == 0.0  # text recipe: no momentum
    # the authors' code: torch's default cycle_momentum=True; compare the whole 100-epoch run
    code = load_experiment("exp5", recipe="authors-code").run_config(batch_size=1024)
    assert code.cycle_momentum
    n = code.total_epochs * spe
    ref_lr, ref_mom = torch_reference(code, spe, n, full)
    lr_c, mom_c = lr_schedule(code, spe, full), momentum_schedule(code, spe, full)
    assert all(_close(lr_c(s), ref_lr[s]) for s in range(n))
    assert all(_close(mom_c(s), ref_mom[s]) for s in range(n))
    assert mom_c(0) == pytest.approx(0.9) and mom_c(half) == pytest.approx(0.8)


@pytest.mark.parametrize(
    "bs,f,half", [(32, 10.0, 15000), (64, 7.0711, 7500), (128, 5.0, 3744), (256, 3.5355, 1872), (512, 2.5, 936),
                  (1024, 1.7678, 468)]
)
def test_paper_exp6_eq2_factors(bs, f, half):
    """exp6, eq. 2: f = 10 * sqrt(32 / bs) -> 10, 7.07, 5, 3.54, 2.5, 1.77; bounds lr/f .. lr*f; the
    first peak at 12 * (40000 // bs) steps."""
    cfg = load_experiment("exp6").run_config(batch_size=bs)
    assert cfg.scaled_factor_lr == pytest.approx(f, abs=1e-4)
    spe, full = math.ceil(40000 / bs), 40000 // bs
    assert cyclic_step_size(cfg, full) == half == 12 * (40000 // bs)
    lr = lr_schedule(cfg, spe, full)
    scaled = 0.01 * bs / 32
    assert lr(0) == pytest.approx(scaled / f, rel=1e-4)
    assert lr(half) == pytest.approx(scaled * f, rel=1e-4)


def test_paper_exp4_full_run_matches_torch():
    """exp4 at bs 1024, both recipes, the whole 100 epochs of 40 steps against LinearLR + MultiStepLR."""
    spe, full = math.ceil(40000 / 1024), 40000 // 1024
    for recipe in ("text", "authors-code"):
        cfg = load_experiment("exp4", recipe=recipe).run_config(batch_size=1024)
        assert cfg.warmup_per_iteration == (recipe == "text")
        n = cfg.total_epochs * spe
        ref_lr, _ = torch_reference(cfg, spe, n, full)
        lr = lr_schedule(cfg, spe, full)
        assert all(_close(lr(s), ref_lr[s]) for s in range(n)), recipe
        assert lr(0) == pytest.approx(0.01)
        assert lr(5 * spe) == pytest.approx(0.32)
        assert lr(30 * spe) == pytest.approx(0.032) and lr(90 * spe) == pytest.approx(0.00032)


def test_epoch_of_and_input_checks():
    assert [epoch_of(s, 3) for s in range(7)] == [0, 0, 0, 1, 1, 1, 2]
    with pytest.raises(ValueError, match="steps_per_epoch must be a positive integer"):
        lr_schedule(BASE, 0, 0)
    with pytest.raises(ValueError):
        lr_schedule(BASE, 3, 3)(-1)
    with pytest.raises(ValueError, match="full_batches must be a positive integer"):
        lr_schedule(BASE.replace(schedule="cyclic"), 1, 0)


# ---------------------------------------------------------------------------- epoch_scale
def torch_reference_steps(cfg: RunConfig, spe: int, n_steps: int, warmup: int, milestones: list[int],
                          per_iteration: bool) -> list[float]:
    """lr of optimizer steps 0..n_steps-1 from torch's LinearLR x MultiStepLR (ChainedScheduler) with
    the given scheduler-step counts: ``warmup`` (total_iters) and ``milestones`` in scheduler steps
    (optimizer steps per iteration, epochs per epoch): the integers the scaled recipe should produce."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.scaled_lr)
    parts = []
    if warmup:
        parts.append(torch.optim.lr_scheduler.LinearLR(opt, start_factor=cfg.lr / cfg.scaled_lr, end_factor=1.0, total_iters=warmup))
    parts.append(torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg.gamma))
    sched = torch.optim.lr_scheduler.ChainedScheduler(parts)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in range(n_steps):
            lrs.append(float(opt.param_groups[0]["lr"]))
            opt.step()
            if per_iteration or (s + 1) % spe == 0:
                sched.step()
    return lrs


SCALED_BASE = BASE.replace(epochs=100, schedule="warmup_step", warmup_epochs=5, milestones=[30, 60, 90], gamma=0.1)

# name, epoch_scale, per_iteration, steps_per_epoch, expected (total epochs, warmup in scheduler steps,
# milestones in scheduler steps): per iteration round(x * scale * spe) steps (Python's round, as the
# cyclic half-period), per epoch the scaled epochs rounded half up to whole epochs (at least 1)
SCALED_WARMUP_CASES = [
    ("scale-1-per-iteration-is-today", 1.0, True, 3, (100, 15, [90, 180, 270])),
    ("scale-1-per-epoch-is-today", 1.0, False, 3, (100, 5, [30, 60, 90])),
    ("per-iteration-half-epoch-warmup", 0.1, True, 7, (10, 4, [21, 42, 63])),  # 0.5 * 7 = 3.5 -> 4
    ("per-iteration-half-epoch-warmup-even", 0.1, True, 9, (10, 4, [27, 54, 81])),  # 4.5 -> 4 (half to even)
    ("per-epoch-half-epoch-warmup-is-one-epoch", 0.1, False, 7, (10, 1, [3, 6, 9])),
    ("per-iteration-fractional-milestones", 0.25, True, 3, (25, 4, [22, 45, 68])),  # 3.75 -> 4; 22.5 -> 22, 67.5 -> 68
    ("per-epoch-fractional-milestones-half-up", 0.25, False, 3, (25, 1, [8, 15, 23])),  # 1.25 -> 1; 7.5 -> 8, 22.5 -> 23
    ("per-epoch-warmup-1.5-is-two-epochs", 0.3, False, 4, (30, 2, [9, 18, 27])),  # 30 * 0.3 = 8.999...98 -> 9
    ("per-iteration-scale-0.3", 0.3, True, 4, (30, 6, [36, 72, 108])),
    ("scale-above-1", 1.5, True, 2, (150, 15, [90, 180, 270])),
    ("tiny-scale-per-epoch-warmup-still-one-epoch", 0.04, False, 5, (4, 1, [1, 2, 4])),  # 0.2 -> 1; 1.2 -> 1, 2.4 -> 2, 3.6 -> 4
    ("tiny-scale-per-iteration", 0.04, True, 5, (4, 1, [6, 12, 18])),  # 0.2 * 5 = 1 step of warmup
]


@pytest.mark.parametrize("name,scale,per_iter,spe,expected", SCALED_WARMUP_CASES, ids=[c[0] for c in SCALED_WARMUP_CASES])
def test_epoch_scale_warmup_step_matches_torch(name, scale, per_iter, spe, expected):
    from bigbatch.schedules import milestone_steps, warmup_iters

    cfg = SCALED_BASE.replace(epoch_scale=scale, warmup_per_iteration=per_iter)
    total, warm, miles = expected
    assert cfg.total_epochs == total
    assert warmup_iters(cfg, spe) == warm
    sched_miles = [m // (1 if per_iter else spe) for m in milestone_steps(cfg, spe)]
    assert sched_miles == miles
    n_steps = total * spe
    ref = torch_reference_steps(cfg, spe, n_steps, warm, miles, per_iter)
    lr = lr_schedule(cfg, spe, spe)
    for s in range(n_steps):
        assert _close(lr(s), ref[s]), f"{name}: lr at step {s}: {lr(s)} != torch {ref[s]}"
    unit = 1 if per_iter else spe  # optimizer steps per scheduler step
    # both sides of the end of warmup and of every milestone, in optimizer steps
    for b in [warm * unit] + [m * unit for m in miles]:
        if 0 < b < n_steps:
            assert lr(b - 1) != lr(b), f"{name}: nothing changes at step {b}"
            for s in (b - 1, b, min(b + 1, n_steps - 1)):
                assert _close(lr(s), ref[s]), f"{name}: boundary {b}, step {s}"
    assert lr(0) == pytest.approx(0.01) and lr(warm * unit) == pytest.approx(0.08 * 0.1 ** sum(m * unit <= warm * unit for m in miles))
    if not per_iter:  # per epoch: constant within every epoch
        assert all(lr(e * spe + i) == lr(e * spe) for e in range(total) for i in range(spe))


# name, changes, full batches, half-period in steps: round(cyclic_step_epochs * epoch_scale * full)
SCALED_CYCLIC_CASES = [
    ("scale-1-is-today", dict(cyclic_step_epochs=12), 39, 468),
    ("paper-half-period-tenth", dict(cyclic_step_epochs=12, epoch_scale=0.1), 39, 47),  # 46.8 -> 47
    ("just-below-half", dict(cyclic_step_epochs=12, epoch_scale=0.1), 7, 8),  # 8.4 -> 8
    ("exactly-half-rounds-to-even", dict(cyclic_step_epochs=3, epoch_scale=0.5), 3, 4),  # 4.5 -> 4
    ("at-least-one-step", dict(cyclic_step_epochs=1, epoch_scale=0.01), 3, 1),  # 0.03 -> 1
]


@pytest.mark.parametrize("name,changes,full,half", SCALED_CYCLIC_CASES, ids=[c[0] for c in SCALED_CYCLIC_CASES])
def test_epoch_scale_cyclic_half_period(name, changes, full, half):
    cfg = BASE.replace(schedule="cyclic", cyclic_mode="triangular2", factor_lr=10, **changes)
    assert cyclic_step_size(cfg, full) == half
    spe = full + 1  # a short last batch
    n_steps = max(4 * half + 2, 2 * spe)
    ref_lr, _ = torch_reference(cfg.replace(epoch_scale=1.0, cyclic_step_epochs=half / full), spe, n_steps, full)
    lr = lr_schedule(cfg, spe, full)
    assert all(_close(lr(s), ref_lr[s]) for s in range(n_steps)), name
    if half > 1:
        assert lr(half - 1) < lr(half) > lr(half + 1)  # the peak, on both sides
        assert lr(2 * half - 1) > lr(2 * half) < lr(2 * half + 1)  # the trough


# epochs, epochs_scaling, batch_size, epoch_scale -> total epochs: round(epochs after exp2 scaling * scale), >= 1
TOTAL_EPOCH_CASES = [
    (100, "none", 256, 1.0, 100),
    (100, "none", 256, 0.1, 10),
    (100, "none", 1024, 0.004, 1),  # 0.4 -> at least 1
    (100, "none", 1024, 0.006, 1),  # 0.6 -> 1
    (100, "none", 1024, 0.014, 1),  # 1.4 -> 1
    (100, "none", 1024, 0.016, 2),  # 1.6 -> 2
    (5, "none", 32, 0.5, 2),  # 2.5 -> 2 (Python's round)
    (3, "none", 32, 0.5, 2),  # 1.5 -> 2
    (100, "linear", 1024, 0.1, 320),  # exp2: 100 * 1024 / 32 = 3200, then x 0.1
    (100, "linear", 64, 0.05, 10),
    (8, "linear", 256, 2.0, 128),
]


@pytest.mark.parametrize("epochs,scaling,bs,scale,total", TOTAL_EPOCH_CASES)
def test_epoch_scale_total_epochs(epochs, scaling, bs, scale, total):
    cfg = RunConfig(epochs=epochs, epochs_scaling=scaling, batch_size=bs, epoch_scale=scale)
    assert cfg.total_epochs == total


def test_epoch_scale_one_is_bit_for_bit_today():
    """epoch_scale = 1 (the default) gives the same schedules as a config without the key, for every experiment."""
    for name in ("exp2", "exp4", "exp5", "exp6"):
        for recipe in ("text", "authors-code"):
            for bs in (32, 1024):
                if name == "exp2" and bs == 1024:
                    continue
                cfg = load_experiment(name, recipe).run_config(batch_size=bs)
                d = cfg.to_dict()
                d.pop("epoch_scale")
                plain = RunConfig.from_dict(d)
                assert plain.epoch_scale == 1.0 and plain.total_epochs == cfg.total_epochs
                spe, full = math.ceil(40000 / bs), 40000 // bs
                a, b = lr_schedule(cfg, spe, full), lr_schedule(plain, spe, full)
                assert all(a(s) == b(s) for s in range(0, cfg.total_epochs * spe, 7))
