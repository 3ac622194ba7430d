"""`python -m sweeps.exp2`: the paper's experiment 2 as a Ray Tune sweep (options: sweeps.cli, docs/sweeps.md)."""

from sweeps.cli import entry

if __name__ == "__main__":
    entry("exp2")
