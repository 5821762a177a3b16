"""Model loading: the committed demo bundles, and an `Analysis` built from the bundles (or given
boxes) a run names, with `model_info` describing what was loaded."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import RunConfig
from .provenance import data_names, model_mark, uses_real_data
from .sizing import TrackSizingStage, sizing_policy
from .stages import Analysis, BoxProvider

ASSETS = Path(__file__).parent / "assets" / "bundles"
DEFAULT_SIZER = ASSETS / "sizer"
DEFAULT_DETECTOR = ASSETS / "detector"


def default_bundle(kind: str) -> Path | None:
    """The committed demo bundle of `kind` ("sizer" | "detector") when it is present."""
    path = DEFAULT_SIZER if kind == "sizer" else DEFAULT_DETECTOR
    return path if (path / "bundle.json").is_file() else None


def _bundle_info(bundle, path) -> dict[str, Any]:
    provenance = getattr(bundle, "provenance", {}) or {}
    return {"path": str(path), "name": Path(path).name,
            "architecture": getattr(bundle, "architecture", None),
            "synthetic": bool(getattr(bundle, "synthetic_training_data", False)),
            "real": uses_real_data(provenance), "data": data_names(provenance),
            "clinical_use": bool(provenance.get("clinical_use", False))}


def build_analysis(config: RunConfig, *, sizer: str | Path | None = None, detector: str | Path | None = None,
                   boxes: str | Path | None = None, backend: str = "auto",
                   offline: bool = False, depth: str | Path | None = None) -> tuple[Analysis, dict[str, Any]]:
    """Load the models (or given boxes) named; returns the Analysis and `model_info`.

    `offline`: the analysis runs in `run_offline`, where stages and workers already occupy the
    cores, so engines get one thread each unless `runtime.inference_threads` says otherwise
    (oversubscribed thread pools would fight each other). `depth`: the depth bundle
    (pipeline.depth) a sizer with a depth stream needs.

    model_info: {"sizer": {...} | None, "detector": {...} | None, "boxes": str | None,
    "synthetic": bool (any model trained on synthetic data), "mark": the banner every shown or
    exported frame carries (pipeline.provenance.model_mark; None without a model), each model's
    "data": its training data names and "real": whether real data was among them, "backend": engine names,
    "interval": what the size interval is calibrated on ("" without a sizer)}.
    """
    threads = config.runtime.inference_threads or (1 if offline else None)
    info: dict[str, Any] = {"sizer": None, "detector": None, "boxes": None, "synthetic": False, "backend": None}
    backends = []
    sizing = None
    if sizer is not None:
        policy = sizing_policy(config)
        sizing = TrackSizingStage.from_bundle(sizer, backend=backend, threads=threads, policy=policy,
                                              depth_bundle=depth)
        info["sizer"] = _bundle_info(sizing.bundle, sizer)
        backends.append(sizing.engine.name)
    found = None
    provider = None
    if boxes is not None:
        provider = BoxProvider(boxes)
        info["boxes"] = str(boxes)
    elif detector is not None:
        from .detecting import PolypDetector
        # Decode down to what the tracker can still use, so the viewer's live threshold
        # (applied in the detect stage) can go lower than the configured one.
        floor = min(config.detect.score_threshold, config.track.min_score)
        found = PolypDetector(detector, score_threshold=floor, max_detections=config.detect.max_detections,
                              backend=backend, threads=threads)
        info["detector"] = _bundle_info(found.bundle, detector)
        backends.append(found.engine.name)
    info["synthetic"] = any(m and m["synthetic"] for m in (info["sizer"], info["detector"]))
    info["mark"] = model_mark([info["sizer"], info["detector"]])
    info["backend"] = "+".join(dict.fromkeys(backends)) or None
    analysis = Analysis(config, detector=found, boxes=provider, sizer=sizing)
    info["interval"] = analysis.interval_note      # what the size interval is calibrated on
    return analysis, info
