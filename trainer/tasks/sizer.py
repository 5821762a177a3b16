"""The polyp sizer task: box crops in, size in mm and/or size-class logits out.

Data: one `DatasetIndex` (REAL-Colon, SUN, manifest, or synthetic data read with the
REAL-Colon reader) split into k folds by polyp (a polyp's frames never cross folds, folds
stratified by size class: ours, or the reference's scikit-learn StratifiedKFold) or by a split
file (ours, or the reference's official CSV). `data.protocol` says which folds train, validate
and test (val_fold: fold k validates; test_val, the reference: fold k tests on all its frames,
fold k+1 validates). Training frames are redrawn per polyp every epoch (`data.train_per_polyp`);
validation uses an evenly spaced subset or, `data.val_sampling: random` (the reference), a
fresh random draw each epoch (`data.val_per_polyp`). Evaluation is per frame and per polyp (the
median of a polyp's frame predictions), with `trainer.metrics`; size predictions are clamped
to `decision.clamp_mm` first and called diminutive at <= `decision.diminutive_max_mm`. The
metric "loss" is the main loss over the validation set (the reference picks its epoch by it).
"""
from __future__ import annotations

import inspect
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import ModelConfig, TrainConfig
from ..data.augment import PairedAugment, augment_from_config
from ..data.datasets import SizerDataset
from pipeline.fov import FovMaskCache
from ..data.splits import fold_roles, load_split_file, make_kfold_splits, make_sklearn_splits
from pipeline.errors import ConfigError, DataError
from ..losses import CombinedSizeLoss, ReferenceSizeLoss, SizeClassificationLoss, SizeRegressionLoss
from ..metrics import evaluate_classes, evaluate_sizes
from ..models import build_model, load_imagenet_weights, model_class
from pipeline.prep import SizerInputSpec
from pipeline.sizeclass import BINARY_NAMES, TRICLASS_NAMES
from .base import ConfusionMatrix, Task
from .sources import read_source

log = logging.getLogger("hagview.train")

_METRIC_NAMES = ("mae_mm", "binary_f1", "binary_f1_weighted", "binary_balanced_accuracy",
                 "triclass_f1_weighted", "triclass_f1_macro", "triclass_balanced_accuracy",
                 "triclass_accuracy", "within_1mm", "within_10pct")
SIZER_METRICS = ("loss",) + tuple(f"{level}_{name}" for level in ("frame", "polyp") for name in _METRIC_NAMES)
LOWER_IS_BETTER = ("loss", "mae")

CLASS_HEAD_PREFIX = "cls_"     # metrics of the class head when the model has both heads


class SizerTask(Task):
    kind = "sizer"

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        if config.task_options:
            raise ConfigError(f"config key 'task_options.{next(iter(config.task_options))}': "
                              f"the sizer task takes no task options")
        inp = config.data.input
        self.spec = SizerInputSpec(streams=tuple(inp.streams), size=inp.size, mean=tuple(inp.mean),
                                   std=tuple(inp.std), fov_masking=inp.fov_masking, box_grow=inp.box_grow,
                                   mode=inp.mode)
        head = config.model.head
        self.classes = "binary" if config.model.num_classes == 2 else "triclass"
        if head != "regression" and config.model.num_classes not in (2, 3):
            raise ConfigError(f"config key 'model.num_classes': the sizer's class head is binary (2) "
                              f"or triclass (3), got {config.model.num_classes}")
        self.primary_metric = config.train.primary_metric or self._default_primary_metric()
        known = SIZER_METRICS + tuple(CLASS_HEAD_PREFIX + m for m in SIZER_METRICS if head == "both")
        if self.primary_metric not in known:
            raise ConfigError(f"config key 'train.primary_metric': unknown sizer metric "
                              f"'{self.primary_metric}' (known: {', '.join(known)})")
        self.higher_is_better = not any(k in self.primary_metric for k in LOWER_IS_BETTER)
        if config.data.protocol == "test_val" and config.test.enabled:
            raise ConfigError("config key 'test.enabled': data.protocol test_val already tests each "
                              "fold on its own held-out fold; disable the separate test set")
        where = "test_" if config.data.protocol == "test_val" else "val_"
        self.paper_comparable = (
            f"the paper's binary F1 (87.8 %, ResNet-18 LOC+DPT) is {where}frame_binary_f1_weighted "
            f"(weighted over both classes, as the reference reports; frame_binary_f1 is the >= 10 mm "
            f"class alone); its triclass F1 is {where}frame_triclass_f1_weighted; mean and std over "
            f"the folds in summary.json")
        self._main_loss = self._make_loss(config.loss)
        self._routing_loss = self._make_loss(config.routing.loss)
        self._index = None
        self._root = None
        self._splits: list[list[str]] | None = None
        self._test_set: SizerDataset | None = None
        self._fold_tests: dict[int, SizerDataset] = {}
        self._fov_cache = FovMaskCache()
        self._confusion: dict[str, ConfusionMatrix] = {}
        self._pairs: tuple[list[float], list[float]] | None = None

    def _default_primary_metric(self) -> str:
        if self.config.model.head == "classification":
            return "frame_binary_f1" if self.classes == "binary" else "frame_triclass_f1_weighted"
        return "frame_mae_mm"

    def _make_loss(self, lc) -> nn.Module:
        head = self.config.model.head
        try:
            if lc.kind == "reference":
                regression = ReferenceSizeLoss()
            else:
                regression = SizeRegressionLoss(smooth_l1=lc.smooth_l1, l1=lc.l1, l2=lc.l2, beta=lc.beta,
                                                class_weights=(1.0, lc.weight_above_5, lc.weight_at_10))
            classification = SizeClassificationLoss(self.classes, label_smoothing=lc.label_smoothing)
        except ValueError as exc:
            raise ConfigError(f"config key 'loss': {exc}") from None
        if head == "regression":
            return regression
        if head == "classification":
            return classification
        return CombinedSizeLoss(regression, classification, 1.0, lc.class_weight)

    # ---- model ----
    def build_model(self) -> nn.Module:
        m = self.config.model
        kwargs = dict(streams=tuple(self.spec.streams), input_size=self.spec.size, head=m.head,
                      num_classes=m.num_classes, gates=m.gates)
        # width_mult and hidden belong to the CNN; a model without them must not be given them.
        accepted = inspect.signature(model_class(m.name)).parameters
        defaults = ModelConfig()
        for key in ("width_mult", "hidden"):
            value = getattr(m, key)
            if key in accepted:
                kwargs[key] = value
            elif value != getattr(defaults, key):
                raise ConfigError(f"config key 'model.{key}': model '{m.name}' has no {key} setting")
        kwargs.update(m.kwargs)
        model = build_model(m.name, **kwargs)
        if m.pretrained is not None:
            report = load_imagenet_weights(model, Path(m.pretrained).expanduser())
            log.info("pretrained weights from %s: %s", m.pretrained, report)
        return model

    # ---- data ----
    def _load(self) -> None:
        if self._index is not None:
            return
        self._index, self._root = read_source(self.config.data, progress=self.show_progress,
                                              depth="depth" in self.spec.streams)
        polyps = self._index.samples_by_polyp()
        sizes = {pid: self._index.polyp_sizes[pid] for pid in polyps if pid in self._index.polyp_sizes}
        d = self.config.data
        if d.split_file is not None:
            self._splits = load_split_file(d.split_file, known_ids=sizes)
        else:
            if len(sizes) < d.folds:
                raise DataError(f"{self._root}: {len(sizes)} polyps with sizes cannot fill "
                                f"{d.folds} folds (set data.folds lower)")
            make = make_sklearn_splits if d.split_method == "sklearn" else make_kfold_splits
            self._splits = make(sizes, k=d.folds, seed=d.split_seed)

    def folds(self) -> list[int]:
        self._load()
        return list(range(len(self._splits)))

    def datasets(self, fold: int):
        self._load()
        d = self.config.data
        train_ids, val_ids, test_ids = (set(ids) for ids in fold_roles(self._splits, fold, d.protocol))
        train_samples = [s for s in self._index.samples if s.polyp_id in train_ids]
        val_samples = [s for s in self._index.samples if s.polyp_id in val_ids]
        if not train_samples or not val_samples:
            raise DataError(f"{self._root}: fold {fold} has {len(train_samples)} training and "
                            f"{len(val_samples)} validation samples; both must be non-empty")
        train = SizerDataset(train_samples, self.spec, self._augment(), self._fov_cache,
                             frames_per_polyp=d.train_per_polyp, sampling="random",
                             sampling_seed=self.config.train.seed, min_frames_per_polyp=d.min_frames_per_polyp)
        # A random validation draw uses its own seed stream, redrawn by set_epoch like training.
        val = SizerDataset(val_samples, self.spec, None, self._fov_cache,
                           frames_per_polyp=d.val_per_polyp, sampling=d.val_sampling,
                           sampling_seed=self.config.train.seed + 7919, min_frames_per_polyp=d.min_frames_per_polyp)
        if test_ids:       # the reference tests on every frame of the held-out fold
            test_samples = [s for s in self._index.samples if s.polyp_id in test_ids]
            if test_samples:
                self._fold_tests[fold] = SizerDataset(test_samples, self.spec, None, self._fov_cache)
        log.info("fold %d: %d training polyps (%d frames per epoch), %d validation polyps (%d frames)",
                 fold, len(train_ids), len(train), len(val_ids), len(val))
        return train, val

    def _augment(self) -> PairedAugment | None:
        return augment_from_config(self.config.data.augment)

    def fold_test_dataset(self, fold: int):
        if self.config.data.protocol == "test_val":
            if fold not in self._fold_tests:
                self.datasets(fold)
            return self._fold_tests.get(fold)
        return self.test_dataset()

    def test_dataset(self):
        if not self.config.test.enabled:
            return None
        if self._test_set is None:   # read once, evaluated after every fold
            index, _ = read_source(self.config.test, progress=self.show_progress,
                                   depth="depth" in self.spec.streams)
            self._test_set = SizerDataset(index.samples, self.spec, None, FovMaskCache(),
                                          frames_per_polyp=self.config.test.per_polyp, sampling="uniform")
        return self._test_set

    # ---- losses ----
    def main_loss(self, outputs, targets):
        return self._main_loss(outputs, targets)

    def routing_loss(self, outputs, targets):
        return self._routing_loss(outputs, targets)

    # ---- evaluation ----
    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        device = next(model.parameters()).device
        sizes, classes, truth, polyp_ids = [], [], [], []
        loss_sum, count = 0.0, 0
        samples = loader.dataset.samples
        clamp = self.config.decision.clamp_mm
        for inputs, targets in loader:
            outputs = model({k: v.to(device) for k, v in inputs.items()})
            n = int(targets["size_mm"].shape[0])
            loss_sum += float(self._main_loss(outputs, {k: v.to(device) for k, v in targets.items()})) * n
            count += n
            if "size_mm" in outputs:
                size = outputs["size_mm"].float().reshape(-1).cpu()
                sizes.append(size if clamp is None else size.clamp(clamp[0], clamp[1]))
            if "logits" in outputs:
                classes.append(outputs["logits"].argmax(dim=1).cpu())
            truth.append(targets["size_mm"].reshape(-1))
            polyp_ids.extend(samples[int(i)].polyp_id for i in targets["sample_index"])
        true_mm = torch.cat(truth).numpy()
        values: dict[str, float] = {"loss": loss_sum / max(count, 1)}
        self._confusion = {}
        self._pairs = None
        if sizes:
            predicted = torch.cat(sizes).numpy()
            self._pairs = (predicted.tolist(), true_mm.tolist())
            result = evaluate_sizes(predicted, true_mm, polyp_ids,
                                    diminutive_max_mm=self.config.decision.diminutive_max_mm)
            values.update(result.values)
            self._confusion.update(_named_confusion(result.confusion, ""))
        if classes:
            result = evaluate_classes(torch.cat(classes).numpy(), true_mm, self.classes, polyp_ids)
            prefix = CLASS_HEAD_PREFIX if sizes else ""
            values.update({prefix + k: v for k, v in result.values.items()})
            self._confusion.update(_named_confusion(result.confusion, prefix))
        return values

    def confusion_matrices(self) -> dict[str, ConfusionMatrix]:
        return dict(self._confusion)

    def agreement_pairs(self) -> tuple[list[float], list[float]] | None:
        """(predicted, true) sizes in mm per frame of the latest evaluation (Bland-Altman)."""
        return self._pairs

    def checkpoint_metadata(self) -> dict:
        d = self.config.data
        decision = self.config.decision
        return {"input_spec": self.spec.to_dict(),
                "data": {"kind": d.kind, "root": self._root or d.root, "synthetic": d.kind == "synthetic"},
                "outputs": {"classes": self.classes if self.config.model.head != "regression" else None},
                "decision": {"clamp_mm": None if decision.clamp_mm is None else list(decision.clamp_mm),
                             "diminutive_max_mm": decision.diminutive_max_mm}}


def _named_confusion(confusion: dict[str, np.ndarray], prefix: str) -> dict[str, ConfusionMatrix]:
    out = {}
    for name, matrix in confusion.items():
        labels = list(BINARY_NAMES if name.endswith("binary") else TRICLASS_NAMES)
        out[prefix + name] = (labels, np.asarray(matrix).astype(int).tolist())
    return out
