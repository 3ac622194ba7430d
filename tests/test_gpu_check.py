"""bench/gpu_check.sh, the one prepared call for a lent GPU (issue 23): its CPU dry run exercises every
step's code path and writes the same files, so the script cannot rot before a GPU is lent."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def test_the_caps_add_up_to_the_plan():
    """a's 60 s plus every capped step's cap is the 540 s plan (9 min); e only gets what is left."""
    text = SCRIPT.read_text()
    caps = [int(c) for c in re.findall(r"^\s*run \w+ (\d+) ", text, flags=re.M)]
    gpu_caps = [int(c) for c in re.findall(r"^\s*run (?:b2|c\d) (\d+) ", text, flags=re.M)]
    b1 = int(re.search(r"^\s*run b1 (\d+) ", text, flags=re.M).group(1))
    d = int(re.search(r"^\s*run d (\d+) \"packing 1/2/4", text, flags=re.M).group(1))
    total = int(re.search(r"^TOTAL=\$\{TOTAL:-(\d+)\}", text, flags=re.M).group(1))
    assert caps and 60 + b1 + sum(gpu_caps) + d == total == 540
    assert re.search(r"^run e rest ", text, flags=re.M)


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_and_writes_every_figure(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in lines] == ["step " + s for s in ("a", "b1", "b2", "c1", "c2", "c3", "c4", "c5", "d", "e")]
    assert all(": done (" in line for line in lines), lines
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [s["status"] for s in steps] == ["done"] * 10
    assert json.loads((tmp_path / "a_env.json").read_text())["ray"][0].isdigit()
    smoke = json.loads((tmp_path / "b2_smoke.json").read_text())
    assert smoke["trials"] == smoke["finished"] == 2 and smoke["devices"] == ["cpu"]
    assert "Custom LR Factor" in (tmp_path / "b2_table.md").read_text()
    (bs32,) = json.loads((tmp_path / "c1_none_fp32_bs32.json").read_text())["results"]
    assert bs32["baseline"] and bs32["ratio_train"] > 0
    bf16 = json.loads((tmp_path / "c5_ghost_bf16.json").read_text())
    assert bf16["args"]["precision"] == "bf16" and bf16["args"]["norm"] == "ghost" and len(bf16["results"]) == 2
    assert [r["k"] for r in json.loads((tmp_path / "d_packing.json").read_text())["results"]] == [1, 2]
    assert len(json.loads((tmp_path / "e_mini.json").read_text())["cells"]) == 2
    summary = (tmp_path / "summary.md").read_text()
    for heading in ("**b2, exp6 smoke sweep**: 2 of 2", "**c, training speed**", "**d, packing**", "**e, mini cells"):
        assert heading in summary


def test_gpu_mode_without_a_gpu_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}  # no nvidia-smi
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no CUDA GPU visible" in proc.stderr
    unset = {k: v for k, v in env.items() if k != "OUT"}
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke"], cwd=ROOT, env=unset, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "set OUT" in proc.stderr


def test_step_e_needs_neither_ray_nor_mlflow(tmp_path):
    """Step e runs in a second call that carries the data instead of .whl/ (the GPU image has no ray,
    mlflow or optuna): bench/gpu_mini.py must train with none of them importable."""
    code = ("import sys, runpy\n"
            "for m in ('ray', 'mlflow', 'optuna'): sys.modules[m] = None\n"
            f"sys.argv = ['gpu_mini.py', '--mode', 'cpu', '--out', {str(tmp_path / 'e.json')!r}]\n"
            f"sys.path.insert(0, {str(ROOT / 'bench')!r})\n"
            f"runpy.run_path({str(ROOT / 'bench' / 'gpu_mini.py')!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cells = json.loads((tmp_path / "e.json").read_text())["cells"]
    assert [(c["experiment"], c["batch_size"]) for c in cells] == [("exp1", 32), ("exp6", 64)]
