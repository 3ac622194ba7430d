"""`python -m sweeps.exp5`: the paper's experiment 5 as a Ray Tune sweep (options: sweeps.cli, docs/sweeps.md)."""

from sweeps.cli import entry

if __name__ == "__main__":
    entry("exp5")
