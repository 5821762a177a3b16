"""Training losses for the sizer heads (method.md, "Gradient Routing").

Losses are called as `loss(outputs: dict, targets: dict) -> scalar Tensor`, the signature
`GradientRouter` and `Task.main_loss/routing_loss` use. Targets: `targets["size_mm"]`
(float, (N,) or (N,1)); class labels are derived from it with the project's size classes
unless `targets["class_index"]` is given.

Size-dependent weights follow the reference: a sample's loss is multiplied by the weight of
its size class, diminutive (<= 5 mm) / small (5-10 mm) / large (>= 10 mm). Main loss
(1, 3, 5): 3x above 5 mm, 5x at 10 mm and more; routing loss (1, 5, 10). The weighted
per-sample losses are averaged over the batch (not normalised by the weights), as the
reference does. Unlike the reference, which applied its mm thresholds to targets already
scaled to [-1, 1] (so the weights could not trigger), the thresholds here are applied to mm.

`ReferenceSizeLoss` (config `loss.kind: reference`) is what the reference code effectively
trains with: its targets are scaled from [0.5, 20] mm to [-1, 1] before its weighted loss sees
them, so no target exceeds its 5 and 10 "mm" thresholds and every weight is 1. What remains is
an unweighted Smooth-L1 with beta 1 in that scale, where one unit is 9.75 mm; the main and the
routing pass use the same loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.sizeclass import DIMINUTIVE_MAX_MM, LARGE_MIN_MM, MAX_SIZE_MM, MIN_SIZE_MM

MAIN_CLASS_WEIGHTS = (1.0, 3.0, 5.0)
ROUTING_CLASS_WEIGHTS = (1.0, 5.0, 10.0)
CLASS_SCHEMES = {"triclass": 3, "binary": 2}


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).float()


def size_class_weights(size_mm: torch.Tensor, class_weights: tuple[float, float, float]) -> torch.Tensor:
    """Per-sample weight from the size class of the target (thresholds of pipeline.sizeclass)."""
    w_dim, w_small, w_large = (float(w) for w in class_weights)
    return torch.where(size_mm >= LARGE_MIN_MM, w_large,
                       torch.where(size_mm > DIMINUTIVE_MAX_MM, w_small, w_dim)).to(size_mm.dtype)


def size_class_labels(size_mm: torch.Tensor, classes: str) -> torch.Tensor:
    """triclass: 0 <= 5 mm, 1 in (5, 10), 2 >= 10; binary: 0 < 10 mm, 1 >= 10 mm."""
    if classes == "binary":
        return (size_mm >= LARGE_MIN_MM).long()
    if classes == "triclass":
        return torch.where(size_mm >= LARGE_MIN_MM, 2, torch.where(size_mm > DIMINUTIVE_MAX_MM, 1, 0)).long()
    raise ValueError(f"classes must be 'triclass' or 'binary', got {classes!r}")


class SizeRegressionLoss(nn.Module):
    """`l1 * L1 + l2 * L2 + smooth_l1 * SmoothL1(beta)` per sample, times the size-class weight."""

    def __init__(
        self,
        smooth_l1: float = 1.0,
        l1: float = 0.0,
        l2: float = 0.0,
        beta: float = 1.0,
        class_weights: tuple[float, float, float] = MAIN_CLASS_WEIGHTS,
        output_key: str = "size_mm",
    ) -> None:
        super().__init__()
        if min(smooth_l1, l1, l2) < 0 or smooth_l1 + l1 + l2 <= 0:
            raise ValueError(f"loss coefficients must be non-negative with a positive sum, got "
                             f"smooth_l1={smooth_l1}, l1={l1}, l2={l2}")
        if len(class_weights) != 3 or min(class_weights) < 0:
            raise ValueError(f"class_weights must be three non-negative numbers "
                             f"(diminutive, small, large), got {class_weights}")
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.smooth_l1, self.l1, self.l2, self.beta = float(smooth_l1), float(l1), float(l2), float(beta)
        self.class_weights = tuple(float(w) for w in class_weights)
        self.output_key = output_key

    def per_sample(self, predicted_mm: torch.Tensor, target_mm: torch.Tensor) -> torch.Tensor:
        predicted_mm, target_mm = _flat(predicted_mm), _flat(target_mm)
        if predicted_mm.shape != target_mm.shape:
            raise ValueError(f"prediction has {predicted_mm.numel()} values, target {target_mm.numel()}")
        loss = torch.zeros_like(target_mm)
        if self.smooth_l1:
            loss = loss + self.smooth_l1 * F.smooth_l1_loss(predicted_mm, target_mm, reduction="none", beta=self.beta)
        if self.l1:
            loss = loss + self.l1 * (predicted_mm - target_mm).abs()
        if self.l2:
            loss = loss + self.l2 * (predicted_mm - target_mm).square()
        return loss * size_class_weights(target_mm, self.class_weights)

    def forward(self, outputs: dict, targets: dict) -> torch.Tensor:
        return self.per_sample(outputs[self.output_key], targets["size_mm"]).mean()


# The reference's target scaler: [0.5, 20] mm -> [-1, 1]; one unit is 9.75 mm.
REFERENCE_MM_PER_UNIT = (MAX_SIZE_MM - MIN_SIZE_MM) / 2.0


def to_reference_scale(size_mm: torch.Tensor) -> torch.Tensor:
    return (size_mm - MIN_SIZE_MM) / REFERENCE_MM_PER_UNIT - 1.0


class ReferenceSizeLoss(nn.Module):
    """Unweighted Smooth-L1 (beta 1) between prediction and target, both scaled to [-1, 1]."""

    def __init__(self, output_key: str = "size_mm") -> None:
        super().__init__()
        self.output_key = output_key

    def per_sample(self, predicted_mm: torch.Tensor, target_mm: torch.Tensor) -> torch.Tensor:
        predicted_mm, target_mm = _flat(predicted_mm), _flat(target_mm)
        if predicted_mm.shape != target_mm.shape:
            raise ValueError(f"prediction has {predicted_mm.numel()} values, target {target_mm.numel()}")
        return F.smooth_l1_loss(to_reference_scale(predicted_mm), to_reference_scale(target_mm),
                                reduction="none", beta=1.0)

    def forward(self, outputs: dict, targets: dict) -> torch.Tensor:
        return self.per_sample(outputs[self.output_key], targets["size_mm"]).mean()


class SizeClassificationLoss(nn.Module):
    """Cross-entropy on `outputs["logits"]` against the size class of the target."""

    def __init__(self, classes: str = "triclass", label_smoothing: float = 0.0,
                 class_weights: tuple[float, ...] | None = None, output_key: str = "logits") -> None:
        super().__init__()
        if classes not in CLASS_SCHEMES:
            raise ValueError(f"classes must be 'triclass' or 'binary', got {classes!r}")
        if class_weights is not None and len(class_weights) != CLASS_SCHEMES[classes]:
            raise ValueError(f"class_weights needs {CLASS_SCHEMES[classes]} entries for {classes}, got {class_weights}")
        self.classes = classes
        self.num_classes = CLASS_SCHEMES[classes]
        self.label_smoothing = float(label_smoothing)
        self.output_key = output_key
        self.register_buffer("weight", None if class_weights is None else
                             torch.tensor(class_weights, dtype=torch.float32), persistent=False)

    def labels(self, targets: dict) -> torch.Tensor:
        if "class_index" in targets:
            return targets["class_index"].reshape(-1).long()
        return size_class_labels(_flat(targets["size_mm"]), self.classes)

    def forward(self, outputs: dict, targets: dict) -> torch.Tensor:
        logits = outputs[self.output_key].float()
        if logits.shape[-1] != self.num_classes:
            raise ValueError(f"{self.classes} needs {self.num_classes} logits, the model gives {logits.shape[-1]}")
        weight = None if self.weight is None else self.weight.to(logits.device)
        return F.cross_entropy(logits, self.labels(targets).to(logits.device), weight=weight,
                               label_smoothing=self.label_smoothing)


class CombinedSizeLoss(nn.Module):
    """For head="both": `regression_weight * regression + classification_weight * classification`."""

    def __init__(self, regression: SizeRegressionLoss, classification: SizeClassificationLoss,
                 regression_weight: float = 1.0, classification_weight: float = 1.0) -> None:
        super().__init__()
        self.regression = regression
        self.classification = classification
        self.regression_weight = float(regression_weight)
        self.classification_weight = float(classification_weight)

    def forward(self, outputs: dict, targets: dict) -> torch.Tensor:
        return (self.regression_weight * self.regression(outputs, targets)
                + self.classification_weight * self.classification(outputs, targets))


def reference_losses(head: str = "regression", classes: str = "triclass") -> tuple[nn.Module, nn.Module]:
    """(main loss, routing loss) with the weights the reference configs name: Smooth-L1 weighted
    (1,3,5) and (1,5,10) in mm for regression (ours; the reference code never applies them, see
    ReferenceSizeLoss), cross-entropy for classification, the sum of both for "both"."""
    main_reg = SizeRegressionLoss(class_weights=MAIN_CLASS_WEIGHTS)
    routing_reg = SizeRegressionLoss(class_weights=ROUTING_CLASS_WEIGHTS)
    if head == "regression":
        return main_reg, routing_reg
    if head == "classification":
        return SizeClassificationLoss(classes), SizeClassificationLoss(classes)
    if head == "both":
        return (CombinedSizeLoss(main_reg, SizeClassificationLoss(classes)),
                CombinedSizeLoss(routing_reg, SizeClassificationLoss(classes)))
    raise ValueError(f"head must be regression, classification or both, got {head!r}")
