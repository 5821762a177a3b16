"""Untrained bundles that stand in for trained ones where only the work or the plumbing matters:
benchmarks run before a demo bundle exists, and tests. The model, its ONNX graph and the bundle
are real (exported by `export_bundle`); its sizes mean nothing, and the manifest says the
training data was synthetic.
"""
from __future__ import annotations

from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def export_untrained_sizer(out: str | Path, *, input_size: int, head: str = "regression",
                           width_mult: float | None = None, hidden: int | None = None,
                           mean=IMAGENET_MEAN, std=IMAGENET_STD, exporter: str = "dynamo") -> Path:
    """A two-stream (rgb + mask) hag_resnet18 sizer bundle in `out`, seeded so it is the same
    every time; kept when `out` already holds one. `exporter="legacy"` (TorchScript) writes the
    same bundle seconds faster, which tests want."""
    out = Path(out)
    if (out / "bundle.json").is_file():
        return out
    import torch

    from trainer.export.exporter import export_bundle
    from trainer.models import build_model

    options = {name: value for name, value in (("width_mult", width_mult), ("hidden", hidden)) if value is not None}
    torch.manual_seed(0)
    model = build_model("hag_resnet18", streams=("rgb", "mask"), input_size=input_size, head=head,
                        **options).eval()
    spec = {"streams": ["rgb", "mask"], "size": input_size, "mean": list(mean), "std": list(std),
            "fov_masking": True, "box_grow": 0.5}
    metadata = {"kind": "sizer", "architecture": "hag_resnet18", "init_kwargs": model.init_kwargs,
                "input_spec": spec, "data": {"kind": "synthetic", "synthetic": True}, "metrics": {}}
    export_bundle(model, metadata, out, exporter=exporter)
    return out
