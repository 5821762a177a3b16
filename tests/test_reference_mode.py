"""The reference mode (issue 16): configs that match cosmoimd/feature-selection-gates, its loss,
schedule, splits, sampling, selection, decision and metrics; the clinician metrics."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

from pipeline.errors import ConfigError, DataError
from pipeline.size_metrics import (bland_altman, clinician_metrics, confusion_5_10, per_polyp_median,
                                   time_to_first_size)
from trainer.config import load_config
from trainer.data.records import SampleRecord
from trainer.data.sampling import drop_sparse_polyps, sample_per_polyp
from trainer.data.splits import (fold_roles, load_official_split_csv, load_split_file, make_kfold_splits,
                                 make_sklearn_splits)
from trainer.losses import REFERENCE_MM_PER_UNIT, ReferenceSizeLoss, SizeRegressionLoss
from trainer.metrics import evaluate_sizes
from trainer.tasks import build_task
from trainer.train import finish_summary, make_scheduler

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"
DATA_MEAN = (0.32239652, 0.22631808, 0.17500061)
DATA_STD = (0.31781745, 0.2405859, 0.19327126)


def reference(name: str):
    return load_config(CONFIGS / f"{name}.yaml", check_paths=False)


# ----------------------------------------------------------------------------- the configs
@pytest.mark.parametrize("name,streams", [("reference_r18_loc_dpt", ("mask", "depth")),
                                          ("reference_r18_rgb_dpt", ("rgb", "depth"))])
def test_resnet_reference_configs_hold_the_reference_values(name, streams):
    c = reference(name)
    assert c.task == "sizer" and c.model.name == "hag_resnet18" and c.model.gates and c.routing.enabled
    assert c.model.width_mult == 1.0 and c.model.hidden == 128 and c.model.kwargs == {"dropout": 0.35}
    assert c.model.pretrained == "../shared/weights/resnet18-5c106cde.pth"
    # inputs and augmentation
    assert c.data.input.streams == streams and c.data.input.size == 384
    assert c.data.input.mean == DATA_MEAN and c.data.input.std == DATA_STD
    assert c.data.input.fov_masking and c.data.input.box_grow == 0.5
    a = c.data.augment
    assert a.enabled and a.rotate_deg == 30.0 and a.hflip_p == 0.5 and a.vflip_p == 0.5
    assert (a.brightness, a.contrast, a.saturation) == (0.15, 0.15, 0.15) and a.hue_deg == pytest.approx(3.6)
    assert a.scale == (1.0, 1.0) and a.shift == 0.0 and a.gamma == (1.0, 1.0) and a.blur_p == 0.0
    # losses as the reference runs them, for both passes
    assert c.loss.kind == "reference" and c.routing.loss.kind == "reference"
    # optimisation
    m, g = c.optim.main, c.optim.gates
    assert (m.name, m.lr, m.weight_decay, m.clip) == ("adam", 2e-4, 1e-13, 8.0)
    assert (m.schedule.kind, m.schedule.restart_epochs, m.schedule.restart_mult, m.schedule.min_lr) == \
        ("cosine_warm_restarts", 40, 1, 5e-6)
    assert (g.name, g.lr, g.clip, g.schedule.kind) == ("adam", 3e-4, 8.0, "none")
    assert c.train.epochs == 40 and c.train.batch_size == 32
    assert c.data.train_per_polyp == 45
    _common_reference_values(c)


def test_vit_reference_config_holds_the_reference_values():
    c = reference("reference_vit_tiny_triclass")
    assert c.model.name == "hag_vit_tiny" and c.model.gates and c.routing.enabled
    assert c.model.pretrained == "../shared/weights/vit_tiny_patch16_384.bin"
    assert c.data.input.streams == ("rgb",) and c.data.input.size == 384
    assert c.data.input.mean == DATA_MEAN and c.data.input.std == DATA_STD
    assert c.loss.kind == "reference" and c.routing.loss.kind == "reference"
    m, g = c.optim.main, c.optim.gates
    assert (m.name, m.lr, m.weight_decay, m.clip) == ("adam", 5e-5, 1e-5, 10.0)
    assert (m.schedule.kind, m.schedule.restart_epochs, m.schedule.min_lr) == ("cosine_warm_restarts", 40, 1e-5)
    assert (g.name, g.lr, g.clip, g.schedule.kind) == ("adam", 1e-4, 32.0, "none")
    assert c.train.batch_size == 1 and c.train.epochs == 40 and c.data.train_per_polyp == 40
    _common_reference_values(c)


def _common_reference_values(c):
    assert c.data.input.mode == "reference" and c.data.input.fov_masking   # its crop geometry and circle
    assert c.train.primary_metric == "loss"                       # best epoch: minimum validation loss
    assert c.decision.clamp_mm == (0.5, 22.0) and c.decision.diminutive_max_mm == 4.75
    d = c.data
    assert (d.split_method, d.split_seed, d.folds, d.protocol) == ("sklearn", 1, 6, "test_val")
    assert d.val_per_polyp == 300 and d.val_sampling == "random" and d.min_frames_per_polyp == 2
    task = build_task(c)
    assert task.primary_metric == "loss" and task.higher_is_better is False
    assert "test_frame_binary_f1_weighted" in task.paper_comparable


def test_defaults_stay_ours():
    c = load_config(None, check_paths=False)
    assert c.loss.kind == "ours" and c.routing.loss.kind == "ours"
    assert c.data.split_method == "round_robin" and c.data.protocol == "val_fold"
    assert c.data.val_sampling == "uniform" and c.data.min_frames_per_polyp == 1
    assert c.decision.clamp_mm is None and c.decision.diminutive_max_mm == 5.0


def test_missing_pretrained_file_names_the_config_key(tmp_path):
    data = tmp_path / "REAL-Colon"
    data.mkdir()
    with pytest.raises(ConfigError, match=r"config key 'model\.pretrained': path does not exist: "
                                          r"\.\./shared/weights/resnet18-5c106cde\.pth"):
        load_config(CONFIGS / "reference_r18_loc_dpt.yaml", [f"data.root={data}"])


def test_reference_config_loads_a_local_imagenet_file(tmp_path):
    """A small generated torchvision-named file (conv1 only) at the configured key loads into both
    streams; the one-channel depth stream gets the filters summed over RGB."""
    weights = tmp_path / "resnet18-5c106cde.pth"
    torch.save({"conv1.weight": torch.full((64, 3, 7, 7), 0.25)}, weights)
    data = tmp_path / "REAL-Colon"
    data.mkdir()
    c = load_config(CONFIGS / "reference_r18_loc_dpt.yaml",
                    [f"data.root={data}", f"model.pretrained={weights}", "model.hidden=8", "data.input.size=32"])
    state = build_task(c).build_model().state_dict()
    assert torch.all(state["backbones.mask.conv1.weight"] == 0.25)
    assert torch.all(state["backbones.depth.conv1.weight"] == 0.75)


# ----------------------------------------------------------------------------- loss, schedule
def test_reference_loss_is_unweighted_smooth_l1_in_the_scaled_space():
    loss = ReferenceSizeLoss()
    pred = torch.tensor([1.0, 6.0, 14.0, 20.0])
    target = torch.tensor([3.0, 8.0, 12.0, 0.5])
    scaled_diff = (pred - target) / REFERENCE_MM_PER_UNIT
    assert REFERENCE_MM_PER_UNIT == 9.75
    expected = torch.where(scaled_diff.abs() < 1, 0.5 * scaled_diff ** 2, scaled_diff.abs() - 0.5)
    torch.testing.assert_close(loss.per_sample(pred, target), expected)
    # the same 2 mm error weighs the same whatever the size class (no size weights fire)
    per = loss.per_sample(pred[:3], target[:3])
    assert torch.allclose(per, per[0].expand(3))
    # ours weighs it 1, 3 and 5 times in mm
    ours = SizeRegressionLoss().per_sample(pred[:3], target[:3])
    assert ours.tolist() == pytest.approx([1.5, 4.5, 7.5])
    out = loss({"size_mm": pred[:, None]}, {"size_mm": target[:, None]})
    assert out.item() == pytest.approx(expected.mean().item())


def test_reference_config_uses_the_reference_loss_for_both_passes():
    task = build_task(reference("reference_r18_loc_dpt"))
    assert isinstance(task._main_loss, ReferenceSizeLoss) and isinstance(task._routing_loss, ReferenceSizeLoss)


def test_cosine_schedule_is_stepped_per_batch_over_40_epochs():
    steps_per_epoch = 7
    c = reference("reference_r18_loc_dpt")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=c.optim.main.lr)
    sched = make_scheduler(opt, c.optim.main.schedule, steps_per_epoch)
    assert sched.T_0 == 40 * steps_per_epoch
    lrs = []
    for _ in range(40 * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2e-4)
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))            # one decay, no restart in 40 epochs
    assert lrs[20 * steps_per_epoch] == pytest.approx(5e-6 + (2e-4 - 5e-6) / 2)
    assert lrs[-1] == pytest.approx(5e-6 + (2e-4 - 5e-6) * (1 + math.cos(math.pi * (280 - 1) / 280)) / 2)


# ----------------------------------------------------------------------------- splits
def test_sklearn_split_is_the_references_stratified_k_fold():
    rng = np.random.default_rng(0)
    sizes = {f"{v:03d}-{i}": float(s) for v, (i, s) in enumerate(
        zip(range(60), rng.choice([3.0, 7.0, 15.0], size=60, p=[0.6, 0.25, 0.15])))}
    folds = make_sklearn_splits(sizes, k=6, seed=1)
    ids = sorted(sizes)
    names = {3.0: "Dim", 7.0: "Small", 15.0: "Large"}    # the reference's labels: names do not matter
    expected = [sorted(ids[i] for i in test) for _, test in
                StratifiedKFold(6, shuffle=True, random_state=1).split(ids, [names[sizes[p]] for p in ids])]
    assert folds == expected
    assert sorted(p for f in folds for p in f) == ids
    assert folds != make_kfold_splits(sizes, k=6, seed=1)


def test_fold_protocols():
    folds = [["a"], ["b"], ["c"], ["d"]]
    assert fold_roles(folds, 0, "test_val") == (["c", "d"], ["b"], ["a"])
    assert fold_roles(folds, 3, "test_val") == (["b", "c"], ["a"], ["d"])     # k+1 wraps round
    assert fold_roles(folds, 1, "val_fold") == (["a", "c", "d"], ["b"], [])
    with pytest.raises(ConfigError):
        fold_roles(folds[:2], 0, "test_val")


def _write_official_csv(path: Path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["unique_id", "frame_id", "gt", "gt_group", "kfold_id"])
        w.writerows(rows)


def test_official_split_csv_importer(tmp_path):
    path = tmp_path / "kfold_polypsizing_lists_per_object.csv"
    _write_official_csv(path, [["001-001_1", "10", 3.0, "Dim", 0], ["001-001_1", "11", 3.0, "Dim", 0],
                               ["002-003_2", "4", 12.0, "Large", 1], ["7", "100", 6.0, "Small", 2],
                               ["001-004_1", "5", 8.0, "Small", 2]])
    assert load_official_split_csv(path) == [["001-001_1"], ["002-003_2"], ["001-004_1", "7"]]
    # through the generic loader, keeping the data set's polyps (SUN's "7" is not in it)
    assert load_split_file(path, known_ids={"001-001_1", "002-003_2", "001-004_1"}) == \
        [["001-001_1"], ["002-003_2"], ["001-004_1"]]
    bad = tmp_path / "bad.csv"
    _write_official_csv(bad, [["a", "1", 3, "Dim", 0], ["a", "2", 3, "Dim", 1]])
    with pytest.raises(DataError, match=r"bad\.csv:3: polyp 'a' is in folds 0 and 1"):
        load_official_split_csv(bad)
    bad.write_text("unique_id,frame_id,gt_group\na,1,Dim\n")
    with pytest.raises(DataError, match="missing column.*kfold_id"):
        load_official_split_csv(bad)
    _write_official_csv(bad, [["a", "1", 3, "Dim", 0], ["b", "2", 3, "Dim", 2]])
    with pytest.raises(DataError, match=r"kfold_id values must be 0\.\.k-1, got \[0, 2\]"):
        load_official_split_csv(bad)


# ----------------------------------------------------------------------------- sampling
def _samples(counts: dict[str, int]) -> list[SampleRecord]:
    return [SampleRecord(f"{p}/{i}.jpg", p, i, (0, 0, 10, 10), p, 5.0, (64, 64))
            for p, n in counts.items() for i in range(n)]


def test_polyps_with_one_frame_are_dropped():
    kept = drop_sparse_polyps(_samples({"a": 1, "b": 2, "c": 5}), 2)
    assert sorted({s.polyp_id for s in kept}) == ["b", "c"] and len(kept) == 7
    assert len(drop_sparse_polyps(_samples({"a": 1}), 1)) == 1


def test_validation_draw_is_redrawn_every_epoch():
    samples = _samples({"a": 900, "b": 250})
    first = sample_per_polyp(samples, 300, seed=7, epoch=1, strategy="random")
    second = sample_per_polyp(samples, 300, seed=7, epoch=2, strategy="random")
    assert len(first) == len(second) == 300 + 250                  # all of b, 300 of a
    assert first != second and first == sample_per_polyp(samples, 300, seed=7, epoch=1, strategy="random")


# ----------------------------------------------------------------------------- metrics
def test_binary_f1_weighted_and_positive_class_match_scikit_learn():
    rng = np.random.default_rng(3)
    true = rng.uniform(1, 20, 200)
    pred = np.clip(true + rng.normal(0, 3, 200), 0.5, 22)
    m = evaluate_sizes(pred, true).values
    tb, pb = (true >= 10).astype(int), (pred >= 10).astype(int)
    assert m["frame_binary_f1"] == pytest.approx(f1_score(tb, pb))
    assert m["frame_binary_f1_weighted"] == pytest.approx(f1_score(tb, pb, average="weighted"))
    tt = np.where(true <= 5, 0, np.where(true >= 10, 2, 1))
    pt = np.where(pred <= 5, 0, np.where(pred >= 10, 2, 1))
    assert m["frame_triclass_f1_weighted"] == pytest.approx(f1_score(tt, pt, average="weighted"))
    assert m["frame_triclass_f1_macro"] == pytest.approx(f1_score(tt, pt, average="macro"))


def test_diminutive_threshold_moves_predictions_between_classes():
    true, pred = [4.0, 4.0, 12.0], [4.9, 4.7, 12.0]
    at5 = evaluate_sizes(pred, true).confusion["frame_triclass"]
    at475 = evaluate_sizes(pred, true, diminutive_max_mm=4.75).confusion["frame_triclass"]
    assert at5.tolist() == [[2, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert at475.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]


def test_fold_summary_is_mean_and_std_over_folds():
    class T:
        higher_is_better = False
    summary = {"folds": {"0": {"best_metric": 1.0, "best_metrics": {"x": 1.0}, "test_metrics": {"x": 0.5}},
                         "1": {"best_metric": 2.0, "best_metrics": {"x": 3.0}, "test_metrics": {"x": 1.5}}},
               "mean_best": {}, "std_best": {}}
    finish_summary(summary, T())
    assert summary["best_fold"] == 0
    assert summary["mean_best"]["x"] == 2.0 and summary["std_best"]["x"] == pytest.approx(math.sqrt(2))
    assert summary["mean_best"]["test_x"] == 1.0 and summary["std_best"]["test_x"] == pytest.approx(math.sqrt(0.5))


# ----------------------------------------------------------------------------- clinician metrics
def test_clinician_metrics_by_hand():
    true = np.array([3.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 4.0])
    pred = np.array([3.5, 6.0, 4.5, 8.5, 9.0, 15.0, 18.0, 4.0])
    m = clinician_metrics(pred, true)
    v = m.values
    err = np.abs(pred - true)
    assert v["count"] == 8 and v["mae_mm"] == pytest.approx(err.mean())
    assert v["within_1mm"] == pytest.approx(5 / 8)         # errors .5 2 1.5 .5 1 0 2 0
    assert v["within_10pct"] == pytest.approx(5 / 8)       # limits .3 .4 .6 .8 1 1.5 2 .4
    # truths > 5 mm: 6, 8, 10, 15, 20; called <= 5: only 6 -> 4.5
    assert v["missed_above_5_rate"] == pytest.approx(1 / 5)
    # truths >= 10: 10, 15, 20; called < 10: 10 -> 9
    assert v["missed_large_rate"] == pytest.approx(1 / 3)
    d = pred - true
    assert v["ba_bias_mm"] == pytest.approx(d.mean())
    assert v["ba_loa_high_mm"] - v["ba_bias_mm"] == pytest.approx(1.96 * d.std(ddof=1))
    assert v["ba_bias_mm"] - v["ba_loa_low_mm"] == pytest.approx(1.96 * d.std(ddof=1))
    assert m.confusion.tolist() == [[2, 1, 0], [1, 1, 0], [0, 1, 2]]
    assert confusion_5_10(pred, true, 4.0).tolist() == [[2, 1, 0], [0, 2, 0], [0, 1, 2]]
    assert math.isnan(clinician_metrics([3.0], [4.0]).values["missed_large_rate"])
    assert bland_altman([1.0], [1.0])["sd_mm"] == 0.0


def test_per_polyp_median_and_time_to_first_size():
    ids, med = per_polyp_median([1, 2, 9, 4, 6], ["a", "a", "a", "b", "b"])
    assert ids == ["a", "b"] and med.tolist() == [2.0, 5.0]
    t = time_to_first_size({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 1.5, "b": 4.0})
    assert t["polyps"] == 3 and t["sized_polyps"] == 2 and t["never_sized_rate"] == pytest.approx(1 / 3)
    assert t["median_s"] == pytest.approx(1.25) and t["max_s"] == pytest.approx(2.0)


@pytest.mark.parametrize("name,streams", [("reference_r18_loc_dpt", ["mask", "depth"]),
                                          ("reference_vit_tiny_triclass", ["rgb"])])
def test_reference_configs_build_their_models(name, streams):
    c = load_config(CONFIGS / f"{name}.yaml", ["model.pretrained=null"], check_paths=False)
    model = build_task(c).build_model()
    assert list(model.init_kwargs["streams"]) == streams and model.init_kwargs["input_size"] == 384
    assert model.init_kwargs["dropout"] == 0.35
