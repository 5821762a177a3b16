"""TensorRT backend.

Real compilation tests where CUDA and torch-tensorrt exist (skipped elsewhere); on a GPU machine:
`scripts/install_tensorrt.sh && .venv/bin/python -m pytest tests/test_tensorrt.py`.

Everything around the compiler runs everywhere, CI included, with the stand-ins of
tests/_fake_tensorrt.py (a torch_tensorrt whose "engine" is the exported program itself, and
fake GPUs whose tensors live on the CPU): device index, cache files and their fallbacks, the
timing cache, progress, `auto` falling back, background builds, the lock and the buffers.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import _fake_tensorrt as fake
from _pipeline_media import tiny_detector_bundle
from pipeline.bundle import load_bundle
from pipeline.engines import BackgroundBuildEngine, load_engine
from pipeline.engines.tensorrt_build import PROGRAM_SUFFIX, ProgramCache, cache_key, unavailable_reason
from pipeline.errors import BackendUnavailable
from trainer.export.exporter import export_bundle
from trainer.models import build_model

ROOT = Path(__file__).resolve().parents[1]

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
    assert any(why in TRT_REASON for why in ("CUDA is not available", "is not installed", "does not import",
                                             "does not match torch", "is older than"))
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
    assert "building TensorRT engine 1/2 for" in caplog.text and "built" in caplog.text
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

    from pipeline.engines.tensorrt_build import typed_program

    torch.manual_seed(0)
    vit = _gated(build_model("hag_vit_tiny", streams=("rgb",), input_size=32, patch_size=16, embed_dim=32,
                             depth=2, num_heads=2, head="both")).fold_gates()
    typed = typed_program(vit, "fp16")
    norms = [m for m in typed.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 and all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    head = {id(m) for h in typed.modules() if callable(getattr(h, "output_layers", None)) for m in h.modules()}
    linears = [m for m in typed.modules() if isinstance(m, nn.Linear) and id(m) not in head]
    assert linears and all(m.weight.dtype == torch.float16 for m in linears)
    heads = [m for m in typed.modules() if isinstance(m, nn.Linear) and id(m) in head]
    assert len(heads) == 2 and all(m.weight.dtype == torch.float32 for m in heads)   # size and classifier
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        size_mm, logits = typed(x)
        expected = vit({"rgb": x})
    assert size_mm.dtype == torch.float32                       # fp32 at the program boundary
    np.testing.assert_allclose(logits.numpy(), expected["logits"].numpy(), rtol=FP16_RTOL, atol=FP16_ATOL)
    assert all(p.dtype == torch.float32 for p in vit.parameters())    # the source model is untouched


# ---------------------------------------------------------------------------------------------
# The control flow around the compiler, on the CPU with tests/_fake_tensorrt.py

# fp16 on the CPU against the fp32 model: same tolerance as the real TensorRT comparison
SIZER_SHAPE = {"rgb": 3, "mask": 3}


@pytest.fixture(scope="module")
def sizer_bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = _gated(build_model("hag_resnet18", streams=("rgb", "mask"), input_size=32, width_mult=0.125,
                               hidden=8, head="both"))
    meta = {"kind": "sizer", "input_spec": {"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3},
            "data": {"kind": "synthetic", "synthetic": True}}
    bundle = export_bundle(model, meta, tmp_path_factory.mktemp("fake-trt") / "sizer", exporter="legacy")
    return model, bundle


def _expected(model, inputs):
    with torch.no_grad():
        return {k: v.numpy() for k, v in model({k: torch.from_numpy(v) for k, v in inputs.items()}).items()}


def _engine(bundle, tmp_path, **kw):
    from pipeline.engines.tensorrt_engine import TensorRTEngine
    kw.setdefault("batch_sizes", (1, 2))
    return TensorRTEngine(bundle, cache_dir=tmp_path / "cache", **kw)


def test_device_index_is_resolved_once_and_used_everywhere(sizer_bundle, tmp_path, monkeypatch):
    """`cuda` means the current device (here 1 of 2): compile, cache key, stream, buffers and
    describe all use index 1, never a missing index or a default 0."""
    model, bundle = sizer_bundle
    gpus = fake.FakeCuda(count=2, current=1)
    compiler = fake.install(monkeypatch, fake.FakeCompiler(), gpus)
    engine = _engine(bundle, tmp_path, device="cuda", precision="fp32")
    assert engine.device == "cuda:1" and engine.torch_device == torch.device("cuda", 1)
    assert [c["gpu_id"] for c in compiler.compiles] == [1, 1]
    assert all(c["device"] == torch.device("cuda", 1) for c in compiler.compiles)
    assert set(gpus.indices) == {1}
    assert "Fake GPU 1 (cuda:1" in engine.describe()
    records = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*.json")]
    assert [r["gpu"] for r in records] == ["Fake GPU 1"] * 2
    inputs = _inputs(bundle, 2, seed=3)
    np.testing.assert_allclose(engine.run(inputs)["size_mm"], _expected(model, inputs)["size_mm"],
                               rtol=1e-5, atol=1e-5)
    gpus.indices.clear()
    assert _engine(bundle, tmp_path / "zero", device="cuda:0", precision="fp32").device == "cuda:0"
    assert set(gpus.indices) == {0} and compiler.compiles[-1]["gpu_id"] == 0
    with pytest.raises(BackendUnavailable, match=r"^tensorrt: no CUDA device 5 \(this machine has 2\)$"):
        _engine(bundle, tmp_path / "five", device="cuda:5")


def test_an_index_less_device_is_what_torch_tensorrt_rejects(sizer_bundle, tmp_path, monkeypatch):
    """The stand-in fails like torch-tensorrt 2.13 on `torch.device("cuda")`, so the test above
    would catch a regression to the index-less device."""
    from pipeline.engines.tensorrt_build import compile_program

    model, bundle = sizer_bundle
    fake.install(monkeypatch, fake.FakeCompiler(), fake.FakeCuda())
    with pytest.raises(RuntimeError, match="cuda:None"):
        compile_program(bundle.build_torch_model(), {"rgb": (1, 3, 32, 32), "mask": (1, 3, 32, 32)},
                        "fp32", torch.device("cuda"))


@pytest.mark.parametrize("explicit", [True, None], ids=["2.12-signature", "2.13-signature"])
def test_fp16_and_fp32_programs_match_the_model(sizer_bundle, tmp_path, monkeypatch, explicit):
    """FP16 (typed graph) within the fp16 tolerance, FP32 within 1e-5; `use_explicit_typing` is
    passed to 2.12 and not to 2.13, whose compile has no such argument (the stand-in raises
    TypeError on any argument its version lacks); padding and chunking keep rows in order."""
    model, bundle = sizer_bundle
    gpus = fake.FakeCuda()
    compiler = fake.install(monkeypatch, fake.FakeCompiler(explicit_typing_arg=bool(explicit)), gpus)
    for precision, tol in (("fp16", FP16_ATOL), ("fp32", 1e-5)):
        engine = _engine(bundle, tmp_path / precision, precision=precision, batch_sizes=(1, 4))
        inputs = _inputs(bundle, 6, seed=4)            # chunks of 4 and 2 (padded to 4)
        got, expected = engine.run(inputs), _expected(model, inputs)
        for name in ("size_mm", "logits"):
            assert got[name].shape == expected[name].shape and got[name].dtype == np.float32
            np.testing.assert_allclose(got[name], expected[name], rtol=tol, atol=tol)
        one = engine.run({k: v[5:] for k, v in inputs.items()})
        np.testing.assert_allclose(one["logits"], got["logits"][5:], rtol=1e-6, atol=1e-6)
    assert [c.get("use_explicit_typing") for c in compiler.compiles] == [explicit] * 4
    assert all(d == torch.float32 for c in compiler.compiles for d in c["input_dtypes"])   # fp32 boundary


@pytest.mark.parametrize("version, why", [
    ("2.12.1", "torch-tensorrt 2.12.1 does not match torch {torch} (X.Y must be equal)"),
    ("2.5.0", "torch-tensorrt 2.5.0 is older than 2.6")])
def test_a_torch_tensorrt_for_another_torch_is_refused_with_the_fix(monkeypatch, version, why):
    fake.install(monkeypatch, fake.FakeCompiler(version=version), fake.FakeCuda())
    assert unavailable_reason() == why.format(torch=torch.__version__) + ": run scripts/install_tensorrt.sh " \
        "(pip install hagview[tensorrt] matches torch 2.13 only)"


def test_pinned_buffers_are_allocated_once_per_batch_size(sizer_bundle, tmp_path, monkeypatch):
    model, bundle = sizer_bundle
    gpus = fake.FakeCuda()
    fake.install(monkeypatch, fake.FakeCompiler(), gpus)
    engine = _engine(bundle, tmp_path, precision="fp32", batch_sizes=(1, 4))
    for batch in (1, 3, 4, 2, 1, 5, 4):
        engine.run(_inputs(bundle, batch, seed=batch))
    # per size: 2 inputs + 2 outputs (size_mm, logits), no matter how many calls
    assert engine.buffers.allocated() == {1: 4, 4: 4}
    assert sorted(gpus.pinned) == sorted([(1, 3, 32, 32)] * 2 + [(1, 1), (1, 3)]
                                         + [(4, 3, 32, 32)] * 2 + [(4, 1), (4, 3)])


def test_engine_lock_runs_one_call_at_a_time(sizer_bundle, tmp_path, monkeypatch):
    """Four threads call one engine; the program never runs twice at once and every thread
    gets its own rows (the shared pinned buffers are not overwritten under it)."""
    model, bundle = sizer_bundle
    compiler = fake.install(monkeypatch, fake.FakeCompiler(hold_s=0.01), fake.FakeCuda())
    engine = _engine(bundle, tmp_path, precision="fp32")
    inputs = {i: _inputs(bundle, 2, seed=10 + i) for i in range(4)}
    alone = {i: engine.run(x)["size_mm"] for i, x in inputs.items()}
    results, errors = {}, []

    def worker(i):
        try:
            for _ in range(5):
                results.setdefault(i, []).append(engine.run(inputs[i])["size_mm"])
        except Exception as exc:     # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    probe = next(p for p in compiler.probes if p.calls > 1)
    assert probe.calls == 4 + 20 and probe.max_active == 1
    for i, runs in results.items():
        assert len(runs) == 5 and all(np.array_equal(r, alone[i]) for r in runs)


def test_cache_files_timing_cache_and_progress(sizer_bundle, tmp_path, monkeypatch, caplog):
    """Programs are `<key>.pt2` with a `<key>.json` record (no `.ep`: torch 2.13 warns about it),
    every build gets the same timing cache beside them, and each build says
    "building TensorRT engine i/n for <bundle>" with an estimate from the previous build."""
    _, bundle = sizer_bundle
    compiler = fake.install(monkeypatch, fake.FakeCompiler(), fake.FakeCuda())
    lines = []
    with caplog.at_level(logging.INFO):
        _engine(bundle, tmp_path, precision="fp32", batch_sizes=(1, 2, 4), progress=lines.append)
    cache = tmp_path / "cache"
    assert sorted(p.suffix for p in cache.iterdir() if not p.name.startswith("timing-")) == \
        [".json"] * 3 + [PROGRAM_SUFFIX] * 3
    assert PROGRAM_SUFFIX == ".pt2" and "Expect archive file to be a file ending in .pt2" not in caplog.text
    assert "Unable to load package" not in caplog.text
    timing = {c["timing_cache_path"] for c in compiler.compiles}
    assert len(timing) == 1 and Path(timing.pop()).parent == cache
    assert [c["timing_cache_existed"] for c in compiler.compiles] == [False, True, True]
    assert len(lines) == 3 and all(f"building TensorRT engine {i}/3 for sizer (fp32, batch {b})" in line
                                   for i, (b, line) in enumerate(zip((1, 2, 4), lines), 1))
    assert "first build on this GPU" in lines[0] and lines[1].endswith(" s") and "~" in lines[1]
    # a second engine finds everything: no builds, no progress
    again = []
    _engine(bundle, tmp_path, precision="fp32", batch_sizes=(1, 2, 4), progress=again.append)
    assert again == [] and len(compiler.compiles) == 3


def test_a_torn_cache_file_is_rebuilt(sizer_bundle, tmp_path, monkeypatch, caplog):
    model, bundle = sizer_bundle
    compiler = fake.install(monkeypatch, fake.FakeCompiler(), fake.FakeCuda())
    first = ProgramCache(bundle, precision="fp32", device="cuda", cache_dir=tmp_path)
    first.load_or_build(2)
    path = first.path_for(2)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])     # a crash mid-copy, a full disk
    again = ProgramCache(bundle, precision="fp32", device="cuda", cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        program = again.load_or_build(2)
    assert again.builds == 1 and len(compiler.compiles) == 2
    assert f"cached program {path} unusable" in caplog.text and "rebuilding" in caplog.text
    inputs = _inputs(bundle, 2, seed=5)
    with torch.no_grad():
        got = program(*[torch.from_numpy(inputs[n]) for n in bundle.input_names])
    np.testing.assert_allclose(got[0].numpy(), _expected(model, inputs)["size_mm"], rtol=1e-5, atol=1e-5)
    assert ProgramCache(bundle, precision="fp32", device="cuda", cache_dir=tmp_path).missing([2]) == []


def test_a_fresh_process_loads_the_cache_without_building(sizer_bundle, tmp_path, monkeypatch):
    model, bundle = sizer_bundle
    fake.install(monkeypatch, fake.FakeCompiler(), fake.FakeCuda())
    engine = _engine(bundle, tmp_path, precision="fp16", device="cuda:1")
    inputs = _inputs(bundle, 2, seed=6)
    np.save(tmp_path / "rgb.npy", inputs["rgb"])
    np.save(tmp_path / "mask.npy", inputs["mask"])
    expected = engine.run(inputs)["size_mm"]
    code = f"""
import json, sys
import numpy as np
sys.path[:0] = [{str(ROOT / 'tests')!r}, {str(ROOT)!r}]
import _fake_tensorrt as fake
compiler = fake.install_globally(fake.FakeCompiler(), fake.FakeCuda())
from pipeline.engines import load_engine
engine = load_engine({str(bundle.path)!r}, backend="tensorrt", device="cuda:1", precision="fp16",
                     batch_sizes=(1, 2), cache_dir={str(tmp_path / 'cache')!r})
out = engine.run({{"rgb": np.load({str(tmp_path / 'rgb.npy')!r}), "mask": np.load({str(tmp_path / 'mask.npy')!r})}})
print(json.dumps({{"builds": engine.cache.builds, "compiles": len(compiler.compiles),
                   "loads": len(compiler.loads), "size_mm": out["size_mm"].tolist()}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["builds"], result["compiles"], result["loads"]) == (0, 0, 2)
    np.testing.assert_array_equal(np.array(result["size_mm"], dtype=np.float32), expected)


def test_read_only_bundle_directory_caches_in_the_user_cache(sizer_bundle, tmp_path, monkeypatch, caplog):
    """Where `BUNDLE/model.trt-cache` cannot be made (here a file blocks it, as a read-only
    install would: this test runs as root, which permissions do not stop), programs go to
    `$HAGVIEW_CACHE/tensorrt`, and a later engine finds them there."""
    _, bundle = sizer_bundle
    copy = tmp_path / "installed" / "sizer"
    shutil.copytree(bundle.path, copy)
    (copy / "model.trt-cache").write_text("not a directory")
    monkeypatch.setenv("HAGVIEW_CACHE", str(tmp_path / "user-cache"))
    compiler = fake.install(monkeypatch, fake.FakeCompiler(), fake.FakeCuda())
    from pipeline.engines.tensorrt_engine import TensorRTEngine
    with caplog.at_level(logging.INFO):
        engine = TensorRTEngine(load_bundle(copy), precision="fp32", batch_sizes=(1,))
    assert engine.cache.cache_dir == tmp_path / "user-cache" / "tensorrt"
    assert "is not writable; caching programs in" in caplog.text
    assert len(list((tmp_path / "user-cache" / "tensorrt").glob("*.pt2"))) == 1
    TensorRTEngine(load_bundle(copy), precision="fp32", batch_sizes=(1,))
    assert len(compiler.compiles) == 1
    if os.geteuid() != 0:            # where permissions apply, a read-only directory does the same
        (copy / "model.trt-cache").unlink()
        copy.chmod(0o555)
        try:
            assert ProgramCache(load_bundle(copy), device="cuda").cache_dir == tmp_path / "user-cache" / "tensorrt"
        finally:
            copy.chmod(0o755)
    monkeypatch.delenv("HAGVIEW_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ProgramCache(load_bundle(copy), device="cuda").cache_dir == \
        tmp_path / "home" / ".cache" / "hagview" / "tensorrt"


def test_detector_bundle_compiles_and_matches_onnxruntime(tmp_path_factory, tmp_path, monkeypatch):
    bundle = load_bundle(tiny_detector_bundle(tmp_path_factory))
    fake.install(monkeypatch, fake.FakeCompiler(), fake.FakeCuda())
    engine = _engine(bundle, tmp_path, precision="fp32", batch_sizes=(1, 2))
    reference = load_engine(bundle, backend="onnxruntime", threads=1)
    inputs = _inputs(bundle, 3, seed=7)
    got, expected = engine.run(inputs), reference.run(inputs)
    assert set(got) == set(bundle.output_names) == set(expected)
    for name in bundle.output_names:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-4)


WHEEL_ERROR = "libnvinfer.so.10: cannot open shared object file: No such file or directory"


@pytest.mark.parametrize("failure", ["import", "build", "oom"])
def test_auto_falls_back_to_torch_cuda_when_tensorrt_fails(sizer_bundle, tmp_path, monkeypatch, caplog, failure):
    """A wheel that does not import, an engine build that fails, CUDA out of memory: `auto`
    goes on to torch on CUDA, with one line saying why."""
    model, bundle = sizer_bundle
    gpus = fake.FakeCuda()
    error = {"build": RuntimeError("[TRT] [E] IBuilder::buildSerializedNetwork: Error Code 10: Could not "
                                   "find any implementation for node conv1\nmore detail"),
             "oom": torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nstack")}.get(failure)
    fake.install(monkeypatch, fake.FakeCompiler(fail=error), gpus)
    if failure == "import":
        monkeypatch.delitem(sys.modules, "torch_tensorrt")
        monkeypatch.setattr(sys, "meta_path", [fake.BrokenWheelFinder(WHEEL_ERROR), *sys.meta_path])
    with caplog.at_level(logging.INFO, logger="pipeline.engines"):
        engine = load_engine(bundle, backend="auto", background_build=False, cache_dir=tmp_path / "cache",
                             batch_sizes=(1, 2), precision="fp32")
    assert engine.name == "torch" and engine.device == "cuda:0" and engine.precision == "fp32"
    reason = {"import": f"tensorrt: torch_tensorrt does not import (ImportError: {WHEEL_ERROR})",
              "build": "tensorrt: RuntimeError: [TRT] [E] IBuilder::buildSerializedNetwork: Error Code 10: "
                       "Could not find any implementation for node conv1",
              "oom": "tensorrt: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"}[failure]
    assert engine.skipped[0].startswith(reason) and all("\n" not in line for line in engine.skipped)
    assert "picked torch (skipped tensorrt: " in caplog.text
    assert gpus.releases == (0 if failure == "import" else 1)
    inputs = _inputs(bundle, 3, seed=8)
    np.testing.assert_allclose(engine.run(inputs)["size_mm"], _expected(model, inputs)["size_mm"],
                               rtol=1e-5, atol=1e-5)


def test_auto_falls_back_to_onnxruntime_when_cuda_is_out_of_memory(sizer_bundle, tmp_path, monkeypatch):
    _, bundle = sizer_bundle
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    fake.install(monkeypatch, fake.FakeCompiler(fail=oom), fake.FakeCuda(oom_on_stream=True))
    engine = load_engine(bundle, backend="auto", background_build=False, cache_dir=tmp_path / "cache")
    assert engine.name == "onnxruntime"
    assert [line.split(":")[0] for line in engine.skipped] == ["tensorrt", "torch-cuda"]
    assert engine.skipped[1] == "torch-cuda: OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB"
    with pytest.raises(BackendUnavailable, match="does not import"):
        monkeypatch.delitem(sys.modules, "torch_tensorrt")
        monkeypatch.setattr(sys, "meta_path", [fake.BrokenWheelFinder(), *sys.meta_path])
        load_engine(bundle, backend="tensorrt")


def test_auto_serves_with_onnxruntime_while_tensorrt_builds_then_switches(sizer_bundle, tmp_path, monkeypatch,
                                                                         caplog):
    model, bundle = sizer_bundle
    gate = threading.Event()
    compiler = fake.install(monkeypatch, fake.FakeCompiler(gate=gate), fake.FakeCuda())
    lines = []
    with caplog.at_level(logging.INFO, logger="pipeline.engines"):
        engine = load_engine(bundle, backend="auto", cache_dir=tmp_path / "cache", batch_sizes=(1, 2),
                             precision="fp32", progress=lines.append)
        assert isinstance(engine, BackgroundBuildEngine)
        assert engine.name == "onnxruntime" and not engine.ready.is_set()
        inputs = _inputs(bundle, 2, seed=9)
        served = engine.run(inputs)                      # frames are served while the build waits
        assert "building in the background" in engine.describe()
        gate.set()
        assert engine.wait(120)
    assert engine.name == "tensorrt" and engine.failures == [] and len(compiler.compiles) == 2
    assert "serving with onnxruntime while tensorrt then torch-cuda is built in the background" in caplog.text
    assert "tensorrt is ready; switched from onnxruntime" in caplog.text
    assert [line.split(" (")[0] for line in lines] == ["building TensorRT engine 1/2 for sizer",
                                                       "building TensorRT engine 2/2 for sizer"]
    switched = engine.run(inputs)
    np.testing.assert_allclose(switched["size_mm"], served["size_mm"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(switched["size_mm"], _expected(model, inputs)["size_mm"], rtol=1e-5, atol=1e-5)
    # next start: the cache is warm, so auto builds nothing and returns the TensorRT engine at once
    warm = load_engine(bundle, backend="auto", cache_dir=tmp_path / "cache", batch_sizes=(1, 2), precision="fp32")
    assert warm.name == "tensorrt" and not isinstance(warm, BackgroundBuildEngine)


def test_a_failed_background_build_switches_to_torch_cuda(sizer_bundle, tmp_path, monkeypatch, caplog):
    _, bundle = sizer_bundle
    fake.install(monkeypatch, fake.FakeCompiler(fail=RuntimeError("engine build failed")), fake.FakeCuda())
    with caplog.at_level(logging.WARNING, logger="pipeline.engines"):
        engine = load_engine(bundle, backend="auto", cache_dir=tmp_path / "cache", precision="fp32")
        assert engine.wait(120)
    assert engine.name == "torch" and engine.device == "cuda:0"
    assert engine.failures == ["tensorrt: RuntimeError: engine build failed"]
    assert "building tensorrt in the background failed (RuntimeError: engine build failed); still serving " \
           "with onnxruntime" in caplog.text


def test_hagview_export_prebuilds_the_programs_with_progress(tmp_path, monkeypatch, capsys):
    from trainer.export.cli import main as export_main
    from trainer.models import save_checkpoint

    torch.manual_seed(1)
    model = build_model("hag_resnet18", streams=("rgb", "mask"), input_size=32, width_mult=0.125, hidden=8)
    spec = {"streams": ["rgb", "mask"], "size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    save_checkpoint(model, tmp_path / "best.pt", {"kind": "sizer", "input_spec": spec,
                                                  "data": {"kind": "synthetic", "synthetic": True}})
    compiler = fake.install(monkeypatch, fake.FakeCompiler(), fake.FakeCuda(count=2, current=0))
    out = tmp_path / "bundle"
    assert export_main([str(tmp_path / "best.pt"), "--out", str(out), "--exporter", "legacy", "--tensorrt",
                        "--trt-batch-sizes", "1,2", "--trt-precision", "fp32", "--trt-device", "cuda:1"]) == 0
    printed = capsys.readouterr().out
    assert "hagview-export: building TensorRT engine 1/2 for bundle (fp32, batch 1)" in printed
    assert "hagview-export: building TensorRT engine 2/2 for bundle (fp32, batch 2)" in printed
    programs = sorted((out / "model.trt-cache").glob("*.pt2"))
    assert len(programs) == 2 and all(f"hagview-export: tensorrt program {p}" in printed for p in programs)
    assert [c["gpu_id"] for c in compiler.compiles] == [1, 1]
