"""What the three CLIs (table, figures, report) share: their options, their run selection, their errors."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

import pandas as pd

from bigbatch.schema import EXPERIMENT_PREFIX, default_tracking_uri

from .runs import AnalysisError, load_runs


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db, as the sweeps)")
    p.add_argument("--dataset", default=None, help="only runs on this dataset (default: every dataset, one table each)")
    p.add_argument("--model", default=None, help="only runs of this model (default: every model, one table each)")
    p.add_argument("--recipe", default=None, help="only runs of this recipe: text | authors-code (default: each)")
    p.add_argument("--sweep", action="append", default=None, metavar="NAME",
                   help="only runs of this sweep (the MLflow parent run name; repeatable; default: every sweep)")


def load_selected_runs(tracking_uri: str | None, dataset: str | None = None, recipe: str | None = None,
                       sweeps: Sequence[str] | None = None, model: str | None = None) -> pd.DataFrame:
    """load_runs + the CLI filters, with a one-line error naming what the store has when nothing matches."""
    uri = tracking_uri or default_tracking_uri()
    everything = load_runs(uri)
    if not len(everything):
        raise AnalysisError(f"no bigbatch runs in {uri} (MLflow experiments named {EXPERIMENT_PREFIX}*)")
    runs = everything
    for key, value in (("dataset", dataset), ("model", model), ("recipe", recipe), ("sweep", sweeps)):
        if value is not None:
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            runs = runs[runs[key].isin(values)]
            if not len(runs):
                have = ", ".join(sorted(map(str, everything[key].dropna().unique())))
                raise AnalysisError(f"no bigbatch runs with {key}={','.join(values)} in {uri} (have: {have})")
    return runs.reset_index(drop=True)


def run_cli(body: Callable[[], None]) -> int:
    """Run a CLI body; AnalysisError -> 'error: ...' on stderr and exit status 2."""
    try:
        body()
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
