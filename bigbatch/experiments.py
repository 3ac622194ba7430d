"""The paper's six experiments (and its lr grid search), declared once as data (``bigbatch/configs/*.json``).

Each file is a small diff: ``extends`` names its parent experiment, ``config`` holds the RunConfig
keys it changes, ``authors-code`` the keys that recipe changes on top (after the shared
``authors-code.json``), ``search`` the nuisance grid a sweep explores (e.g. factor_lr in exp5), and
``batch_sizes`` the batch sizes of its Table I row. The sweeps build their search spaces from these
same declarations. ``TABLE_EXPERIMENTS`` are Table I's rows (exp1..exp6); ``EXPERIMENTS`` every declared
experiment: those plus ``lr-grid``, the paper's learning-rate grid search on the baseline at bs 32.

    exp = load_experiment("exp5", recipe="authors-code")
    cfg = exp.run_config(batch_size=1024, factor_lr=2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import CHOICES, ConfigError, RunConfig, eq2, read_json

CONFIG_DIR = Path(__file__).with_name("configs")
TABLE_EXPERIMENTS = tuple(f"exp{i}" for i in range(1, 7))  # the rows of the paper's Table I
EXPERIMENTS = (*TABLE_EXPERIMENTS, "lr-grid")  # every declared experiment (bigbatch/configs/<name>.json)
RECIPES = CHOICES["recipe"]
PAPER_BATCH_SIZES = (32, 64, 128, 256, 512, 1024)

# The paper's Table I (test accuracy, %); None where the paper has no run.
PAPER_TABLE: dict[str, dict[int, float | None]] = {
    "exp1": dict(zip(PAPER_BATCH_SIZES, (86.37, 85.08, 82.37, 74.40, 59.12, 39.46))),
    "exp2": dict(zip(PAPER_BATCH_SIZES, (86.58, 85.97, 85.35, 82.79, 84.35, None))),
    "exp3": dict(zip(PAPER_BATCH_SIZES, (88.22, 88.51, 88.44, 88.18, 81.29, 79.07))),
    "exp4": dict(zip(PAPER_BATCH_SIZES, (87.91, 88.25, 87.79, 87.85, 87.27, 85.97))),
    "exp5": dict(zip(PAPER_BATCH_SIZES, (90.98, 91.32, 90.78, 90.78, 90.23, 82.79))),
    "exp6": dict(zip(PAPER_BATCH_SIZES, (90.88, 91.25, 90.96, 90.82, 90.60, 89.62))),
}


@dataclass(frozen=True)
class Experiment:
    name: str  # exp1..exp6, lr-grid
    label: str  # the paper's row label in Table I (lr-grid: a description)
    recipe: str  # text | authors-code
    batch_sizes: tuple[int, ...]  # batch sizes of its Table I row
    config: dict[str, Any] = field(hash=False)  # RunConfig keys, resolved through `extends` and the recipe
    search: dict[str, tuple[Any, ...]] = field(hash=False)  # nuisance grid: key -> values tried

    def run_config(self, batch_size: int | None = None, **overrides: Any) -> RunConfig:
        """The RunConfig of one run of this experiment (validated)."""
        d = {**self.config, "experiment": self.name, "recipe": self.recipe, **overrides}
        if batch_size is not None:
            d["batch_size"] = batch_size
        return RunConfig.from_dict(d)


def _raw(name: str) -> dict[str, Any]:
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)}")
    return read_json(CONFIG_DIR / f"{name}.json")


def load_experiment(name: str, recipe: str = "text") -> Experiment:
    """Resolve an experiment declaration (its ``extends`` chain and the recipe) into an Experiment."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    chain, seen = [], set()
    cur: str | None = name
    while cur is not None:
        if cur in seen:
            raise ConfigError(f"experiment {name!r} extends itself through {cur!r}")
        seen.add(cur)
        raw = _raw(cur)
        chain.append(raw)
        cur = raw.get("extends")
    chain.reverse()  # base first
    config: dict[str, Any] = {}
    search: dict[str, Any] = {}
    label, batch_sizes = name, PAPER_BATCH_SIZES
    for raw in chain:
        config.update(raw.get("config", {}))
        search = raw.get("search", search)
        label = raw.get("label", label)
        batch_sizes = tuple(raw.get("batch_sizes", batch_sizes))
    if recipe == "authors-code":
        config.update(read_json(CONFIG_DIR / "authors-code.json")["config"])
        for raw in chain:
            config.update(raw.get("authors-code", {}))
    exp = Experiment(name, label, recipe, batch_sizes, config, {k: tuple(v) for k, v in search.items()})
    exp.run_config(batch_sizes[0])  # validate the declaration itself
    return exp


def eq2_factor(batch_size: float) -> float:
    """Eq. 2 with exp6's declared base factor and batch size (10 and 32): exp6's factor_lr at any
    positive batch size, fractional ones included (for drawing the curve)."""
    cfg = load_experiment("exp6").run_config()
    return eq2(cfg.factor_lr, cfg.base_batch_size, batch_size)


def load_config(path: str | Path | None = None, recipe: str = "text", overrides: dict[str, Any] | None = None) -> RunConfig:
    """The CLI's view: a flat RunConfig JSON, an experiment name (exp5), or an experiment file.

    An experiment file is recognised by its ``config`` key; ``recipe`` applies to experiments only.
    """
    overrides = dict(overrides or {})
    if path is None:
        return RunConfig.from_dict({"recipe": recipe, **overrides})
    p = Path(path)
    if str(path) in EXPERIMENTS:
        return load_experiment(str(path), recipe).run_config(**overrides)
    if not p.exists() and not p.suffix and len(p.parts) == 1:  # e.g. exp9: a misspelt experiment name
        raise ConfigError(f"config file not found: {p} (nor an experiment: {', '.join(EXPERIMENTS)})")
    data = read_json(p)
    if isinstance(data, dict) and "config" in data:
        if p.resolve().parent == CONFIG_DIR.resolve() and p.stem in EXPERIMENTS:
            return load_experiment(p.stem, recipe).run_config(**overrides)
        raise ConfigError(f"{p} looks like an experiment declaration; only those in bigbatch/configs/ are ({', '.join(EXPERIMENTS)})")
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a JSON object of config keys")
    return RunConfig.from_dict({**data, **overrides})

