"""Smoke tests of bench/: every benchmark runs end to end in its smallest mode, so the scripts cannot rot.

The figures they print here mean nothing (tiny models, a handful of images); see bench/RESULTS.md.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
TINY = ["--width-mult", "0.0625", "--threads", "1"]


def load(script: str):
    """Import bench/<script> in-process (cheaper than a subprocess for the quick ones)."""
    import importlib.util

    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{Path(script).stem}", BENCH / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(script: str, *args: str, timeout: int = 120) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def throughput_json(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "throughput.json"
    text = run("throughput.py", "--device", "cpu", "--batch-sizes", "32", "--images", "64", "--eval-images", "64",
               "--warmup-steps", "1", "--repeats", "1", "--workers", "0", "--breakdown", "--json", str(out), *TINY)
    assert "| 32 |" in text and "bigbatch train img/s" in text and "augment (affine warp)" in text
    return out


def test_throughput_smallest_mode(throughput_json):
    data = json.loads(throughput_json.read_text())
    (row,) = data["results"]
    assert row["batch_size"] == 32 and row["bigbatch"]["train_images_per_second"] > 0
    assert row["baseline"]["train_images_per_second"] > 0 and row["ratio_train"] > 0
    assert row["epoch_seconds_bigbatch"] > 0 and row["target_epoch_seconds"] is None  # no H100 target on CPU
    assert data["machine"]["torch"] and data["model"]["forward_flops_per_image"] > 0


def test_table_time_from_throughput_json(throughput_json, capsys):
    assert load("table_time.py").main(["--throughput", str(throughput_json), "--batch-sizes", "32", "--packing-factor", "2"]) == 0
    text = capsys.readouterr().out
    assert "CPU ESTIMATE" in text and "| **total** |" in text
    assert "exp5" in text  # exp5's three factor_lr values are trials of their own


def test_packing_says_gpu_only_then_runs_its_orchestration_on_cpu(tmp_path, capsys):
    import torch

    if not torch.cuda.is_available():
        assert load("packing.py").main([]) == 0
        assert "no CUDA GPU visible" in capsys.readouterr().out
    out = tmp_path / "packing.json"
    text = run("packing.py", "--allow-cpu", "--batch-sizes", "32", "--k", "1", "--seconds", "0.1", "--images", "64",
               "--warmup-steps", "1", "--width-mult", "0.0625", "--json", str(out))
    assert "| 32 | 1 (1) |" in text
    (row,) = json.loads(out.read_text())["results"]
    assert row["total_images_per_second"] > 0 and not row["oom"] and not row["errors"]


@pytest.mark.slow
def test_ray_overhead_smallest_mode(tmp_path):
    out = tmp_path / "ray.json"
    text = run("ray_overhead.py", "--device", "cpu", "--epochs", "2", "--images", "64", "--val-images", "32",
               "--batch-size", "32", "--skip-standalone-ckpt", "--json", str(out), *TINY, timeout=300)
    assert "| ray |" in text and "target <= 5%" in text and "per epoch" in text
    runs = json.loads(out.read_text())["runs"]
    assert len(runs["ray"]["images_per_second"]) == 2 and len(runs["standalone"]["images_per_second"]) == 2


def test_checkpoint_cost_a_non_improving_epoch_writes_less(tmp_path):
    out = tmp_path / "ckpt.json"
    run("checkpoint_cost.py", "--width-mult", "0.125", "--device", "cpu", "--repeats", "1", "--json", str(out))
    figures = json.loads(out.read_text())
    for momentum in ("0.0", "0.9"):
        improved, plain = figures[momentum]["improved"], figures[momentum]["not improved"]
        # without a new best, last.pt leaves the best weights out and best_model.pt is not rewritten
        assert plain["bytes_written"] < 0.7 * improved["bytes_written"]


def test_norm_cost_times_each_variant_in_each_format(tmp_path):
    """In-process: the composite baseline is checked equal to bigbatch's ghost norm before timing."""
    out = tmp_path / "norm.json"
    assert load("norm_cost.py").main(["--batch-sizes", "64", "--images", "64", "--repeats", "2",
                                      "--json", str(out), *TINY]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["batch_size"], r["format"]) for r in rows] == [(64, "nchw"), (64, "channels_last")]
    for r in rows:
        assert set(r["img_per_s"]) == {"none", "ghost", "ghost-composite"}
        assert all(len(v) == 2 and min(v) > 0 for v in r["repeats"].values())


@pytest.mark.slow
def test_lr_limit_marks_the_linearly_scaled_lr_and_prints_every_cell(tmp_path):
    out = tmp_path / "lr_limit.json"
    # synthetic images, 1 and 2 epochs of 4 steps per run (epochs 10 x epoch_scale 0.1 and 0.2): the two-process
    # pool, the table and the JSON, not the figures
    text = run("lr_limit.py", "--batch-sizes", "64", "--lrs", "0.05", "0.2", "--epoch-scales", "0.1", "0.2",
               "--json", str(out), "--set", "dataset=synthetic", "train_subset=256", "val_size=64", "epochs=10",
               "width_mult=0.0625", "eval_batch_size=64", timeout=300)
    for steps in (4, 8):  # mini base lr 0.1 x 64/32 = 0.2 is eq. 1's
        assert f"| 64 | {steps} | 0.2 (eq. 1) |" in text and f"| 64 | {steps} | 0.05 |" in text
    runs = json.loads(out.read_text())["runs"]
    assert sorted((r["epoch_scale"], r["lr"]) for r in runs) == [(0.1, 0.05), (0.1, 0.2), (0.2, 0.05), (0.2, 0.2)]
    assert all(r["status"] == "completed" and r["steps"] == round(40 * r["epoch_scale"]) for r in runs)
    assert sorted({r["base_lr"] for r in runs}) == pytest.approx([0.025, 0.1])
    # the saved JSON prints the same table again
    again = run("lr_limit.py", "--table-from", str(out))
    assert again.strip() in text


def test_lr_limit_refuses_two_step_budgets():
    proc = subprocess.run([sys.executable, str(BENCH / "lr_limit.py"), "--epoch-scales", "0.2", "--set", "epoch_scale=0.4"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "not both" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_lr_limit_plans_the_lr_each_experiment_uses_at_its_batch_size():
    lr_limit = load("lr_limit.py")
    from sweeps.table1 import MINI

    overrides = {**MINI.overrides, "dataset": "synthetic"}
    # exp3 scales linearly (eq. 1): lr 0.8 at bs 1024 is a base lr of 0.025; exp1 does not scale: the base is the lr
    for experiment, bs, base, preset, label in (("exp3", 1024, 0.025, 3.2, "eq. 1"), ("exp1", 64, 0.8, 0.1, "preset")):
        jobs, preset_lr, mark = lr_limit.plan(experiment, [bs], [0.8], [0.1, 0.4], 2, 1, overrides)
        assert len(jobs) == 4 and {j["lr"] for j in jobs} == {0.8} and mark == label
        assert [j["overrides"]["lr"] for j in jobs] == pytest.approx([base] * 4)
        assert sorted({j["overrides"]["epoch_scale"] for j in jobs}) == [0.1, 0.4]
        assert preset_lr == pytest.approx({bs: preset})


def test_levers_steps_and_the_committed_table_as_a_variant():
    levers = load("levers.py")
    assert levers.steps("exp1", 1024, {}) == 80 and levers.steps("exp1", 32, {}) == 2560
    assert levers.steps("exp3", 1024, {"epoch_scale": 0.4}) == 320 and levers.steps("exp2", 512, {}) == 2560
    rows = levers.committed_rows()
    assert {r["variant"] for r in rows} == {"authors-0.1"} and list(rows[0]) == levers.SUMMARY_COLUMNS
    exp3 = {r["batch_size"]: r["test_acc_mean"] for r in rows if r["row"] == "exp3"}
    assert sorted(exp3) == [32, 64, 128, 256, 512, 1024] and exp3[1024] < exp3[32]
    assert set(levers.VARIANTS["sqrt-torch-0.4"]["rows"]) == {"exp3", "exp6"}


def test_levers_summary_keeps_the_committed_rows_of_a_variant_whose_store_is_elsewhere(tmp_path):
    """Stores are not committed: a summary rewritten on another machine keeps what summary.csv and tables.md
    already hold for the variants it cannot read, and the committed table (authors-0.1) is always there."""
    import pandas as pd

    levers = load("levers.py")
    to = tmp_path / "to"
    to.mkdir()
    kept = {"variant": "torch-0.1", "init": "torch", "epoch_scale": 0.1, "lr_scaling": "experiment's", "base_lr": 0.1,
            "row": "exp1", "batch_size": 32, "steps": 2560, "n_seeds": 2, "test_acc_mean": 80.44, "test_acc_std": 0.71}
    pd.DataFrame([kept]).to_csv(to / "summary.csv", index=False)
    (to / "tables.md").write_text("## torch-0.1: init=\"torch\", base lr 0.1\n\nits table\n\n## gone-variant: x\n\nold\n")
    assert levers.summarize(tmp_path / "no-stores", to) == 0
    out = pd.read_csv(to / "summary.csv")
    assert set(out["variant"]) == {"authors-0.1", "torch-0.1"} and list(out.columns) == levers.SUMMARY_COLUMNS
    assert out[out["variant"] == "torch-0.1"].iloc[0]["test_acc_mean"] == 80.44
    md = (to / "tables.md").read_text()
    assert "## torch-0.1: init=\"torch\", base lr 0.1\n\nits table" in md and "gone-variant" not in md  # not a variant


def test_levers_summary_merges_a_variant_run_in_parts_across_sessions(tmp_path, monkeypatch):
    """A variant whose rows ran in two sessions: this session's store has exp6, the committed summary has the
    earlier store's exp1; both stay, and the earlier section of tables.md is kept, labelled with its rows."""
    import pandas as pd

    levers = load("levers.py")
    to, out = tmp_path / "to", tmp_path / "runs"
    to.mkdir()
    (out / "authors-0.4").mkdir(parents=True)
    (out / "authors-0.4" / "mlflow.db").touch()
    line = {"variant": "authors-0.4", "init": "authors", "epoch_scale": 0.4, "lr_scaling": "experiment's",
            "base_lr": 0.1, "row": "exp1", "batch_size": 32, "steps": 10240, "n_seeds": 2, "test_acc_mean": 85.0,
            "test_acc_std": 0.5}
    pd.DataFrame([line, {**line, "row": "exp6", "test_acc_mean": 1.0}]).to_csv(to / "summary.csv", index=False)
    (to / "tables.md").write_text("## authors-0.4: init=\"authors\" epoch_scale=0.4, base lr 0.1\n\nexp1 table\n")
    monkeypatch.setattr(levers, "store_rows", lambda name, store: ([{**line, "row": "exp6", "test_acc_mean": 80.0}], None, ""))
    assert levers.summarize(out, to) == 0
    got = pd.read_csv(to / "summary.csv")
    mine = got[got["variant"] == "authors-0.4"].set_index("row")["test_acc_mean"].to_dict()
    assert mine == {"exp1": 85.0, "exp6": 80.0}  # exp1 kept; exp6 from the store replaces the committed line
    md = (to / "tables.md").read_text()
    assert "## authors-0.4 (earlier rows: exp1): init=\"authors\" epoch_scale=0.4, base lr 0.1\n\nexp1 table" in md
    assert levers.summarize(tmp_path / "no-stores", to) == 0  # the next session, no store: both sections stay
    assert "(earlier rows: exp1)" in (to / "tables.md").read_text()


def test_levers_takes_the_pick_of_a_grid_run_in_an_earlier_session_from_its_committed_log(tmp_path):
    levers = load("levers.py")
    assert levers.grid_pick(tmp_path / "torch-0.1") == 0.1  # no store here: docs/.../levers/torch-0.1/levers.json
    assert levers.committed_pick("authors-0.2") == 0.1 and levers.committed_pick("sqrt-authors-0.4") is None
    with pytest.raises(SystemExit, match="no committed lr-grid pick of sqrt-authors-0.4"):
        levers.grid_pick(tmp_path / "sqrt-authors-0.4")


def test_levers_gap_figure_draws_the_sqrt_variants_as_their_own_line(tmp_path, monkeypatch):
    """One line per (init, lr rule): a sqrt-rule variant is never joined to the eq. 1 line of its init."""
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    levers = load("levers.py")
    drawn = []
    real = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda ax, *a, **kw: (drawn.append((kw.get("label"), a[:2])), real(ax, *a, **kw))[1])
    line = {"init": "torch", "epoch_scale": 0.4, "base_lr": 0.1, "row": "exp6", "n_seeds": 2, "test_acc_std": 0.0}
    frame = pd.DataFrame([{**line, "variant": v, "lr_scaling": rule, "batch_size": bs, "steps": steps, "test_acc_mean": acc}
                          for v, rule, acc1024 in (("torch-0.4", "experiment's", 50.0), ("sqrt-torch-0.4", "sqrt", 80.0))
                          for bs, steps, acc in ((32, 10240, 85.0), (1024, 320, acc1024))])
    levers.gap_figure(frame, tmp_path / "gap.png")
    assert (tmp_path / "gap.png").stat().st_size > 0
    mine = {label: (list(xs), list(ys)) for label, (xs, ys) in drawn if label and "paper" not in label}
    assert mine == {"init torch": ([320], [35.0]), "init torch, sqrt lr rule": ([320], [5.0])}


def test_levers_refuses_baseline_rows_for_a_variant_that_sets_the_lr_rule(tmp_path, capsys):
    """--set lr_scaling=sqrt would give exp1/exp2 (which scale no lr) a scaled lr: refused before anything runs."""
    levers = load("levers.py")
    assert levers.main(["--variant", "sqrt-torch-0.4", "--out", str(tmp_path), "--rows", "exp2", "exp4"]) == 2
    assert capsys.readouterr().err.strip() == "error: exp2 scale no lr (lr_scaling none): their rows are torch-0.4's, not sqrt-torch-0.4's"
    assert not (tmp_path / "sqrt-torch-0.4").exists()
    assert levers.main(["--variant", "sqrt-torch-0.4", "--out", str(tmp_path), "--rows", "exp9"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown experiment 'exp9'")
    assert not (tmp_path / "sqrt-torch-0.4").exists()
