"""The training configuration: one nested schema, a default for every key, strict loading.

A YAML file is the whole experiment. `load_config(path, overrides)` reads it with
`yaml.safe_load`, applies `--set a.b=value` overrides (values parsed as YAML scalars), and
checks every key against the dataclasses below. Unknown keys, wrong types and missing data
paths raise `ConfigError` with one line naming the key (and the closest known key for a typo).

`config_to_dict(cfg)` gives the resolved config (every key, defaults filled in) that a run
directory stores as `config.yaml`; loading that file again gives the same config.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.augment import PairedAugment
from pipeline.configfile import (_build, choices, config_to_dict, parse_overrides,  # noqa: F401 (re-exported)
                                 parse_section, read_yaml_mapping, set_dotted)
from pipeline.errors import ConfigError

TASKS = ("sizer", "detector")
DATA_KINDS = ("realcolon", "sun", "sun_seg", "manifest", "synthetic")
# Still-image polyp sets and frames without polyps: detector data (frames, boxes; no sizes).
IMAGE_SET_KINDS = ("kvasir_seg", "polypgen", "image_folder", "negatives")
HEADS = ("regression", "classification", "both")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine_warm_restarts")
LOSS_KINDS = ("ours", "reference")
SPLIT_METHODS = ("round_robin", "sklearn")
FOLD_PROTOCOLS = ("val_fold", "test_val")
SAMPLINGS = ("uniform", "random")


# --------------------------------------------------------------------------------- schema
@dataclass
class ModelConfig:
    """`trainer.models.build_model(name, ...)`; streams and input size come from data.input."""
    name: str = "hag_resnet18"
    gates: bool = True                    # false: the same network without gates (baseline)
    width_mult: float = 1.0
    hidden: int = 128                     # hidden fully connected width (the reference's configs: 128)
    head: str = choices("regression", HEADS)
    num_classes: int = 3                  # class head: 3 (triclass) or 2 (binary)
    pretrained: str | None = None         # local ImageNet state dict (torchvision / timm names)
    kwargs: dict[str, Any] = field(default_factory=dict)   # further constructor arguments


@dataclass
class InputConfig:
    """The sizer input, `pipeline.prep.SizerInputSpec`: shared by training and serving."""
    streams: tuple[str, ...] = ("rgb", "mask")
    size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    fov_masking: bool = True
    box_grow: float = 0.5
    mode: str = choices("hagview", ("hagview", "reference"))   # reference: its crop geometry (pipeline.prep)


# Training-time augmentation (`trainer.data.augment.PairedAugment`, whose docstring says what each
# setting does); never on validation. The section is `enabled` plus PairedAugment's own fields and
# defaults, so the two cannot drift apart.
AugmentConfig = dataclasses.make_dataclass(
    "AugmentConfig",
    [("enabled", bool, field(default=True))]
    + [(f.name, f.type, field(default=f.default)) for f in dataclasses.fields(PairedAugment)])


@dataclass
class SyntheticConfig:
    """data.kind: synthetic - generated with `trainer.synth.generate_dataset` into a cache."""
    preset: str | None = None             # a named preset of the generator
    config: str | None = None             # a synth YAML file (`load_synth_config`)
    overrides: dict[str, Any] = field(default_factory=dict)   # SynthConfig fields
    videos: int = 12
    seed: int = 0
    cache_dir: str = "~/.cache/hagview/synth"


@dataclass
class DataSourceConfig:
    """Where frames come from; `root` is a dataset directory (manifest: the CSV file)."""
    kind: str = choices("realcolon", DATA_KINDS + IMAGE_SET_KINDS)
    root: str | None = None
    case_pattern: str = "case*"           # SUN: case folders under root
    size_table: str | None = None         # SUN: the per-case size table
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # further reader arguments, checked by the reader (polypgen: centres, block, empty_mask;
    # kvasir_seg: boxes; image_folder: images, masks, name, empty_mask; negatives: name)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceConfig(DataSourceConfig):
    """One entry of `data.sources`: a data set and its sampling weight."""
    # The source's share of each training epoch's polyp frames (and of its frames without a
    # polyp), relative to the other sources' weights; 0 leaves it out of training.
    weight: float = 1.0


@dataclass
class DataConfig(DataSourceConfig):
    # Several data sets at once (real and synthetic); when given, kind/root/... above are unused.
    sources: tuple[SourceConfig, ...] = ()
    split_file: str | None = None         # YAML/JSON {folds: [[polyp ids], ...]} or the official
                                          # split CSV; none: stratified k-fold (split_method)
    folds: int = 6
    split_seed: int = 0                   # the stratified k-fold split (fixed across training seeds)
    # round_robin: ours (trainer.data.splits.make_kfold_splits); sklearn: the reference's
    # StratifiedKFold(folds, shuffle=True, random_state=split_seed) over the polyps' size classes.
    split_method: str = choices("round_robin", SPLIT_METHODS)
    # val_fold: fold k validates, the rest train; test_val (the reference): fold k is the test
    # set, fold k+1 validates, the other folds train.
    protocol: str = choices("val_fold", FOLD_PROTOCOLS)
    min_frames_per_polyp: int = 1         # polyps with fewer frames are dropped (reference: 2)
    fold: int | None = None               # run one fold (0-based); none: every fold
    train_per_polyp: int = 45             # frames sampled per polyp per epoch (reference 45)
    val_per_polyp: int = 300              # frames per polyp for validation (reference 300)
    val_sampling: str = choices("uniform", SAMPLINGS)   # random: redrawn every epoch (reference)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    input: InputConfig = field(default_factory=InputConfig)


@dataclass
class TestDataConfig(DataSourceConfig):
    """An optional held-out test set, evaluated with each fold's best checkpoint."""
    enabled: bool = False
    per_polyp: int = 300


@dataclass
class LossConfig:
    """`smooth_l1 * SmoothL1 + l1 * L1 + l2 * L2` per sample, times the sample's size weight
    (1 up to 5 mm, `weight_above_5` above 5 mm, `weight_at_10` at 10 mm and more); class heads
    add `class_weight` * cross-entropy. kind: reference ignores the size terms and weights and
    uses the loss the reference code runs: unweighted Smooth-L1 (beta 1) on sizes scaled from
    0.5..20 mm to [-1, 1] (trainer.losses.ReferenceSizeLoss)."""
    kind: str = choices("ours", LOSS_KINDS)
    smooth_l1: float = 1.0
    l1: float = 0.0
    l2: float = 0.0
    beta: float = 1.0                     # Smooth-L1 transition point, in mm
    weight_above_5: float = 3.0
    weight_at_10: float = 5.0
    class_weight: float = 1.0
    label_smoothing: float = 0.0


@dataclass
class ScheduleConfig:
    kind: str = choices("cosine_warm_restarts", SCHEDULES)
    restart_epochs: int = 10              # T_0 of the cosine schedule, in epochs
    restart_mult: int = 1                 # T_mult
    min_lr: float = 1e-6


@dataclass
class OptimizerConfig:
    name: str = choices("adam", OPTIMIZERS)
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9                 # sgd only
    clip: float | None = 8.0              # gradient norm clip for the group; none: no clipping
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


def _gate_optimizer() -> OptimizerConfig:
    return OptimizerConfig(lr=3e-4, clip=None, schedule=ScheduleConfig(kind="none"))


@dataclass
class OptimConfig:
    main: OptimizerConfig = field(default_factory=OptimizerConfig)
    gates: OptimizerConfig = field(default_factory=_gate_optimizer)


def _routing_loss() -> LossConfig:
    return LossConfig(weight_above_5=5.0, weight_at_10=10.0)


@dataclass
class RoutingConfig:
    """Gradient Routing; enabled: false trains every parameter with the main optimiser."""
    enabled: bool = True
    reference_accumulation: bool = False  # the reference code's shared gradients (for comparison)
    loss: LossConfig = field(default_factory=_routing_loss)


@dataclass
class DecisionConfig:
    """How predicted sizes become what is shown: recorded in the bundle, used by the pipeline."""
    clamp_mm: tuple[float, float] | None = None   # predictions clamped to [lo, hi] (reference 0.5, 22)
    diminutive_max_mm: float = 5.0        # predicted <= this is diminutive (reference test time 4.75)


@dataclass
class TrainLoopConfig:
    epochs: int = 30
    batch_size: int = 16
    workers: int = 2
    threads: int | None = None            # torch CPU threads in the training process; none: torch's default
    amp: bool = True                      # mixed precision where the device supports it (CUDA)
    seed: int = 0
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    deterministic: bool = True            # deterministic algorithms (slower on GPU)
    steps_per_epoch: int | None = None    # cap, for quick runs; none: the whole training set
    primary_metric: str | None = None     # picks best.pt; none: the task's default (sizer: by head);
                                          # sizer "loss": minimum validation loss (the reference)
    log_every: int = 20                   # progress line every N steps


@dataclass
class OutputConfig:
    dir: str | None = None                # none: runs/<config name>
    report: bool = True                   # fold-K/report.html after every epoch


@dataclass
class TrainConfig:
    task: str = choices("sizer", TASKS)
    task_options: dict[str, Any] = field(default_factory=dict)   # checked by the task itself
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    test: TestDataConfig = field(default_factory=TestDataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    name: str = "run"                     # a label; the config file name when loaded from one


# --------------------------------------------------------------------------------- loading
def load_config(path: str | os.PathLike | None, overrides: list[str] | dict[str, Any] | None = None,
                *, check_paths: bool = True) -> TrainConfig:
    """Read a YAML config (None: all defaults), apply overrides, validate, return the schema.

    `overrides`: `["optim.main.lr=1e-3", ...]` (values are YAML scalars) or `{"a.b": value}`.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        raw = read_yaml_mapping(path)
        raw.setdefault("name", path.stem)
    for key, value in parse_overrides(overrides):
        set_dotted(raw, key, value)
    cfg = _build(TrainConfig, raw, prefix="")
    _check_values(cfg)
    if check_paths:
        check_config_paths(cfg)
    return cfg


def config_to_yaml(cfg) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def check_config_paths(cfg: TrainConfig) -> None:
    """Every path the config names must exist (synthetic data is generated, so it has none)."""
    if cfg.data.sources:
        for i, source in enumerate(cfg.data.sources):
            _check_source_paths(source, f"data.sources[{i}]")
    else:
        _check_source_paths(cfg.data, "data")
    if cfg.test.enabled:
        _check_source_paths(cfg.test, "test")
    if cfg.data.split_file is not None:
        _require_path(cfg.data.split_file, "data.split_file")
    # "efficientnet-lite0" names the weights of an installed package, not a path (detector task)
    if cfg.model.pretrained is not None and cfg.model.pretrained != "efficientnet-lite0":
        _require_path(cfg.model.pretrained, "model.pretrained")


def _check_source_paths(source: DataSourceConfig, prefix: str) -> None:
    if source.kind == "synthetic":
        if source.synthetic.config is not None:
            _require_path(source.synthetic.config, f"{prefix}.synthetic.config")
        return
    if source.root is None:
        raise ConfigError(f"config key '{prefix}.root': required for {prefix}.kind '{source.kind}'")
    _require_path(source.root, f"{prefix}.root")
    if source.kind in ("sun", "sun_seg") and source.size_table is not None:
        _require_path(source.size_table, f"{prefix}.size_table")


def _check_source_weights(sources) -> None:
    for i, source in enumerate(sources):
        if not source.weight >= 0:
            raise ConfigError(f"config key 'data.sources[{i}].weight': must be 0 or more, got {source.weight}")
    if sources and not any(s.weight > 0 for s in sources):
        raise ConfigError("config key 'data.sources': every weight is 0, nothing would be trained on")


def _require_path(path: str, key: str) -> None:
    if not Path(path).expanduser().exists():
        raise ConfigError(f"config key '{key}': path does not exist: {path}")


def _check_values(cfg: TrainConfig) -> None:
    """Range checks the type system cannot express."""
    positive = {
        "data.folds": cfg.data.folds, "data.train_per_polyp": cfg.data.train_per_polyp,
        "data.val_per_polyp": cfg.data.val_per_polyp, "data.input.size": cfg.data.input.size,
        "train.epochs": cfg.train.epochs, "train.batch_size": cfg.train.batch_size,
        "optim.main.lr": cfg.optim.main.lr, "optim.gates.lr": cfg.optim.gates.lr,
        "model.width_mult": cfg.model.width_mult, "train.log_every": cfg.train.log_every,
        "data.synthetic.videos": cfg.data.synthetic.videos,
    }
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"config key '{key}': must be positive, got {value}")
    if cfg.data.min_frames_per_polyp < 1:
        raise ConfigError(f"config key 'data.min_frames_per_polyp': must be 1 or more, "
                          f"got {cfg.data.min_frames_per_polyp}")
    if cfg.data.protocol == "test_val" and cfg.data.folds < 3:
        raise ConfigError(f"config key 'data.protocol': test_val needs at least 3 folds, got {cfg.data.folds}")
    clamp = cfg.decision.clamp_mm
    if clamp is not None and not 0 <= clamp[0] < clamp[1]:
        raise ConfigError(f"config key 'decision.clamp_mm': expected 0 <= lo < hi, got {list(clamp)}")
    if not 0 < cfg.decision.diminutive_max_mm < 10:
        raise ConfigError(f"config key 'decision.diminutive_max_mm': must lie in (0, 10), "
                          f"got {cfg.decision.diminutive_max_mm}")
    _check_source_weights(cfg.data.sources)
    if cfg.train.threads is not None and cfg.train.threads < 1:
        raise ConfigError(f"config key 'train.threads': must be 1 or more, got {cfg.train.threads}")
    if cfg.train.workers < 0:
        raise ConfigError(f"config key 'train.workers': must be 0 or more, got {cfg.train.workers}")
    if cfg.data.fold is not None and not 0 <= cfg.data.fold < cfg.data.folds:
        raise ConfigError(f"config key 'data.fold': {cfg.data.fold} is not a fold of "
                          f"0..{cfg.data.folds - 1} (data.folds = {cfg.data.folds})")
    if cfg.data.folds < 2 and cfg.data.split_file is None:
        raise ConfigError(f"config key 'data.folds': k-fold needs at least 2 folds, got {cfg.data.folds}")
    if not cfg.data.input.streams:
        raise ConfigError("config key 'data.input.streams': at least one stream is needed")
    unknown = [s for s in cfg.data.input.streams if s not in ("rgb", "mask", "depth")]
    if unknown:
        raise ConfigError(f"config key 'data.input.streams': unknown stream '{unknown[0]}' "
                          f"(known: rgb, mask, depth)")
    if cfg.routing.enabled and not cfg.model.gates:
        raise ConfigError("config key 'routing.enabled': Gradient Routing needs gates (model.gates is "
                          "false); set routing.enabled: false for the no-gate baseline")
    device = cfg.train.device
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"config key 'train.device': expected auto, cpu, cuda or cuda:N, got '{device}'")


