"""The search kinds of the one sweep path (sweeps.runner): what differs between a grid sweep and a search.

A kind gives the spaces of a sweep (one grid, or one space per batch size), its MLflow experiment and parent-run
params, and, per space, the Tuner's search algorithm, scheduler and sample count; everything else (the checks,
storage, tracking, data, the parent run, the trainable, the Tuner itself, failure reporting, the summary) is
the runner's, once, for every kind:

- ``Grid``: the experiment's grid over batch size, seed and its searched keys (sweeps.exp1..exp6, lr_grid);
  resumable with ``--resume``.
- ``OptunaFactorLR``: per batch size, Optuna's TPE over factor_lr (log-uniform) with ASHA stopping poor trials
  (sweeps.optuna_factor_lr); each study persists in SQLite, so the same command with the same ``--name``
  continues it.
- ``StepsToTarget``: per batch size, a quasi-random search (Optuna's QMC) over a constant lr, each trial evaluated
  at a fine step cadence and stopped at its target (sweeps.scaling); resumable with ``--resume``.

JSON-able (``to_json`` / ``kind_from_json``): a sweep's kind is saved with its options.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from bigbatch import schema
from bigbatch.config import ConfigError
from bigbatch.experiments import eq2_factor

from .space import SweepSpace, build_space, trial_run_config

if TYPE_CHECKING:
    from .runner import SweepOptions, SweepPlan


@dataclass(frozen=True)
class Job:
    """One Tuner of a sweep: its space, param space and what the kind adds to Tune's config."""

    space: SweepSpace
    param_space: dict[str, Any]
    run_name: str  # the Tune experiment's directory name under the storage path
    search_alg: Any = None
    scheduler: Any = None
    num_samples: int = 1
    keep_checkpoints: int | None = None  # None: the sweep's option
    label: str = ""  # printed before the Tuner starts ("" prints nothing)


@dataclass(frozen=True)
class Grid:
    """The experiment's grid (``tune.grid_search`` over batch size, seed and the searched keys)."""

    kind: str = "grid"
    resumable = True  # --resume restores the Tuner
    early_stopping = False  # a trial without a final status was interrupted, not stopped on purpose

    def spaces(self, opts: "SweepOptions") -> list[SweepSpace]:
        return [build_space(opts.experiment, opts.batch_sizes, opts.seeds, opts.overrides, opts.smoke_test, opts.search)]

    def mlflow_experiment(self, opts: "SweepOptions") -> str:
        return schema.mlflow_experiment(opts.experiment.name)

    def parent_params(self, plan: "SweepPlan") -> dict[str, Any]:
        space = plan.space
        return {"batch_sizes": json.dumps(space.batch_sizes), "seeds": json.dumps(space.seeds),
                "search": json.dumps(space.search), "num_trials": space.num_trials}

    def num_trials(self, plan: "SweepPlan") -> int:
        return plan.space.num_trials

    def planned(self, spaces: list[SweepSpace]) -> list[tuple[SweepSpace, dict[str, Any]]]:
        """(space, trial params) of every trial the sweep will run."""
        return [(space, point) for space in spaces for point in space.points()]

    def jobs(self, plan: "SweepPlan"):
        yield Job(plan.space, plan.space.param_space(), plan.name)

    def summary(self, plan: "SweepPlan", done: list[tuple[Job, list]]) -> dict[str, Any]:
        return {}

    @staticmethod
    def command(opts: "SweepOptions") -> str:
        """The module that runs (and resumes) this sweep: sweeps.exp5, sweeps.lr_grid."""
        return "sweeps." + opts.experiment.name.replace("-", "_")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind}


@dataclass(frozen=True)
class OptunaFactorLR:
    """Per batch size, TPE over factor_lr in [low, high] (log) with ASHA on val_acc per epoch; the studies in
    ``study_storage`` (default sqlite:///<storage>/<name>/optuna.db), one per batch size, named <name>-bs<N>."""

    num_samples: int = 20  # trials per batch size, those already in the study included
    factor_lr_min: float = 1.0
    factor_lr_max: float = 20.0
    grace_period: int | None = None  # ASHA: epochs before a trial may be stopped (None: a tenth of the epochs)
    reduction_factor: float = 3.0
    study_storage: str | None = None
    seed: int = 0  # TPE's seed (the trials' training seed is the sweep's)
    kind: str = "optuna"
    resumable = False  # continued by running the same command with the same --name
    early_stopping = True  # ASHA stops trials: a trial without a final status was stopped, not lost

    def check(self) -> None:
        if not (0 < self.factor_lr_min < self.factor_lr_max):
            raise ConfigError(f"need 0 < --factor-lr-min < --factor-lr-max, got {self.factor_lr_min}, {self.factor_lr_max}")
        if self.num_samples < 1:
            raise ConfigError(f"--num-samples must be >= 1, got {self.num_samples}")

    def spaces(self, opts: "SweepOptions") -> list[SweepSpace]:
        self.check()
        ends = {"factor_lr": [self.factor_lr_min, self.factor_lr_max]}  # validated as a grid: every value between is valid too
        return [build_space(opts.experiment, [bs], 1, opts.overrides, opts.smoke_test, search=ends)
                for bs in (opts.batch_sizes or DEFAULT_OPTUNA_BATCH_SIZES)]

    def mlflow_experiment(self, opts: "SweepOptions") -> str:
        return schema.OPTUNA_EXPERIMENT

    def study_url(self, plan: "SweepPlan") -> str:
        return self.study_storage or f"sqlite:///{plan.path / 'optuna.db'}"

    def parent_params(self, plan: "SweepPlan") -> dict[str, Any]:
        return {"batch_sizes": json.dumps([s.batch_sizes[0] for s in plan.spaces]), "num_samples": self.num_samples,
                "factor_lr_min": self.factor_lr_min, "factor_lr_max": self.factor_lr_max,
                "study_storage": self.study_url(plan)}

    def num_trials(self, plan: "SweepPlan") -> int:
        return self.num_samples * len(plan.spaces)

    def planned(self, spaces: list[SweepSpace]) -> list[tuple[SweepSpace, dict[str, Any]]]:
        """num_samples trials per batch size (their epochs do not depend on the factor drawn)."""
        return [(space, {"batch_size": space.batch_sizes[0], "seed": space.seeds[0], "factor_lr": self.factor_lr_min})
                for space in spaces for _ in range(self.num_samples)]

    def _storage(self, plan: "SweepPlan"):
        import optuna

        from .runner import SweepError

        plan.path.mkdir(parents=True, exist_ok=True)  # the default study DB lives in the sweep's directory
        try:
            return optuna.storages.RDBStorage(self.study_url(plan))
        except Exception as e:
            raise SweepError(f"cannot open the Optuna storage {self.study_url(plan)}: {str(e).splitlines()[0]}") from None

    @staticmethod
    def _done(storage, study_name: str) -> int:
        import optuna

        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            return 0
        return sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)

    def jobs(self, plan: "SweepPlan"):
        import optuna
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch

        storage = self._storage(plan)
        for space in plan.spaces:
            bs = space.batch_sizes[0]
            study_name = f"{plan.name}-bs{bs}"
            done = self._done(storage, study_name)
            todo = max(0, self.num_samples - done)
            label = f"batch size {bs}: {done} trials already in study {study_name}, running {todo} more"
            if not todo:
                if plan.opts.verbose:
                    print(label, flush=True)
                continue
            point = {"batch_size": bs, "seed": space.seeds[0]}
            max_t = trial_run_config(space.base, {**point, "factor_lr": self.factor_lr_min}).total_epochs
            grace = self.grace_period or max(1, max_t // 10)  # max_t + 1 below: trials that reach the end finish themselves
            searcher = OptunaSearch(
                space={"factor_lr": optuna.distributions.FloatDistribution(self.factor_lr_min, self.factor_lr_max, log=True)},
                metric="best_val_acc", mode="max", study_name=study_name, storage=storage, seed=self.seed * 100003 + bs + done,
            )
            scheduler = ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=max_t + 1,
                                      grace_period=min(grace, max_t), reduction_factor=self.reduction_factor)
            yield Job(space, point, f"{plan.name}-bs{bs}-{done}", searcher, scheduler, todo, keep_checkpoints=1, label=label)

    def summary(self, plan: "SweepPlan", done: list[tuple[Job, list]]) -> dict[int, dict[str, Any]]:
        """{batch_size: {factor_lr, scaled_factor_lr, best_val_acc, eq2, trials, errors}} from the studies; printed."""
        import optuna

        storage = self._storage(plan)
        out: dict[int, dict[str, Any]] = {}
        for space in plan.spaces:
            bs = space.batch_sizes[0]
            study = optuna.load_study(study_name=f"{plan.name}-bs{bs}", storage=storage)
            finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
            best = max(finished, key=lambda t: t.value) if finished else None
            f = best.params["factor_lr"] if best else None
            errors = sum(r.error is not None for job, results in done if job.space is space for r in results)
            point = {"batch_size": bs, "seed": space.seeds[0], "factor_lr": f}
            out[bs] = {"factor_lr": f, "best_val_acc": best.value if best else None, "eq2": eq2_factor(bs),
                       "trials": len(finished), "errors": errors,
                       "scaled_factor_lr": trial_run_config(space.base, point).scaled_factor_lr if best else None}
        if plan.opts.verbose:
            print(f"\nbest factor per batch size ({plan.name}; Optuna studies in {self.study_url(plan)}; "
                  f"f after eq. 2 where {plan.opts.experiment.name} scales it):")
            print(f"{'bs':>5} {'trials':>6} {'best f':>8} {'best val_acc':>12} {'eq.2 f':>8}")
            for bs, s in out.items():
                f = f"{s['scaled_factor_lr']:.3g}" if s["scaled_factor_lr"] is not None else "-"
                v = f"{s['best_val_acc']:.2f}" if s["best_val_acc"] is not None else "-"
                print(f"{bs:>5} {s['trials']:>6} {f:>8} {v:>12} {s['eq2']:>8.3g}", flush=True)
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def qmc_unit_points(n: int, dims: int, seed: int) -> list[list[float]]:
    """``n`` points in [0, 1)^dims from Optuna's QMCSampler (scrambled Sobol, seeded): the quasi-random search of
    Shallue et al. A quasi-random search does not depend on results, so the points are drawn up front (an
    in-memory study, each trial told at once) and run as a grid: resumable, and as parallel as the slots
    allow. As Optuna does, the first point is its independent sampler's (seeded random), the rest Sobol's."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dist = {f"u{d}": optuna.distributions.FloatDistribution(0.0, 1.0) for d in range(dims)}
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # QMCSampler is marked experimental; Sobol's balance note for n != 2^k
        sampler = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed,
                                             independent_sampler=optuna.samplers.RandomSampler(seed=seed),
                                             warn_independent_sampling=False)
        study = optuna.create_study(sampler=sampler)
        for _ in range(n):
            trial = study.ask(dist)
            out.append([trial.params[f"u{d}"] for d in range(dims)])
            study.tell(trial, 0.0)
    return out


def log_between(u: float, low: float, high: float) -> float:
    """The point ``u`` in [0, 1] of the log-uniform range [low, high]."""
    import math

    return math.exp(math.log(low) + u * (math.log(high) - math.log(low)))


MOMENTUM_RANGE = (0.01, 1.0)  # --search-momentum: 1 - momentum log-uniform here (Shallue et al.), momentum 0 .. 0.99


@dataclass(frozen=True)
class StepsToTarget:
    """The steps-to-target study (sweeps.scaling; Shallue et al. 2019): per batch size an independent
    quasi-random search over a constant lr (log-uniform; optionally momentum too), each trial evaluating the
    validation set after optimizer steps growing by ``step_eval_ratio`` and stopping at the hardest target,
    at the step cap (the epochs) or on divergence. The same unit points serve every batch size, mapped into
    its lr range: ``scaled`` bounds are [lr_min sqrt(B / B0), lr_max B / B0] (the sqrt and linear rules both
    inside), ``fixed`` ones [lr_min, lr_max] at every B."""

    targets: tuple[float, ...] = (70.0, 75.0, 80.0)  # validation accuracy (%) to reach
    num_samples: int = 8  # lr trials per batch size
    lr_min: float = 0.01  # the lr range at base_batch_size
    lr_max: float = 0.5
    lr_bounds: str = "scaled"  # scaled | fixed
    base_batch_size: int = 32
    search_momentum: bool = False
    step_eval_ratio: float = 1.1  # evaluations after steps 1, 2, ..., each <= 1.1 x the previous: steps within 10 %
    seed: int = 0  # the quasi-random points' (the trials' training seed is the sweep's)
    kind: str = "scaling"
    resumable = True
    early_stopping = False

    def check(self) -> None:
        if not self.targets or any(not 0 < t <= 100 for t in self.targets):
            raise ConfigError(f"--targets must be validation accuracies in (0, 100], got {list(self.targets)}")
        if not 0 < self.lr_min < self.lr_max:
            raise ConfigError(f"need 0 < --lr-min < --lr-max, got {self.lr_min}, {self.lr_max}")
        if self.lr_bounds not in ("scaled", "fixed"):
            raise ConfigError(f"--lr-bounds must be scaled or fixed, got {self.lr_bounds!r}")
        if self.num_samples < 1:
            raise ConfigError(f"--trials-per-batch-size must be >= 1, got {self.num_samples}")
        if not self.step_eval_ratio > 1:
            raise ConfigError(f"--step-eval-ratio must be above 1, got {self.step_eval_ratio}")
        if self.base_batch_size < 1:
            raise ConfigError(f"--base-batch-size must be >= 1, got {self.base_batch_size}")

    def lr_range(self, batch_size: int) -> tuple[float, float]:
        if self.lr_bounds == "fixed":
            return self.lr_min, self.lr_max
        r = batch_size / self.base_batch_size
        return self.lr_min * r**0.5, self.lr_max * r

    def points(self, batch_size: int) -> list[dict[str, float]]:
        """The trials' (lr[, momentum]) at one batch size: the shared unit points in its ranges."""
        lo, hi = self.lr_range(batch_size)
        out = []
        for u in qmc_unit_points(self.num_samples, 2 if self.search_momentum else 1, self.seed):
            p = {"lr": float(f"{log_between(u[0], lo, hi):.6g}")}
            if self.search_momentum:
                p["momentum"] = float(f"{1.0 - log_between(u[1], *MOMENTUM_RANGE):.6g}")
            out.append(p)
        return out

    def overrides(self, opts: "SweepOptions") -> dict[str, Any]:
        for key in ("lr", "lr_scaling", "stop_at_val_acc", "step_eval_ratio", *(("momentum",) if self.search_momentum else ())):
            if key in opts.overrides:
                raise ConfigError(f"{key} is set by the steps-to-target study (the lr is searched per batch size, constant); "
                                  f"do not --set it")
        exp = opts.experiment.config
        if exp.get("schedule", "constant") != "constant" or exp.get("epochs_scaling", "none") != "none":
            raise ConfigError(f"the steps-to-target study trains with a constant lr and fixed epochs: {opts.experiment.name} "
                              f"has schedule={exp.get('schedule')!r}, epochs_scaling={exp.get('epochs_scaling', 'none')!r} "
                              f"(use exp1 or exp3)")
        return {**opts.overrides, "lr_scaling": "none", "stop_at_val_acc": max(self.targets), "step_eval_ratio": self.step_eval_ratio}

    def spaces(self, opts: "SweepOptions") -> list[SweepSpace]:
        self.check()
        overrides = self.overrides(opts)
        out = []
        for bs in opts.batch_sizes or DEFAULT_SCALING_BATCH_SIZES:
            ends = {"lr": list(self.lr_range(bs))}  # validated at both ends; every lr between is valid too
            if self.search_momentum:
                ends["momentum"] = [0.0, 0.99]
            out.append(build_space(opts.experiment, [bs], 1, overrides, opts.smoke_test, search=ends))
        return out

    def mlflow_experiment(self, opts: "SweepOptions") -> str:
        return schema.SCALING_EXPERIMENT

    @staticmethod
    def command(opts: "SweepOptions") -> str:
        return "sweeps.scaling"

    def parent_params(self, plan: "SweepPlan") -> dict[str, Any]:
        return {"batch_sizes": json.dumps([s.batch_sizes[0] for s in plan.spaces]), "targets": json.dumps(list(self.targets)),
                "num_samples": self.num_samples, "lr_min": self.lr_min, "lr_max": self.lr_max, "lr_bounds": self.lr_bounds,
                "base_batch_size": self.base_batch_size, "search_momentum": self.search_momentum,
                "step_eval_ratio": self.step_eval_ratio, "qmc_seed": self.seed}

    def num_trials(self, plan: "SweepPlan") -> int:
        return self.num_samples * len(plan.spaces)

    def _params(self, space: SweepSpace) -> list[dict[str, Any]]:
        bs = space.batch_sizes[0]
        return [{"batch_size": bs, "seed": space.seeds[0], "point": p} for p in self.points(bs)]

    def planned(self, spaces: list[SweepSpace]) -> list[tuple[SweepSpace, dict[str, Any]]]:
        return [(space, params) for space in spaces for params in self._params(space)]

    def jobs(self, plan: "SweepPlan"):
        from ray import tune

        for space in plan.spaces:
            bs = space.batch_sizes[0]
            lo, hi = self.lr_range(bs)
            points = [p["point"] for p in self._params(space)]
            yield Job(space, {"batch_size": bs, "seed": space.seeds[0], "point": tune.grid_search(points)},
                      f"{plan.name}-bs{bs}", label=f"batch size {bs}: {len(points)} trials, lr {lo:.3g} .. {hi:.3g} (log)")

    def summary(self, plan: "SweepPlan", done: list[tuple[Job, list]]) -> dict[int, dict[str, Any]]:
        """{batch_size: {trials, reached, best_steps}}: the hardest target's fewest steps among the trials; printed.
        (Every target, the fit and the figures: ``python -m analysis.scaling``.)"""
        out: dict[int, dict[str, Any]] = {}
        for job, results in done:
            bs = job.space.batch_sizes[0]
            finals = [r.metrics or {} for r in results]
            reached = [m for m in finals if m.get("status") == "reached"]
            best = min(reached, key=lambda m: m.get("steps", float("inf"))) if reached else None
            out[bs] = {"trials": len(results), "reached": len(reached),
                       "best_steps": best.get("steps") if best else None, "best_lr": (best.get("config") or {}).get("lr") if best else None}
        if plan.opts.verbose:
            print(f"\nsteps to the hardest target ({max(self.targets):g}% validation accuracy), per batch size ({plan.name}):")
            print(f"{'bs':>5} {'trials':>6} {'reached':>7} {'fewest steps':>12}")
            for bs, s in sorted(out.items()):
                print(f"{bs:>5} {s['trials']:>6} {s['reached']:>7} {s['best_steps'] if s['best_steps'] is not None else '-':>12}", flush=True)
        return out

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d


DEFAULT_OPTUNA_BATCH_SIZES = [256, 512, 1024]
DEFAULT_SCALING_BATCH_SIZES = [32, 64, 128, 256, 512, 1024]
KINDS = {"grid": Grid, "optuna": OptunaFactorLR, "scaling": StepsToTarget}


def kind_from_json(d: dict[str, Any] | None):
    d = dict(d or {"kind": "grid"})
    cls = KINDS[d.get("kind", "grid")]
    if "targets" in d:
        d["targets"] = tuple(d["targets"])
    return cls(**d)
