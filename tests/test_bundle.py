"""Bundle validation: every problem is a one-line BundleError naming the file; nothing runs."""
from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from pipeline.errors import BackendUnavailable, BundleError
from trainer.export import load_bundle, sha256_file
from pipeline.bundle import copy_external_onnx
from trainer.export.exporter import export_bundle
from trainer.models import build_model
from pipeline.engines import load_engine


@pytest.fixture(scope="module")
def source_bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("hag_resnet18", streams=("rgb", "mask"), input_size=32, width_mult=0.125, hidden=8)
    metadata = {"kind": "sizer", "input_spec": {"size": 32, "mean": [0.5] * 3, "std": [0.2] * 3,
                                                "fov_masking": True, "box_grow": 0.5},
                "data": {"kind": "realcolon", "root": "/data/real-colon", "synthetic": False},
                "metrics": {"mae_mm": 2.0}, "config": {"epochs": 1}}
    return export_bundle(model.eval(), metadata, tmp_path_factory.mktemp("b") / "bundle", exporter="legacy").path


@pytest.fixture
def bundle_dir(source_bundle, tmp_path):
    """A private copy each test may damage."""
    return shutil.copytree(source_bundle, tmp_path / "bundle")


def _error(path) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def _edit_manifest(bundle_dir, change) -> None:
    manifest = json.loads((bundle_dir / "bundle.json").read_text())
    change(manifest)
    (bundle_dir / "bundle.json").write_text(json.dumps(manifest))


def test_valid_bundle_loads(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert bundle.kind == "sizer" and bundle.architecture == "hag_resnet18"
    assert bundle.input_names == ("rgb", "mask") and bundle.output_names == ("size_mm",)
    assert bundle.input_size == (32, 32) and bundle.input_channels == {"rgb": 3, "mask": 3}
    assert bundle.synthetic_training_data is False and bundle.clinical_use is False
    assert "not for clinical use" in bundle.provenance["note"]
    for name, digest in bundle.manifest["files"].items():
        assert sha256_file(bundle_dir / name) == digest
    assert load_bundle(bundle_dir / "bundle.json").path == bundle_dir


def test_bundle_is_readable_by_others(source_bundle):
    umask = os.umask(0)
    os.umask(umask)
    if umask & 0o044:
        pytest.skip(f"umask {umask:o} hides files from others anyway")
    assert source_bundle.stat().st_mode & 0o755 == 0o755
    for name in ("bundle.json", "model.onnx", "weights.safetensors"):
        assert (source_bundle / name).stat().st_mode & 0o644 == 0o644, name


def test_missing_file(bundle_dir):
    (bundle_dir / "weights.safetensors").unlink()
    message = _error(bundle_dir)
    assert "weights.safetensors" in message and "missing" in message


def test_missing_manifest_and_directory(bundle_dir, tmp_path):
    (bundle_dir / "bundle.json").unlink()
    assert "bundle.json: missing" in _error(bundle_dir)
    assert "does not exist" in _error(tmp_path / "nowhere")


def test_unknown_schema_version(bundle_dir):
    _edit_manifest(bundle_dir, lambda m: m.update(schema_version=99))
    message = _error(bundle_dir)
    assert "bundle.json" in message and "unknown schema_version 99" in message


def test_hash_mismatch_after_one_byte(bundle_dir):
    path = bundle_dir / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    message = _error(bundle_dir)
    assert "model.onnx" in message and "sha256 mismatch" in message


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_with_code_in_place_of_weights_never_runs(bundle_dir, tmp_path):
    marker = tmp_path / "code-ran"
    payload = pickle.dumps({"conv.weight": _Payload(str(marker))})
    (bundle_dir / "weights.safetensors").write_bytes(payload)
    # an attacker who can swap the weights can also fix the hash: validation must not rely on it
    _edit_manifest(bundle_dir, lambda m: m["files"].update({"weights.safetensors": sha256_file(
        bundle_dir / "weights.safetensors")}))
    message = _error(bundle_dir)
    assert "weights.safetensors" in message and "not a safetensors file" in message
    with pytest.raises(BundleError):
        load_engine(bundle_dir, backend="torch")
    assert not marker.exists()
    pickle.loads(payload)          # the payload is armed: unpickling it would have run it
    assert marker.exists()


def test_incomplete_manifest_is_named(bundle_dir):
    _edit_manifest(bundle_dir, lambda m: m["inputs"].update(mean=[0.5, 0.5]))
    assert "inputs.mean must be a list of 3 numbers" in _error(bundle_dir)


def test_onnx_names_must_match_manifest(bundle_dir):
    _edit_manifest(bundle_dir, lambda m: m["inputs"].update(streams=["rgb", "depth"]))
    message = _error(bundle_dir)
    assert "model.onnx" in message and "differ from inputs.streams" in message


# ---------------------------------------------------------------------------------------
# external ONNX detectors

class _YoloLike(torch.nn.Module):
    """(batch, 6, candidates) like YOLOv8: cx, cy, w, h, then two class scores."""

    def forward(self, images):
        pooled = torch.nn.functional.avg_pool2d(images, 8)           # (N,3,4,4)
        rows = pooled.flatten(2)                                     # (N,3,16)
        return torch.cat([rows, rows[:, :3].sigmoid()], dim=1)       # (N,6,16)


LAYOUT = {"output": "output0", "transposed": True, "box_format": "cxcywh", "box_columns": [0, 1, 2, 3],
          "score_columns": [4, 5], "objectness_column": None, "coordinates": "pixels",
          "scores_are_logits": False, "nms_applied": False}


def _external_manifest(layout=LAYOUT) -> dict:
    return {"kind": "detector",
            "inputs": {"streams": ["images"], "size": [32, 32], "colour_order": "RGB", "mean": [0.0] * 3,
                       "std": [1.0] * 3, "letterbox": True, "fov_masking": False},
            "outputs": {"names": ["output0"], "meaning": {"output0": "candidate boxes"}, "layout": dict(layout)},
            "provenance": {"synthetic_training_data": False, "clinical_use": False, "note": "external"}}


@pytest.fixture(scope="module")
def external_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("ext") / "yolo.onnx"
    torch.onnx.export(_YoloLike(), (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=18,
                      input_names=["images"], output_names=["output0"],
                      dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}})
    return path


def test_external_onnx_detector_bundle(external_onnx, tmp_path):
    bundle = copy_external_onnx(external_onnx, tmp_path / "det", _external_manifest())
    assert bundle.is_external and bundle.weights_path is None and bundle.kind == "detector"
    assert bundle.outputs["layout"]["box_format"] == "cxcywh"
    assert not (tmp_path / "det" / "weights.safetensors").exists()
    engine = load_engine(bundle, backend="auto")
    assert engine.name == "onnxruntime"
    images = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    out = engine.run({"images": images})["output0"]
    assert out.shape == (2, 6, 16)
    with pytest.raises(BackendUnavailable, match="external ONNX model without PyTorch weights"):
        load_engine(bundle, backend="torch")


@pytest.mark.parametrize("change, expected", [
    ({"box_format": "yolo"}, "box_format 'yolo' is not one of xyxy, cxcywh, xywh"),
    ({"coordinates": "relative"}, "coordinates 'relative' is not one of normalised, pixels"),
    ({"output": "boxes"}, "outputs.layout.output 'boxes' is not one of outputs.names"),
    ({"score_columns": []}, "score_columns must be a non-empty list"),
    ({"score_columns": [3, 4]}, "columns overlap"),
    ({"box_columns": [0, 1, 2]}, "box_columns must be 4 column indices"),
])
def test_external_layout_is_validated(external_onnx, tmp_path, change, expected):
    with pytest.raises(BundleError) as info:
        copy_external_onnx(external_onnx, tmp_path / "det", _external_manifest({**LAYOUT, **change}))
    assert expected in str(info.value) and "bundle.json" in str(info.value)
    assert not (tmp_path / "det").exists()


def test_external_model_must_be_a_detector_with_a_layout(external_onnx, tmp_path):
    manifest = _external_manifest()
    del manifest["outputs"]["layout"]
    with pytest.raises(BundleError, match="needs outputs.layout"):
        copy_external_onnx(external_onnx, tmp_path / "a", manifest)
    with pytest.raises(BundleError, match="must be a detector"):
        copy_external_onnx(external_onnx, tmp_path / "b", {**_external_manifest(), "kind": "sizer"})
