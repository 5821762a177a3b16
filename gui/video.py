"""The video area: the newest frame painted at once, the overlay drawn as vectors on top.

The frame's RGB buffer is wrapped by a QImage without copying (the widget keeps the numpy
array alive for as long as the QImage refers to it) and scaled into the widget with its aspect
ratio kept. Boxes, labels and banners are drawn with QPainter in widget coordinates, so text
stays sharp and readable at any window size; `render_annotated` draws the same overlay onto
a full-resolution copy of the frame for snapshots.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from concurrent.futures import Executor

import cv2
import numpy as np
from PyQt6.QtCore import QPointF, QRectF, QSize, Qt, pyqtSignal
from PyQt6.QtGui import QColor, QFont, QFontMetricsF, QImage, QPainter, QPen
from PyQt6.QtWidgets import QSizePolicy, QWidget

from pipeline.overlay import track_colour, track_label
from pipeline.provenance import mark_text
from pipeline.types import FrameResult, TrackReport

PAINT_STAMP = "painted"          # Frame.stamps key: perf_counter() when the frame was on screen
ARRIVAL_STAMP = "gui_arrival"    # Frame.stamps key: perf_counter() when the viewer received it

# Source states that leave no live picture: the last frame is dimmed under a message. An error
# (the analysis stopped, the source failed) is a red banner: frames may still be coming.
_NO_PICTURE_STATES = ("no signal", "reconnecting")
_BACKGROUND = QColor(12, 12, 14)


def wrap_rgb(image: np.ndarray) -> QImage:
    """A QImage over the RGB uint8 HxWx3 buffer itself (no copy); keep `image` alive while used."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected RGB uint8 HxWx3, got {image.dtype} {image.shape}")
    if not image.flags.c_contiguous:
        image = np.ascontiguousarray(image)
    height, width = image.shape[:2]
    return QImage(image.data, width, height, image.strides[0], QImage.Format.Format_RGB888)


def qimage_to_rgb(image: QImage) -> np.ndarray:
    """A QImage as a new RGB uint8 HxWx3 array."""
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    width, height = rgb.width(), rgb.height()
    bits = rgb.constBits()
    bits.setsize(rgb.sizeInBytes())
    rows = np.frombuffer(bits, dtype=np.uint8).reshape(height, rgb.bytesPerLine())
    return rows[:, :width * 3].reshape(height, width, 3).copy()


def fit_rect(image_width: int, image_height: int, area: QRectF) -> QRectF:
    """The largest rectangle of the image's aspect ratio centred in `area`."""
    scale = min(area.width() / image_width, area.height() / image_height)
    width, height = image_width * scale, image_height * scale
    return QRectF(area.x() + (area.width() - width) / 2, area.y() + (area.height() - height) / 2, width, height)


def display_size(image_size: tuple[int, int], area: tuple[int, int]) -> tuple[int, int]:
    """(width, height) at which a frame of `image_size` (width, height) is shown in `area`
    (device pixels), aspect kept; the frame's own size when the area is empty."""
    width, height = image_size
    area_w, area_h = area
    if area_w <= 0 or area_h <= 0:
        return width, height
    scale = min(area_w / width, area_h / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def scale_for_display(image: np.ndarray, area: tuple[int, int], out: np.ndarray | None = None,
                      helper: Executor | None = None) -> np.ndarray:
    """The frame at the size it will be shown in `area` (device pixels), aspect kept.

    The bridge runs it on the pipeline's capture thread, so the GUI thread only blits the picture
    1:1 (cv2's bilinear resize releases the GIL; Qt's smooth scaled blit would hold the GUI thread).
    `out`: a buffer of the display size to write into (no fresh 4-6 MB allocation per frame).
    `helper`: a one-thread executor that shares the work of shrinking the frame (a live 1080p
    frame waits for its scaling; with the other core free it takes about half as long). The
    output is cut into up to `SCALE_BANDS` bands of rows, each starting at an output row that
    maps onto a whole source row, so each band samples the source rows the whole-frame resize
    would (the picture is the same within one grey level: OpenCV's fixed-point row positions
    round a few rows the other way). This thread and the helper take bands in turn; a band the
    helper has not started when this thread is free is done here, so a helper that is not
    scheduled (another program on the other core) costs at most the band it is in the middle
    of, not the whole lower half. The frame itself comes back unchanged when it already fits.
    """
    height, width = image.shape[:2]
    size = display_size((width, height), area)
    if size == (width, height):
        return image
    if out is None or out.shape != (size[1], size[0], 3):
        out = np.empty((size[1], size[0], 3), np.uint8)
    interpolation = cv2.INTER_AREA if size[0] < width / 2 else cv2.INTER_LINEAR
    # Shrinking, no output row of one band samples a source row of the next (enlarging, the rows
    # next to a cut would): only then is the work shared.
    cuts = _exact_cuts(height, size[1]) if helper is not None and size[1] < height else []
    if not cuts:
        return cv2.resize(image, size, dst=out, interpolation=interpolation)
    bands = list(zip([(0, 0)] + cuts, cuts + [(size[1], height)]))
    taken = iter(range(len(bands)))
    state = threading.Condition()
    running = [0]                      # bands being scaled right now

    def work() -> None:
        while True:
            with state:
                index = next(taken, None)
                if index is None:
                    return
                running[0] += 1
            (row, source_row), (end, source_end) = bands[index]
            try:
                cv2.resize(image[source_row:source_end], (size[0], end - row), dst=out[row:end],
                           interpolation=interpolation)
            finally:
                with state:
                    running[0] -= 1
                    state.notify_all()
    shared = helper.submit(work)
    work()
    with state:                        # a band the helper is in the middle of (not one it never took)
        state.wait_for(lambda: running[0] == 0)
    if shared.done() and shared.exception() is not None:
        raise shared.exception()
    return out


SCALE_BANDS = 4


def _exact_cuts(source: int, target: int) -> list[tuple[int, int]]:
    """Up to SCALE_BANDS - 1 (output row, source row) cuts, evenly spread, where output rows map
    onto whole source rows (target * source_row == source * row); [] when there is none inside."""
    step = target // math.gcd(source, target)
    rows = sorted({round(target * k / SCALE_BANDS / step) * step for k in range(1, SCALE_BANDS)})
    return [(r, r * source // target) for r in rows if 0 < r < target]


def track_text(report: TrackReport) -> str:
    """The one track label (pipeline.overlay.track_label), set for the viewer's proportional font."""
    return track_label(report, dash="\u2013", gap="  ")


def paint_overlay(painter: QPainter, tracks: list[TrackReport], target: QRectF, image_size: tuple[int, int], *,
                  selected_id: int | None = None, synthetic: bool = False, font_px: float = 13.0) -> None:
    """Draw the confirmed tracks of one frame (image pixel boxes) onto `target`, where the image
    of `image_size` (width, height) is shown. Boxes are coloured by size class; a coasting track
    (not matched on this frame) is dashed; the selected track gets a white halo, the others fade.
    """
    scale = target.width() / max(1, image_size[0])
    painter.save()
    # Boxes and label plates are axis-aligned: drawn without antialiasing they stay crisp and
    # cost less (text keeps its own antialiasing).
    painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
    font, metrics = _overlay_font(painter.font(), max(9, round(font_px)))
    painter.setFont(font)
    line = max(2.0, font_px / 6.0)
    for report in tracks:
        if not report.confirmed:
            continue
        x1, y1, x2, y2 = report.box
        box = QRectF(target.x() + x1 * scale, target.y() + y1 * scale, (x2 - x1) * scale, (y2 - y1) * scale)
        colour = QColor(*track_colour(report))
        faded = selected_id is not None and report.track_id != selected_id
        if faded:
            colour.setAlpha(110)
        if report.track_id == selected_id:
            painter.setPen(QPen(QColor(255, 255, 255, 230), line * 3.2))
            painter.drawRect(box)
        pen = QPen(colour, line * (1.6 if report.track_id == selected_id else 1.0))
        if report.missed > 0:
            pen.setStyle(Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRect(box)

        text = track_text(report)
        pad = font_px * 0.3
        width, height = metrics.horizontalAdvance(text) + 2 * pad, metrics.height() + pad
        x = min(max(box.left(), target.left()), target.right() - width)
        y = box.top() - height - line
        if y < target.top():                 # no room above: inside the top edge of the box
            y = box.top() + line
        label = QRectF(x, y, width, height)
        painter.fillRect(label, QColor(0, 0, 0, 80 if faded else 170))
        painter.setPen(colour)
        painter.drawText(label, Qt.AlignmentFlag.AlignCenter, text)
    if synthetic:
        _banner(painter, target, mark_text(synthetic), QColor(170, 20, 20, 215), font, metrics, bottom=True)
    painter.restore()


_FONTS: dict[tuple[str, int], tuple[QFont, QFontMetricsF]] = {}


def _overlay_font(base: QFont, pixel_size: int) -> tuple[QFont, QFontMetricsF]:
    """The bold overlay font of `pixel_size` and its metrics, made once per size."""
    key = (base.key(), pixel_size)
    if key not in _FONTS:
        font = QFont(base)
        font.setPixelSize(pixel_size)
        font.setBold(True)
        _FONTS[key] = (font, QFontMetricsF(font))
    return _FONTS[key]


def _banner(painter: QPainter, target: QRectF, text: str, background: QColor, font: QFont,
            metrics: QFontMetricsF, *, bottom: bool) -> None:
    pad = font.pixelSize() * 0.4
    text = metrics.elidedText(text, Qt.TextElideMode.ElideRight, target.width() - 2 * pad)
    width = min(target.width(), metrics.horizontalAdvance(text) + 2 * pad)
    height = metrics.height() + pad
    y = target.bottom() - height if bottom else target.top()
    rect = QRectF(target.left(), y, width, height)
    painter.fillRect(rect, background)
    painter.setPen(QColor(255, 255, 255))
    painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)


def overlay_font_px(target: QRectF) -> float:
    """Label size that stays readable: grows with the shown picture, within 11..22 px."""
    return float(np.clip(min(target.width(), target.height()) / 36.0, 11.0, 22.0))


def render_annotated(result: FrameResult, *, synthetic: bool = False, selected_id: int | None = None) -> QImage:
    """The frame at full resolution with the overlay drawn on it (a new image: for snapshots)."""
    image = result.frame.image
    height, width = image.shape[:2]
    canvas = wrap_rgb(image).copy()     # a deep copy to draw on; the frame stays clean
    painter = QPainter(canvas)
    target = QRectF(0, 0, width, height)
    paint_overlay(painter, result.tracks, target, (width, height), selected_id=selected_id,
                  synthetic=synthetic, font_px=overlay_font_px(target))
    painter.end()
    return canvas


class VideoWidget(QWidget):
    """Shows the newest FrameResult; `show_result` paints it before returning.

    Timing: each shown frame gets `stamps["painted"]` (perf_counter at the end of its paint);
    `display_delays_ms` keeps capture-to-paint delays of the newest frames.
    """

    frame_painted = pyqtSignal(int)        # frame index, after it was painted
    track_clicked = pyqtSignal(int)        # a click on a polyp's box (-1: on no box)
    double_clicked = pyqtSignal()

    def __init__(self, parent: QWidget | None = None, *, history: int = 3000) -> None:
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent, True)   # we fill every pixel
        self.setMinimumSize(320, 180)
        self._result: FrameResult | None = None
        self._image: QImage | None = None          # wraps _pixels (no copy)
        self._pixels: np.ndarray | None = None     # the frame, or its display-sized version
        self.display_area = (0, 0)                 # device pixels; read on the capture thread (bridge)
        self.overlay_enabled = True
        self.synthetic = False
        self.selected_id: int | None = None
        self.state = "paused"
        self.state_message = ""
        self.frames_painted = 0
        self.painted_index = -1
        self.display_delays_ms: deque[float] = deque(maxlen=history)     # capture -> paint
        self.handoff_delays_ms: deque[float] = deque(maxlen=history)     # viewer arrival -> paint
        self.paint_cpu_ms: deque[float] = deque(maxlen=history)          # GUI thread CPU per shown frame
        self._pending_stats = False

    # --- input --------------------------------------------------------------------------
    @property
    def result(self) -> FrameResult | None:
        return self._result

    def show_result(self, result: FrameResult, display: np.ndarray | None = None) -> None:
        """Take the newest frame and paint it now (not at some later update).

        `display`: the frame already scaled to the display area (`scale_for_display`); when
        its size no longer matches (the window was resized meanwhile) Qt scales the frame.
        """
        self._result = result
        self._pixels = display if display is not None else result.frame.image
        self._image = wrap_rgb(self._pixels)
        self._pending_stats = True
        cpu = time.thread_time()      # CPU, not wall time: the viewer's own cost, whatever the machine does
        self.repaint()
        self.paint_cpu_ms.append((time.thread_time() - cpu) * 1e3)

    def resizeEvent(self, event) -> None:
        ratio = self.devicePixelRatioF()
        self.display_area = (round(self.width() * ratio), round(self.height() * ratio))
        super().resizeEvent(event)

    def set_overlay_enabled(self, enabled: bool) -> None:
        self.overlay_enabled = bool(enabled)
        self.update()

    def set_selected(self, track_id: int | None) -> None:
        self.selected_id = track_id
        self.update()

    def set_state(self, state: str, message: str = "") -> None:
        self.state, self.state_message = state, message
        self.update()

    def clear(self) -> None:
        self._result, self._image, self._pixels = None, None, None
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(960, 600)

    def image_rect(self) -> QRectF | None:
        """Where the frame is shown in widget coordinates (None before the first frame)."""
        if self._result is None:
            return None
        return self._placement()[0]

    def _placement(self) -> tuple[QRectF, bool]:
        """(target rectangle, whether the pixels can be blitted 1:1 at its top-left)."""
        height, width = self._result.frame.image.shape[:2]
        ratio = self.devicePixelRatioF()
        target = fit_rect(width, height, QRectF(self.rect()))
        shown_w, shown_h = self._image.width(), self._image.height()
        if abs(shown_w - target.width() * ratio) <= 1.01 and abs(shown_h - target.height() * ratio) <= 1.01:
            x, y = round(target.x()), round(target.y())
            return QRectF(x, y, shown_w / ratio, shown_h / ratio), True
        return target, False

    def track_at(self, x: float, y: float) -> int | None:
        """The confirmed track whose box (as shown) contains the widget point, smallest first."""
        if self._result is None or not self.overlay_enabled:
            return None
        target = self._placement()[0]
        scale = target.width() / self._result.frame.image.shape[1]
        hits = []
        for report in self._result.tracks:
            x1, y1, x2, y2 = report.box
            box = QRectF(target.x() + x1 * scale, target.y() + y1 * scale, (x2 - x1) * scale, (y2 - y1) * scale)
            if report.confirmed and box.adjusted(-4, -4, 4, 4).contains(QPointF(x, y)):
                hits.append((box.width() * box.height(), report.track_id))
        return min(hits)[1] if hits else None

    def mousePressEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            hit = self.track_at(event.position().x(), event.position().y())
            self.track_clicked.emit(-1 if hit is None else hit)
        super().mousePressEvent(event)

    def mouseDoubleClickEvent(self, event) -> None:
        self.double_clicked.emit()
        super().mouseDoubleClickEvent(event)

    # --- painting -----------------------------------------------------------------------
    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        area = QRectF(self.rect())
        result, image = self._result, self._image
        if image is None:
            painter.fillRect(area, _BACKGROUND)
            self._centre_text(painter, area, self._idle_text())
            painter.end()
            return
        target, one_to_one = self._placement()
        # Only the bars around the picture: filling the whole area first costs a frame's worth
        # of memory writes on the GUI thread for pixels the picture then covers.
        left, top, right, bottom = target.left(), target.top(), target.right(), target.bottom()
        for bar in (QRectF(area.left(), area.top(), area.width(), top - area.top()),
                    QRectF(area.left(), bottom, area.width(), area.bottom() - bottom),
                    QRectF(area.left(), top, left - area.left(), target.height()),
                    QRectF(right, top, area.right() - right, target.height())):
            if bar.width() > 0 and bar.height() > 0:
                painter.fillRect(bar, _BACKGROUND)
        frame_size = (result.frame.image.shape[1], result.frame.image.shape[0])
        if one_to_one:
            image.setDevicePixelRatio(self.devicePixelRatioF())
            painter.drawImage(target.topLeft(), image)
        else:
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            painter.drawImage(target, image)
        if self.overlay_enabled:
            paint_overlay(painter, result.tracks, target, frame_size,
                          selected_id=self.selected_id, synthetic=self.synthetic,
                          font_px=overlay_font_px(target))
        if self.state in _NO_PICTURE_STATES:
            painter.fillRect(target, QColor(0, 0, 0, 150))
            self._centre_text(painter, target, self._state_text())
        elif self.state == "error":
            font = QFont(self.font())
            font.setPixelSize(max(11, round(overlay_font_px(target))))
            font.setBold(True)
            painter.setFont(font)
            _banner(painter, target, f"ERROR: {self.state_message}", QColor(163, 32, 32, 230), font,
                    QFontMetricsF(font), bottom=False)
        elif self.state == "paused":
            self._badge(painter, target, "PAUSED")
        elif self.state == "ended":
            self._badge(painter, target, "END")
        painter.end()
        if self._pending_stats:
            self._pending_stats = False
            self._record_paint(result)

    def _record_paint(self, result: FrameResult) -> None:
        now = time.perf_counter()
        stamps = result.frame.stamps
        stamps[PAINT_STAMP] = now
        if "capture" in stamps:
            self.display_delays_ms.append((now - stamps["capture"]) * 1e3)
        if ARRIVAL_STAMP in stamps:
            self.handoff_delays_ms.append((now - stamps[ARRIVAL_STAMP]) * 1e3)
        self.frames_painted += 1
        self.painted_index = result.frame.index
        self.frame_painted.emit(result.frame.index)

    def _idle_text(self) -> str:
        if self.state == "error":
            return f"{self._state_text()}\n\nCtrl+O open a file \u00b7 Ctrl+L a device or stream \u00b7 Ctrl+D the demo"
        if self.state in _NO_PICTURE_STATES:
            return self._state_text()
        return "waiting for the first frame..."

    def _state_text(self) -> str:
        head = self.state.upper()
        return f"{head}\n{self.state_message}" if self.state_message else head

    def _centre_text(self, painter: QPainter, area: QRectF, text: str) -> None:
        font = QFont(self.font())
        font.setPixelSize(max(14, round(min(area.width(), area.height()) / 22)))
        font.setBold(True)
        painter.setFont(font)
        painter.setPen(QColor(235, 235, 235) if self.state != "error" else QColor(255, 120, 110))
        margin = area.width() * 0.06
        painter.drawText(area.adjusted(margin, 0, -margin, 0),
                         Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, text)

    def _badge(self, painter: QPainter, target: QRectF, text: str) -> None:
        font = QFont(self.font())
        font.setPixelSize(max(11, round(overlay_font_px(target))))
        font.setBold(True)
        painter.setFont(font)
        metrics = QFontMetricsF(font)
        pad = font.pixelSize() * 0.5
        rect = QRectF(0, 0, metrics.horizontalAdvance(text) + 2 * pad, metrics.height() + pad)
        rect.moveTopRight(QPointF(target.right() - pad, target.top() + pad))
        painter.fillRect(rect, QColor(0, 0, 0, 170))
        painter.setPen(QColor(255, 255, 255))
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)
