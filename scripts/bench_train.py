#!/usr/bin/env python
"""Time per training step: the Gradient Routing step against a plain step of the same network.

Same model (a gated hag_resnet18 by default), same batch, same optimiser settings; the GR step
runs the routing pass (gate gradients only) and the main pass, the plain step one forward and
one backward over every parameter. A gate-free copy of the network with the plain step is
timed as well (the no-gate baseline). Steps of the variants are interleaved, so a machine
that gets slower or faster during the run affects them alike; each figure is the median over
`--steps` steps after `--warmup` steps. Target from the issue: GR step <= 1.8x plain step.

    python scripts/bench_train.py                       # 2 streams, 128 px, batch 16, width 1.0
    python scripts/bench_train.py --paper               # 224 px, batch 32: the paper-size network
    python scripts/bench_train.py --device cuda --amp   # on a GPU, bf16 autocast

Prints a table and writes bench-results/train_step_<model>_<size>px_b<batch>_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline.fsutil import write_json_atomic  # noqa: E402
from trainer.losses import reference_losses  # noqa: E402
from trainer.models import build_model  # noqa: E402
from trainer.routing import GradientRouter, PlainStep  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="hag_resnet18")
    p.add_argument("--streams", default="rgb,mask")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--paper", action="store_true", help="paper-size input: 224 px, batch 32")
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default="bench-results")
    args = p.parse_args(argv)
    if args.paper:
        args.size, args.batch = 224, 32
    return args


def make_model(args, gates: bool, device):
    kwargs = dict(streams=tuple(args.streams.split(",")), input_size=args.size, gates=gates)
    if args.model == "hag_resnet18":
        kwargs["width_mult"] = args.width_mult
    torch.manual_seed(0)
    return build_model(args.model, **kwargs).to(device).train()


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = "bf16" if args.amp else None
    main_loss, routing_loss = reference_losses("regression")

    gated_gr = make_model(args, True, device)
    gated_plain = make_model(args, True, device)
    no_gates = make_model(args, False, device)
    steps = {
        "gr": GradientRouter(gated_gr, torch.optim.Adam(gated_gr.main_parameters(), lr=2e-4),
                             torch.optim.Adam(gated_gr.gate_parameters(), lr=3e-4), main_loss, routing_loss,
                             amp=amp),
        "plain": PlainStep(gated_plain, torch.optim.Adam(gated_plain.parameters(), lr=2e-4), main_loss, amp=amp),
        "plain_no_gates": PlainStep(no_gates, torch.optim.Adam(no_gates.parameters(), lr=2e-4), main_loss, amp=amp),
    }
    generator = torch.Generator().manual_seed(0)
    inputs = {s: torch.rand(args.batch, 3, args.size, args.size, generator=generator).to(device)
              for s in gated_gr.input_names}
    targets = {"size_mm": (torch.rand(args.batch, 1, generator=generator) * 19.5 + 0.5).to(device)}

    # Wall time, and on a CPU also the process's CPU time: on a machine shared with other
    # work the CPU time is what the step itself costs (exact with --threads 1).
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.warmup + args.steps):
        for name, step in steps.items():
            synchronize(device)
            started, started_cpu = time.perf_counter(), time.process_time()
            step.step(inputs, targets)
            synchronize(device)
            if i >= args.warmup:
                wall[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - started_cpu)

    def stats(name: str) -> dict:
        values = wall[name]
        ordered = sorted(values)
        return {"median_ms": 1e3 * statistics.median(values),
                "p90_ms": 1e3 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
                "min_ms": 1e3 * ordered[0], "samples_per_s": args.batch / statistics.median(values),
                "cpu_median_ms": 1e3 * statistics.median(cpu[name]) if device.type == "cpu" else None}

    figures = {name: stats(name) for name in steps}
    ratio = figures["gr"]["median_ms"] / figures["plain"]["median_ms"]
    ratio_no_gates = figures["gr"]["median_ms"] / figures["plain_no_gates"]["median_ms"]
    cpu_ratio = (figures["gr"]["cpu_median_ms"] / figures["plain"]["cpu_median_ms"]
                 if device.type == "cpu" else None)
    result = {
        "benchmark": "train_step", "model": args.model, "streams": args.streams.split(","),
        "input_size": args.size, "batch": args.batch, "width_mult": args.width_mult,
        "device": str(device), "amp": amp, "threads": torch.get_num_threads(),
        "steps": args.steps, "warmup": args.warmup, "variants": figures,
        "ratio_gr_to_plain": ratio, "ratio_gr_to_plain_no_gates": ratio_no_gates,
        "cpu_time_ratio_gr_to_plain": cpu_ratio, "load_average": os.getloadavg(),
        "target_ratio": 1.8, "meets_target": ratio <= 1.8,
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    print(f"{args.model} {args.streams} {args.size}px batch {args.batch} width {args.width_mult} on {device}"
          f" ({torch.get_num_threads()} threads{', bf16' if amp else ''}), median of {args.steps} steps:")
    for name, f in figures.items():
        cpu_text = f", CPU time {f['cpu_median_ms']:.1f} ms" if f["cpu_median_ms"] is not None else ""
        print(f"  {name:15s} {f['median_ms']:9.1f} ms  (p90 {f['p90_ms']:.1f}, {f['samples_per_s']:.1f} "
              f"samples/s{cpu_text})")
    print(f"  GR / plain step (same gated network): {ratio:.2f}x   (target <= 1.8x: "
          f"{'met' if ratio <= 1.8 else 'NOT met'})")
    print(f"  GR / plain step without gates:        {ratio_no_gates:.2f}x")
    if cpu_ratio is not None:
        print(f"  GR / plain step, CPU time:            {cpu_ratio:.2f}x   (load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    out = Path(args.out) / (f"train_step_{args.model}_{args.size}px_b{args.batch}_w{args.width_mult:g}_"
                            f"{device.type}.json")
    write_json_atomic(out, result)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
