"""ONNX input/output names read from the wire format (pipeline.onnx_io) are the onnx package's,
and a damaged file is a one-line BundleError."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.bundle import load_bundle, sha256_file
from pipeline.errors import BundleError
from pipeline.onnx_io import io_names

onnx = pytest.importorskip("onnx", reason="the onnx package (train extra) is the reference")
BUNDLES = Path(__file__).resolve().parents[1] / "pipeline" / "assets" / "bundles"


def _reference(path: Path) -> tuple[list[str], list[str]]:
    model = onnx.load(str(path))
    initialisers = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initialisers], [o.name for o in model.graph.output]


def _tiny_model(path: Path, with_initialiser_input: bool) -> Path:
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np
    weight = numpy_helper.from_array(np.ones((2, 2), np.float32), name="w")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])]
    if with_initialiser_input:     # older exporters list initialisers among the graph inputs
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 2]))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
                              "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2]),
                                            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2])],
                              initializer=[weight])
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("kind", ["sizer", "detector"])
def test_names_of_the_committed_bundles(kind):
    path = BUNDLES / kind / "model.onnx"
    assert io_names(path) == _reference(path)


@pytest.mark.parametrize("with_initialiser_input", [False, True])
def test_initialisers_listed_as_inputs_are_not_inputs(tmp_path, with_initialiser_input):
    path = _tiny_model(tmp_path / "m.onnx", with_initialiser_input)
    assert io_names(path) == _reference(path) == (["x"], ["y", "z"])


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_damaged_model_is_one_line_naming_the_file(tmp_path, damage):
    bundle = shutil.copytree(BUNDLES / "detector", tmp_path / "bundle")
    model = bundle / "model.onnx"
    data = model.read_bytes()
    model.write_bytes({"empty": b"", "truncated": data[:len(data) // 3], "garbage": b"\xff" * 4096}[damage])
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["files"]["model.onnx"] = sha256_file(model)        # the hash is not what catches it
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    message = str(info.value)
    assert "\n" not in message and str(model) in message and "not a readable ONNX model" in message


def test_names_that_differ_from_the_manifest(tmp_path):
    bundle = shutil.copytree(BUNDLES / "sizer", tmp_path / "bundle")
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["inputs"]["streams"] = ["rgb", "depth"]
    manifest["inputs"]["channels"] = {"rgb": 3, "depth": 1}
    manifest["inputs"]["spec"]["streams"] = ["rgb", "depth"]
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"ONNX inputs \['rgb', 'mask'\] differ from inputs.streams"):
        load_bundle(bundle)
