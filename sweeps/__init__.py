"""Ray Tune sweeps of the paper's six experiments and its lr grid, logged to MLflow, resumable, on one machine or a cluster.

Entry points: ``python -m sweeps.exp1`` .. ``python -m sweeps.exp6``, ``python -m sweeps.lr_grid`` (one CLI,
``sweeps.cli``) and ``python -m sweeps.optuna_factor_lr``. Python API: ``sweeps.cli.main(name, argv) -> int``
and ``sweeps.runner.run_sweep(SweepOptions(load_experiment(name, recipe), ...)) -> SweepResult``.
MLflow names come from ``bigbatch.schema``; ``sweeps`` never imports ``analysis``. See docs/sweeps.md.
"""
