"""hagview-export: a training run or checkpoint -> a validated model bundle (folded gates)."""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
from pathlib import Path

from pipeline.calibration import BOX_SOURCES
from pipeline.cli_util import ArgumentParser, run_cli
from pipeline.errors import ConfigError

from .onnx import DEFAULT_OPSET, EXPORTERS, MIN_OPSET
from pipeline.engines.tensorrt_build import DEFAULT_BATCH_SIZES, PRECISIONS

log = logging.getLogger(__name__)
PROG = "hagview-export"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=(
        "Fold the gates of a trained HAG model, export it to ONNX and write a model bundle "
        "(bundle.json, model.onnx, weights.safetensors). The bundle is written only when "
        "onnxruntime reproduces the folded PyTorch model."))
    parser.add_argument("source", help="run directory of hagview-train, or a checkpoint file (.pt)")
    parser.add_argument("--out", required=True, help="bundle directory to write")
    parser.add_argument("--fold", type=int, default=None,
                        help="fold of a run directory (default: the fold with the best validation metric)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                        help="torch.onnx exporter: dynamo (torch.export based) or legacy (TorchScript)")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle directory")
    parser.add_argument("--tensorrt", action="store_true",
                        help="also prebuild the TensorRT programs (needs CUDA and torch-tensorrt)")
    parser.add_argument("--trt-batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)),
                        help="comma-separated static batch sizes to compile (default %(default)s)")
    parser.add_argument("--trt-precision", choices=PRECISIONS, default="fp16")
    parser.add_argument("--trt-device", default=None, metavar="cuda:N",
                        help="GPU to compile for (default: the current CUDA device); programs run only there")
    calibration = parser.add_argument_group(
        "size-interval calibration (sizer bundles; the same as python -m trainer.calibrate, run on the new bundle)")
    calibration.add_argument("--calibrate", action="append", default=[], metavar="DATA",
                             help="directory of held-out <name>.mp4 + <name>.gt.json (e.g. from hagview-synth) to "
                                  "calibrate the size interval on; repeat for several. The bundle is written only "
                                  "with its calibration; videos from its training seeds are refused")
    calibration.add_argument("--calibrate-boxes", nargs="+", choices=BOX_SOURCES, default=None,
                             help="tables to make (default: both; detector boxes use --calibrate-detector)")
    calibration.add_argument("--calibrate-detector", metavar="BUNDLE",
                             help="detector bundle for the detector-box table (default: the committed demo one)")
    calibration.add_argument("--calibrate-description", metavar="TEXT",
                             help="what the calibration data is, for the viewer and reports (default: from the data)")
    return parser


def _summary_folds(summary: dict) -> list[dict]:
    folds = summary.get("folds")
    if isinstance(folds, dict):
        return [{"fold": int(k), **v} for k, v in folds.items() if isinstance(v, dict)]
    if isinstance(folds, list):
        return [f for f in folds if isinstance(f, dict)]
    return []


def _fold_metric(entry: dict):
    for key in ("best_metric", "best_value", "best_validation_metric", "best"):
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def _fold_checkpoint(run_dir: Path, entry: dict, fold: int) -> Path:
    for key in ("best_checkpoint", "checkpoint", "best"):
        value = entry.get(key)
        if isinstance(value, str):
            return run_dir / value if not Path(value).is_absolute() else Path(value)
    checkpoints = entry.get("checkpoints")
    if isinstance(checkpoints, dict) and isinstance(checkpoints.get("best"), str):
        value = checkpoints["best"]
        return run_dir / value if not Path(value).is_absolute() else Path(value)
    return run_dir / f"fold-{fold}" / "best.pt"


def resolve_checkpoint(source: str | Path, fold: int | None = None) -> Path:
    """A checkpoint path from a checkpoint file or a run directory (summary.json picks the fold)."""
    source = Path(source)
    if source.is_file():
        if fold is not None:
            raise ConfigError(f"{source}: --fold applies to a run directory, not a checkpoint file")
        return source
    if not source.exists():
        raise ConfigError(f"{source}: no such run directory or checkpoint file")
    summary_path = source / "summary.json"
    if fold is not None:
        candidate = source / f"fold-{fold}" / "best.pt"
        if summary_path.is_file():
            for entry in _summary_folds(_read_summary(summary_path)):
                if int(entry.get("fold", -1)) == fold:
                    candidate = _fold_checkpoint(source, entry, fold)
        if not candidate.is_file():
            raise ConfigError(f"{candidate}: fold {fold} has no best checkpoint")
        return candidate
    if summary_path.is_file():
        summary = _read_summary(summary_path)
        higher = bool(summary.get("higher_is_better", False))
        if isinstance(summary.get("best_fold"), int):
            best = next((e for e in _summary_folds(summary) if e.get("fold") == summary["best_fold"]), {})
            return _existing(_fold_checkpoint(source, best, summary["best_fold"]), summary_path)
        scored = [(m, e) for e in _summary_folds(summary) if (m := _fold_metric(e)) is not None and "fold" in e]
        if not scored:
            raise ConfigError(f"{summary_path}: no fold with a best validation metric; pass --fold K")
        metric, entry = (max if higher else min)(scored, key=lambda item: item[0])
        name = summary.get("primary_metric", "validation metric")
        log.info("picked fold %s (best %s %.4g)", entry["fold"], name, metric)
        return _existing(_fold_checkpoint(source, entry, int(entry["fold"])), summary_path)
    folds = sorted(source.glob("fold-*/best.pt"))
    if len(folds) == 1:
        return folds[0]
    if not folds:
        raise ConfigError(f"{source}: neither summary.json nor fold-K/best.pt found (not a hagview-train run directory)")
    raise ConfigError(f"{source}: no summary.json and {len(folds)} folds; pass --fold K")


def _existing(path: Path, summary_path: Path) -> Path:
    if not path.is_file():
        raise ConfigError(f"{summary_path}: names checkpoint {path}, which does not exist")
    return path


def _read_summary(path: Path) -> dict:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(summary, dict):
        raise ConfigError(f"{path}: top level is not a JSON object")
    return summary


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", text or ""):
        raise ConfigError(f"--trt-batch-sizes {text!r}: expected comma-separated positive integers, e.g. 1,2,4,8")
    sizes = tuple(sorted({int(v) for v in text.split(",")}))
    if sizes[0] < 1:
        raise ConfigError(f"--trt-batch-sizes {text!r}: batch sizes must be at least 1")
    return sizes


def export_calibrated(model, metadata, out: Path, args, argv):
    """Export into a staging directory, calibrate the staged bundle on `--calibrate` data, then
    move it into `out` as a whole: `out` never holds the bundle without its calibration, and a
    refused or failed calibration leaves `out` as it was."""
    import sys

    from pipeline.bundle import load_bundle
    from pipeline.config import load_run_config
    from pipeline.fsutil import atomic_dir
    from pipeline.calibration import bundle_calibration
    from trainer.calibrate import calibrate_bundle

    from .exporter import export_bundle

    with atomic_dir(out) as stage:
        export_bundle(model, metadata, stage, opset=args.opset, exporter=args.exporter)
        calibrate_bundle(stage, args.calibrate, config=load_run_config(None), detector=args.calibrate_detector,
                         boxes=args.calibrate_boxes or BOX_SOURCES, description=args.calibrate_description,
                         command=" ".join([PROG, *(argv if argv is not None else sys.argv[1:])]), prog=PROG)
    bundle = load_bundle(out)
    calibration = bundle_calibration(bundle)
    print(f"{PROG}: size interval calibrated on {calibration.data['description']} "
          f"({', '.join(calibration.tables)} boxes, {calibration.data['polyps']} polyps)")
    return bundle


@run_cli(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.opset < MIN_OPSET:
        raise ConfigError(f"--opset {args.opset}: bundles need ONNX opset {MIN_OPSET} or later")
    batch_sizes = parse_batch_sizes(args.trt_batch_sizes)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"{out}: already exists; choose another --out or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory")
    if args.tensorrt:
        from pipeline.engines.tensorrt_build import require_tensorrt
        require_tensorrt()        # fail before the export work, with the reason
    calibrating = [o for o, v in (("--calibrate-boxes", args.calibrate_boxes),
                                  ("--calibrate-detector", args.calibrate_detector),
                                  ("--calibrate-description", args.calibrate_description)) if v is not None]
    if calibrating and not args.calibrate:
        raise ConfigError(f"{calibrating[0]}: applies only with --calibrate DATA")
    if args.calibrate:
        from trainer.calibrate import find_videos
        find_videos(args.calibrate)          # a missing or empty directory fails before the export work

    from pipeline.fsutil import check_writable_dir
    from trainer.models import load_checkpoint

    from .exporter import export_bundle

    check_writable_dir(out.resolve().parent)
    checkpoint = resolve_checkpoint(args.source, args.fold)
    model, metadata = load_checkpoint(checkpoint)
    if args.calibrate and metadata.get("kind", "sizer") != "sizer":
        raise ConfigError(f"--calibrate: {checkpoint} is a {metadata.get('kind')} checkpoint; "
                          "only sizer bundles carry a size-interval calibration")
    if args.calibrate:
        bundle = export_calibrated(model, metadata, out, args, argv)
    else:
        bundle = export_bundle(model, metadata, out, opset=args.opset, exporter=args.exporter)
    parity = bundle.provenance.get("exporter", {}).get("onnx_parity_max_abs_error", {})
    print(f"{PROG}: wrote {bundle.path} ({bundle.describe()}; from {checkpoint}; onnxruntime vs torch "
          f"max abs error {', '.join(f'{k} {v:.2g}' for k, v in parity.items())})")
    if bundle.synthetic_training_data:
        print(f"{PROG}: note: {bundle.provenance.get('note')}")
    if args.tensorrt:
        from pipeline.engines.tensorrt_build import prebuild
        # one line per engine build (minutes on a first run), so a long export shows where it is
        paths = prebuild(bundle, batch_sizes=batch_sizes, precision=args.trt_precision, device=args.trt_device,
                         progress=lambda line: print(f"{PROG}: {line}", flush=True))
        for path in paths:
            print(f"{PROG}: tensorrt program {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
