"""The names shared by the writer of the runs (``sweeps``) and their reader (``analysis``).

One place for every MLflow experiment name, tag, metric and artifact name, the default tracking
URI and the provenance recorded with each run, so that ``sweeps`` and ``analysis`` never import each
other (both import this core module). Plain Python: no MLflow, Ray or torch import.

The layout these names describe is in docs/architecture.md ("MLflow schema").
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

# ---------------------------------------------------------------------------------------------- experiments
EXPERIMENT_PREFIX = "bigbatch-"  # MLflow experiment of a paper experiment: bigbatch-exp1 .. bigbatch-exp6
OPTUNA_EXPERIMENT = EXPERIMENT_PREFIX + "optuna-factor-lr"  # the Optuna search over factor_lr
SCALING_EXPERIMENT = EXPERIMENT_PREFIX + "scaling"  # the steps-to-target study (sweeps.scaling)


def mlflow_experiment(experiment: str) -> str:
    """The MLflow experiment name of a bigbatch experiment: ``exp5`` -> ``bigbatch-exp5`` (idempotent)."""
    return experiment if experiment.startswith(EXPERIMENT_PREFIX) else EXPERIMENT_PREFIX + experiment


# ---------------------------------------------------------------------------------------------- tags
TAG_PREFIX = "bigbatch."  # every bigbatch tag starts with it


def tag(name: str) -> str:
    """The full tag key of a bigbatch tag: ``tag("status")`` -> ``bigbatch.status``."""
    return TAG_PREFIX + name


# Tags of both the sweep's parent run and its trials' child runs.
TAG_ROLE = tag("role")  # ROLE_SWEEP (the parent run) | ROLE_TRIAL (one trial)
TAG_EXPERIMENT = tag("experiment")  # exp1..exp6 (or another declared experiment)
TAG_PAPER_ROW = tag("paper_row")  # the paper's Table I row label
TAG_RECIPE = tag("recipe")  # text | authors-code
TAG_DATASET = tag("dataset")  # cifar10 | cifar100 | fashion-mnist | synthetic
TAG_SWEEP = tag("sweep")  # the sweep's name (Tune experiment directory name)
TAG_SEARCH = tag("search")  # grid | optuna
TAG_SMOKE_TEST = tag("smoke_test")  # "true" | "false" (parent run)
TAG_GIT_COMMIT = tag("git_commit")  # commit of the code that ran ("-dirty" with local changes)
TAG_STATUS = tag("status")  # one of STATUSES
# Trial runs only.
TAG_TRIAL_ID = tag("trial_id")  # Ray Tune's trial id (finds the run again on resume)
TAG_DEVICE = tag("device")  # the device the trial actually used (the param "device" is the request)
TAG_DIVERGED_EPOCH = tag("diverged_epoch")  # status diverged: the 1-based epoch whose loss was not finite
TAG_ERROR = tag("error")  # status failed: the error, one line
TAG_TORCH_VERSION = tag("torch_version")
TAG_RAY_VERSION = tag("ray_version")
TAG_MLFLOW_VERSION = tag("mlflow_version")
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag
# Dataset inputs of a trial run (mlflow.log_input, metadata only: nothing is uploaded): one per split,
# named by dataset_input_name, with MLflow's context tag and the split's image count.
DATASET_SPLITS = ("train", "val", "test")  # the value of MLflow's mlflow.data.context input tag
DATASET_CONTEXT_TAG = "mlflow.data.context"
TAG_INPUT_IMAGES = tag("images")  # input tag: images in the split


def dataset_input_name(dataset: str, split: str) -> str:
    """The name of a run's dataset input: ``cifar10-train``, ``cifar10-val``, ``cifar10-test``."""
    return f"{dataset}-{split}"


ROLE_SWEEP = "sweep"
ROLE_TRIAL = "trial"

# bigbatch.status values. diverged: the loss turned non-finite; the run still reports the best model
# seen before (the paper's rule). stopped: ended early by a scheduler (ASHA, Optuna search). reached: ended at
# its stop_at_val_acc target (the steps-to-target study), with final metrics like a completed run.
STATUSES = ("completed", "diverged", "reached", "stopped", "failed", "running")
FINISHED = ("completed", "diverged", "reached")  # runs that carry final metrics (test_acc of the best-val model)

# ---------------------------------------------------------------------------------------------- metrics
# Logged once per epoch, with step = the 1-based epoch.
# gns: the gradient noise scale B_simple (EMA), gns_seconds its cost (bigbatch.measure; on epochs it is probed).
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "momentum", "epoch_seconds",
                 "images_per_second", "steps", "gns", "gns_seconds")
# step_eval_ratio: validation accuracy after single optimizer steps, logged with step = the optimizer step (from 1)
STEP_EVAL_METRIC = "val_acc_at_step"
STEP_KEY = "val_acc"  # the epoch metric whose steps say which epochs a run already holds
# Logged once at the end of a run (accuracies in %, as the paper's Table I).
# sharpness: the training-loss Hessian's top eigenvalue at the best model (bigbatch.measure), with its cost.
SUMMARY_METRICS = ("best_val_acc", "best_epoch", "test_acc", "test_loss", "train_seconds", "sharpness",
                   "sharpness_seconds")
# Params derived from the RunConfig (logged beside its keys): name -> type.
DERIVED_PARAMS = {"scaled_lr": float, "total_epochs": int, "scaled_factor_lr": float}

# ---------------------------------------------------------------------------------------------- artifacts
CHECKPOINT = "last.pt"  # a trial's full training state (bigbatch.train), in its checkpoint directory
BEST_MODEL = "best_model.pt"  # state_dict of the best-validation model: checkpoint file and MLflow artifact
CONFIG_ARTIFACT = "config.json"  # the trial's RunConfig, an MLflow artifact
TRACEBACK_ARTIFACT = "traceback.txt"  # a failed trial's full traceback (its one line: tag bigbatch.error)
RUN_FILE = "mlflow_run.json"  # beside last.pt: the trial's MLflow run id travels with its checkpoint

# ---------------------------------------------------------------------------------------------- model registry
REGISTERED_MODEL_PREFIX = "bigbatch-"  # a Table I cell's chosen model: bigbatch-exp6-bs1024
REGISTRY_ALIAS = "table1"  # the alias of the version that is the cell's current choice
TAG_CELL = tag("cell")  # model version tag: the Table I cell it was chosen for, e.g. "exp6 bs=1024"
LOGGED_MODEL_NAME = "model"  # mlflow.pytorch.log_model(..., name=LOGGED_MODEL_NAME)


def registered_model_name(experiment: str, batch_size: int) -> str:
    """The Model Registry name of a Table I cell's chosen model: ``exp6``, 1024 -> ``bigbatch-exp6-bs1024``."""
    return f"{REGISTERED_MODEL_PREFIX}{experiment}-bs{int(batch_size)}"


# ---------------------------------------------------------------------------------------------- defaults
def default_tracking_uri(cwd: str | Path | None = None) -> str:
    """``sqlite:////abs/cwd/mlflow.db``: absolute, because Ray trials run in their own directories."""
    return "sqlite:///" + str(Path(cwd or os.getcwd()).resolve() / "mlflow.db")


def git_commit(repo: str | Path | None = None) -> str:
    """The commit of the code that runs (``-dirty`` with uncommitted changes); ``unknown`` outside git.

    Read once per process (and repository): a table run of an hour keeps the commit it started with,
    however HEAD moves meanwhile, since that is the code it imported."""
    return _git_commit(str(Path(repo or Path(__file__).resolve().parent.parent).resolve()))


@functools.lru_cache(maxsize=None)
def _git_commit(repo: str) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip()
        if out.returncode != 0 or not commit:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
        return commit + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
