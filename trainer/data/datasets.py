"""torch Datasets over indexed samples; items are (inputs dict, targets dict) of tensors."""
from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.errors import DataError
from pipeline.prep import SizerInputSpec, prepare_sizer_inputs
from pipeline.sizeclass import binary_index, clip_size, triclass_index
from .augment import PairedAugment, warp_image
from .depth import load_frame_depth
from pipeline.fov import FovMaskCache, estimate_fov_mask
from .images import read_image_rgb
from .records import SampleRecord
from .sampling import drop_sparse_polyps, sample_per_polyp

log = logging.getLogger("hagview.data")

# How many other samples to try before giving up when images cannot be read.
MAX_REPLACEMENT_TRIES = 20


class SizerDataset(Dataset):
    """Sizer training/validation items from sample records.

    Item: inputs {stream: float32 (3,S,S)} as `prepare_sizer_inputs` makes them, targets
    {"size_mm": float32 (1,) clipped to 0.5..20 mm (ours; the reference rescales without
    clipping and clamps its predictions instead, `decision.clamp_mm`) (matches the model's (N,1)
    output once batched), "triclass": int64, "binary": int64, "sample_index": int64 (the
    record in `self.samples` the item came from, for per-polyp evaluation)}.

    frames_per_polyp: when set, each epoch uses that many samples per polyp, redrawn by
    `set_epoch(epoch)` (sampling "random"), or a fixed evenly spaced subset ("uniform").
    An image that cannot be read is logged once and replaced by another sample, so one bad
    file never stops an epoch; DataError only if many in a row fail. With a depth stream, each
    frame's depth map is read from beside the frames (`trainer.data.depth`) and warped with
    the frame by the augmentation; a missing depth map is a DataError naming the file.
    min_frames_per_polyp: polyps with fewer samples are dropped (the reference drops polyps
    with a single frame from training and validation).
    """

    def __init__(self, samples: Sequence[SampleRecord], spec: SizerInputSpec,
                 augment: PairedAugment | None = None, fov_cache: FovMaskCache | None = None, *,
                 frames_per_polyp: int | None = None, sampling: str = "random",
                 sampling_seed: int = 0, min_frames_per_polyp: int = 1):
        self.all_samples = drop_sparse_polyps(samples, min_frames_per_polyp)
        if not self.all_samples:
            raise DataError("sizer dataset: no samples")
        self.spec = spec
        self.augment = augment
        self.fov_cache = fov_cache
        self.frames_per_polyp = frames_per_polyp
        self.sampling = sampling
        self.sampling_seed = sampling_seed
        self.unreadable: set[str] = set()
        self.epoch = 0
        self.samples = self._draw(0)

    def _draw(self, epoch: int) -> list[SampleRecord]:
        if self.frames_per_polyp is None:
            return self.all_samples
        return sample_per_polyp(self.all_samples, self.frames_per_polyp, seed=self.sampling_seed,
                                epoch=epoch, strategy=self.sampling)

    def set_epoch(self, epoch: int) -> None:
        """Redraw the per-polyp subset for this epoch (call before building the loader's iterator)."""
        self.epoch = epoch
        self.samples = self._draw(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int):
        for attempt in range(MAX_REPLACEMENT_TRIES):
            i = (index + attempt) % len(self.samples)
            sample = self.samples[i]
            if sample.image_path in self.unreadable:
                continue
            image = read_image_rgb(sample.image_path)
            if image is not None:
                return i, sample, image
            self.unreadable.add(sample.image_path)
            log.warning("skipped %s: unreadable image; using another sample", sample.image_path)
        raise DataError(f"{self.samples[index].image_path}: this and the next "
                        f"{MAX_REPLACEMENT_TRIES - 1} sample images cannot be read")

    def __getitem__(self, index: int):
        i, sample, image = self._load(index)
        fov = None
        if self.spec.fov_masking:
            fov = (self.fov_cache.get(sample.video, image) if self.fov_cache is not None
                   else estimate_fov_mask(image))
        box = np.asarray(sample.box, dtype=np.float64)[None]
        depth = None
        if "depth" in self.spec.streams:
            depth = load_frame_depth(sample.image_path, sample.video, (image.shape[1], image.shape[0]))
        if self.augment is not None:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
            geometry_rng = copy.deepcopy(rng)      # the same draw, for the depth map
            aug_image, aug_box, aug_fov = self.augment(image, box, rng, mask=fov)
            bw, bh = aug_box[0, 2] - aug_box[0, 0], aug_box[0, 3] - aug_box[0, 1]
            if bw >= 2 and bh >= 2:      # the box survived (not pushed out of the frame)
                image, box, fov = aug_image, aug_box, aug_fov
                if depth is not None:
                    depth = warp_image(depth, self.augment.geometry((image.shape[1], image.shape[0]),
                                                                    geometry_rng))
        batch = prepare_sizer_inputs(image, box, self.spec, fov_mask=fov, depth=depth)
        inputs = {name: torch.from_numpy(arr[0]) for name, arr in batch.items()}
        size = float(sample.size_mm)
        targets = {
            "size_mm": torch.tensor([float(clip_size(size))], dtype=torch.float32),
            "triclass": torch.tensor(triclass_index(size), dtype=torch.int64),
            "binary": torch.tensor(binary_index(size), dtype=torch.int64),
            "sample_index": torch.tensor(i, dtype=torch.int64),
        }
        return inputs, targets
