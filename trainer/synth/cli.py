"""`hagview-synth`: render synthetic colonoscopy videos with exact ground truth."""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace

from pipeline.cli_util import ArgumentParser, run_cli
from pipeline.errors import ConfigError
from pipeline.fsutil import check_writable_dir
from .config import PRESETS, load_synth_config, validate_config


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 640x480, got '{text}'")
    return int(match.group(1)), int(match.group(2))


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="hagview-synth", description=__doc__.strip())
    parser.add_argument("--out", required=True, help="output directory (new or empty)")
    parser.add_argument("--videos", type=int, default=1, help="number of videos (default 1)")
    parser.add_argument("--seconds", type=float, help="length of each video in seconds")
    parser.add_argument("--fps", type=float, help="frames per second")
    parser.add_argument("--size", type=_size, help="frame size WIDTHxHEIGHT, e.g. 640x480")
    parser.add_argument("--seed", type=int, default=0, help="run seed: same seed and settings, same frames")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="named settings ('demo': the demo clip)")
    parser.add_argument("--config", help="YAML file with generator settings (polyps, motion, look)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


@run_cli("hagview-synth")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_synth_config(args.config, args.preset)
    changes = {}
    if args.seconds is not None:
        changes["seconds"] = args.seconds
    if args.fps is not None:
        changes["fps"] = args.fps
    if args.size is not None:
        changes["width"], changes["height"] = args.size
    cfg = validate_config(replace(cfg, **changes), "command line")
    if args.videos < 1:
        raise ConfigError(f"--videos must be at least 1, got {args.videos}")
    check_writable_dir(args.out)

    from .writer import generate_dataset   # PyAV only when actually writing
    names = generate_dataset(args.out, cfg, videos=args.videos, seed=args.seed,
                             progress=not args.quiet, overwrite=args.overwrite)
    print(f"hagview-synth: wrote {len(names)} video(s), {cfg.num_frames} frames each, "
          f"{cfg.width}x{cfg.height} at {cfg.fps:g} fps, to {args.out}")
    for name in names:
        print(f"  {args.out}/{name}.mp4")
    return 0


if __name__ == "__main__":
    sys.exit(main())
