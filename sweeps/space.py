"""Search spaces, built from the experiment declarations (bigbatch.experiments): one source of truth.

A sweep's trial config holds only what varies (``batch_size``, ``seed`` and the experiment's search keys,
e.g. ``factor_lr`` in exp5) plus two constants: ``base`` (the resolved RunConfig dict shared by every
trial) and ``sweep`` (where and how to log, see sweeps.tracking). ``trial_run_config`` merges them back
into the RunConfig a trial trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from bigbatch.config import ConfigError, RunConfig
from bigbatch.experiments import Experiment, load_experiment

# Keys a trial varies; everything else is in ``base``.
VARYING = ("batch_size", "seed")

# --smoke-test: a narrow VGG on a few hundred synthetic images for 1-3 epochs (about a minute on 2 CPUs
# for a whole experiment). The training pool grows to the largest batch size (train() refuses a batch
# larger than the training set).
SMOKE_OVERRIDES: dict[str, Any] = {
    "dataset": "synthetic",
    "synthetic_size": 384,  # raised to max(batch sizes) + val_size
    "val_size": 128,
    "width_mult": 0.125,
    "epochs": 2,
    "eval_batch_size": 256,
    "drop_last": False,
    "download": False,
}
# Schedule-specific smoke settings so that every experiment is valid (and its schedule visible) in 2-3 epochs.
SMOKE_SCHEDULE_OVERRIDES: dict[str, dict[str, Any]] = {
    "warmup_step": {"epochs": 3, "warmup_epochs": 1, "milestones": [2]},
    "cyclic": {"cyclic_step_epochs": 1.0},
}
# exp2 scales epochs with bs / base_batch_size: in a smoke test 1..4 epochs instead of 2..32.
SMOKE_EPOCHS_SCALING_OVERRIDES: dict[str, dict[str, Any]] = {"linear": {"base_batch_size": 256}}


@dataclass
class SweepSpace:
    """What a sweep runs: the experiment, the shared base config, and the grid."""

    experiment: Experiment
    base: dict[str, Any]  # RunConfig dict shared by all trials (batch_size/seed/search keys are overridden)
    batch_sizes: list[int]
    seeds: list[int]
    search: dict[str, list[Any]] = field(default_factory=dict)  # e.g. {"factor_lr": [10, 5, 2]}

    def points(self) -> list[dict[str, Any]]:
        """Every trial's varying keys, in grid order."""
        keys = ["batch_size", "seed", *self.search]
        values = [self.batch_sizes, self.seeds, *self.search.values()]
        return [dict(zip(keys, combo)) for combo in product(*values)]

    @property
    def num_trials(self) -> int:
        return len(self.points())

    def param_space(self, sweep_info: dict[str, Any]) -> dict[str, Any]:
        """The Ray Tune param_space: grid over batch size, seed and the search keys."""
        from ray import tune

        space: dict[str, Any] = {
            "batch_size": tune.grid_search(list(self.batch_sizes)),
            "seed": tune.grid_search(list(self.seeds)),
        }
        for key, values in self.search.items():
            space[key] = tune.grid_search(list(values))
        space["base"] = dict(self.base)
        space["sweep"] = dict(sweep_info)
        return space

    def validate(self) -> None:
        """Build every trial's RunConfig now, so a bad combination fails before Ray starts (ConfigError)."""
        from bigbatch.data import DataError, check_sizes

        for point in self.points():
            cfg = trial_run_config({"base": self.base, **point})
            try:  # a batch larger than the training set (or val_size >= the pool) fails here, not in a trial
                check_sizes(cfg)
            except DataError as e:
                raise ConfigError(str(e)) from None


def build_space(
    experiment: str,
    recipe: str = "text",
    batch_sizes: list[int] | None = None,
    seeds: int = 1,
    overrides: dict[str, Any] | None = None,
    smoke_test: bool = False,
    search: dict[str, list[Any]] | None = None,
) -> SweepSpace:
    """The search space of one paper experiment.

    Order of precedence (later wins): the experiment declaration (with its recipe), the smoke-test
    settings, ``overrides`` (--config file, --set, --epochs/--dataset/--data-dir). A key fixed by an
    override is no longer searched. ``seeds`` repeats every point with seeds base_seed .. base_seed+K-1.
    """
    exp = load_experiment(experiment, recipe)
    overrides = dict(overrides or {})
    base: dict[str, Any] = {**exp.config, "experiment": exp.name, "recipe": exp.recipe}
    if smoke_test:
        base.update(SMOKE_OVERRIDES)
        base.update(SMOKE_SCHEDULE_OVERRIDES.get(base.get("schedule", RunConfig.schedule), {}))
        base.update(SMOKE_EPOCHS_SCALING_OVERRIDES.get(base.get("epochs_scaling", RunConfig.epochs_scaling), {}))
    for key in ("experiment", "recipe"):
        if key in overrides and overrides[key] != base[key]:
            raise ConfigError(f"{key} cannot be overridden in a sweep of {exp.name} (use --recipe for the recipe)")
    base.update(overrides)
    data_dir = Path(str(base.get("data_dir", RunConfig.data_dir))).expanduser()
    base["data_dir"] = str(data_dir.resolve())  # absolute: trials run in their own directories
    if "batch_size" in base and batch_sizes is None:
        batch_sizes = [base["batch_size"]]
    base.pop("batch_size", None)
    grid = {k: list(v) for k, v in (exp.search if search is None else search).items() if k not in overrides}
    for key in grid:
        if key in VARYING or key not in RunConfig.__dataclass_fields__:
            raise ConfigError(f"cannot search over {key!r}")
    bss = [int(b) for b in (batch_sizes if batch_sizes is not None else exp.batch_sizes)]
    if not bss:
        raise ConfigError("--batch-sizes needs at least one batch size")
    for b in bss:
        if b <= 0:
            raise ConfigError(f"batch sizes must be positive integers, got {b}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if smoke_test and "synthetic_size" not in overrides:
        base["synthetic_size"] = max(base["synthetic_size"], max(bss) + int(base.get("val_size", 0)))
    seed0 = int(base.pop("seed", 0))
    space = SweepSpace(exp, base, bss, [seed0 + i for i in range(seeds)], grid)
    space.validate()
    return space


def trial_run_config(config: dict[str, Any]) -> RunConfig:
    """The RunConfig of one trial, from its Tune config (``base`` + the varying keys)."""
    d = dict(config["base"])
    for key, value in config.items():
        if key not in ("base", "sweep"):
            d[key] = value
    return RunConfig.from_dict(d)


def trial_label(cfg: RunConfig) -> str:
    """A trial's human name, e.g. ``exp5 bs=1024 f=2 seed=0`` (f only for cyclic schedules)."""
    parts = [cfg.experiment, f"bs={cfg.batch_size}"]
    if cfg.schedule == "cyclic":
        parts.append(f"f={cfg.scaled_factor_lr:.3g}")
    parts.append(f"seed={cfg.seed}")
    return " ".join(parts)


def trial_dirname(cfg: RunConfig, trial_id: str) -> str:
    """A filesystem-friendly trial directory name."""
    return f"{trial_id}_" + trial_label(cfg).replace(" ", "_").replace("=", "")
