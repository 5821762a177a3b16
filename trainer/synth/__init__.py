"""Synthetic colonoscopy videos with exact ground truth (the project's own data: tests, demo, benchmarks)."""
from .config import MotionConfig, PolypConfig, SynthConfig, load_synth_config
from .difficulty import is_difficult_box
from .scene import PolypSpec
from .video import SynthFrame, SyntheticVideo

__all__ = ["SynthConfig", "PolypConfig", "MotionConfig", "load_synth_config", "PolypSpec",
           "SynthFrame", "SyntheticVideo", "generate_dataset", "is_difficult_box"]


def __getattr__(name):
    # The writer pulls in PyAV; import it only when asked for.
    if name == "generate_dataset":
        from .writer import generate_dataset
        return generate_dataset
    raise AttributeError(name)
