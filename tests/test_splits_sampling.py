"""Polyp-level folds (no leaks, stratified, deterministic), split files, per-polyp frame sampling."""
import json
from collections import Counter

import pytest

from trainer.data.records import SampleRecord
from trainer.data.sampling import (TRAIN_FRAMES_PER_POLYP, VAL_FRAMES_PER_POLYP, PolypFrameSampler,
                                   sample_per_polyp)
from trainer.data.splits import load_split_file, make_kfold_splits, save_split_file, train_val_ids
from pipeline.errors import ConfigError, DataError
from pipeline.sizeclass import triclass_index


def _sizes(n_dim=13, n_small=19, n_large=8):
    sizes = {f"d{i:02d}": 2.0 + (i % 3) for i in range(n_dim)}
    sizes.update({f"s{i:02d}": 6.0 + (i % 4) for i in range(n_small)})
    sizes.update({f"l{i:02d}": 10.0 + i for i in range(n_large)})
    return sizes


def test_kfold_partitions_polyps_without_leaks():
    sizes = _sizes()
    folds = make_kfold_splits(sizes, k=6, seed=3)
    assert len(folds) == 6
    flat = [p for f in folds for p in f]
    assert len(flat) == len(set(flat)) == len(sizes)       # every polyp exactly once
    assert set(flat) == set(sizes)
    for fold in range(6):
        train, val = train_val_ids(folds, fold)
        assert not set(train) & set(val)
        assert set(train) | set(val) == set(sizes)
    # sizes differ by at most one
    assert max(map(len, folds)) - min(map(len, folds)) <= 1


def test_kfold_is_stratified_by_size_class():
    sizes = _sizes()
    folds = make_kfold_splits(sizes, k=6, seed=0)
    totals = Counter(triclass_index(s) for s in sizes.values())
    for fold in folds:
        per_class = Counter(triclass_index(sizes[p]) for p in fold)
        for cls, total in totals.items():
            assert total // 6 <= per_class[cls] <= -(-total // 6)   # floor..ceil of an even share


def test_kfold_deterministic_by_seed_and_independent_of_dict_order():
    sizes = _sizes()
    a = make_kfold_splits(sizes, k=6, seed=7)
    b = make_kfold_splits(dict(reversed(list(sizes.items()))), k=6, seed=7)
    c = make_kfold_splits(sizes, k=6, seed=8)
    assert a == b
    assert a != c


def test_kfold_bad_arguments():
    with pytest.raises(ConfigError, match="k must be an integer >= 2"):
        make_kfold_splits(_sizes(), k=1)
    with pytest.raises(DataError, match="cannot make 6 folds from 3 polyps"):
        make_kfold_splits({"a": 1.0, "b": 7.0, "c": 12.0}, k=6)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_split_file_round_trip(tmp_path, suffix):
    sizes = _sizes()
    folds = make_kfold_splits(sizes, k=6, seed=1)
    path = tmp_path / f"folds{suffix}"
    save_split_file(path, folds, seed=1, polyp_sizes=sizes)
    assert load_split_file(path, known_ids=sizes) == folds
    assert not list(tmp_path.glob(".*tmp*"))          # written atomically, nothing left over


def test_split_file_imports(fixtures_dir):
    d = fixtures_dir / "splits"
    assert load_split_file(d / "three_folds.yaml", known_ids=["001-001_1", "001-001_2", "001-002_3"]) == [
        ["001-001_1"], ["001-001_2"], ["001-002_3"]]
    assert load_split_file(d / "named_folds.json") == [["case1"], ["case2"], ["case4"]]


@pytest.mark.parametrize("name,message", [
    ("duplicate.yaml", "polyp '001-001_1' is listed in folds 0 and 1"),
    ("unknown_id.json", "unknown polyp id\\(s\\) 009-009_9"),
    ("not_yaml.yaml", "cannot be parsed"),
    ("wrong_shape.yaml", "folds must be a non-empty list of lists"),
    ("missing.yaml", "split file does not exist"),
])
def test_split_file_errors_name_file_and_problem(fixtures_dir, name, message):
    path = fixtures_dir / "splits" / name
    with pytest.raises(DataError, match=message) as err:
        load_split_file(path, known_ids=["001-001_1", "001-001_2", "001-002_3"])
    assert str(path) in str(err.value)


def test_split_file_duplicate_within_fold(tmp_path):
    p = tmp_path / "f.json"
    p.write_text(json.dumps({"folds": [["a", "a"], ["b"]]}))
    with pytest.raises(DataError, match="'a' is listed twice in fold 0"):
        load_split_file(p)


def _records(counts: dict[str, int]):
    return [SampleRecord(f"/x/{p}_{i}.jpg", f"v_{p}", i, (0, 0, 10, 10), p, 5.0, None)
            for p, n in counts.items() for i in range(n)]


def test_sampling_counts_per_polyp():
    assert (TRAIN_FRAMES_PER_POLYP, VAL_FRAMES_PER_POLYP) == (45, 300)
    records = _records({"a": 100, "b": 45, "c": 7, "d": 400})
    train = sample_per_polyp(records, TRAIN_FRAMES_PER_POLYP, seed=0, epoch=0)
    assert Counter(s.polyp_id for s in train) == {"a": 45, "b": 45, "c": 7, "d": 45}
    val = sample_per_polyp(records, VAL_FRAMES_PER_POLYP, strategy="uniform")
    assert Counter(s.polyp_id for s in val) == {"a": 100, "b": 45, "c": 7, "d": 300}
    assert len({(s.polyp_id, s.frame_index) for s in train}) == len(train)   # no repeats
    # uniform picks are evenly spaced over the polyp's frames
    d_frames = [s.frame_index for s in val if s.polyp_id == "d"]
    steps = Counter(b - a for a, b in zip(d_frames, d_frames[1:]))
    assert set(steps) <= {1, 2}


def test_sampling_deterministic_per_seed_and_epoch():
    records = _records({"a": 100, "b": 60})
    sampler = PolypFrameSampler(records, per_polyp=10, seed=5)
    e0, e0_again, e1 = sampler.epoch(0), sampler.epoch(0), sampler.epoch(1)
    assert e0 == e0_again
    assert e0 != e1
    assert e0 != PolypFrameSampler(records, per_polyp=10, seed=6).epoch(0)
    # a polyp's draw does not depend on which other polyps are present
    alone = sample_per_polyp([r for r in records if r.polyp_id == "b"], 10, seed=5, epoch=0)
    assert alone == [s for s in e0 if s.polyp_id == "b"]
    with pytest.raises(ValueError, match="per_polyp must be >= 1"):
        PolypFrameSampler(records, per_polyp=0)
