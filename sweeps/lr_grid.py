"""`python -m sweeps.lr_grid`: the paper's learning-rate grid search on the baseline at bs 32 (issue 9.8).

lr in {0.001, 0.003, 0.01, 0.03, 0.1} (bigbatch/configs/lr-grid.json; the paper chose 0.01); other
values with ``--search lr=[...]``. Same options as every sweep (sweeps.cli, docs/sweeps.md); MLflow
experiment ``bigbatch-lr-grid``.
"""

from sweeps.cli import entry

if __name__ == "__main__":
    entry("lr-grid")
