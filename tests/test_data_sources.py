"""Several data sets in one training config (`data.sources` with weights): the schema, reading
them into one index, and the detector dataset sharing each epoch among them by weight."""
from __future__ import annotations

from collections import Counter

import pytest
import yaml

from _polyp_fixtures import kvasir_layout, negatives_layout, polypgen_layout
from pipeline.errors import ConfigError
from pipeline.prep import DetectorInputSpec
from trainer.config import SourceConfig, config_to_dict, load_config
from trainer.data.detection import DetectionDataset, source_key
from trainer.data.records import BoxAnnotation, FrameRecord
from trainer.tasks.sources import read_source


@pytest.fixture
def data_dirs(tmp_path):
    kvasir_layout(tmp_path / "kvasir")
    polypgen_layout(tmp_path / "polypgen")
    negatives_layout(tmp_path / "negatives")
    return tmp_path


def _write_config(path, sources):
    path.write_text(yaml.safe_dump({"task": "detector", "model": {"name": "hag_detector"},
                                    "data": {"sources": sources}}))
    return path


def test_sources_schema_round_trip_and_errors(data_dirs, tmp_path):
    sources = [{"kind": "kvasir_seg", "root": str(data_dirs / "kvasir"), "weight": 2},
               {"kind": "polypgen", "root": str(data_dirs / "polypgen"), "options": {"centres": ["C1", "C2"]}},
               {"kind": "synthetic", "weight": 0.5, "synthetic": {"videos": 3}}]
    cfg = load_config(_write_config(tmp_path / "c.yaml", sources))
    assert [type(s) for s in cfg.data.sources] == [SourceConfig] * 3
    assert [(s.kind, s.weight) for s in cfg.data.sources] == [("kvasir_seg", 2.0), ("polypgen", 1.0),
                                                               ("synthetic", 0.5)]
    assert cfg.data.sources[1].options == {"centres": ["C1", "C2"]}
    assert cfg.data.sources[2].synthetic.videos == 3
    # the stored config loads back to the same thing
    stored = tmp_path / "stored.yaml"
    stored.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert load_config(stored).data.sources == cfg.data.sources

    bad = [dict(sources[0], weight=-1)]
    with pytest.raises(ConfigError, match=r"data.sources\[0\].weight': must be 0 or more"):
        load_config(_write_config(tmp_path / "neg.yaml", bad))
    with pytest.raises(ConfigError, match="every weight is 0"):
        load_config(_write_config(tmp_path / "zero.yaml", [dict(sources[0], weight=0)]))
    with pytest.raises(ConfigError, match=r"'data.sources\[1\].root': path does not exist"):
        load_config(_write_config(tmp_path / "missing.yaml", [sources[0], dict(sources[1], root="/nope")]))
    with pytest.raises(ConfigError, match=r"unknown config key 'data.sources\[0\].wieght'"):
        load_config(_write_config(tmp_path / "typo.yaml", [{"kind": "kvasir_seg", "root": "x", "wieght": 1}]))
    with pytest.raises(ConfigError, match=r"data.sources\[0\].kind"):
        load_config(_write_config(tmp_path / "kind.yaml", [{"kind": "kvasir", "root": "x"}]))


def test_read_sources_combines_data_sets(data_dirs, tmp_path):
    sources = [{"kind": "kvasir_seg", "root": str(data_dirs / "kvasir"), "weight": 2},
               {"kind": "polypgen", "root": str(data_dirs / "polypgen"), "options": {"centres": "C1,C4"}},
               {"kind": "negatives", "root": str(data_dirs / "negatives"), "weight": 3}]
    cfg = load_config(_write_config(tmp_path / "c.yaml", sources))
    index, root = read_source(cfg.data, negatives=True, progress=False)
    assert root == str(data_dirs / "kvasir")
    counts = Counter(source_key(f) for f in index.frames)
    assert counts == {"kvasir_seg": 4, "polypgen": 7, "negatives": 4}
    assert {f.source for f in index.frames if source_key(f) == "polypgen"} == {"polypgen/C1", "polypgen/C4"}
    assert index.source_weights == {"kvasir_seg": 2.0, "polypgen": 1.0, "negatives": 3.0}
    assert len(index.warnings) == 2                     # Kvasir's official-box remarks travel along
    assert len(index.skipped) == 3                      # 2 Kvasir + 1 broken negative


def test_read_sources_legacy_reader_labels_and_video_clashes(fixtures_dir, tmp_path):
    root = str(fixtures_dir / "realcolon_mini")
    cfg = load_config(_write_config(tmp_path / "c.yaml", [{"kind": "realcolon", "root": root},
                                                          {"kind": "realcolon", "root": root}]))
    index, _ = read_source(cfg.data, negatives=True, progress=False)
    half = len(index.frames) // 2
    assert {f.source for f in index.frames} == {"realcolon"}
    first, second = index.frames[:half], index.frames[half:]
    assert {f.video for f in first} == {"001-001", "001-002"}
    assert {f.video for f in second} == {"realcolon/001-001", "realcolon/001-002"}
    assert {s.video for s in index.samples} >= {"realcolon/001-001"}
    cfg = load_config(_write_config(tmp_path / "w.yaml", [{"kind": "realcolon", "root": root},
                                                          {"kind": "realcolon", "root": root, "weight": 2}]))
    with pytest.raises(ConfigError, match="listed again with weight 2"):
        read_source(cfg.data, negatives=True, progress=False)


def _frames(source, positives, negatives, start=0):
    out = [FrameRecord(f"/nowhere/{source}/{i}.jpg", f"{source}/{i}", 0, (64, 64),
                       (BoxAnnotation((8, 8, 30, 30), f"{source}/{i}#1"),), source=source)
           for i in range(positives)]
    out += [FrameRecord(f"/nowhere/{source}/n{i}.jpg", f"{source}/n{i}", 0, (64, 64), (), source=source)
            for i in range(negatives)]
    return out


def test_detection_dataset_shares_epochs_by_weight():
    frames = _frames("synthetic", 100, 60) + _frames("kvasir_seg", 10, 0) + _frames("negatives/nerthus", 0, 4)
    spec = DetectorInputSpec(size=64)
    plain = DetectionDataset(frames, spec, 8, positives_per_polyp=1, negative_fraction=0.5)
    assert len(plain) == 174                                    # 110 positives, all 64 negatives
    weighted = DetectionDataset(frames, spec, 8, positives_per_polyp=1, negative_fraction=0.5,
                                source_weights={"synthetic": 1, "kvasir_seg": 1, "negatives": 1})
    pos = Counter(source_key(f) for f in weighted.frames if f.boxes)
    neg = Counter(source_key(f) for f in weighted.frames if not f.boxes)
    assert pos == {"synthetic": 55, "kvasir_seg": 55}           # 110 shared equally; Kvasir repeated
    assert len({f.image_path for f in weighted.frames if source_key(f) == "kvasir_seg"}) == 10
    assert neg == {"synthetic": 55, "negatives": 55}            # 4 real negatives shown ~14 times
    weighted.set_epoch(1)
    assert Counter(source_key(f) for f in weighted.frames if f.boxes) == pos
    only = DetectionDataset(frames, spec, 8, positives_per_polyp=1, negative_fraction=0.5,
                            source_weights={"synthetic": 3, "kvasir_seg": 0, "negatives": 1})
    assert Counter(source_key(f) for f in only.frames if f.boxes) == {"synthetic": 100}
    assert Counter(source_key(f) for f in only.frames if not f.boxes) == {"synthetic": 75, "negatives": 25}
    with pytest.raises(ConfigError, match="source weights"):
        DetectionDataset(frames, spec, 8, source_weights={"synthetic": 0})
