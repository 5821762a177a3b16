"""TensorRT backend: real compilation tests where CUDA and torch-tensorrt exist, skipped elsewhere.

On a GPU machine: `scripts/install_tensorrt.sh && .venv/bin/python -m pytest tests/test_tensorrt.py`.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from pipeline.errors import BackendUnavailable
from trainer.export.exporter import export_bundle
from pipeline.engines.tensorrt_build import cache_key, unavailable_reason
from trainer.models import build_model
from pipeline.engines import load_engine

TRT_REASON = unavailable_reason()
needs_tensorrt = pytest.mark.skipif(TRT_REASON is not None, reason=f"tensorrt unavailable: {TRT_REASON}")

# fp16 compute against the fp32 PyTorch model: ~3 significant digits per layer, accumulated
FP16_RTOL = 2e-2
FP16_ATOL = 2e-2


def test_cache_key_depends_on_every_field():
    fields = {"gpu": "NVIDIA H100", "compute_capability": "9.0", "tensorrt": "10.13", "torch_tensorrt": "2.13.0",
              "torch": "2.13.0", "bundle": "ab" * 32, "shapes": {"rgb": [1, 3, 64, 64]}, "precision": "fp16"}
    key = cache_key(fields)
    assert key == cache_key(dict(reversed(list(fields.items()))))     # order does not matter
    changes = {"gpu": "NVIDIA L4", "compute_capability": "8.9", "tensorrt": "10.14",
               "torch_tensorrt": "2.14.0", "bundle": "cd" * 32, "shapes": {"rgb": [2, 3, 64, 64]},
               "precision": "fp32"}
    keys = {cache_key({**fields, k: v}) for k, v in changes.items()}
    assert key not in keys and len(keys) == len(changes)


@pytest.mark.skipif(TRT_REASON is None, reason="checks the message where TensorRT cannot run")
def test_skip_reason_is_explained(tmp_path):
    assert any(why in TRT_REASON for why in ("no NVIDIA GPU driver here", "CUDA is not available", "is not installed"))
    from pipeline.engines.tensorrt_build import require_tensorrt
    with pytest.raises(BackendUnavailable, match="^tensorrt: "):
        require_tensorrt()


def _gated(model):
    with torch.no_grad():
        for gate in model.gate_parameters():
            gate.normal_(0.0, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    if TRT_REASON is not None:
        pytest.skip(f"tensorrt unavailable: {TRT_REASON}")
    root = tmp_path_factory.mktemp("trt")
    torch.manual_seed(0)
    resnet = _gated(build_model("hag_resnet18", streams=("rgb", "mask"), input_size=64, width_mult=0.25,
                                hidden=16, head="both"))
    vit = _gated(build_model("hag_vit_tiny", streams=("rgb",), input_size=64, patch_size=16, embed_dim=64,
                             depth=2, num_heads=2, head="both"))
    meta = {"kind": "sizer", "input_spec": {"size": 64, "mean": [0.5] * 3, "std": [0.25] * 3},
            "data": {"kind": "synthetic", "synthetic": True}}
    return {"resnet": (resnet, export_bundle(resnet, meta, root / "resnet", exporter="legacy")),
            "vit": (vit, export_bundle(vit, meta, root / "vit", exporter="legacy"))}


def _inputs(bundle, batch, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(bundle.example_shape(batch, n), dtype=np.float32) for n in bundle.input_names}


@needs_tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["resnet", "vit"])
def test_tensorrt_fp16_matches_torch(bundles, name, caplog):
    model, bundle = bundles[name]
    with caplog.at_level(logging.INFO):
        engine = load_engine(bundle, backend="tensorrt", batch_sizes=(1, 4))
    assert engine.name == "tensorrt" and engine.batch_sizes == (1, 4)
    assert "building fp16 program" in caplog.text and "built" in caplog.text
    inputs = _inputs(bundle, 3, seed=1)          # padded up to the compiled batch of 4
    with torch.no_grad():
        expected = model({k: torch.from_numpy(v) for k, v in inputs.items()})
    got = engine.run(inputs)
    for out_name, value in expected.items():
        assert got[out_name].shape == tuple(value.shape)
        np.testing.assert_allclose(got[out_name], value.numpy(), rtol=FP16_RTOL, atol=FP16_ATOL)
    # batch 6 is more than the largest compiled size: run in chunks 4 + 2 (padded to 4)
    six = _inputs(bundle, 6, seed=2)
    chunked = engine.run(six)
    assert chunked["logits"].shape[0] == 6
    np.testing.assert_allclose(chunked["logits"][4:], engine.run({k: v[4:] for k, v in six.items()})["logits"],
                               rtol=1e-3, atol=1e-3)


@needs_tensorrt
@pytest.mark.gpu
def test_cache_is_reused_and_keyed_by_shape_and_precision(bundles, caplog):
    from pipeline.engines.tensorrt_build import ProgramCache

    _, bundle = bundles["resnet"]
    first = ProgramCache(bundle, precision="fp16")
    first.load_or_build(2)
    path = first.path_for(2)
    assert path.is_file() and path.with_suffix(".json").is_file()
    again = ProgramCache(bundle, precision="fp16")
    with caplog.at_level(logging.INFO):
        again.load_or_build(2)
    assert again.builds == 0 and "loaded cached program" in caplog.text
    assert ProgramCache(bundle, precision="fp32").path_for(2) != path
    assert first.path_for(1) != path
    mtime = path.stat().st_mtime_ns
    load_engine(bundle, backend="tensorrt", batch_sizes=(2,))
    assert path.stat().st_mtime_ns == mtime          # not rebuilt


def test_vit_fp16_program_keeps_layernorm_in_fp32():
    """The strongly typed graph TensorRT compiles: fp16 everywhere except LayerNorm (runs on CPU too)."""
    from torch import nn

    from pipeline.engines.tensorrt_build import _typed_for_precision

    torch.manual_seed(0)
    vit = _gated(build_model("hag_vit_tiny", streams=("rgb",), input_size=32, patch_size=16, embed_dim=32,
                             depth=2, num_heads=2, head="both")).fold_gates()
    typed = _typed_for_precision(vit, "fp16")
    norms = [m for m in typed.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 and all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    linears = [m for m in typed.modules() if isinstance(m, nn.Linear)]
    assert linears and all(m.weight.dtype == torch.float16 for m in linears)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        size_mm, logits = typed(x)
        expected = vit({"rgb": x})
    assert size_mm.dtype == torch.float32                       # fp32 at the program boundary
    np.testing.assert_allclose(logits.numpy(), expected["logits"].numpy(), rtol=FP16_RTOL, atol=FP16_ATOL)
    assert all(p.dtype == torch.float32 for p in vit.parameters())    # the source model is untouched
