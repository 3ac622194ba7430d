"""`make demo`: the whole pipeline, offline, on a 2-core CPU in about three minutes.

Two smoke sweeps (the baseline and experiment 6: a narrow VGG13 on a few hundred synthetic images,
every batch size of the paper) into ./demo/mlflow.db, then Table I rebuilt from MLflow beside the
paper's numbers and the report (Markdown + HTML + figures) in ./demo/report/.

Each run starts from an empty ./demo (it holds nothing but this demo's output), so it is idempotent.
The numbers are a smoke test of the machinery, not of the paper: 2 epochs of synthetic data.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

EXPERIMENTS = ("exp1", "exp6")


def main(out_dir: str = "demo") -> int:
    from analysis import report, table
    from sweeps.cli import main as sweep

    out = Path(out_dir).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    uri = f"sqlite:///{out}/mlflow.db"
    t0 = time.perf_counter()
    for exp in EXPERIMENTS:
        print(f"== smoke sweep {exp} ==", flush=True)
        code = sweep(exp, ["--smoke-test", "--quiet", "--tracking-uri", uri,
                           "--storage-path", str(out / "ray_results"), "--name", f"demo-{exp}"])
        if code != 0:
            print(f"error: the {exp} smoke sweep failed (exit {code})", file=sys.stderr)
            return code
    print("\n== Table I rebuilt from MLflow (smoke data: 2 epochs, synthetic images) ==", flush=True)
    code = table.main(["--tracking-uri", uri, "--paper"])
    if code == 0:
        code = report.main(["--tracking-uri", uri, "--out", str(out / "report")])
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; browse the runs with:\n"
          f"  .venv/bin/mlflow ui --backend-store-uri {uri}")
    return code


if __name__ == "__main__":
    sys.exit(main())
