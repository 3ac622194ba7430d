"""`python -m sweeps.exp3`: the paper's experiment 3 as a Ray Tune sweep (options: sweeps.cli, docs/sweeps.md)."""

from sweeps.cli import entry

if __name__ == "__main__":
    entry("exp3")
