"""Model bundles: the directory a trained model travels in, from the trainer to the pipeline.

A bundle is a directory with

- ``bundle.json``: the manifest described below;
- ``model.onnx``: the folded model (or an external ONNX detector), opset 18 or later,
  dynamic batch, input names = stream names, output names = model output names;
- ``weights.safetensors``: the folded weights (absent for an external ONNX model).

``bundle.json`` (schema_version 1)::

    schema_version   1
    kind             "sizer" | "detector" | "depth" (a frame -> relative depth model, pipeline.depth)
    architecture     {"name": registry name, "init_kwargs": {...} of the folded model,
                      "folded": true}            or null for an external ONNX model
    inputs           {"streams": [names], "channels": {stream: C}, "size": int | [width, height],
                      "colour_order": "RGB",
                      "layout": "NCHW", "dtype": "float32", "mean": [3], "std": [3],
                      "fov_masking": bool, "box_grow": float | null (sizers),
                      "letterbox": bool (detectors), "spec": {...} (pipeline.prep spec, optional)}
    outputs          {"names": [names], "meaning": {name: text},
                      "size_classes": {"names": [...], "diminutive_max_mm": 5, "large_min_mm": 10,
                                       "min_size_mm": .., "max_size_mm": ..} (sizers),
                      "logit_classes": [class of each logits column] (sizers with logits),
                      "decoding": {"output_stride", "score_threshold", "max_detections"} (detectors),
                      "layout": {...} (external ONNX detectors only, see below)}
    provenance       {"config", "data", "metrics", "git_commit": str | null, "date": ISO 8601 UTC,
                      "synthetic_training_data": bool, "clinical_use": false, "note": str,
                      "datasets": [every training data set: name, kind, title, licence, citation,
                      real, weight...] (pipeline.provenance), "real_training_data": bool,
                      "imagenet_init": {weights, source, licence} | null,
                      "exporter": {...}}
    calibration      (sizers, optional) the size interval's calibration on held-out data:
                      levels, half-widths by sized frames, the data it came from
                      (pipeline.calibration, made by `python -m trainer.calibrate`)
    files            {file name: sha256 hex}   every file the bundle consists of

``outputs.layout`` for an external ONNX detector (``architecture`` null, no weights)::

    output             name of the ONNX output holding the candidate rows
    transposed         false: (batch, candidates, columns); true: (batch, columns, candidates)
    box_format         "xyxy" | "cxcywh" | "xywh"
    box_columns        4 column indices, in box_format order (default [0, 1, 2, 3])
    score_columns      column indices of the class scores (one column: a single polyp score)
    objectness_column  column index of an objectness score multiplied into the class scores, or null
    coordinates        "normalised" (0..1 of the network input) | "pixels" (of the network input)
    scores_are_logits  true when the scores still need a sigmoid
    nms_applied        true when the model already suppressed overlapping boxes

Loading validates everything before anything runs: every error is a one-line BundleError
that names the bundle file and the problem.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipeline import sizeclass
from pipeline.errors import BundleError
from pipeline.provenance import imagenet_init, training_datasets

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
MANIFEST_NAME = "bundle.json"
ONNX_NAME = "model.onnx"
WEIGHTS_NAME = "weights.safetensors"
KINDS = ("sizer", "detector", "depth")
BOX_FORMATS = ("xyxy", "cxcywh", "xywh")
COORDINATES = ("normalised", "pixels")
SYNTHETIC_NOTE = "trained on synthetic data; not for clinical use"
RESEARCH_NOTE = "research software; not a medical device; not for clinical use"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The checked-out commit of the repository around `cwd`, or None without git."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def utc_now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def size_class_description() -> dict[str, Any]:
    """The size-class thresholds of pipeline.sizeclass, as recorded in every sizer bundle."""
    return {"names": list(sizeclass.TRICLASS_NAMES),
            "binary_names": list(sizeclass.BINARY_NAMES),
            "diminutive_max_mm": sizeclass.DIMINUTIVE_MAX_MM,
            "large_min_mm": sizeclass.LARGE_MIN_MM,
            "min_size_mm": sizeclass.MIN_SIZE_MM,
            "max_size_mm": sizeclass.MAX_SIZE_MM,
            "rule": "diminutive <= 5 mm < small < 10 mm <= large"}


OUTPUT_MEANINGS = {
    "size_mm": "estimated polyp diameter in millimetres, one value per box (N, 1)",
    "logits": "size-class logits (N, C) in the order of outputs.logit_classes; softmax for probabilities",
    # detector: s = output stride = input size / heatmap size (architecture.init_kwargs.output_stride)
    "heatmap": "polyp-centre heatmap logits (N, 1, H/s, W/s); sigmoid for scores, 3x3 local maxima are detections",
    "wh": "box width and height in heatmap cells (input pixels / s) at each cell (N, 2, H/s, W/s)",
    "offset": "sub-cell position of the centre in cells (x, y) at each cell (N, 2, H/s, W/s)",
}


def provenance_record(metadata: Mapping[str, Any], commit: str | None, exporter: Mapping[str, Any]) -> dict:
    """Provenance from checkpoint metadata (docs/design.md): config, data, metrics, commit, date."""
    data = dict(metadata.get("data") or {})
    config = metadata.get("config") or {}
    datasets = training_datasets(config, data)
    if datasets:
        synthetic, real = any(not d["real"] for d in datasets), any(d["real"] for d in datasets)
    else:
        synthetic = bool(data.get("synthetic", data.get("kind") == "synthetic"))
        real = not synthetic
    return {
        "config": config,
        "data": data,
        "metrics": metadata.get("metrics") or {},
        "epoch": metadata.get("epoch"),
        "fold": metadata.get("fold"),
        "training_git_commit": metadata.get("git_commit"),
        "git_commit": commit,
        "date": utc_now_iso(),
        "synthetic_training_data": synthetic,
        "real_training_data": real,
        "datasets": datasets,
        "imagenet_init": imagenet_init(config, metadata.get("imagenet_init")),
        "clinical_use": False,
        "note": RESEARCH_NOTE if real else SYNTHETIC_NOTE,
        "exporter": dict(exporter),
    }


# ---------------------------------------------------------------------------------------
# the loaded, validated bundle

@dataclass(frozen=True)
class Bundle:
    """A validated bundle directory. Build with `load_bundle(path)`."""

    path: Path
    manifest: dict = field(repr=False)

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def architecture(self) -> str | None:
        arch = self.manifest.get("architecture")
        return arch["name"] if arch else None

    @property
    def init_kwargs(self) -> dict:
        arch = self.manifest.get("architecture")
        return dict(arch.get("init_kwargs", {})) if arch else {}

    @property
    def is_external(self) -> bool:
        """An ONNX model from elsewhere: no weights, so only onnxruntime can run it."""
        return self.manifest.get("architecture") is None

    @property
    def inputs(self) -> dict:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> dict:
        return self.manifest["outputs"]

    @property
    def provenance(self) -> dict:
        return self.manifest.get("provenance", {})

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.inputs["streams"])

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.outputs["names"])

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the network input."""
        size = self.inputs["size"]
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_NAME

    @property
    def weights_path(self) -> Path | None:
        return None if self.is_external else self.path / WEIGHTS_NAME

    @property
    def synthetic_training_data(self) -> bool:
        return bool(self.provenance.get("synthetic_training_data", False))

    @property
    def clinical_use(self) -> bool:
        return bool(self.provenance.get("clinical_use", False))

    @property
    def content_hash(self) -> str:
        """One hash over every file's hash: changes when any file of the bundle changes."""
        digest = hashlib.sha256()
        for name in sorted(self.manifest["files"]):
            digest.update(f"{name}={self.manifest['files'][name]}\n".encode())
        return digest.hexdigest()

    @property
    def input_channels(self) -> dict[str, int]:
        """Channels per stream (rgb and mask 3, depth 1); 3 where the manifest does not say."""
        channels = self.inputs.get("channels") or {}
        return {name: int(channels.get(name, 3)) for name in self.input_names}

    def example_shape(self, batch: int = 1, stream: str | None = None) -> tuple[int, int, int, int]:
        """(N, C, H, W) of one stream's input (the first stream's when none is named)."""
        width, height = self.input_size
        return (batch, self.input_channels[stream or self.input_names[0]], height, width)

    def describe(self) -> str:
        name = self.architecture or "external ONNX"
        synthetic = ", synthetic training data" if self.synthetic_training_data else ""
        return f"{self.kind} {name} ({self.path.name}{synthetic})"

    def load_state_dict(self, device: str = "cpu") -> dict:
        """The folded weights, read with safetensors (cannot execute code)."""
        from safetensors.torch import load_file

        if self.weights_path is None:
            raise BundleError(f"{self.path}: external ONNX bundle has no {WEIGHTS_NAME}")
        try:
            return load_file(str(self.weights_path), device=device)
        except Exception as exc:
            raise BundleError(f"{self.weights_path}: cannot read weights ({_first_line(exc)})") from None

    def build_torch_model(self, device: str = "cpu"):
        """The folded model rebuilt through the registry and loaded from weights.safetensors."""
        from trainer.models import build_model

        if self.is_external:
            raise BundleError(f"{self.path}: external ONNX bundle has no PyTorch architecture")
        try:
            model = build_model(self.architecture, **self.init_kwargs)
        except Exception as exc:
            raise BundleError(f"{self.path / MANIFEST_NAME}: cannot build architecture "
                              f"{self.architecture!r} ({_first_line(exc)})") from None
        if any(True for _ in getattr(model, "gate_parameters", lambda: ())()):
            model = model.fold_gates()
        try:
            model.load_state_dict(self.load_state_dict(), strict=True)
        except RuntimeError as exc:
            raise BundleError(f"{self.weights_path}: weights do not fit {self.architecture} "
                              f"({_first_line(exc)})") from None
        return model.eval().to(device)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------
# validation

def _require(manifest_path: Path, condition: bool, problem: str) -> None:
    if not condition:
        raise BundleError(f"{manifest_path}: {problem}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _validate_manifest(manifest: Any, manifest_path: Path) -> None:
    req = lambda cond, problem: _require(manifest_path, cond, problem)  # noqa: E731
    req(isinstance(manifest, dict), "top level is not a JSON object")
    version = manifest.get("schema_version")
    req(version in SUPPORTED_SCHEMA_VERSIONS,
        f"unknown schema_version {version!r} (this hagview reads {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))})")
    req(manifest.get("kind") in KINDS, f"kind {manifest.get('kind')!r} is not one of {', '.join(KINDS)}")
    for key in ("inputs", "outputs", "files"):
        req(isinstance(manifest.get(key), dict), f"'{key}' is missing or not an object")
    arch = manifest.get("architecture", "missing")
    req(arch is None or (isinstance(arch, dict) and isinstance(arch.get("name"), str)
                         and isinstance(arch.get("init_kwargs", {}), dict)),
        "'architecture' must be {name, init_kwargs} or null (external ONNX)")

    inputs = manifest["inputs"]
    streams = inputs.get("streams")
    req(isinstance(streams, list) and streams and all(isinstance(s, str) and s for s in streams),
        "inputs.streams must be a non-empty list of names")
    size = inputs.get("size")
    req((isinstance(size, int) and not isinstance(size, bool) and size > 0)
        or (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)),
        f"inputs.size {size!r} must be a positive int or [width, height]")
    channels = inputs.get("channels", {})
    req(isinstance(channels, dict) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                           for v in channels.values()),
        "inputs.channels must map stream names to positive channel counts")
    req(inputs.get("colour_order", "RGB") in ("RGB", "BGR"),
        f"inputs.colour_order {inputs.get('colour_order')!r} must be RGB or BGR")
    for key in ("mean", "std"):
        value = inputs.get(key)
        req(isinstance(value, list) and len(value) == 3 and all(_is_number(v) for v in value),
            f"inputs.{key} must be a list of 3 numbers")
    req(all(v > 0 for v in inputs["std"]), "inputs.std must be positive")

    outputs = manifest["outputs"]
    names = outputs.get("names")
    req(isinstance(names, list) and names and all(isinstance(s, str) and s for s in names),
        "outputs.names must be a non-empty list of names")

    files = manifest["files"]
    req(ONNX_NAME in files, f"files does not list {ONNX_NAME}")
    for name, digest in files.items():
        req(isinstance(name, str) and "/" not in name and "\\" not in name and name not in ("", ".", ".."),
            f"files entry {name!r} is not a plain file name")
        req(isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest),
            f"files[{name!r}] is not a sha256 hex digest")
    if arch is None:
        req(manifest["kind"] in ("detector", "depth"),
            "an external ONNX model (architecture null) must be a detector or a depth model")
        if manifest["kind"] == "detector":
            _validate_layout(outputs.get("layout"), names, manifest_path)
        else:
            req(len(streams) == 1 and len(names) == 1,
                "a depth bundle has one input (the frame) and one output (its depth map)")
            req(isinstance(outputs.get("inverse", False), bool), "outputs.inverse must be true or false")
    else:
        req(WEIGHTS_NAME in files, f"files does not list {WEIGHTS_NAME}")
    if "calibration" in manifest:
        from pipeline.calibration import validate_block     # size intervals (sizers), see there
        req(manifest["kind"] == "sizer", "only a sizer bundle carries a calibration")
        validate_block(manifest, manifest_path)


def _validate_layout(layout: Any, output_names: list[str], manifest_path: Path) -> None:
    req = lambda cond, problem: _require(manifest_path, cond, problem)  # noqa: E731
    req(isinstance(layout, dict), "external ONNX detector needs outputs.layout (box format, score columns, coordinates)")
    req(layout.get("output") in output_names,
        f"outputs.layout.output {layout.get('output')!r} is not one of outputs.names {output_names}")
    req(layout.get("box_format") in BOX_FORMATS,
        f"outputs.layout.box_format {layout.get('box_format')!r} is not one of {', '.join(BOX_FORMATS)}")
    req(layout.get("coordinates") in COORDINATES,
        f"outputs.layout.coordinates {layout.get('coordinates')!r} is not one of {', '.join(COORDINATES)}")
    is_index = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
    box_columns = layout.get("box_columns", [0, 1, 2, 3])
    req(isinstance(box_columns, list) and len(box_columns) == 4 and all(map(is_index, box_columns)),
        "outputs.layout.box_columns must be 4 column indices")
    score_columns = layout.get("score_columns")
    req(isinstance(score_columns, list) and score_columns and all(map(is_index, score_columns)),
        "outputs.layout.score_columns must be a non-empty list of column indices")
    objectness = layout.get("objectness_column")
    req(objectness is None or is_index(objectness), "outputs.layout.objectness_column must be an index or null")
    used = [*box_columns, *score_columns, *([objectness] if objectness is not None else [])]
    req(len(set(used)) == len(used), "outputs.layout columns overlap (box, score and objectness columns must differ)")
    for key in ("transposed", "scores_are_logits", "nms_applied"):
        req(isinstance(layout.get(key, False), bool), f"outputs.layout.{key} must be true or false")


def _check_safetensors(path: Path) -> None:
    """Parse the safetensors header only: a pickle or other content is refused, never executed."""
    from safetensors import safe_open

    with open(path, "rb") as handle:
        head = handle.read(8)
    # safetensors starts with a little-endian u64 header length followed by a JSON object
    if len(head) < 8 or int.from_bytes(head, "little") > os.path.getsize(path) - 8:
        raise BundleError(f"{path}: not a safetensors file (a pickle or other format); refusing to load it")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            keys = list(handle.keys())
    except Exception as exc:
        raise BundleError(f"{path}: not a valid safetensors file ({_first_line(exc)}); refusing to load it") from None
    if not keys:
        raise BundleError(f"{path}: safetensors file holds no tensors")


def load_bundle(path: str | Path, verify_hashes: bool = True) -> Bundle:
    """Read and validate a bundle directory (or its bundle.json); raise BundleError on any problem.

    Checks, in order: the directory and manifest exist and parse; the schema version is known
    and the manifest is complete; every listed file exists and its sha256 matches; the ONNX
    inputs/outputs are the declared names; the weights are a valid safetensors file.
    Nothing from the bundle is executed or unpickled.
    """
    path = Path(path)
    if path.name == MANIFEST_NAME and path.is_file():
        path = path.parent
    if not path.is_dir():
        raise BundleError(f"{path}: bundle directory does not exist")
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing (not a model bundle)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({_first_line(exc)})") from None
    _validate_manifest(manifest, manifest_path)

    for name, expected in manifest["files"].items():
        file_path = path / name
        if not file_path.is_file():
            raise BundleError(f"{file_path}: missing (listed in {MANIFEST_NAME})")
        if verify_hashes:
            actual = sha256_file(file_path)
            if actual != expected:
                raise BundleError(f"{file_path}: sha256 mismatch (bundle.json says {expected[:12]}..., "
                                  f"file has {actual[:12]}...); the file was changed or corrupted")
    bundle = Bundle(path=path, manifest=manifest)
    _check_onnx_names(bundle)
    if bundle.weights_path is not None:
        _check_safetensors(bundle.weights_path)
    return bundle


def _check_onnx_names(bundle: Bundle) -> None:
    from pipeline.onnx_io import io_names

    try:
        graph_inputs, graph_outputs = io_names(bundle.onnx_path)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise BundleError(f"{bundle.onnx_path}: not a readable ONNX model ({_first_line(exc)})") from None
    if sorted(graph_inputs) != sorted(bundle.input_names):
        raise BundleError(f"{bundle.onnx_path}: ONNX inputs {graph_inputs} differ from inputs.streams "
                          f"{list(bundle.input_names)}")
    missing = [n for n in bundle.output_names if n not in graph_outputs]
    if missing:
        raise BundleError(f"{bundle.onnx_path}: ONNX has no output {missing[0]!r} (has {graph_outputs})")


# ---------------------------------------------------------------------------------------
# writing

def write_bundle_files(directory: str | Path, manifest: Mapping[str, Any],
                       files: Iterable[str] | None = None) -> dict:
    """Hash the files in `directory` into manifest['files'] and write bundle.json there.

    `directory` is normally the temporary directory of `pipeline.fsutil.atomic_dir`, so the
    bundle appears complete or not at all. Returns the manifest written.
    """
    from pipeline.fsutil import write_json_atomic

    directory = Path(directory)
    names = list(files) if files is not None else sorted(
        p.name for p in directory.iterdir() if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith("."))
    manifest = dict(manifest)
    manifest["schema_version"] = SCHEMA_VERSION
    manifest["files"] = {name: sha256_file(directory / name) for name in names}
    _validate_manifest(json.loads(json.dumps(manifest)), directory / MANIFEST_NAME)
    write_json_atomic(directory / MANIFEST_NAME, manifest)
    return manifest


def make_readable(directory: str | Path) -> None:
    """Give the bundle directory and its files the usual permissions (0755/0644 under umask 022).

    The temporary directory of atomic_dir is created 0700 and safetensors writes 0600; a bundle
    must be readable by whoever runs the pipeline.
    """
    umask = os.umask(0)
    os.umask(umask)
    directory = Path(directory)
    os.chmod(directory, 0o777 & ~umask)
    for item in directory.iterdir():
        if item.is_file():
            os.chmod(item, 0o666 & ~umask)


def copy_external_onnx(onnx_file: str | Path, out_dir: str | Path, manifest: Mapping[str, Any]) -> Bundle:
    """Make a bundle around an ONNX detector from elsewhere (architecture null, layout declared)."""
    from pipeline.fsutil import atomic_dir

    onnx_file = Path(onnx_file)
    if not onnx_file.is_file():
        raise BundleError(f"{onnx_file}: ONNX file does not exist")
    manifest = {**manifest, "architecture": None}
    with atomic_dir(out_dir) as tmp:
        shutil.copyfile(onnx_file, tmp / ONNX_NAME)
        write_bundle_files(tmp, manifest, [ONNX_NAME])
        load_bundle(tmp)
        make_readable(tmp)
    return load_bundle(out_dir)
