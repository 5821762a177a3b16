#!/usr/bin/env python
"""Inference benchmark: folded vs unfolded HAG ResNet-18 on every available backend.

For each input size (384 and the demo size) it builds a 2-stream ResNet-18 (width 1.0) with
random weights and random gate values, exports it to a bundle (gates folded), and times:
  unfolded-eager      the gated model in eager PyTorch (the baseline)
  unfolded-onnx       the gated model exported to ONNX, in onnxruntime (for comparison)
  folded-<backend>    the bundle on each available backend (onnxruntime, torch, torch-compile
                      with --compile, torch on CUDA and tensorrt where present)
at batch 1 and batch 8: median and p99 latency, throughput. It also counts the model's
conv/linear multiply-accumulates analytically and measures this CPU's practical peak FP32 rate
with a large sgemm in the same run, to report the fraction of peak each backend reaches.
Results are printed as a table and saved as JSON under bench-results/.

With `--device cuda` it times the committed demo sizer and detector bundles on the GPU instead:
batch 1, 4 and 8; torch eager FP32, eager FP16 (the folded model, LayerNorm in FP32) and
torch.compile FP16 with CUDA graphs ("reduce-overhead": one graph per static batch size,
compiled once and reused); p50/p99 of the model call from CUDA events (inputs already on the
GPU), p50/p99 of the serving engines (numpy in and out, pinned copies) by wall clock; FP16
parity with the folded ONNX model in onnxruntime (sizes within 1e-2 mm); and the offline
annotation rate of a 1080p25 clip with `hagview-annotate --backend torch-cuda`.
`--smoke` runs the same code on the CPU with few repeats (the GPU check's dry run).

  .venv/bin/python scripts/bench_inference.py                # ~3-5 minutes on 2 quiet cores
  .venv/bin/python scripts/bench_inference.py --sizes 160 --repeats 10 --repeats-large 3
  python3 scripts/bench_inference.py --device cuda --out "$OUT"   # ~3 minutes on an H100
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from trainer.export.exporter import export_bundle  # noqa: E402
from pipeline.fsutil import write_json_atomic  # noqa: E402
from trainer.export.onnx import example_inputs, export_onnx, onnx_session  # noqa: E402
from trainer.models import build_model  # noqa: E402
from pipeline.engines import load_engine, unavailable_reason  # noqa: E402

log = logging.getLogger("bench_inference")


def count_macs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """Multiply-accumulates of every Conv2d and Linear for one forward pass of `inputs`.

    Computed from each layer's output shape and weight shape (out elements x kernel volume),
    captured with forward hooks during a single batch-1 pass.
    """
    total = 0

    def conv_hook(module, _inputs, output):
        nonlocal total
        kernel = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * kernel

    def linear_hook(module, _inputs, output):
        nonlocal total
        total += output.numel() * module.in_features

    handles = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(inputs)
    for handle in handles:
        handle.remove()
    return total


def _onnxruntime_matmul(n: int, threads: int):
    """A one-node ONNX MatMul in onnxruntime: MLAS, the GEMM library that runs the models."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from trainer.export.onnx import onnx_session

    weight = numpy_helper.from_array(np.random.default_rng(1).standard_normal((n, n), dtype=np.float32), "b")
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "sgemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sgemm.onnx"
        onnx.save(model, str(path))
        session = onnx_session(path, threads=threads)
    return lambda a: session.run(None, {"a": a})


def measure_peak_gflops(threads: int, seconds: float = 4.0, n: int = 2048) -> dict:
    """Best observed FP32 sgemm rate on this machine, in GFLOP/s: the best single n x n matmul
    of torch.mm, numpy.matmul and onnxruntime's MatMul (MLAS). The libraries pick different
    kernels (MKL and OpenBLAS may not use AVX-512 on AMD CPUs; MLAS does), so the best of
    them is taken as the practical peak. torch and onnxruntime use `threads` threads; numpy
    uses its own thread pool."""
    a32 = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    candidates = (("torch.mm", lambda a: torch.mm(a, a), torch.from_numpy(a32)),
                  ("numpy.matmul", lambda a: np.matmul(a, a), a32),
                  ("onnxruntime.MatMul", _onnxruntime_matmul(n, threads), a32))
    results = {}
    for name, matmul, a in candidates:
        matmul(a)
        best = float("inf")
        deadline = time.perf_counter() + seconds / len(candidates)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            matmul(a)
            best = min(best, time.perf_counter() - start)
        results[name] = 2 * n ** 3 / best / 1e9
    return {"gflops": max(results.values()), "by_library": results, "matrix": n, "threads": threads,
            "method": f"best single {n}x{n} float32 matmul of torch, numpy and onnxruntime "
                      f"over {seconds:.0f} s (measured in this run, not a datasheet figure)"}


def time_interleaved(calls: dict, batch: int, repeats: int, warmup: int,
                     budget_s: float = float("inf")) -> dict[str, dict]:
    """Time every call up to `repeats` times, round-robin (rotating the order each round), so
    that load from other processes on a shared machine falls on all configurations alike.
    Fewer rounds (at least 3) are run when the rounds would take longer than `budget_s`."""
    round_s = 0.0
    for call in calls.values():
        for _ in range(max(1, warmup)):
            start = time.perf_counter()
            call()
        round_s += time.perf_counter() - start
    repeats = max(3, min(repeats, int(budget_s / max(round_s, 1e-9))))
    labels = list(calls)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for round_index in range(repeats):
        shift = round_index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            start = time.perf_counter()
            calls[label]()
            times[label].append(time.perf_counter() - start)
    stats = {}
    for label, values in times.items():
        ms = np.array(values) * 1e3
        stats[label] = {"batch": batch, "repeats": repeats, "median_ms": float(np.median(ms)),
                        "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
                        "throughput_per_s": batch * repeats / float(np.sum(values))}
    return stats


def bench_size(size: int, args, workdir: Path) -> dict:
    torch.manual_seed(0)
    model = build_model("hag_resnet18", streams=("rgb", "mask"), input_size=size, width_mult=1.0,
                        head="regression", gates=True).eval()
    with torch.no_grad():           # trained gates are not at their initial value
        for gate in model.gate_parameters():
            gate.normal_(0.0, 1.5)
    one = example_inputs(model.input_names, size, batch=1)
    macs = count_macs(model.fold_gates(), one)
    log.info("size %d: %.2f GMAC per sample; exporting bundle and unfolded ONNX", size, macs / 1e9)
    metadata = {"kind": "sizer", "input_spec": {"size": size, "mean": [0.485, 0.456, 0.406],
                                                "std": [0.229, 0.224, 0.225]},
                "data": {"kind": "synthetic", "synthetic": True}}
    bundle = export_bundle(model, metadata, workdir / f"bundle-{size}")
    unfolded_onnx = export_onnx(model, workdir / f"unfolded-{size}.onnx", one)

    configs = {}
    threads = args.threads
    torch.set_num_threads(threads)
    configs["unfolded-eager"] = lambda x: model({k: torch.from_numpy(v) for k, v in x.items()})
    session = onnx_session(unfolded_onnx, threads=threads)
    configs["unfolded-onnx"] = lambda x: session.run(None, x)
    skipped = {}
    backends = [("onnxruntime", {}), ("torch", {"device": "cpu"})]
    if args.compile:
        backends.append(("torch-compile", {"device": "cpu"}))
    backends += [("torch", {"device": "cuda"}), ("tensorrt", {})]
    for backend, options in backends:
        label = f"folded-{backend}" + ("-cuda" if options.get("device") == "cuda" else "")
        reason = unavailable_reason(backend, bundle, options.get("device"))
        if reason:
            skipped[label] = reason
            continue
        engine = load_engine(bundle, backend=backend, threads=threads, **options)
        configs[label] = engine.run

    rows = []
    with torch.inference_mode():
        for batch in (1, 8):
            inputs = {k: v.numpy() for k, v in example_inputs(model.input_names, size, batch=batch, seed=2).items()}
            repeats = args.repeats if (batch == 1 or size <= 256) else args.repeats_large
            calls = {label: (lambda run=run: run(inputs)) for label, run in configs.items()}
            timed = time_interleaved(calls, batch, repeats, args.warmup if batch == 1 else 1, args.budget_s)
            for label, stats in timed.items():
                achieved = 2 * macs * stats["throughput_per_s"] / 1e9
                stats.update(config=label, size=size, achieved_gflops=achieved)
                rows.append(stats)
                log.info("size %d batch %d %-22s median %8.2f ms  p99 %8.2f ms  %7.1f /s", size, batch, label,
                         stats["median_ms"], stats["p99_ms"], stats["throughput_per_s"])
    by = {(r["config"], r["batch"]): r for r in rows}
    ratio = by[("unfolded-eager", 1)]["median_ms"] / by[("folded-onnxruntime", 1)]["median_ms"]
    return {"size": size, "streams": 2, "width_mult": 1.0, "gmac_per_sample": macs / 1e9,
            "gflop_per_sample": 2 * macs / 1e9, "rows": rows, "skipped": skipped,
            "speedup_folded_onnxruntime_vs_unfolded_eager_batch1": ratio,
            "target_speedup": 1.4, "meets_target": ratio >= 1.4}


def add_peak_fractions(result: dict, peak_gflops: float) -> None:
    for row in result["rows"]:
        row["fraction_of_peak"] = row["achieved_gflops"] / peak_gflops
    best = max(result["rows"], key=lambda r: r["fraction_of_peak"])
    result["best"] = {"config": best["config"], "batch": best["batch"],
                      "fraction_of_peak": best["fraction_of_peak"], "achieved_gflops": best["achieved_gflops"]}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_table(report: dict) -> None:
    print(f"\nCPU: {report['machine']['cpu']} ({report['machine']['cpu_count']} logical cores, "
          f"{report['threads']} threads); measured sgemm peak {report['peak']['gflops']:.1f} GFLOP/s")
    header = f"{'size':>5} {'batch':>5} {'config':<24} {'median ms':>10} {'p99 ms':>10} {'items/s':>9} {'% peak':>7}"
    for result in report["results"]:
        print(f"\nResNet-18, 2 streams, {result['size']}x{result['size']}: "
              f"{result['gflop_per_sample']:.2f} GFLOP per sample")
        print(header)
        for r in result["rows"]:
            print(f"{r['size']:>5} {r['batch']:>5} {r['config']:<24} {r['median_ms']:>10.2f} {r['p99_ms']:>10.2f} "
                  f"{r['throughput_per_s']:>9.1f} {100 * r['fraction_of_peak']:>6.1f}%")
        for label, reason in result["skipped"].items():
            print(f"{'':>11} {label:<24} skipped: {reason}")
        ratio = result["speedup_folded_onnxruntime_vs_unfolded_eager_batch1"]
        print(f"folded onnxruntime vs unfolded eager, batch 1: {ratio:.2f}x "
              f"(target >= 1.4x: {'met' if ratio >= 1.4 else 'NOT met'}); best: {result['best']['config']} "
              f"batch {result['best']['batch']} at {100 * result['best']['fraction_of_peak']:.1f}% of measured peak")


# ---------------------------------------------------------------------------------------------
# --device cuda

CUDA_BATCHES = (1, 4, 8)
PARITY_MM = 1e-2


def _percentiles(values_ms) -> dict:
    ms = np.asarray(values_ms, dtype=np.float64)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "repeats": int(ms.size)}


def time_device_calls(call, repeats: int, warmup: int, device) -> dict:
    """Latency of `call()` on the GPU from CUDA events around each call (no host sync inside
    the timed span beyond the end event); on the CPU (--smoke) by wall clock."""
    for _ in range(warmup):
        call()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1e3)
    return _percentiles(times)


def time_host_calls(call, repeats: int, warmup: int) -> dict:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    return _percentiles(times)


def bench_bundle_cuda(bundle_path: Path, device, args) -> dict:
    from pipeline.bundle import load_bundle
    from pipeline.engines.tensorrt_build import typed_program

    bundle = load_bundle(bundle_path)
    base = bundle.build_torch_model(device="cpu")
    variants = {"eager-fp32": typed_program(base, "fp32").to(device),
                "eager-fp16": typed_program(base, "fp16").to(device)}
    if not args.smoke:       # on a CPU it compiles for minutes and proves nothing about CUDA graphs
        variants["compile-fp16-cudagraphs"] = torch.compile(variants["eager-fp16"], mode=args.compile_mode,
                                                            dynamic=False)
    rows = []
    rng = np.random.default_rng(0)
    batches = (1, 4) if args.smoke else CUDA_BATCHES
    for batch in batches:
        host = {n: rng.standard_normal(bundle.example_shape(batch, n), dtype=np.float32) for n in bundle.input_names}
        on_device = [torch.from_numpy(host[n]).to(device) for n in bundle.input_names]
        for label, program in variants.items():
            started = time.perf_counter()
            with torch.inference_mode():
                program(*on_device)              # first call: compiles / records the graph for this shape
            first_s = time.perf_counter() - started

            def call(program=program):
                with torch.inference_mode():
                    return program(*on_device)
            stats = time_device_calls(call, args.cuda_repeats, args.cuda_warmup, device)
            rows.append({"bundle": bundle.kind, "config": label, "batch": batch,
                         "timer": "cuda events" if device.type == "cuda" else "wall clock",
                         "first_call_s": round(first_s, 2), **stats})
            log.info("%s batch %d %-24s p50 %7.3f ms  p99 %7.3f ms (first call %.1f s)", bundle.kind, batch, label,
                     stats["p50_ms"], stats["p99_ms"], first_s)
    # the serving engines as the pipeline calls them: numpy in, numpy out
    reference = load_engine(bundle, backend="onnxruntime", threads=args.threads)
    engine_device = str(device) if device.type == "cuda" else "cpu"
    # (the torch-compile engine is the compiled program above behind the same staging; its
    # compilation per batch size would double the run time, and tests/test_engines.py checks it)
    made = [load_engine(bundle, backend="torch", device=engine_device)]
    engines = {f"engine {e.name} {e.precision} ({e.device})": e for e in made}
    parity = {}
    for batch in batches:
        host = {n: rng.standard_normal(bundle.example_shape(batch, n), dtype=np.float32) for n in bundle.input_names}
        expected = reference.run(host)
        for label, engine in engines.items():
            got = engine.run(host)
            for name in bundle.output_names:
                err = float(np.max(np.abs(got[name] - expected[name])))
                parity[f"{label} {name}"] = max(parity.get(f"{label} {name}", 0.0), err)
            stats = time_host_calls(lambda engine=engine: engine.run(host), args.cuda_repeats, args.cuda_warmup)
            rows.append({"bundle": bundle.kind, "config": label, "batch": batch, "timer": "wall clock",
                         "precision": getattr(engine, "precision", None), **stats})
    checks = {}
    if "size_mm" in bundle.output_names:
        worst = max(v for k, v in parity.items() if k.endswith(" size_mm"))
        checks["fp16_parity_size_mm"] = {"max_abs_mm": worst, "bound_mm": PARITY_MM, "ok": worst <= PARITY_MM}
    return {"bundle": str(bundle_path), "kind": bundle.kind, "input_size": list(bundle.input_size),
            "describe": bundle.describe(), "rows": rows, "parity_max_abs_vs_onnx": parity, "checks": checks}


def make_clip(path: Path, seconds: float, size: tuple[int, int], fps: float = 25.0) -> int:
    """A `size` H.264 clip of the demo generator's frames (scaled up), `seconds` long."""
    import cv2

    from pipeline.sources.demo import DemoSource
    from pipeline.videowriter import H264Writer

    frames = int(round(seconds * fps))
    with DemoSource(paced=False, loop=True, seed=3) as source, H264Writer(path, fps=fps, size=size, crf=20) as writer:
        for i in range(frames):
            frame = source.read()
            writer.write(cv2.resize(frame.image, size, interpolation=cv2.INTER_LINEAR), i / fps)
    return frames


def bench_annotate(args, workdir: Path, backend: str) -> dict:
    import json
    import subprocess

    size = (1920, 1080) if not args.smoke else (640, 360)
    clip = workdir / "clip-1080p25.mp4"
    frames = make_clip(clip, args.annotate_seconds, size)
    out = workdir / "annotated"
    command = [sys.executable, "-m", "pipeline.annotate", str(clip), "--out", str(out), "--backend", backend]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"ok": False, "command": " ".join(command), "error": (done.stderr or done.stdout).strip()[-800:]}
    run = json.loads((out / clip.stem / "run.json").read_text())
    seconds = float(run.get("seconds") or wall)
    fps = frames / seconds
    return {"ok": True, "command": " ".join(command), "frames": frames, "size": list(size),
            "video_seconds": args.annotate_seconds, "processing_s": seconds, "wall_s_with_start": round(wall, 2),
            "fps": fps, "x_real_time": fps / 25.0, "backend": run.get("backend") or run.get("models", {}).get("backend")}


def main_cuda(args) -> int:
    import onnxruntime

    device = torch.device("cuda", torch.cuda.current_device()) if not args.smoke else torch.device("cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_inference: error: --device cuda but torch.cuda.is_available() is False")
    if args.smoke:
        args.cuda_repeats, args.cuda_warmup, args.annotate_seconds = 3, 1, min(args.annotate_seconds, 1.0)
    started = time.perf_counter()
    assets = ROOT / "pipeline" / "assets" / "bundles"
    results = [bench_bundle_cuda(assets / name, device, args) for name in ("sizer", "detector")]
    with tempfile.TemporaryDirectory(prefix="hagview-bench-cuda-") as tmp:
        annotate = bench_annotate(args, Path(tmp), "torch-cuda" if device.type == "cuda" else "torch-cpu")
    report = {"benchmark": "inference-cuda", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "smoke": args.smoke, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "compile_mode": args.compile_mode,
              "results": results, "annotate": annotate, "runtime_s": round(time.perf_counter() - started, 1)}
    lines = [f"device: {report['device']} (torch {report['torch']}, onnxruntime {report['onnxruntime']})"]
    header = f"{'bundle':<9} {'batch':>5} {'config':<36} {'timer':<11} {'p50 ms':>8} {'p99 ms':>8}"
    for result in results:
        lines += ["", f"{result['kind']}: {result['describe']}", header]
        for r in sorted(result["rows"], key=lambda r: (r["batch"], r["timer"], r["config"])):
            lines.append(f"{r['bundle']:<9} {r['batch']:>5} {r['config']:<36} {r['timer']:<11} "
                         f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f}")
        for name, value in result["parity_max_abs_vs_onnx"].items():
            lines.append(f"  parity vs folded ONNX (onnxruntime), max abs: {name} {value:.2e}")
        for name, check in result["checks"].items():
            lines.append(f"  {name}: {check['max_abs_mm']:.2e} mm (bound {check['bound_mm']} mm): "
                         f"{'ok' if check['ok'] else 'FAILED'}")
    if annotate["ok"]:
        lines += ["", f"hagview-annotate {annotate['size'][0]}x{annotate['size'][1]}@25, {annotate['frames']} frames, "
                      f"backend {annotate['backend']}: {annotate['fps']:.1f} fps = {annotate['x_real_time']:.1f}x "
                      f"real time ({annotate['processing_s']:.1f} s; {annotate['wall_s_with_start']:.1f} s with start-up)"]
    else:
        lines += ["", f"hagview-annotate FAILED: {annotate['error']}"]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    stamp = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    write_json_atomic(out / f"inference-cuda-{stamp}.json", report)
    (out / f"inference-cuda-{stamp}.txt").write_text(text + "\n")
    print(f"\nsaved {out}/inference-cuda-{stamp}.json and .txt (runtime {report['runtime_s']:.0f} s)")
    failed = not annotate["ok"] or not all(c["ok"] for r in results for c in r["checks"].values())
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu: the folded-vs-unfolded CPU benchmark; cuda: the GPU latency table")
    parser.add_argument("--smoke", action="store_true", help="with --device cuda: run it on the CPU, few repeats")
    parser.add_argument("--compile-mode", default="reduce-overhead",
                        help="torch.compile mode on CUDA (reduce-overhead: CUDA graphs; max-autotune: also "
                             "tunes kernels, minutes per shape)")
    parser.add_argument("--cuda-repeats", type=int, default=200)
    parser.add_argument("--cuda-warmup", type=int, default=20)
    parser.add_argument("--annotate-seconds", type=float, default=12.0, help="length of the 1080p25 clip")
    parser.add_argument("--sizes", default="384,160", help="input sizes (default: 384 and the demo size 160)")
    parser.add_argument("--demo-size", type=int, default=None, help="replace the second size (the demo sizer's)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per config (batch 1, small sizes)")
    parser.add_argument("--repeats-large", type=int, default=4, help="timed calls at batch 8 for sizes > 256")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=25.0,
                        help="time budget per (size, batch) table; fewer repeats (>= 3) when exceeded")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compilation)")
    parser.add_argument("--out", default=str(ROOT / "bench-results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("trainer.export.exporter", "pipeline.engines"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.device == "cuda":
        return main_cuda(args)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.demo_size:
        sizes = [sizes[0], args.demo_size]
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    # measured before, between and after the sizes; the best counts, so that load from other
    # processes (which lowers a measurement, never raises it) matters less
    measurements = [measure_peak_gflops(args.threads)]
    results = []
    with tempfile.TemporaryDirectory(prefix="hagview-bench-") as tmp:
        for size in sizes:
            results.append(bench_size(size, args, Path(tmp)))
            measurements.append(measure_peak_gflops(args.threads))
    peak = max(measurements, key=lambda p: p["gflops"])
    peak["measurements_gflops"] = [m["gflops"] for m in measurements]
    log.info("measured FP32 sgemm peak: %.1f GFLOP/s", peak["gflops"])
    for result in results:
        add_peak_fractions(result, peak["gflops"])
    import onnxruntime
    report = {
        "benchmark": "inference", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "threads": args.threads, "peak": peak, "results": results,
        "note": "other processes may share this CPU; re-run on a quiet machine for reference figures",
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    path = Path(args.out) / f"inference-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    write_json_atomic(path, report)
    print_table(report)
    print(f"\nsaved {path} (runtime {report['runtime_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
