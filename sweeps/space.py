"""Search spaces, built from an experiment declaration (bigbatch.experiments): one source of truth.

A sweep's trials share one ``base`` RunConfig dict; each trial varies only its hyperparameters
(``batch_size``, ``seed`` and the searched keys, e.g. ``factor_lr`` in exp5, ``lr`` in lr-grid): those
alone form Tune's param space. ``trial_run_config(base, params)`` merges them into the RunConfig a
trial trains. The rest a trial needs (the base, where to log, how often to checkpoint) is the sweep's
``SweepContext``, which the trainable closes over (sweeps.trainable).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from bigbatch.config import ConfigError, RunConfig
from bigbatch.experiments import Experiment

from .tracking import SweepRun

VARYING = ("batch_size", "seed")  # varied by every sweep; the searched keys come on top

# --smoke-test: a narrow VGG on a few hundred synthetic images for 2-3 epochs (about a minute on 2 CPUs
# for a whole experiment). The training pool grows to the largest batch size (train() refuses a batch
# larger than the training set).
SMOKE_OVERRIDES: dict[str, Any] = {
    "dataset": "synthetic",
    "synthetic_size": 384,  # raised to max(batch sizes) + val_size
    "val_size": 128,
    "width_mult": 0.125,
    "epochs": 2,
    "eval_batch_size": 256,
    "download": False,
    # the measurements on, small: a probe of 2 batches per epoch, a 5-step power iteration on 128 images
    "gns_images": 2,
    "sharpness_images": 128,
    "sharpness_iters": 5,
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
    base: dict[str, Any]  # RunConfig dict shared by all trials (without batch_size, seed and the searched keys)
    batch_sizes: list[int]
    seeds: list[int]
    search: dict[str, list[Any]] = field(default_factory=dict)  # e.g. {"factor_lr": [10, 5, 2]}

    def points(self) -> list[dict[str, Any]]:
        """Every trial's hyperparameters, in grid order."""
        keys = [*VARYING, *self.search]
        values = [self.batch_sizes, self.seeds, *self.search.values()]
        return [dict(zip(keys, combo)) for combo in product(*values)]

    @property
    def num_trials(self) -> int:
        return len(self.points())

    def param_space(self) -> dict[str, Any]:
        """The Ray Tune param_space: a grid over batch size, seed and the searched keys (nothing else)."""
        from ray import tune

        grid = {"batch_size": self.batch_sizes, "seed": self.seeds, **self.search}
        return {key: tune.grid_search(list(values)) for key, values in grid.items()}

    def validate(self) -> None:
        """Build every trial's RunConfig now, so a bad combination fails before Ray starts (ConfigError)."""
        from bigbatch.data import DataError, check_sizes, dataset_shape
        from bigbatch.model import check_model

        checked = set()
        for point in self.points():
            cfg = trial_run_config(self.base, point)
            try:  # a batch larger than the training set (or val_size >= the pool) fails here, not in a trial
                check_sizes(cfg)
            except DataError as e:
                raise ConfigError(str(e)) from None
            model_keys = (cfg.model, cfg.dataset, cfg.norm, cfg.width_mult, cfg.dropout, cfg.init)
            if model_keys not in checked:  # a model that cannot be built (a user's above all) fails here too
                checked.add(model_keys)
                check_model(cfg, *dataset_shape(cfg))


@dataclass(frozen=True)
class SweepContext:
    """What every trial of a sweep shares besides its hyperparameters."""

    base: dict[str, Any]  # RunConfig dict without batch_size, seed and the searched keys
    run: SweepRun  # where and under which parent run to log
    searched: tuple[str, ...] = ()  # the searched keys (named in the trial labels)
    checkpoint_every: int = 1
    datasets: tuple[dict[str, Any], ...] = ()  # bigbatch.data.DatasetInfo (as dicts) the driver prepared

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "run": self.run.to_json(), "searched": list(self.searched), "checkpoint_every": self.checkpoint_every,
                "datasets": list(self.datasets)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SweepContext":
        return cls(dict(d["base"]), SweepRun(**d["run"]), tuple(d["searched"]), int(d["checkpoint_every"]),
                   tuple(d.get("datasets", ())))

    def trial_datasets(self, *spaces: "SweepSpace") -> list[tuple[RunConfig, dict[str, Any]]]:
        """(config, prepared dataset) of every trial of these spaces whose dataset the driver prepared."""
        cfgs = [trial_run_config(space.base, point) for space in spaces for point in space.points()]
        return [(cfg, info) for cfg in cfgs if (info := self.dataset_info(cfg)) is not None]

    def dataset_info(self, cfg: RunConfig) -> dict[str, Any] | None:
        """The prepared dataset a trial's config reads (None if the driver prepared none, e.g. an older sweep)."""
        for info in self.datasets:
            if info["name"] == cfg.dataset and (cfg.dataset != "synthetic" or info["n_pool"] == cfg.synthetic_size):
                return info
        return None


def prepare_space_data(*spaces: SweepSpace) -> tuple[dict[str, Any], ...]:
    """The data first, once, on the driver: every dataset the trials read is checked (or downloaded) here by
    ``bigbatch.data.prepare_data``, before Ray starts; then the trials get ``download=false`` (they never
    download, and no two processes write one data directory). A dataset that cannot be had raises
    ``ConfigError`` with DataError's one line (the dataset, the directory, what to do)."""
    from dataclasses import asdict

    from bigbatch.data import DataError, prepare_data

    wanted: dict[tuple, RunConfig] = {}
    for space in spaces:
        for point in space.points():
            cfg = trial_run_config(space.base, point)
            wanted.setdefault((cfg.dataset, cfg.data_dir, cfg.synthetic_size if cfg.dataset == "synthetic" else 0), cfg)
    infos = []
    for cfg in wanted.values():
        try:
            infos.append(asdict(prepare_data(cfg)))
        except DataError as e:
            raise ConfigError(str(e)) from None
    for space in spaces:
        space.base["download"] = False
    return tuple(infos)


def build_space(
    exp: Experiment,
    batch_sizes: list[int] | None = None,
    seeds: int = 1,
    overrides: dict[str, Any] | None = None,
    smoke_test: bool = False,
    search: dict[str, list[Any]] | None = None,
) -> SweepSpace:
    """The search space of one experiment (already resolved with its recipe).

    Order of precedence (later wins): the experiment declaration, the smoke-test settings,
    ``overrides`` (--config file, --set, --epochs/--dataset/--data-dir). ``search`` (None: the
    experiment's) is the grid; a key fixed by an override is no longer searched. ``seeds`` repeats
    every point with seeds base_seed .. base_seed+K-1.
    """
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
    if smoke_test:  # the narrow smoke model only where the model has a width (a user's may not)
        from bigbatch.model import model_keys

        if "width_mult" not in overrides and "width_mult" not in model_keys(str(base.get("model", RunConfig.model))):
            base.pop("width_mult", None)
    base["data_dir"] = str(Path(str(base.get("data_dir", RunConfig.data_dir))).expanduser().resolve())  # trials chdir
    if "batch_size" in base and batch_sizes is None:
        batch_sizes = [base["batch_size"]]
    base.pop("batch_size", None)
    grid = {k: list(v) for k, v in (exp.search if search is None else search).items() if k not in overrides}
    for key, values in grid.items():
        if key in VARYING or key not in RunConfig.__dataclass_fields__:
            raise ConfigError(f"cannot search over {key!r}")
        if not values:
            raise ConfigError(f"the search over {key!r} needs at least one value")
        base.pop(key, None)  # the searched value comes from the trial's params
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


POINT = "point"  # a trial param holding several keys drawn together (the scaling study's lr and momentum)


def trial_run_config(base: dict[str, Any], params: dict[str, Any]) -> RunConfig:
    """The RunConfig of one trial: the shared base plus its hyperparameters (Tune's trial config); the keys of
    a ``point`` param count as the trial's own (a grid over points: keys drawn together, not a product)."""
    flat = {k: v for k, v in params.items() if k != POINT}
    return RunConfig.from_dict({**base, **flat, **(params.get(POINT) or {})})


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trial_label(cfg: RunConfig, searched: tuple[str, ...] | list[str] = ()) -> str:
    """A trial's human name, e.g. ``exp5 bs=1024 f=2 seed=0`` or ``lr-grid bs=32 lr=0.003 seed=0``.

    ``f`` is the CyclicLR factor after eq. 2 (``scaled_factor_lr``; cyclic schedules only); the other
    ``searched`` keys are shown with their configured values."""
    parts = [cfg.experiment, f"bs={cfg.batch_size}"]
    parts += [f"{k}={_fmt(getattr(cfg, k))}" for k in searched if k not in (*VARYING, "factor_lr")]
    if cfg.schedule == "cyclic":
        parts.append(f"f={cfg.scaled_factor_lr:.3g}")
    parts.append(f"seed={cfg.seed}")
    return " ".join(parts)


@dataclass(frozen=True)
class TrialNames:
    """Tune's trial name and directory name creators for one sweep (they need its base config)."""

    base: dict[str, Any]
    searched: tuple[str, ...] = ()

    def label(self, params: dict[str, Any]) -> str:
        return trial_label(trial_run_config(self.base, params), self.searched)

    def name(self, trial) -> str:  # e.g. exp5_bs=1024_f=2_seed=0
        try:
            return self.label(trial.config).replace(" ", "_")
        except Exception:
            return str(trial)

    def dirname(self, trial) -> str:  # e.g. <trial id>_exp5_bs1024_f2_seed0
        try:
            return f"{trial.trial_id}_" + self.label(trial.config).replace(" ", "_").replace("=", "")
        except Exception:
            return trial.trial_id
