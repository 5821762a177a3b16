"""What `hagview-train` needs from a task: a model, data, two losses and an evaluation.

`trainer.train` is task-agnostic; `SizerTask` and `DetectorTask` implement this class. A task
is built from the typed training config (`Task(cfg)`), so everything the loop does not know
about (heads, targets, metric definitions, input specs) lives with the task.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from ..config import TrainConfig

# (class names, counts[true][predicted])
ConfusionMatrix = tuple[list[str], list[list[int]]]


class Task(ABC):
    kind: str                      # "sizer" | "detector"
    primary_metric: str            # the validation metric that picks best.pt
    higher_is_better: bool
    show_progress: bool = True     # long data preparation (e.g. rendering synthetic data) shows progress

    def __init__(self, config: "TrainConfig") -> None:
        self.config = config

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model (the registry's `build_model`), pretrained weights loaded if configured."""

    def folds(self) -> list[int]:
        """The fold indices this dataset has (each one is validated once in a k-fold run)."""
        return list(range(self.config.data.folds))

    @abstractmethod
    def datasets(self, fold: int) -> tuple[Dataset, Dataset]:
        """(training, validation) for `fold`; items are `(inputs dict, targets dict)`.

        A training set with a `set_epoch(epoch)` method is told the epoch before each one
        (e.g. to redraw its per-polyp frame sample), as DistributedSampler is.
        """

    def test_dataset(self) -> Dataset | None:
        """A held-out test set evaluated with each fold's best checkpoint (None: no test set)."""
        return None

    def fold_test_dataset(self, fold: int) -> Dataset | None:
        """The test set of `fold` (a fold-dependent split may hold one out); default: `test_dataset()`."""
        return self.test_dataset()

    @abstractmethod
    def main_loss(self, outputs: dict[str, torch.Tensor], targets: dict) -> torch.Tensor:
        """The loss of the main pass (and of the plain step when routing is off)."""

    @abstractmethod
    def routing_loss(self, outputs: dict[str, torch.Tensor], targets: dict) -> torch.Tensor:
        """The loss of the Gradient Routing pass (trains the gates only)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        """Metrics over the whole loader; includes `primary_metric`."""

    def confusion_matrices(self) -> dict[str, ConfusionMatrix]:
        """Confusion matrices of the most recent `evaluate` call, for the report (may be empty)."""
        return {}

    @abstractmethod
    def checkpoint_metadata(self) -> dict:
        """JSON-like `{"kind", "input_spec", "data"}` stored with every checkpoint."""

    def is_better(self, value: float, best: float | None) -> bool:
        if best is None or best != best:
            return value == value
        return value > best if self.higher_is_better else value < best
