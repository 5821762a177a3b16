#!/usr/bin/env python
"""The Gradient Routing ablation on synthetic data: three variants x three seeds.

Variants (docs/results.md):
  gr           gated network trained with Gradient Routing (the method)
  gates_no_gr  the same gated network, gates trained by the main optimiser (no routing)
  no_gates     the same network without gates (plain step)

Every run is a real `hagview-train` run (a subprocess) with its own run directory under
--out; a run that already completed is reused, an interrupted one is resumed. Each run
trains on the training folds, picks its best epoch on the validation fold, and evaluates
that checkpoint on the test set (another synthetic seed with a shifted appearance, the
config's `test:` section). Per-frame and per-polyp MAE and F1 (binary F1 of the >= 10 mm
class and, as the reference reports it, weighted over both classes) and what clinicians read
(within 1 mm, > 5 mm called <= 5 mm, >= 10 mm called < 10 mm, Bland-Altman bias and limits)
are reported as mean +- std over the seeds, for validation and test.

    python scripts/run_experiment.py --config configs/train/experiment_gr_ablation_reference.yaml \
        --out runs/experiment-reference       # the reference configuration, masked frame + depth

    python scripts/run_experiment.py --out runs/experiment --jobs 2
    python scripts/run_experiment.py --set train.epochs=5 --seeds 0 1   # a quicker look

Writes OUT/results.json and OUT/results.md, and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.fsutil import write_json_atomic, write_text_atomic  # noqa: E402

VARIANTS = {
    "gr": ["model.gates=true", "routing.enabled=true"],
    "gates_no_gr": ["model.gates=true", "routing.enabled=false"],
    "no_gates": ["model.gates=false", "routing.enabled=false"],
}
VARIANT_TITLES = {"gr": "HAG + GR", "gates_no_gr": "gates, no GR", "no_gates": "no gates"}
METRICS = ("frame_mae_mm", "polyp_mae_mm", "frame_binary_f1", "polyp_binary_f1",
           "frame_triclass_f1_weighted", "polyp_triclass_f1_weighted",
           "frame_triclass_f1_macro", "polyp_triclass_f1_macro",
           "frame_binary_f1_weighted", "polyp_binary_f1_weighted")
CLINICIAN = ("within_1mm", "missed_above_5_rate", "missed_large_rate", "ba_bias_mm", "ba_loa_low_mm",
             "ba_loa_high_mm")
ALL_METRICS = METRICS + tuple(f"{level}_{m}" for level in ("frame", "polyp") for m in CLINICIAN)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "train" / "experiment_gr_ablation.yaml"))
    p.add_argument("--out", default="runs/experiment")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each gets cpu_count/jobs threads)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to every run (e.g. train.epochs=5)")
    return p.parse_args(argv)


def run_one(args, variant: str, seed: int, threads: int) -> tuple[str, int, dict, float]:
    run_dir = Path(args.out) / f"{variant}-seed{seed}"
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary["folds"] and all(f.get("completed") for f in summary["folds"].values()):
            return variant, seed, summary, 0.0
    command = [sys.executable, "-m", "trainer.train", "--config", args.config, "--out", str(run_dir), "--quiet"]
    if (run_dir / "config.yaml").is_file():
        command.append("--resume")
    for item in [*VARIANTS[variant], f"train.seed={seed}", *args.overrides]:
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    log_path = Path(args.out) / f"{variant}-seed{seed}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"run_experiment: {variant} seed {seed} failed (exit {done.returncode}); see {log_path}")
    elapsed = time.perf_counter() - started
    print(f"  {variant} seed {seed}: done in {elapsed:.0f} s", flush=True)
    return variant, seed, json.loads(summary_path.read_text()), elapsed


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    print(f"{len(jobs)} runs ({', '.join(args.variants)} x seeds {args.seeds}), {args.jobs} at a time, "
          f"{threads} threads each", flush=True)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda job: run_one(args, *job, threads), jobs))
    total = time.perf_counter() - started

    runs = {}
    for variant, seed, summary, elapsed in results:
        fold = next(iter(summary["folds"].values()))
        runs.setdefault(variant, {})[seed] = {"validation": fold["best_metrics"], "test": fold.get("test_metrics"),
                                              "best_epoch": fold["best_epoch"], "seconds": elapsed}
    table = {}
    for variant, by_seed in runs.items():
        table[variant] = {}
        for split in ("validation", "test"):
            for metric in ALL_METRICS:
                values = [r[split][metric] for r in by_seed.values() if r[split] and metric in r[split]
                          and r[split][metric] == r[split][metric]]
                if values:
                    m, s = mean_std(values)
                    table[variant][f"{split}_{metric}"] = {"mean": m, "std": s, "values": values}
    result = {"config": args.config, "overrides": args.overrides, "seeds": args.seeds,
              "variants": {v: VARIANTS[v] for v in args.variants}, "runs": runs, "summary": table,
              "wall_seconds": total, "jobs": args.jobs, "threads_per_job": threads}
    out = Path(args.out)
    write_json_atomic(out / "results.json", result)
    markdown = results_markdown(table, args)
    write_text_atomic(out / "results.md", markdown)
    print(markdown)
    print(f"total wall time {total / 60:.1f} min; wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


def results_markdown(table: dict, args) -> str:
    lines = []
    for split in ("test", "validation"):
        title = ("Test set (other seed, shifted appearance)" if split == "test"
                 else "Validation fold (same appearance as training)")
        lines += [f"**{title}**, mean ± std over seeds {', '.join(map(str, args.seeds))}", "",
                  "| variant | frame MAE (mm) | polyp MAE (mm) | frame binary F1 | polyp binary F1 "
                  "| frame triclass F1 (w) | polyp triclass F1 (w) |",
                  "|---|---|---|---|---|---|---|"]
        for variant, cells in table.items():
            row = [VARIANT_TITLES[variant]]
            for metric in METRICS[:6]:
                cell = cells.get(f"{split}_{metric}")
                digits = 2 if "mae" in metric else 3
                row.append(f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}" if cell else "-")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines += ["| variant | frame binary F1 (w, as the paper) | polyp binary F1 (w) | frame macro triclass F1 "
                  "| polyp macro triclass F1 |", "|---|---|---|---|---|"]
        for variant, cells in table.items():
            row = [VARIANT_TITLES[variant]] + [_cell(cells.get(f"{split}_{m}"), 3) for m in (
                "frame_binary_f1_weighted", "polyp_binary_f1_weighted", "frame_triclass_f1_macro",
                "polyp_triclass_f1_macro")]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        for level in ("frame", "polyp"):
            lines += [f"What clinicians read, per {level}:", "",
                      "| variant | within 1 mm | >5 mm called <=5 | >=10 mm called <10 | bias (mm) "
                      "| 95% limits (mm) |", "|---|---|---|---|---|---|"]
            for variant, cells in table.items():
                c = {m: cells.get(f"{split}_{level}_{m}") for m in CLINICIAN}
                limits = (f"{c['ba_loa_low_mm']['mean']:.1f} to {c['ba_loa_high_mm']['mean']:.1f}"
                          if c["ba_loa_low_mm"] and c["ba_loa_high_mm"] else "-")
                lines.append("| " + " | ".join([VARIANT_TITLES[variant], _cell(c["within_1mm"], 3),
                                                _cell(c["missed_above_5_rate"], 3), _cell(c["missed_large_rate"], 3),
                                                _cell(c["ba_bias_mm"], 2), limits]) + " |")
            lines.append("")
    return "\n".join(lines)


def _cell(cell, digits: int) -> str:
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}" if cell else "-"


if __name__ == "__main__":
    raise SystemExit(main())
