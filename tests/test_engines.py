"""Inference engines behind one interface, and the choice of backend."""
from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pipeline.errors import BackendUnavailable, DataError
from trainer.export.exporter import export_bundle
from trainer.export.onnx import PARITY_ATOL, PARITY_RTOL
from trainer.models import build_model
import pipeline.engines as engines
from pipeline.engines import load_engine, unavailable_reason

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def model_and_bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("hag_resnet18", streams=("rgb", "mask", "depth"), input_size=32, width_mult=0.125,
                        hidden=8, head="both").eval()
    with torch.no_grad():
        for gate in model.gate_parameters():
            gate.normal_(0.0, 1.5)
    metadata = {"kind": "sizer", "input_spec": {"size": 32, "mean": [0.5] * 3, "std": [0.2] * 3},
                "data": {"kind": "synthetic", "synthetic": True}}
    bundle = export_bundle(model, metadata, tmp_path_factory.mktemp("e") / "bundle", exporter="legacy")
    return model, bundle


def _inputs(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"rgb": rng.standard_normal((batch, 3, 32, 32), dtype=np.float32),
            "mask": rng.standard_normal((batch, 3, 32, 32), dtype=np.float32),
            "depth": rng.standard_normal((batch, 1, 32, 32), dtype=np.float32)}


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_and_torch_agree_with_the_gated_model(model_and_bundle, batch):
    model, bundle = model_and_bundle
    inputs = _inputs(batch, seed=batch)
    with torch.no_grad():
        expected = {k: v.numpy() for k, v in model({k: torch.from_numpy(v) for k, v in inputs.items()}).items()}
    ort_engine = load_engine(bundle, backend="onnxruntime", threads=1)
    torch_engine = load_engine(bundle.path, backend="torch", device="cpu")
    assert (ort_engine.name, torch_engine.name) == ("onnxruntime", "torch")
    assert ort_engine.bundle.path == torch_engine.bundle.path == bundle.path
    got_ort, got_torch = ort_engine.run(inputs), torch_engine.run(inputs)
    for name in ("size_mm", "logits"):
        assert got_ort[name].shape == expected[name].shape == got_torch[name].shape
        assert got_ort[name].dtype == np.float32
        np.testing.assert_allclose(got_ort[name], expected[name], rtol=PARITY_RTOL, atol=PARITY_ATOL)
        np.testing.assert_allclose(got_torch[name], expected[name], rtol=PARITY_RTOL, atol=PARITY_ATOL)


def test_onnxruntime_session_options(model_and_bundle):
    _, bundle = model_and_bundle
    engine = load_engine(bundle, backend="onnxruntime", threads=1)
    options = engine.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert "onnxruntime" in engine.describe() and "threads 1" in engine.describe()


def test_bad_inputs_are_named(model_and_bundle):
    _, bundle = model_and_bundle
    engine = load_engine(bundle, backend="onnxruntime")
    inputs = _inputs(2)
    with pytest.raises(DataError, match="input 'depth' missing"):
        engine.run({k: v for k, v in inputs.items() if k != "depth"})
    with pytest.raises(DataError, match=r"input 'depth' has shape \(2, 3, 32, 32\), expected \(N, 1, 32, 32\)"):
        engine.run({**inputs, "depth": inputs["rgb"]})
    with pytest.raises(DataError, match="different batch sizes"):
        engine.run({**inputs, "mask": inputs["mask"][:1]})


@pytest.fixture
def no_nvidia_driver(monkeypatch, tmp_path):
    monkeypatch.setattr(engines, "NVIDIA_DEVICE_NODES", (str(tmp_path / "nvidiactl"),))


@pytest.fixture
def nvidia_driver(monkeypatch, tmp_path):
    monkeypatch.setattr(engines, "NVIDIA_DEVICE_NODES", (str(tmp_path),))      # a path that exists


def test_auto_picks_onnxruntime_and_says_why_it_skipped_the_rest(model_and_bundle, caplog, no_nvidia_driver):
    _, bundle = model_and_bundle
    with caplog.at_level(logging.INFO, logger="pipeline.engines"):
        engine = load_engine(bundle, backend="auto")
    assert engine.name == "onnxruntime"
    message = caplog.text
    assert "picked onnxruntime" in message
    node = engines.NVIDIA_DEVICE_NODES[0]
    assert f"tensorrt: no NVIDIA GPU driver here (none of {node})" in message
    assert f"torch-cuda: no NVIDIA GPU driver here (none of {node})" in message


def test_without_an_nvidia_driver_the_cuda_probe_does_not_import_torch():
    code = ("import sys; import pipeline.engines as e; e.NVIDIA_DEVICE_NODES = ('/nonexistent/nvidiactl',); "
            "print(e._cuda_reason()); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.splitlines()
    if sys.platform.startswith("linux"):
        assert out == ["no NVIDIA GPU driver here (none of /nonexistent/nvidiactl)", "False"]
    else:                      # elsewhere torch answers
        assert out[-1] == "True"


def test_auto_falls_back_to_torch_on_cpu_without_onnxruntime(model_and_bundle, monkeypatch, caplog):
    _, bundle = model_and_bundle
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    with caplog.at_level(logging.INFO, logger="pipeline.engines"):
        engine = load_engine(bundle, backend="auto", device="cpu")
    assert engine.name == "torch" and engine.device == "cpu"
    assert "onnxruntime: onnxruntime is not installed" in caplog.text
    assert "tensorrt: device=cpu was requested" in caplog.text
    with pytest.raises(BackendUnavailable, match="onnxruntime: onnxruntime is not installed"):
        load_engine(bundle, backend="onnxruntime")


def test_auto_order_prefers_gpu_backends_when_present(model_and_bundle, monkeypatch, nvidia_driver):
    """With CUDA reported present, tensorrt is considered first and explains a missing torch_tensorrt."""
    _, bundle = model_and_bundle
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)      # import fails as when not installed
    assert unavailable_reason("tensorrt", bundle) == "torch_tensorrt is not installed: run " \
        "scripts/install_tensorrt.sh (pip install hagview[tensorrt] matches torch 2.13 only)"
    assert unavailable_reason("torch-cuda", bundle) is None


@pytest.mark.skipif(CUDA, reason="checks the messages where CUDA is missing")
def test_explicit_unavailable_backends_explain_why(model_and_bundle, nvidia_driver):
    _, bundle = model_and_bundle
    with pytest.raises(BackendUnavailable) as info:
        load_engine(bundle, backend="tensorrt")
    assert str(info.value) == "tensorrt: CUDA is not available (torch.cuda.is_available() is False)"
    with pytest.raises(BackendUnavailable, match=r"torch: CUDA is not available"):
        load_engine(bundle, backend="torch", device="cuda")
    with pytest.raises(BackendUnavailable, match="unknown backend 'tflite'"):
        load_engine(bundle, backend="tflite")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("HAGVIEW_SLOW_TESTS"),
                    reason="torch.compile takes ~40 s on a 2-core CPU; set HAGVIEW_SLOW_TESTS=1 to run it")
def test_torch_compile_engine_matches_eager(model_and_bundle):
    _, bundle = model_and_bundle
    inputs = _inputs(2)
    compiled = load_engine(bundle, backend="torch-compile", device="cpu")
    eager = load_engine(bundle, backend="torch", device="cpu")
    assert compiled.name == "torch-compile"
    for name, value in eager.run(inputs).items():
        np.testing.assert_allclose(compiled.run(inputs)[name], value, rtol=PARITY_RTOL, atol=PARITY_ATOL)


def test_every_backend_the_clis_offer_is_one_load_engine_accepts(model_and_bundle, no_nvidia_driver):
    """One tuple of names: the --backend choices of hagview and hagview-annotate are exactly
    BACKEND_CHOICES, and load_engine runs each or says why not here (never "unknown backend")."""
    from pipeline.cli_util import ArgumentParser, add_run_options

    _, bundle = model_and_bundle
    parser = ArgumentParser(prog="t")
    add_run_options(parser)
    action = next(a for a in parser._actions if a.dest == "backend")
    assert tuple(action.choices) == engines.BACKEND_CHOICES == ("auto", *engines.BACKENDS)
    inputs = _inputs(2)
    for name in engines.BACKEND_CHOICES:
        if name == "torch-compile":
            continue                      # compiles for minutes on a CPU: see the slow test below
        try:
            engine = load_engine(bundle, backend=name, threads=1)
        except BackendUnavailable as exc:
            assert name in ("torch-cuda", "tensorrt") and "no NVIDIA GPU driver here" in str(exc)
            continue
        assert engine.run(inputs)["size_mm"].shape == (2, 1)
    cpu = load_engine(bundle, backend="torch-cpu")
    assert (cpu.name, cpu.device, cpu.precision) == ("torch", "cpu", "fp32")


CUDA_REASON = engines._cuda_reason()
needs_cuda = pytest.mark.skipif(CUDA_REASON is not None, reason=f"needs CUDA: {CUDA_REASON}")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["torch-cuda", "torch-compile"])
def test_cuda_fp16_engines_match_the_folded_onnx_model(model_and_bundle, backend):
    """FP16 on CUDA (LayerNorm in FP32, float32 at the boundary) against the folded ONNX model:
    sizes within 1e-2 mm; torch-compile on CUDA records CUDA graphs (reduce-overhead) per
    static batch size and reuses them; every batch size from 1 to 9 maps onto 1/2/4/8."""
    _, bundle = model_and_bundle
    reference = load_engine(bundle, backend="onnxruntime", threads=1)
    engine = load_engine(bundle, backend=backend, device="cuda")
    assert engine.device == f"cuda:{torch.cuda.current_device()}" and engine.precision == "fp16"
    if backend == "torch-compile":
        assert engine.compile_mode == "reduce-overhead"
    for batch in range(1, 10):
        inputs = _inputs(batch, seed=20 + batch)
        got, expected = engine.run(inputs), reference.run(inputs)
        np.testing.assert_allclose(got["size_mm"], expected["size_mm"], rtol=0, atol=1e-2)
        assert got["logits"].shape == expected["logits"].shape
    assert set(engine.buffers.allocated()) == {1, 2, 4, 8}


@pytest.mark.gpu
@needs_cuda
def test_tensorrt_engine_cuda_path_with_a_stand_in_compiler(model_and_bundle, tmp_path, monkeypatch):
    """Where TensorRT is not installed (the GPU check's machine), the TensorRT engine's own CUDA
    path still runs for real: a stand-in compiler returns the exported program, and the device
    index, stream, pinned buffers and padding are the real ones."""
    import _fake_tensorrt as fake

    _, bundle = model_and_bundle
    fake.install(monkeypatch, fake.FakeCompiler())         # the real CUDA runtime is kept
    from pipeline.engines.tensorrt_engine import TensorRTEngine
    engine = TensorRTEngine(bundle, device="cuda", precision="fp16", batch_sizes=(1, 4), cache_dir=tmp_path)
    assert engine.device == f"cuda:{torch.cuda.current_device()}"
    reference = load_engine(bundle, backend="onnxruntime", threads=1)
    for batch in (1, 3, 6):
        inputs = _inputs(batch, seed=40 + batch)
        np.testing.assert_allclose(engine.run(inputs)["size_mm"], reference.run(inputs)["size_mm"],
                                   rtol=0, atol=1e-2)
    assert engine.buffers.allocated() == {1: 5, 4: 5}
