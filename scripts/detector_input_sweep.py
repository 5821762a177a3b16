#!/usr/bin/env python
"""Export one trained detector at several input sizes, for the AP50-against-latency table.

The detector is fully convolutional, so the same weights run at any input size that is a
multiple of 32; only the exported graph's fixed input changes (and with it the cost). Each
size gets its own bundle under OUT/input-<S>/, to be scored with scripts/eval_detector.py and
timed with scripts/bench_detector.py:

  .venv/bin/python scripts/detector_input_sweep.py runs/detector-real --sizes 160,192,224,256 \\
      --out runs/detector-real/sweep
  .venv/bin/python scripts/bench_detector.py --backends onnxruntime \\
      --bundle runs/detector-real/sweep/input-160 --bundle runs/detector-real/sweep/input-192 ...
  .venv/bin/python scripts/eval_detector.py --bundle runs/detector-real/sweep/input-160 --data ...

A size other than the training size measures what the weights do there, not what a model
trained at that size would do (docs/detector.md says which rows are which).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.cli_util import run_cli  # noqa: E402
from pipeline.errors import ConfigError  # noqa: E402


def export_at_sizes(checkpoint: Path, sizes: list[int], out: Path) -> list[Path]:
    from trainer.export.exporter import export_bundle
    from trainer.models import build_model, load_checkpoint

    model, metadata = load_checkpoint(checkpoint)
    if getattr(model, "architecture", "") != "hag_detector":
        raise ConfigError(f"{checkpoint}: not a hag_detector checkpoint")
    written = []
    for size in sizes:
        kwargs = dict(model.init_kwargs, input_size=int(size))
        resized = build_model("hag_detector", **kwargs)
        resized.load_state_dict(model.state_dict())
        meta = copy.deepcopy(metadata)
        meta["input_spec"]["size"] = int(size)
        target = out / f"input-{size}"
        export_bundle(resized.eval(), meta, target)
        written.append(target)
        print(f"exported input {size} px to {target}", flush=True)
    return written


@run_cli("detector_input_sweep")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="hagview-train run directory or a checkpoint (.pt)")
    parser.add_argument("--sizes", default="160,192,224,256", help="comma-separated input sizes (multiples of 32)")
    parser.add_argument("--fold", type=int, default=None)
    parser.add_argument("--out", required=True, help="directory for the bundles")
    args = parser.parse_args(argv)
    from trainer.export.cli import resolve_checkpoint

    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--sizes {args.sizes!r}: expected comma-separated integers") from None
    bad = [s for s in sizes if s < 64 or s % 32]
    if bad:
        raise ConfigError(f"--sizes: {bad[0]} is not a multiple of 32 of at least 64")
    export_at_sizes(resolve_checkpoint(args.run, args.fold), sizes, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
