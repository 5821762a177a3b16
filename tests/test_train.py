"""hagview-train end to end on a tiny synthetic data set: run directory, determinism, resume,
the ablation steps, the report.

Synthetic data is generated once per test session into a cache under pytest's base temp dir
(the cache key makes every test file that asks for the same settings share it), and read
with the REAL-Colon reader like real data.
"""
from __future__ import annotations

import csv
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
import yaml

from trainer.config import config_to_dict, load_config
from trainer.models import load_checkpoint, read_checkpoint
from trainer.train import main, run_training

TIMING_COLUMNS = {"samples_per_s", "epoch_time_s"}

# ~70 frames of 160x128 in 3 videos, 2-3 polyps each; a ResNet-18 at 1/8 width on 48 px crops.
# FOV masking is off so that inputs do not depend on which frame of a video is seen first
# (the FOV cache estimates once per video), which the exact-resume comparison needs.
TINY_CONFIG = """
model: {name: hag_resnet18, width_mult: 0.125, hidden: 16}
data:
  kind: synthetic
  folds: 2
  train_per_polyp: 8
  val_per_polyp: 8
  input: {size: 48, fov_masking: false}
  synthetic:
    videos: 3
    seed: 1
    cache_dir: CACHE
    overrides: {width: 160, height: 128, seconds: 3.0, fps: 10.0, polyps: {min_count: 2, max_count: 3}}
optim:
  main: {lr: 0.003}
  gates: {lr: 0.01}
train: {epochs: 3, batch_size: 8, workers: 0, seed: 3}
"""


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()
    path = base / "tiny_train.yaml"
    path.write_text(TINY_CONFIG.replace("CACHE", str(base / "synth-cache")))
    return path


@pytest.fixture(scope="session")
def three_epoch_run(tiny_config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "three"
    assert main(["--config", str(tiny_config), "--out", str(out), "--fold", "0", "--quiet"]) == 0
    return out


def metric_rows(run: Path, fold: int = 0) -> list[dict]:
    with open(run / f"fold-{fold}" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(f)]


def test_short_run_writes_the_run_directory_and_lowers_the_loss(three_epoch_run, tiny_config):
    run = three_epoch_run
    # resolved config: every key, and loading it again gives the same config
    resolved = load_config(run / "config.yaml")
    original = load_config(tiny_config)
    assert config_to_dict(resolved) == {**config_to_dict(original), "name": resolved.name}
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["gates"]["lr"] == 0.01

    rows = metric_rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    losses = [float(r["train_main_loss"]) for r in rows]
    assert losses[-1] < losses[0], losses
    for column in ("train_routing_loss", "val_frame_mae_mm", "val_polyp_mae_mm", "val_frame_binary_f1",
                   "val_polyp_triclass_f1_weighted", "lr_main", "lr_gates", "gate_mean"):
        assert column in rows[0], column
    assert float(rows[1]["lr_main"]) < float(rows[0]["lr_main"])   # cosine schedule moves

    summary = json.loads((run / "summary.json").read_text())
    fold = summary["folds"]["0"]
    assert summary["primary_metric"] == "frame_mae_mm" and summary["higher_is_better"] is False
    assert fold["completed"] and fold["epochs_done"] == 3
    best_epoch = min(rows, key=lambda r: float(r["val_frame_mae_mm"]))["epoch"]
    assert fold["best_epoch"] == int(best_epoch)
    assert math.isclose(fold["best_metric"], float(rows[int(best_epoch) - 1]["val_frame_mae_mm"]))
    assert summary["best_fold"] == 0

    metrics = json.loads((run / "fold-0" / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 3
    assert metrics["best_confusion"]["frame_triclass"][0] == ["diminutive", "small", "large"]
    counts = metrics["best_confusion"]["frame_triclass"][1]
    assert sum(map(sum, counts)) == int(metrics["best_metrics"]["frame_count"])

    best_model, best_meta = load_checkpoint(run / fold["best_checkpoint"])
    last_model, last_meta = load_checkpoint(run / fold["last_checkpoint"])
    assert best_meta["epoch"] == fold["best_epoch"] and last_meta["epoch"] == 3
    assert best_meta["kind"] == "sizer" and best_meta["fold"] == 0
    assert best_meta["data"]["synthetic"] is True and best_meta["data"]["kind"] == "synthetic"
    assert best_meta["input_spec"]["size"] == 48 and best_meta["input_spec"]["streams"] == ["rgb", "mask"]
    assert best_meta["config"]["model"]["width_mult"] == 0.125
    x = torch.rand(2, 3, 48, 48)
    assert best_model({"rgb": x, "mask": x})["size_mm"].shape == (2, 1)
    assert read_checkpoint(run / "fold-0" / "best.pt").training_state is None
    assert read_checkpoint(run / "fold-0" / "last.pt").training_state["epoch"] == 3

    page = (run / "fold-0" / "report.html").read_text()
    figures = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(figures) >= 6 and "Confusion matrices" in page and "val_frame_mae_mm" in page
    for figure in figures:
        ET.fromstring(figure)         # each figure is well-formed SVG


def test_same_seed_gives_the_same_metrics(three_epoch_run, tiny_config, tmp_path):
    out = tmp_path / "again"
    assert main(["--config", str(tiny_config), "--out", str(out), "--fold", "0", "--quiet"]) == 0
    assert metric_rows(out) == metric_rows(three_epoch_run)


def test_resume_continues_from_the_saved_epoch(three_epoch_run, tiny_config, tmp_path):
    out = tmp_path / "resumed"
    assert main(["--config", str(tiny_config), "--out", str(out), "--fold", "0", "--quiet",
                 "--set", "train.epochs=2"]) == 0
    assert len(metric_rows(out)) == 2
    # --config is optional when resuming: RUN/config.yaml is used, epochs raised with --set
    assert main(["--out", str(out), "--resume", "--fold", "0", "--quiet", "--set", "train.epochs=3"]) == 0
    # the interrupted-and-resumed run is the uninterrupted run, number for number
    assert metric_rows(out) == metric_rows(three_epoch_run)
    resumed = read_checkpoint(out / "fold-0" / "last.pt").state_dict
    straight = read_checkpoint(three_epoch_run / "fold-0" / "last.pt").state_dict
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    # a complete fold is not trained again
    assert main(["--out", str(out), "--resume", "--fold", "0", "--quiet"]) == 0
    assert len(metric_rows(out)) == 3


def test_existing_run_directory_is_never_overwritten(three_epoch_run, tiny_config, capsys):
    before = (three_epoch_run / "fold-0" / "metrics.csv").read_bytes()
    code = main(["--config", str(tiny_config), "--out", str(three_epoch_run), "--fold", "0", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(three_epoch_run) in err and "--resume" in err
    assert (three_epoch_run / "fold-0" / "metrics.csv").read_bytes() == before


@pytest.mark.parametrize("gates", [True, False])
def test_plain_step_ablations(tiny_config, tmp_path, gates):
    """routing.enabled false: gates trained by the main optimiser, or no gates at all."""
    cfg = load_config(tiny_config, ["routing.enabled=false", f"model.gates={str(gates).lower()}",
                                    "train.epochs=1", "data.fold=1"])
    summary = run_training(cfg, tmp_path / "run", show_progress=False)
    assert summary["folds"]["1"]["completed"]
    row = metric_rows(tmp_path / "run", fold=1)[0]
    assert "train_routing_loss" not in row and "lr_gates" not in row
    model, _ = load_checkpoint(tmp_path / "run" / "fold-1" / "last.pt")
    gate_params = list(model.gate_parameters())
    assert bool(gate_params) == gates and ("gate_mean" in row) == gates
    if gates:   # the main optimiser moved the gates away from their initial values
        initial = type(model)(**model.init_kwargs)
        assert any(not torch.equal(a, b) for a, b in zip(gate_params, initial.gate_parameters()))


def test_routing_without_gates_is_a_config_error(tiny_config, tmp_path, capsys):
    code = main(["--config", str(tiny_config), "--out", str(tmp_path / "r"), "--fold", "0",
                 "--set", "model.gates=false", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "routing.enabled" in err and len(err.splitlines()) == 1


def test_test_set_is_evaluated_with_the_best_checkpoint(tiny_config, tmp_path):
    raw = yaml.safe_load(tiny_config.read_text())
    shifted = dict(raw["data"]["synthetic"], seed=2, overrides={**raw["data"]["synthetic"]["overrides"],
                                                                "specular": 0.3})
    cfg = load_config(tiny_config, {"train.epochs": 1, "data.fold": 0, "test.enabled": True,
                                    "test.kind": "synthetic", "test.per_polyp": 4, "test.synthetic": shifted})
    summary = run_training(cfg, tmp_path / "run", show_progress=False)
    test = summary["folds"]["0"]["test_metrics"]
    assert test["frame_count"] > 0 and "polyp_mae_mm" in test
    assert "test_frame_mae_mm" in summary["mean_best"]
    metrics = json.loads((tmp_path / "run" / "fold-0" / "metrics.json").read_text())
    assert metrics["test_metrics"] == test


def test_svg_helpers_draw_gaps_log_axes_and_matrices():
    from pipeline.charts import svg_confusion_matrix, svg_line_plot

    ns = "{http://www.w3.org/2000/svg}"
    svg = ET.fromstring(svg_line_plot({"a": [1.0, 2.0, None, 4.0, 5.0], "b": [0.1, 10.0, 100.0, float("nan"), 1.0]},
                                      title="t", xlabel="epoch", log_y=True))
    lines = svg.findall(f"{ns}polyline")
    assert len(lines) == 4            # each series broken once by its gap
    labels = [t.text for t in svg.findall(f"{ns}text")]
    assert {"0.1", "1", "10", "100"} <= set(labels) and "epoch" in labels and "a" in labels
    empty = ET.fromstring(svg_line_plot({"a": []}))
    assert "no data" in [t.text for t in empty.findall(f"{ns}text")]
    matrix = ET.fromstring(svg_confusion_matrix([[5, 1], [0, 4]], ["<10mm", ">=10mm"], title="binary"))
    cells = [r for r in matrix.findall(f"{ns}rect") if r.get("stroke") == "#999"]
    texts = [t.text for t in matrix.findall(f"{ns}text")]
    assert len(cells) == 4 and "5" in texts and "83%" in texts and "100%" in texts
