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


def make_sklearn_splits(polyp_sizes: dict[str, float], k: int = DEFAULT_FOLDS, seed: int = 1) -> list[list[str]]:
    """The reference code's split: scikit-learn's StratifiedKFold(k, shuffle=True,
    random_state=seed) over the polyps (ids in sorted order, as its pandas groupby gives them),
    stratified by size class; fold i holds the i-th split's test polyps. Reference seed: 1."""
    from sklearn.model_selection import StratifiedKFold

    if not isinstance(k, int) or k < 2:
        raise ConfigError(f"folds: k must be an integer >= 2, got {k!r}")
    ids = sorted(polyp_sizes)
    if len(ids) < k:
        raise DataError(f"cannot make {k} folds from {len(ids)} polyps (need at least one per fold)")
    classes = [triclass_index(polyp_sizes[p]) for p in ids]
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    try:
        parts = [sorted(ids[i] for i in test) for _, test in splitter.split(ids, classes)]
    except ValueError as exc:     # e.g. more folds than polyps of every class
        raise DataError(f"StratifiedKFold({k}) cannot split {len(ids)} polyps: {exc}") from None
    return parts


FOLD_PROTOCOLS = ("val_fold", "test_val")


def fold_roles(folds: list[list[str]], fold: int,
               protocol: str = "val_fold") -> tuple[list[str], list[str], list[str]]:
    """(train, validation, test) polyp ids of one fold.

    val_fold: fold `fold` validates, every other fold trains, no test set.
    test_val (the reference): fold `fold` is the test set, fold `fold + 1` (mod k) validates,
    the other folds train.
    """
    if protocol == "val_fold":
        train, val = train_val_ids(folds, fold)
        return train, val, []
    if protocol != "test_val":
        raise ConfigError(f"fold protocol {protocol!r} is not one of {', '.join(FOLD_PROTOCOLS)}")
    if len(folds) < 3:
        raise ConfigError(f"the test_val protocol needs at least 3 folds, got {len(folds)}")
    if not 0 <= fold < len(folds):
        raise ConfigError(f"fold {fold} does not exist (0..{len(folds) - 1})")
    val_fold = (fold + 1) % len(folds)
    train = sorted(p for i, f in enumerate(folds) if i not in (fold, val_fold) for p in f)
    return train, sorted(folds[val_fold]), sorted(folds[fold])


OFFICIAL_SPLIT_COLUMNS = ("unique_id", "frame_id", "gt_group", "kfold_id")


def load_official_split_csv(path) -> list[list[str]]:
    """Folds from the reference's official split CSV (one row per frame: unique_id, frame_id,
    gt_group, kfold_id): fold i holds the polyps (unique_id) whose rows say kfold_id i.

    DataError when a column is missing, a kfold_id is not an integer, one polyp's rows name two
    folds, or the fold numbers are not 0..k-1.
    """
    import csv

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in OFFICIAL_SPLIT_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)} "
                                f"(expected {', '.join(OFFICIAL_SPLIT_COLUMNS)})")
            fold_of: dict[str, int] = {}
            for line, row in enumerate(reader, start=2):
                polyp = (row["unique_id"] or "").strip()
                try:
                    fold = int(float(row["kfold_id"]))
                except (TypeError, ValueError):
                    raise DataError(f"{path}:{line}: kfold_id {row['kfold_id']!r} is not an integer") from None
                if not polyp:
                    raise DataError(f"{path}:{line}: empty unique_id")
                if fold_of.setdefault(polyp, fold) != fold:
                    raise DataError(f"{path}:{line}: polyp {polyp!r} is in folds {fold_of[polyp]} and {fold}")
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    numbers = sorted(set(fold_of.values()))
    if not numbers or numbers != list(range(len(numbers))):
        raise DataError(f"{path}: kfold_id values must be 0..k-1, got {numbers}")
    return [sorted(p for p, f in fold_of.items() if f == k) for k in numbers]


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
    (a list of lists, or a mapping fold name -> list), or from the reference's official split
    CSV (`.csv`, `load_official_split_csv`). Ids are compared as strings.

    Raises DataError naming the file and the problem: unreadable, wrong shape, an id in two
    folds or twice in one, or (when `known_ids` is given) an id the data set does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file does not exist")
    if path.suffix.lower() == ".csv":
        # The official CSV lists REAL-Colon and SUN polyps together: keep the ones this data
        # set has (a fold left empty is an error).
        folds = load_official_split_csv(path)
        if known_ids is not None:
            known = {str(p) for p in known_ids}
            folds = [[p for p in f if p in known] for f in folds]
        _check_folds(folds, path, None)
        return folds
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
