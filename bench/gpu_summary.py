"""The Markdown summary of a bench/gpu_check.sh run: ``python bench/gpu_summary.py OUT > OUT/summary.md``.

Reads what the steps wrote under OUT (steps.jsonl, a_env.json, b2_smoke.json, c*.json from
bench/throughput.py, d_packing.json from bench/packing.py, e_mini.json from bench/gpu_mini.py) and sets each
figure beside the performance goals of bench/README.md: s/epoch (40k train + 20k eval images) at bs 32
<= 1.0 and at bs 1024 <= 0.25, >= 20x the hand-written DataLoader loop at bs 32. Missing files are said,
not guessed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GOALS = {32: 1.0, 1024: 0.25}  # s/epoch, bench/README.md's performance goals (H100)
RATIO_GOAL = 20.0  # bigbatch vs the hand-written loop at bs 32, training images/s


def load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def fmt(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def summary(out: Path) -> str:
    lines = ["# bench/gpu_check.sh", ""]
    env = load(out / "a_env.json")
    if env:
        lines += ["- " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()] \
        if (out / "steps.jsonl").exists() else []
    lines += ["| step | status | s | what / why |", "| --- | --- | --- | --- |"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['why'].replace('|', '/')} |" for s in steps]
    lines += [""]

    smoke = load(out / "b2_smoke.json")
    if smoke:
        lines += [f"**b2, exp6 smoke sweep**: {smoke['finished']} of {smoke['trials']} trials finished, devices "
                  f"{', '.join(smoke['devices']) or '-'}; Table I from its runs: b2_table.md", ""]

    rows = []
    for path in sorted(out.glob("c*.json")):
        data = load(path)
        if not data:
            continue
        args = data.get("args", {})
        for r in data.get("results", []):
            bs = r["batch_size"]
            goal = GOALS.get(bs)
            sec = r.get("epoch_seconds_bigbatch")
            ratio = r.get("ratio_train") if r.get("baseline") else None
            meets = "-" if goal is None or sec is None else ("yes" if sec <= goal else "no")
            rows.append(f"| {path.stem} | {args.get('norm', 'none')} | {args.get('precision', 'fp32')} | {bs} | {fmt(sec, 3)} | "
                        f"{goal if goal is not None else '-'} | {meets} | {fmt(r.get('epoch_seconds_baseline'), 2)} | "
                        f"{fmt(ratio, 1)}{'' if ratio is None else (' (goal >= 20: ' + ('yes' if ratio >= RATIO_GOAL else 'no') + ')')} |")
    if rows:
        lines += ["**c, training speed** (s per epoch of 40k train + 20k eval images on a GPU; tiny sizes in a CPU smoke run)", "",
                  "| file | norm | precision | bs | bigbatch s/epoch | goal | meets | DataLoader loop s/epoch | speed-up |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |", *rows, ""]

    packing = load(out / "d_packing.json")
    if packing:
        lines += ["**d, packing**", "", "| bs | trials per GPU | total img/s | peak GiB | OOM | errors |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['batch_size']} | {r['k']} | {fmt(r.get('total_images_per_second'), 0)} | {fmt(r.get('gpu_peak_used_gib'))} | "
                  f"{r.get('oom')} | {len(r.get('errors', []))} |" for r in packing.get("results", [])]
        lines += [""]

    mini = load(out / "e_mini.json")
    if mini:
        lines += ["**e, mini cells at full width** (bigbatch.train, seed 0)", "", "| cell | lr | epochs | test % | s |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {c['experiment']} bs {c['batch_size']} | {c['lr']:g} | {c['epochs']} | {fmt(c['test_acc'])} | {c['seconds']} |"
                  for c in mini.get("cells", [])]
        lines += [""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(Path(sys.argv[1])))
