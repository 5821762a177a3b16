"""The FOV mask is estimated again on a scene change, not on a timer (pipeline.fov.BorderWatch,
pipeline.stages.PreprocessStage): frames drawn like an endoscope's picture (a lit disk in a black
border, the tower's text in a corner, a dark lumen moving inside)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.fov import BorderWatch, estimate_fov_mask
from pipeline.stages import PreprocessStage
from pipeline.types import Frame
from pipeline.work import Work


def scope_frame(width: int = 640, height: int = 480, *, radius: int = 230, centre=None, lumen=(320, 240),
                clock: str = "12:00:00") -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    cx, cy = centre or (width // 2, height // 2)
    cv2.circle(image, (cx, cy), radius, (190, 95, 80), -1)
    cv2.circle(image, lumen, 60, (12, 6, 5), -1)                       # the dark lumen
    cv2.putText(image, f"ID 0001 {clock}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (230, 230, 230), 1)
    return image


def test_border_watch_ignores_what_moves_inside_and_the_clock():
    first = scope_frame()
    watch = BorderWatch()
    watch.reset(first, estimate_fov_mask(first))
    for step in range(1, 40):
        lumen = (320 + int(120 * np.cos(step / 5)), 240 + int(100 * np.sin(step / 5)))
        frame = scope_frame(lumen=lumen, clock=f"12:00:{step:02d}")
        assert not watch.changed(frame), f"step {step}"


@pytest.mark.parametrize("other", [
    scope_frame(radius=180),                     # another scope: a smaller field of view
    scope_frame(centre=(380, 240)),              # the picture moved on the screen
    np.zeros((480, 640, 3), np.uint8),           # a blank frame (scope out, input lost)
    scope_frame(radius=400),                     # no border at all
    scope_frame(800, 600),                       # another frame size
])
def test_border_watch_sees_another_field_of_view(other):
    first = scope_frame()
    watch = BorderWatch()
    assert watch.changed(first)                  # nothing watched yet
    watch.reset(first, estimate_fov_mask(first))
    assert not watch.changed(first.copy())
    assert watch.changed(other)


def _run(stage: PreprocessStage, images) -> list[np.ndarray]:
    masks = []
    for i, image in enumerate(images):
        work = stage.process(Work(frame=Frame(image=image, index=i, pts=i / 25.0), generation=0))
        masks.append(work.fov_mask)
    return masks


def test_preprocess_estimates_once_per_scene():
    scene_a = [scope_frame(lumen=(300 + i, 240), clock=f"12:00:{i:02d}") for i in range(40)]
    scene_b = [scope_frame(radius=180, lumen=(300 + i, 240)) for i in range(40)]
    stage = PreprocessStage(True, refresh_frames=300)
    masks = _run(stage, scene_a + scene_b)
    assert stage.estimates == 2                  # one per scene, none in between
    assert all(m is masks[0] for m in masks[:40])
    assert np.array_equal(masks[-1], estimate_fov_mask(scene_b[0]))
    # Without the watch the first scene's mask stays until the timer runs out.
    timer = PreprocessStage(True, refresh_frames=300, scene_watch=False)
    stale = _run(timer, scene_a + scene_b)
    assert timer.estimates == 1 and stale[-1] is stale[0]
    # The timer is the backstop: at the latest every refresh_frames analysed frames.
    backstop = PreprocessStage(True, refresh_frames=25)
    _run(backstop, scene_a)
    assert backstop.estimates == 2
