"""Polyp-level k-fold splits: a polyp's frames never cross folds; folds stratified by size class."""
from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path

import yaml

from pipeline.errors import ConfigError, DataError
from pipeline.fsutil import write_text_atomic
from pipeline.sizeclass import TRICLASS_NAMES, triclass_index

DEFAULT_FOLDS = 6


def make_kfold_splits(polyp_sizes: dict[str, float], k: int = DEFAULT_FOLDS, seed: int = 0) -> list[list[str]]:
    """Deal polyps into k folds, each size class spread evenly, the same for the same seed.

    Within each size class the polyps are shuffled (from their sorted ids, so dict order does
    not matter) and dealt round-robin; the dealing position carries on from one class to the
    next, so fold sizes differ by at most one. Returns k sorted lists of polyp ids.
    """
    if not isinstance(k, int) or k < 2:
        raise ConfigError(f"folds: k must be an integer >= 2, got {k!r}")
    if len(polyp_sizes) < k:
        raise DataError(f"cannot make {k} folds from {len(polyp_sizes)} polyps (need at least one per fold)")
    rng = random.Random(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    position = 0
    for cls in range(len(TRICLASS_NAMES)):
        ids = sorted(p for p, s in polyp_sizes.items() if triclass_index(s) == cls)
        rng.shuffle(ids)
        for polyp in ids:
            folds[position % k].append(polyp)
            position += 1
    return [sorted(f) for f in folds]


def train_val_ids(folds: list[list[str]], fold: int) -> tuple[list[str], list[str]]:
    """Fold `fold` is validation; all others are training."""
    if not 0 <= fold < len(folds):
        raise ConfigError(f"fold {fold} does not exist (0..{len(folds) - 1})")
    train = sorted(p for i, f in enumerate(folds) if i != fold for p in f)
    return train, sorted(folds[fold])


def save_split_file(path, folds: list[list[str]], *, seed: int | None = None,
                    polyp_sizes: dict[str, float] | None = None) -> None:
    """Write `{"folds": [[ids], ...], "seed": ...}` as YAML (.yaml/.yml) or JSON (.json)."""
    path = Path(path)
    _check_folds(folds, path, known_ids=None)
    doc: dict = {"folds": [sorted(f) for f in folds]}
    if seed is not None:
        doc["seed"] = seed
    if polyp_sizes is not None:
        doc["sizes_mm"] = {p: float(polyp_sizes[p]) for f in folds for p in sorted(f) if p in polyp_sizes}
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(doc, indent=2) + "\n"
    elif suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(doc, sort_keys=False)
    else:
        raise ConfigError(f"{path}: split file must end in .yaml, .yml or .json")
    write_text_atomic(path, text)


def load_split_file(path, known_ids: Iterable[str] | None = None) -> list[list[str]]:
    """Read folds from YAML/JSON: a list of lists of polyp ids, or a mapping with `folds:`
    (a list of lists, or a mapping fold name -> list). Ids are compared as strings.

    Raises DataError naming the file and the problem: unreadable, wrong shape, an id in two
    folds or twice in one, or (when `known_ids` is given) an id the data set does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        doc = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot be parsed ({first})") from None
    if isinstance(doc, dict):
        if "folds" not in doc:
            raise DataError(f"{path}: no 'folds' key (keys: {', '.join(map(str, doc))})")
        doc = doc["folds"]
        if isinstance(doc, dict):
            doc = list(doc.values())
    if not isinstance(doc, list) or not doc or not all(isinstance(f, list) for f in doc):
        raise DataError(f"{path}: folds must be a non-empty list of lists of polyp ids")
    if any(isinstance(p, bool) or not isinstance(p, (str, int)) for f in doc for p in f):
        raise DataError(f"{path}: polyp ids must be strings or integers")
    folds = [[str(p) for p in f] for f in doc]
    _check_folds(folds, path, known_ids)
    return folds


def _check_folds(folds, path, known_ids) -> None:
    seen: dict[str, int] = {}
    for i, fold in enumerate(folds):
        if not fold:
            raise DataError(f"{path}: fold {i} is empty")
        for polyp in fold:
            if polyp in seen:
                where = f"twice in fold {i}" if seen[polyp] == i else f"in folds {seen[polyp]} and {i}"
                raise DataError(f"{path}: polyp {polyp!r} is listed {where}")
            seen[polyp] = i
    if known_ids is not None:
        known = {str(p) for p in known_ids}
        unknown = sorted(set(seen) - known)
        if unknown:
            more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
            raise DataError(f"{path}: unknown polyp id(s) {', '.join(unknown[:5])}{more} "
                            f"not in the data set")
