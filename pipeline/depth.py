"""Bring-your-own depth model: a `depth` bundle maps a frame to relative depth for the sizer.

A sizer whose input has a depth stream (`pipeline.prep`) needs a depth map of every frame it
sizes. The pipeline runs the depth bundle once per frame, before sizing, and crops the map per
box like the RGB crop. Any monocular depth network exported to ONNX will do (README, "Depth
stream", says how to export MiDaS on a connected machine); `make_depth_bundle` wraps the file:

    python -m pipeline.depth --onnx midas_small.onnx --out bundles/midas --size 256 \
        --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 --inverse

The bundle (pipeline.bundle, kind "depth", architecture null) declares the one input (the
frame, resized to inputs.size without keeping the aspect ratio, RGB, (x/255 - mean)/std, NCHW
float32) and the one output ((1, H, W) or (1, 1, H, W)). `outputs.inverse: true` marks a model
that predicts inverse depth (disparity, larger = nearer), as MiDaS does; its output is flipped
to `max - x` so that, as for stored depth maps, larger is farther. The sizer min-max scales each
crop, so the unit and offset of the map never matter, only its order.
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from .bundle import Bundle, copy_external_onnx, load_bundle
from .errors import BundleError
from .prep import IMAGENET_MEAN, IMAGENET_STD, _normalise

INPUT_NAME = "image"
OUTPUT_NAME = "depth"


class DepthEstimator:
    """`estimate(image_rgb, fov_mask) -> float32 HxW` relative depth (larger is farther)."""

    def __init__(self, engine, bundle: Bundle) -> None:
        self.engine = engine
        self.bundle = bundle
        self.input_name = bundle.input_names[0]
        self.output_name = bundle.output_names[0]
        self.width, self.height = bundle.input_size
        self.mean = tuple(bundle.inputs["mean"])
        self.std = tuple(bundle.inputs["std"])
        self.inverse = bool(bundle.outputs.get("inverse", False))

    @classmethod
    def from_bundle(cls, path, *, backend: str = "auto", threads: int | None = None) -> "DepthEstimator":
        from .engines import load_engine

        bundle = load_bundle(path)
        if bundle.kind != "depth":
            raise BundleError(f"{path}: bundle kind is {bundle.kind!r}, expected a depth model")
        return cls(load_engine(bundle, backend=backend, threads=threads or None), bundle)

    def estimate(self, image_rgb: np.ndarray, fov_mask: np.ndarray | None = None) -> np.ndarray:
        h, w = image_rgb.shape[:2]
        small = cv2.resize(image_rgb, (self.width, self.height), interpolation=cv2.INTER_AREA)
        out = self.engine.run({self.input_name: _normalise(small[None], self.mean, self.std)})
        depth = np.asarray(out[self.output_name], dtype=np.float32)
        if depth.ndim == 4:
            depth = depth[:, 0]
        if depth.ndim != 3 or depth.shape[0] != 1:
            raise BundleError(f"{self.bundle.path}: depth output has shape {depth.shape}, "
                              f"expected (1, H, W) or (1, 1, H, W)")
        depth = np.nan_to_num(depth[0], nan=0.0, posinf=0.0, neginf=0.0)
        if self.inverse:
            depth = float(depth.max()) - depth
        depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_LINEAR)
        return apply_fov_depth(depth, fov_mask)


def apply_fov_depth(depth: np.ndarray, fov_mask: np.ndarray | None) -> np.ndarray:
    """Depth outside the field of view is 0, like the dark border of the frame."""
    if fov_mask is None:
        return depth
    return depth * fov_mask.astype(np.float32)


def make_depth_bundle(onnx_file, out_dir, *, size: int | tuple[int, int] = 256,
                      mean=IMAGENET_MEAN, std=IMAGENET_STD, inverse: bool = False,
                      input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME,
                      note: str = "") -> Bundle:
    """A `depth` bundle around an ONNX depth model (one frame in, one depth map out)."""
    manifest = {
        "kind": "depth",
        "inputs": {"streams": [input_name], "channels": {input_name: 3},
                   "size": size if isinstance(size, int) else [int(size[0]), int(size[1])],
                   "colour_order": "RGB", "layout": "NCHW", "dtype": "float32",
                   "mean": [float(v) for v in mean], "std": [float(v) for v in std],
                   "fov_masking": False},
        "outputs": {"names": [output_name], "inverse": bool(inverse),
                    "meaning": {output_name: "relative inverse depth (larger is nearer)" if inverse
                                else "relative depth (larger is farther)"}},
        "provenance": {"clinical_use": False, "note": note or "a depth model from elsewhere"},
    }
    return copy_external_onnx(onnx_file, out_dir, manifest)


def main(argv=None) -> int:
    from .cli_util import run_cli

    @run_cli("hagview-depth-bundle")
    def run(argv):
        p = argparse.ArgumentParser(prog="python -m pipeline.depth",
                                    description="Wrap an ONNX depth model (frame -> depth) as a depth bundle.")
        p.add_argument("--onnx", required=True, help="the ONNX file: input (1,3,H,W), output (1,H,W) or (1,1,H,W)")
        p.add_argument("--out", required=True, help="bundle directory to create")
        p.add_argument("--size", type=int, nargs="+", default=[256], help="input size: S or W H")
        p.add_argument("--mean", type=float, nargs=3, default=list(IMAGENET_MEAN))
        p.add_argument("--std", type=float, nargs=3, default=list(IMAGENET_STD))
        p.add_argument("--inverse", action="store_true", help="the model predicts inverse depth (MiDaS)")
        p.add_argument("--input-name", default=INPUT_NAME)
        p.add_argument("--output-name", default=OUTPUT_NAME)
        args = p.parse_args(argv)
        size = args.size[0] if len(args.size) == 1 else tuple(args.size[:2])
        bundle = make_depth_bundle(args.onnx, args.out, size=size, mean=args.mean, std=args.std,
                                   inverse=args.inverse, input_name=args.input_name,
                                   output_name=args.output_name)
        print(f"wrote {bundle.path}: {bundle.describe()}")
        return 0

    return run(argv)


if __name__ == "__main__":
    raise SystemExit(main())
