"""Ray Tune sweeps of the paper's six experiments, logged to MLflow, resumable, on one machine or a cluster.

Entry points: ``python -m sweeps.exp1`` .. ``python -m sweeps.exp6`` (one CLI, ``sweeps.cli``) and
``python -m sweeps.optuna_factor_lr``. Python API: ``sweeps.cli.main(experiment, argv) -> int`` and
``sweeps.runner.run_sweep(options) -> SweepResult``. See docs/sweeps.md.
"""
