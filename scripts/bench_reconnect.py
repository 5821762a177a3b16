#!/usr/bin/env python
"""Losing a live stream and getting it back, per kind of stream, with the shipped settings.

For each kind (udp, http, rtsp-tcp, rtsp-udp, srt; the real servers of tests/_streams.py on
127.0.0.1), a LivePipeline with the committed demo detector plays the stream; the server is
killed mid-stream, kept down for --down seconds, and started again. Measured, --repeats times:
  no signal     from the kill to the viewer's state "no signal" (target <= 2 s)
  reconnect     from the server being ready again to the first frame handed to the display
The reconnect time depends on where the back-off stands when the server returns (0.5 s doubling
to source.reconnect_max_s) and on how long the stream takes to open (probing, a key frame).
A kind that cannot run here is listed with the reason. Printed as a table, saved as JSON under
bench-results/.

  .venv/bin/python scripts/bench_reconnect.py
  .venv/bin/python scripts/bench_reconnect.py --kinds udp rtsp-tcp --down 5 --repeats 3
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _streams import KINDS, StreamServer, Watcher, loss_and_return, unavailable  # noqa: E402
from pipeline.config import load_run_config  # noqa: E402
from pipeline.fsutil import write_json_atomic  # noqa: E402


def measure(kind: str, down_s: float, repeats: int, overrides: list[str]) -> dict:
    from pipeline.runtime import LivePipeline, default_bundle

    why = unavailable(kind)
    if why:
        return {"kind": kind, "skipped": why}
    runs = []
    for _ in range(repeats):
        server = StreamServer(kind, seconds=120)
        config = load_run_config(None, [f"source.rtsp_transport={server.rtsp_transport}", *overrides])
        server.start()
        watcher = Watcher()
        pipe = LivePipeline(server.url, config, detector=default_bundle("detector"),
                            on_result=watcher.on_result, on_state=watcher.on_state)
        try:
            pipe.start()
            result = loss_and_return(server, pipe, watcher, down_s=down_s)
        finally:
            pipe.stop()
            server.stop()
        runs.append({k: result[k] for k in ("no_signal_s", "backlog_s", "no_signal_after_last_frame_s", "reconnect_s",
                                            "frames_while_down", "running_while_down")}
                    | {"reconnects": result["source_counters"]["reconnects"]})
    out = {"kind": kind, "url_scheme": server.url.split(":")[0], "runs": runs}
    for key in ("no_signal_s", "reconnect_s"):
        values = [r[key] for r in runs]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--down", type=float, default=3.0, help="seconds the server stays down (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="loss-and-return cycles per kind (default 3)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="run config override, e.g. --set source.reconnect_max_s=4 (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "bench-results"))
    args = parser.parse_args(argv)
    config = load_run_config(None, list(args.set)).source
    results = []
    for kind in args.kinds:
        results.append(measure(kind, args.down, args.repeats, list(args.set)))
        r = results[-1]
        if "skipped" in r:
            print(f"{kind:9s} skipped: {r['skipped']}", flush=True)
            continue
        ns, rc = r["no_signal_s"], r["reconnect_s"]
        print(f"{kind:9s} no signal {ns['median']:.2f} s (max {ns['max']:.2f})   "
              f"reconnect {rc['median']:.2f} s (min {rc['min']:.2f}, max {rc['max']:.2f})", flush=True)
    report = {
        "what": "no-signal delay after a stream's server is killed, reconnect time after it returns",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_at_end": os.getloadavg()},
        "settings": {"down_s": args.down, "repeats": args.repeats, "overrides": args.set,
                     "no_signal_after_s": config.no_signal_after_s, "read_timeout_s": config.read_timeout_s,
                     "open_timeout_s": config.open_timeout_s, "reconnect_initial_s": config.reconnect_initial_s,
                     "reconnect_max_s": config.reconnect_max_s},
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"reconnect-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    write_json_atomic(path, report)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
