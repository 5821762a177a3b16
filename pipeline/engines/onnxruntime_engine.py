"""ONNX Runtime engine: the CPU default (also runs external ONNX detectors)."""
from __future__ import annotations

import importlib.util
import logging

import numpy as np

from pipeline.errors import BackendUnavailable, BundleError
from pipeline.bundle import Bundle

from . import Engine

log = logging.getLogger(__name__)


def unavailable_reason(device: str | None = None) -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed: pip install onnxruntime"
    if device and device.startswith("cuda"):
        import onnxruntime as ort
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
    return None


class OnnxRuntimeEngine(Engine):
    """An InferenceSession with every graph optimisation on; `threads` sets intra-op threads."""

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, threads: int | None = None, device: str = "cpu"):
        super().__init__(bundle, device)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
        self.threads = threads
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") \
            else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(bundle.onnx_path), sess_options=options, providers=providers)
        except Exception as exc:
            raise BundleError(f"{bundle.onnx_path}: onnxruntime cannot load it "
                              f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None
        self.output_names = [o.name for o in self.session.get_outputs()]
        if not self.output_names:
            raise BackendUnavailable(f"{bundle.onnx_path}: model has no outputs")

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self.output_names, inputs)
        return dict(zip(self.output_names, results))

    def describe(self) -> str:
        threads = self.threads or "default"
        return f"onnxruntime {self.session.get_providers()[0]} (intra-op threads {threads}): {self.bundle.describe()}"
