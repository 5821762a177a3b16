"""ONNX export of folded models and the hagview-export command line."""
from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from pipeline.errors import BundleError
from trainer.export import load_bundle
from trainer.export.cli import main as export_main
from trainer.export.exporter import export_bundle
from trainer.export.onnx import (PARITY_ATOL, PARITY_RTOL, example_inputs, export_onnx, gate_operations,
                                 onnx_session, verify_onnx_parity)
from trainer.models import build_model, save_checkpoint
from pipeline import sizeclass

SIZE = 64


def tiny_resnet(seed: int = 0, head: str = "both"):
    torch.manual_seed(seed)
    model = build_model("hag_resnet18", streams=("rgb", "mask"), input_size=SIZE, width_mult=0.125,
                        hidden=16, head=head)
    with torch.no_grad():   # trained gates are far from their initial value: make them so here
        for gate in model.gate_parameters():
            gate.normal_(0.0, 1.5)
    return model.eval()


def tiny_vit(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("hag_vit_tiny", streams=("rgb",), input_size=32, patch_size=16, embed_dim=32,
                        depth=2, num_heads=2, head="both")
    with torch.no_grad():
        for gate in model.gate_parameters():
            gate.normal_(0.0, 1.5)
    return model.eval()


def tiny_detector(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("hag_detector", input_size=64, width_mult=0.125)
    with torch.no_grad():
        for gate in model.gate_parameters():
            gate.normal_(0.0, 1.5)
    return model.eval()


def sizer_metadata(size: int = SIZE, synthetic: bool = True) -> dict:
    return {"kind": "sizer",
            "input_spec": {"streams": ["rgb", "mask"], "size": size, "mean": [0.5, 0.45, 0.4],
                           "std": [0.25, 0.25, 0.25], "fov_masking": True, "box_grow": 0.5},
            "config": {"model": {"name": "hag_resnet18"}}, "metrics": {"mae_mm": 1.25},
            "outputs": {"classes": ["diminutive", "small", "large"]},
            "data": {"kind": "synthetic" if synthetic else "realcolon", "root": "/data", "synthetic": synthetic},
            "epoch": 3, "fold": 0, "git_commit": None}


@pytest.mark.parametrize("make_model", [tiny_resnet, tiny_vit, tiny_detector],
                         ids=["hag_resnet18", "hag_vit_tiny", "hag_detector"])
def test_folded_graph_has_no_gate_operations(tmp_path, make_model):
    model = make_model()
    gates = len(list(model.gate_parameters()))
    assert gates > 0
    inputs = example_inputs(model.input_names, model.init_kwargs["input_size"])
    unfolded = export_onnx(model, tmp_path / "unfolded.onnx", inputs, exporter="legacy")
    folded = export_onnx(model.fold_gates(), tmp_path / "folded.onnx", inputs, exporter="legacy")
    unfolded_ops = gate_operations(unfolded)
    # one product per gate in the unfolded graph (plus the sigmoid that computes it) ...
    assert sum(op.op_type == "Mul" for op in unfolded_ops) == gates
    assert sum(op.op_type == "Sigmoid" for op in unfolded_ops) == gates
    # ... and none once the gates are folded into the neighbouring weights
    assert gate_operations(folded) == []
    folded_types = [n.op_type for n in onnx.load(str(folded)).graph.node]
    assert "Sigmoid" not in folded_types


def test_dynamo_export_of_folded_resnet_matches_torch(tmp_path):
    model = tiny_resnet()
    folded = model.fold_gates()
    path = export_onnx(folded, tmp_path / "m.onnx", example_inputs(model.input_names, SIZE, batch=2))
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert [i.name for i in proto.graph.input] == ["rgb", "mask"]
    assert [o.name for o in proto.graph.output] == ["size_mm", "logits"]
    assert all(i.type.tensor_type.shape.dim[0].dim_param for i in proto.graph.input)   # dynamic batch
    assert gate_operations(proto) == []
    # batch 3 differs from the batch it was exported with
    inputs = example_inputs(model.input_names, SIZE, batch=3, seed=11)
    session = onnx_session(path)
    got = session.run(["size_mm", "logits"], {k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        unfolded_out = model(inputs)
    for name, value in zip(["size_mm", "logits"], got):
        assert value.shape == tuple(unfolded_out[name].shape)
        np.testing.assert_allclose(value, unfolded_out[name].numpy(), rtol=PARITY_RTOL, atol=PARITY_ATOL)
    errors = verify_onnx_parity(folded, path, inputs)
    assert set(errors) == {"size_mm", "logits"} and max(errors.values()) <= PARITY_ATOL


def test_export_bundle_vit_round_trip(tmp_path):
    model = tiny_vit()
    metadata = {**sizer_metadata(32), "input_spec": {"streams": ["rgb"], "size": 32, "mean": [0.5] * 3,
                                                     "std": [0.25] * 3, "fov_masking": False, "box_grow": 0.3}}
    bundle = export_bundle(model, metadata, tmp_path / "vit-bundle")
    assert bundle.architecture == "hag_vit_tiny" and bundle.init_kwargs["gates"] is False
    assert gate_operations(bundle.onnx_path) == []
    inputs = example_inputs(("rgb",), 32, batch=4, seed=3)
    with torch.no_grad():
        expected = model(inputs)
    got = onnx_session(bundle.onnx_path).run(["size_mm", "logits"], {"rgb": inputs["rgb"].numpy()})
    np.testing.assert_allclose(got[1], expected["logits"].numpy(), rtol=PARITY_RTOL, atol=PARITY_ATOL)
    rebuilt = bundle.build_torch_model()
    assert not any(True for _ in rebuilt.gate_parameters())


class TracedConstant(torch.nn.Module):
    """`.item()` is frozen into the traced graph: the ONNX model stops following its input."""

    input_names = ("rgb",)
    output_names = ("size_mm",)
    init_kwargs = {"input_size": 32}

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, inputs):
        x = inputs["rgb"]
        shift = float(x.mean().item())
        return {"size_mm": self.linear(x.mean(dim=(2, 3))) + shift}


def test_export_refuses_bundle_when_onnxruntime_disagrees(tmp_path):
    out = tmp_path / "bad-bundle"
    with pytest.raises(BundleError, match="onnxruntime output 'size_mm' differs from PyTorch"):
        export_bundle(TracedConstant().eval(), {"kind": "sizer", "input_spec": {"size": 32}}, out,
                      exporter="legacy", rebuild_check=False)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []     # no half-written temporary directory left


# ---------------------------------------------------------------------------------------
# hagview-export

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A hagview-train run directory with two folds; fold 1 has the better (lower) MAE."""
    root = tmp_path_factory.mktemp("run")
    for fold, mae in ((0, 2.5), (1, 1.1)):
        metadata = {**sizer_metadata(), "fold": fold, "metrics": {"mae_mm": mae}}
        save_checkpoint(tiny_resnet(seed=fold), root / f"fold-{fold}" / "best.pt", metadata)
    # the layout hagview-train writes (trainer/train.py)
    summary = {"task": "sizer", "primary_metric": "mae_mm", "higher_is_better": False, "best_fold": 1,
               "folds": {"0": {"best_epoch": 3, "best_metric": 2.5, "best_checkpoint": "fold-0/best.pt"},
                         "1": {"best_epoch": 5, "best_metric": 1.1, "best_checkpoint": "fold-1/best.pt"}}}
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def test_cli_exports_best_fold_of_a_run(run_dir, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert export_main([str(run_dir), "--out", str(out)]) == 0
    bundle = load_bundle(out)
    assert bundle.provenance["fold"] == 1 and bundle.provenance["metrics"] == {"mae_mm": 1.1}
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["kind"] == "sizer"
    assert manifest["inputs"]["streams"] == ["rgb", "mask"] and manifest["inputs"]["colour_order"] == "RGB"
    assert manifest["inputs"]["fov_masking"] is True and manifest["inputs"]["box_grow"] == 0.5
    assert manifest["outputs"]["size_classes"]["large_min_mm"] == sizeclass.LARGE_MIN_MM
    assert manifest["outputs"]["size_classes"]["diminutive_max_mm"] == sizeclass.DIMINUTIVE_MAX_MM
    assert manifest["outputs"]["logit_classes"] == ["diminutive", "small", "large"]
    provenance = manifest["provenance"]
    assert provenance["synthetic_training_data"] is True and provenance["clinical_use"] is False
    assert provenance["note"] == "trained on synthetic data; not for clinical use"
    assert "git_commit" in provenance and provenance["date"].endswith("Z")
    assert set(manifest["files"]) == {"model.onnx", "weights.safetensors"}
    assert "wrote" in capsys.readouterr().out
    # --fold picks a fold explicitly
    out0 = tmp_path / "bundle0"
    assert export_main([str(run_dir), "--out", str(out0), "--fold", "0", "--exporter", "legacy"]) == 0
    assert load_bundle(out0).provenance["fold"] == 0


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("hagview-export: error: ")
    return err


def test_cli_bad_inputs_give_one_line_errors(run_dir, tmp_path, capsys):
    out = str(tmp_path / "b")
    assert export_main([str(tmp_path / "nope"), "--out", out]) == 2
    assert "no such run directory or checkpoint file" in _one_line_error(capsys)
    assert export_main([str(run_dir), "--out", out, "--opset", "13"]) == 2
    assert "opset 18 or later" in _one_line_error(capsys)
    assert export_main([str(run_dir), "--out", out, "--fold", "7"]) == 2
    assert "fold 7 has no best checkpoint" in _one_line_error(capsys)
    assert export_main([str(run_dir)]) == 2                 # --out missing: argparse, still one line
    assert "--out" in _one_line_error(capsys)
    (tmp_path / "exists").mkdir()
    assert export_main([str(run_dir), "--out", str(tmp_path / "exists")]) == 2
    assert "already exists" in _one_line_error(capsys)
    assert export_main([str(run_dir), "--out", out, "--trt-batch-sizes", "1,x"]) == 2
    assert "--trt-batch-sizes" in _one_line_error(capsys)
    assert not Path(out).exists()


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_cli_refuses_a_pickle_with_code(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    payload = pickle.dumps({"format": "hagview-checkpoint", "x": _Payload(str(marker))})
    evil.write_bytes(payload)
    assert export_main([str(evil), "--out", str(tmp_path / "b")]) == 2
    assert "evil.pt" in _one_line_error(capsys)
    assert not marker.exists()
    pickle.loads(payload)          # the payload is armed: an unsafe loader would have run it
    assert marker.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is missing")
def test_cli_tensorrt_without_cuda_says_why(run_dir, tmp_path, capsys):
    assert export_main([str(run_dir), "--out", str(tmp_path / "b"), "--tensorrt"]) == 2
    assert re.search(r"tensorrt: (no NVIDIA GPU driver here|CUDA is not available)", _one_line_error(capsys))
    assert not (tmp_path / "b").exists()
