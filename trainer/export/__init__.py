"""Export of trained models: gate folding is the model's (`fold_gates`); this package writes
the ONNX graph, the bundle directory and its manifest, and validates bundles when loaded.

Heavy pieces (onnx, torch.onnx, TensorRT) are imported by the submodules that use them.
"""
from pipeline.bundle import (MANIFEST_NAME, ONNX_NAME, SCHEMA_VERSION, WEIGHTS_NAME, Bundle, load_bundle,
                     sha256_file)


def export_bundle(*args, **kwargs):
    """See trainer.export.exporter.export_bundle (imported lazily: it pulls in torch.onnx)."""
    from .exporter import export_bundle as _export_bundle
    return _export_bundle(*args, **kwargs)


__all__ = ["Bundle", "MANIFEST_NAME", "ONNX_NAME", "SCHEMA_VERSION", "WEIGHTS_NAME", "export_bundle",
           "load_bundle", "sha256_file"]
