"""Process settings for running the pipeline's threads, made once by an entry point (`hagview`,
`hagview-annotate` and the benchmarks that stand for them)."""
from __future__ import annotations

import gc
import sys


def share_cores_between_threads() -> None:
    """- a 1 ms interpreter switch interval (CPython's default is 5 ms): a thread coming back from
      inference, decoding or painting waits at most that long for the GIL while another runs
      Python (tracking, smoothing), instead of up to 5 ms;
    - OpenCV without its own worker pool: the stages already run in parallel, and on a 2-core
      machine cv2's helpers only take cores from them (a 1080p resize: 1.7 ms on one thread,
      2.0 ms split over two busy cores).
    """
    import cv2

    sys.setswitchinterval(0.001)
    cv2.setNumThreads(1)


def freeze_loaded_objects() -> None:
    """Collect garbage once and move every object alive now (modules, models, the GUI) out of the
    cyclic garbage collector's reach (`gc.freeze`). Called by the viewer after loading a pipeline,
    on its control thread, while no video plays: without it a full collection in the middle of
    playback walks every object of the imported libraries while holding the interpreter lock
    (measured on the 2-core machine of docs/results.md: 76,000 objects, 28 ms; with torch
    loaded 216,000 objects, 110-125 ms, every thread stopped for three to four frames)."""
    gc.collect()
    gc.freeze()
