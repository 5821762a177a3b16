"""The pipeline runtime's public names, from the modules that hold them (one job each):

- `pipeline.work`     the work item that travels through the stages (`Work`);
- `pipeline.stages`   the analysis stages, each owning its state (`Analysis`, `BoxProvider`);
- `pipeline.loading`  bundles -> an `Analysis` (`build_analysis`, `default_bundle`);
- `pipeline.offline`  the offline graph (`run_offline`, `run_sequential`);
- `pipeline.live`     the live graph (`LivePipeline`);
- `pipeline.tuning`   process settings for the pipeline's threads.
"""
from __future__ import annotations

from .config import load_run_config
from .live import LivePipeline, LiveScheduling
from .loading import DEFAULT_DETECTOR, DEFAULT_SIZER, build_analysis, default_bundle
from .offline import run_offline, run_sequential
from .sources.base import SourceStatus
from .stages import GROUND_TRUTH_BOXES, Analysis, BoxProvider
from .tuning import freeze_loaded_objects, share_cores_between_threads
from .work import Work

__all__ = ["LivePipeline", "LiveScheduling", "SourceStatus", "Analysis", "BoxProvider", "Work", "run_offline",
           "run_sequential", "build_analysis", "load_run_config", "default_bundle", "share_cores_between_threads",
           "freeze_loaded_objects", "GROUND_TRUTH_BOXES", "DEFAULT_SIZER", "DEFAULT_DETECTOR"]
