"""Folded model -> bundle directory: fold, export ONNX, check parity, write weights and manifest."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from pipeline.errors import BundleError
from pipeline.fsutil import atomic_dir

from pipeline import bundle as bundle_format
from .onnx import (DEFAULT_OPSET, PARITY_ATOL, PARITY_RTOL, example_inputs, export_onnx,
                   gate_operations, model_io_names, stream_channels,
                   verify_onnx_parity)

log = logging.getLogger(__name__)

# folded against unfolded PyTorch model (both fp32): folding is exact up to rounding
FOLD_RTOL = 1e-4
FOLD_ATOL = 1e-5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def fold_model(model: nn.Module) -> nn.Module:
    """`model.fold_gates()` when it has gates; a model without gates is returned as it is."""
    model = model.eval().cpu()
    has_gates = any(True for _ in getattr(model, "gate_parameters", lambda: ())())
    if has_gates:
        if not hasattr(model, "fold_gates"):
            raise BundleError(f"{type(model).__name__}: has gates but no fold_gates()")
        folded = model.fold_gates().eval().cpu()
        if any(True for _ in getattr(folded, "gate_parameters", lambda: ())()):
            raise BundleError(f"{type(model).__name__}: fold_gates() left gate parameters behind")
        return folded
    return model


def _input_size(model: nn.Module, metadata: Mapping[str, Any]) -> int | list[int]:
    spec = metadata.get("input_spec") or {}
    size = spec.get("size", getattr(model, "init_kwargs", {}).get("input_size"))
    if size is None:
        raise BundleError(f"{type(model).__name__}: input size unknown (no input_spec.size in the "
                          "checkpoint metadata and no input_size in init_kwargs)")
    return size


def describe_inputs(model: nn.Module, metadata: Mapping[str, Any], kind: str) -> dict:
    """The `inputs` section: what the pipeline must do to a frame before the model sees it."""
    spec = dict(metadata.get("input_spec") or {})
    input_names, _ = model_io_names(model)
    mean = spec.get("mean")
    std = spec.get("std")
    if mean is None or std is None:
        log.warning("checkpoint metadata has no input_spec mean/std; recording ImageNet statistics")
        mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    size = _input_size(model, metadata)
    inputs = {
        "streams": list(input_names),
        "channels": stream_channels(input_names),
        "size": list(size) if isinstance(size, (list, tuple)) else int(size),
        "colour_order": spec.get("colour_order", "RGB"),
        "layout": "NCHW",
        "dtype": "float32",
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "fov_masking": bool(spec.get("fov_masking", False)),
    }
    if kind == "sizer":
        inputs["box_grow"] = spec.get("box_grow")
    else:
        inputs["letterbox"] = bool(spec.get("letterbox", True))
    inputs["spec"] = spec
    return inputs


def describe_outputs(model: nn.Module, kind: str, metadata: Mapping[str, Any]) -> dict:
    """The `outputs` section: names, meanings, size-class thresholds / detector decoding."""
    _, output_names = model_io_names(model)
    outputs: dict[str, Any] = {
        "names": list(output_names),
        "meaning": {n: bundle_format.OUTPUT_MEANINGS.get(n, "model output") for n in output_names},
    }
    if kind == "sizer":
        outputs["size_classes"] = bundle_format.size_class_description()
        if metadata.get("decision"):     # clamp and test-time diminutive threshold (config decision)
            outputs["decision"] = dict(metadata["decision"])
        # the class names of the `logits` columns, in order (tri-class or binary), when trained with them
        classes = (metadata.get("outputs") or {}).get("classes")
        if "logits" in output_names:
            outputs["logit_classes"] = list(classes) if classes else list(outputs["size_classes"]["names"])
    else:
        outputs["decoding"] = dict(metadata.get("detector") or {})
    return outputs


def _parity_inputs(size, input_names, batch: int) -> dict[str, torch.Tensor]:
    return example_inputs(input_names, size if isinstance(size, int) else tuple(size), batch=batch, seed=1)


def check_folding(model: nn.Module, folded: nn.Module, inputs: Mapping[str, torch.Tensor]):
    """-> (largest abs difference, folded outputs); BundleError beyond FOLD_RTOL/FOLD_ATOL."""
    with torch.no_grad():
        reference = model.eval()(dict(inputs))
        got = folded.eval()(dict(inputs))
    worst = 0.0
    for name, ref in reference.items():
        ref_np, got_np = ref.numpy(), got[name].numpy()
        if not np.allclose(got_np, ref_np, rtol=FOLD_RTOL, atol=FOLD_ATOL * max(1.0, float(np.abs(ref_np).max()))):
            raise BundleError(f"folding changed output {name!r} by up to {np.abs(got_np - ref_np).max():.3g}; "
                              "refusing to export")
        worst = max(worst, float(np.abs(got_np - ref_np).max()))
    return worst, got


def export_bundle(model: nn.Module, metadata: Mapping[str, Any], out_dir: str | Path,
                  opset: int = DEFAULT_OPSET, exporter: str = "dynamo",
                  rebuild_check: bool = True) -> "bundle_format.Bundle":
    """Write a complete bundle for `model` (gated or already folded) to `out_dir`, atomically.

    Refuses (BundleError, nothing written) when folding changes the outputs, the folded ONNX
    graph still contains gate operations, or onnxruntime differs from the folded PyTorch model
    beyond |ort - torch| <= PARITY_ATOL + PARITY_RTOL*|torch| on a batch size other than the
    one exported with (which also proves the batch axis is dynamic).
    """
    start = time.perf_counter()
    kind = metadata.get("kind") or ("detector" if "heatmap" in model_io_names(model)[1] else "sizer")
    if kind not in bundle_format.KINDS:
        raise BundleError(f"checkpoint metadata kind {kind!r} is not one of {', '.join(bundle_format.KINDS)}")
    input_names, _ = model_io_names(model)
    size = _input_size(model, metadata)
    gates = sum(1 for _ in getattr(model, "gate_parameters", lambda: ())())
    folded = fold_model(model)
    check_inputs = _parity_inputs(size, input_names, batch=3)
    fold_error, folded_outputs = check_folding(model, folded, check_inputs)
    log.info("folded %d gate tensor(s) (max abs change %.2g); exporting ONNX with the %s exporter",
             gates, fold_error, exporter)

    from safetensors.torch import save_file

    architecture = getattr(folded, "architecture", "") or metadata.get("architecture") or type(folded).__name__
    init_kwargs = dict(getattr(folded, "init_kwargs", {}) or {})
    with atomic_dir(out_dir) as tmp:
        onnx_path = export_onnx(folded, tmp / bundle_format.ONNX_NAME, _parity_inputs(size, input_names, 2),
                                opset=opset, exporter=exporter)
        log.info("ONNX written (%.1f s); checking it against PyTorch in onnxruntime", time.perf_counter() - start)
        leftover = gate_operations(onnx_path)
        if leftover:
            raise BundleError(f"{out_dir}: folded ONNX graph still has {len(leftover)} gate operation(s) "
                              f"({leftover[0].op_type} {leftover[0].name}); refusing to write the bundle")
        errors = verify_onnx_parity(folded, onnx_path, check_inputs, expected=folded_outputs)
        state = {k: v.detach().cpu().contiguous() for k, v in folded.state_dict().items()}
        save_file(state, str(tmp / bundle_format.WEIGHTS_NAME),
                  metadata={"architecture": architecture, "format": "hagview folded weights"})
        exporter_info = {"opset": opset, "exporter": exporter, "torch": torch.__version__,
                         "onnx_parity_max_abs_error": errors,
                         "onnx_parity_tolerance": {"rtol": PARITY_RTOL, "atol": PARITY_ATOL},
                         "fold_max_abs_error": fold_error}
        manifest = {
            "schema_version": bundle_format.SCHEMA_VERSION,
            "kind": kind,
            "architecture": {"name": architecture, "init_kwargs": init_kwargs, "folded": True},
            "inputs": describe_inputs(folded, metadata, kind),
            "outputs": describe_outputs(folded, kind, metadata),
            "provenance": bundle_format.provenance_record(metadata, bundle_format.git_commit(), exporter_info),
        }
        bundle_format.write_bundle_files(tmp, manifest, [bundle_format.ONNX_NAME, bundle_format.WEIGHTS_NAME])
        written = bundle_format.load_bundle(tmp)
        if rebuild_check:
            _check_rebuild(written, folded_outputs, check_inputs)
        bundle_format.make_readable(tmp)
    log.info("exported %s %s to %s in %.1f s (onnxruntime parity: max abs error %s)", kind, architecture,
             out_dir, time.perf_counter() - start, ", ".join(f"{k} {v:.2g}" for k, v in errors.items()))
    return bundle_format.load_bundle(out_dir)


def _check_rebuild(written: "bundle_format.Bundle", expected: Mapping[str, torch.Tensor], inputs) -> None:
    """The bundle must rebuild, from its own manifest and weights, into the same function."""
    rebuilt = written.build_torch_model()
    with torch.no_grad():
        got = rebuilt(dict(inputs))
    for name, ref in expected.items():
        if not torch.allclose(ref, got[name], rtol=1e-6, atol=1e-6):
            raise BundleError(f"{written.path}: rebuilding {written.architecture} from the bundle gives "
                              f"different {name!r}; refusing to write the bundle")
