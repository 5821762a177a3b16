"""The track panel: every polyp seen so far, its current size and class, a sparkline of its size.

`TrackHistory` collects what the pipeline reported per track (plain data, no Qt); the panel
shows it. The panel is refreshed on a timer, not per frame: a list that changes 30 times a
second cannot be read anyway, and the GUI thread stays free for painting video.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from PyQt6.QtCore import QPointF, QRectF, QSize, Qt, pyqtSignal
from PyQt6.QtGui import QColor, QFont, QPainter, QPainterPath, QPen, QPolygonF
from PyQt6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QVBoxLayout,
                             QWidget)

from pipeline.overlay import CLASS_COLOURS, size_text
from pipeline.types import FrameResult, SizeEstimate
from pipeline.sizeclass import DIMINUTIVE_MAX_MM, LARGE_MIN_MM

GONE_AFTER_S = 1.0     # a track not reported for this long is listed as out of view


@dataclass
class SizePoint:
    time: float          # media seconds
    size_mm: float
    low_mm: float
    high_mm: float


@dataclass
class TrackRecord:
    track_id: int
    first_seen: float
    last_seen: float
    last_frame: int
    estimate: SizeEstimate | None = None     # the newest: size, interval and class shown together
    frames_seen: int = 0
    frames_sized: int = 0
    visible: bool = True                # matched by a detection on the newest report
    points: deque[SizePoint] = field(default_factory=lambda: deque(maxlen=TrackHistory.MAX_POINTS))


class TrackHistory:
    """Per-track history built from the FrameResults shown (each overlay counted once)."""

    MAX_POINTS = 900     # per track; 30 s at 30 fps, older points drop off the sparkline's left

    def __init__(self) -> None:
        self.tracks: dict[int, TrackRecord] = {}
        self._last_overlay = -1
        self.now = 0.0

    def clear(self) -> None:
        self.tracks.clear()
        self._last_overlay = -1

    def update(self, result: FrameResult) -> None:
        self.now = result.frame.pts
        if result.overlay_frame_index == self._last_overlay:
            return       # the same overlay carried onto a newer frame: nothing new
        self._last_overlay = result.overlay_frame_index
        for report in result.tracks:
            if not report.confirmed:
                continue
            record = self.tracks.get(report.track_id)
            if record is None:
                record = TrackRecord(report.track_id, first_seen=self.now, last_seen=self.now,
                                     last_frame=result.overlay_frame_index)
                self.tracks[report.track_id] = record
            record.visible = report.missed == 0
            if record.visible:
                record.last_seen = self.now
                record.last_frame = result.overlay_frame_index
                record.frames_seen += 1
            if report.frame_size_mm is not None:
                record.frames_sized += 1
            est = report.estimate
            if est is not None:
                record.estimate = est
                if record.visible:
                    record.points.append(SizePoint(self.now, est.size_mm, est.low_mm, est.high_mm))
        reported = {r.track_id for r in result.tracks if r.confirmed}
        for track_id, record in self.tracks.items():
            if track_id not in reported:
                record.visible = False

    def in_view(self, record: TrackRecord) -> bool:
        return record.visible or self.now - record.last_seen < GONE_AFTER_S


class Sparkline(QWidget):
    """Size over time: the smoothed size as a line over its interval band, with the 5 and 10 mm
    class boundaries marked, so a class change can be read at a glance."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.points: list[SizePoint] = []
        self.colour = QColor(200, 200, 200)
        self.setMinimumSize(120, 40)

    def sizeHint(self) -> QSize:
        return QSize(300, 44)

    def set_points(self, points: list[SizePoint], colour: QColor) -> None:
        self.points, self.colour = points, colour
        self.update()

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        area = QRectF(self.rect()).adjusted(1, 2, -4, -2)
        painter.fillRect(self.rect(), QColor(26, 27, 31))
        # Scaled to the sizes, not to the early (wide) intervals, so the line keeps its detail.
        top_mm = max([LARGE_MIN_MM * 1.4] + [p.size_mm * 1.3 for p in self.points])

        def y(mm: float) -> float:
            return area.bottom() - min(mm, top_mm) / top_mm * area.height()

        painter.setPen(QPen(QColor(90, 90, 100), 1, Qt.PenStyle.DashLine))
        small = QFont(self.font())
        small.setPixelSize(9)
        painter.setFont(small)
        for mm in (DIMINUTIVE_MAX_MM, LARGE_MIN_MM):
            painter.drawLine(QPointF(area.left(), y(mm)), QPointF(area.right() - 14, y(mm)))
            painter.drawText(QRectF(area.right() - 13, y(mm) - 6, 16, 12), Qt.AlignmentFlag.AlignLeft |
                             Qt.AlignmentFlag.AlignVCenter, f"{mm:g}")
        area.setRight(area.right() - 16)
        painter.setClipRect(area.adjusted(-3, -2, 3, 2))
        if not self.points:
            painter.end()
            return
        t0, t1 = self.points[0].time, self.points[-1].time
        span = max(t1 - t0, 1e-6)

        def x(t: float) -> float:
            return area.left() + (t - t0) / span * area.width() if len(self.points) > 1 else area.right()

        band = QPolygonF([QPointF(x(p.time), y(p.high_mm)) for p in self.points] +
                         [QPointF(x(p.time), y(p.low_mm)) for p in reversed(self.points)])
        fill = QColor(self.colour)
        fill.setAlpha(60)
        path = QPainterPath()
        path.addPolygon(band)
        painter.fillPath(path, fill)
        painter.setPen(QPen(self.colour, 1.6))
        painter.drawPolyline(QPolygonF([QPointF(x(p.time), y(p.size_mm)) for p in self.points]))
        last = self.points[-1]
        painter.setBrush(self.colour)
        painter.drawEllipse(QPointF(x(last.time), y(last.size_mm)), 2.5, 2.5)
        painter.end()


class TrackRow(QFrame):
    """One polyp: colour stripe, id, size with interval and class, state; sparkline on the right."""

    def __init__(self, track_id: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.track_id = track_id
        self._colour = ""
        self._points = -1
        self._last_point = None
        self.stripe = QFrame(self)
        self.stripe.setFixedWidth(5)
        self.title = QLabel(self)
        self.detail = QLabel(self)
        font = QFont(self.title.font())
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.1)
        self.title.setFont(font)
        self.detail.setStyleSheet("color: #a9adb7;")
        self.sparkline = Sparkline(self)
        text = QVBoxLayout()
        text.setSpacing(2)
        text.addWidget(self.title)
        text.addWidget(self.detail)
        text.addWidget(self.sparkline)
        row = QHBoxLayout(self)
        row.setContentsMargins(4, 4, 6, 4)
        row.addWidget(self.stripe)
        row.addLayout(text, 1)

    def show_record(self, record: TrackRecord, in_view: bool) -> None:
        est = record.estimate
        rgb = CLASS_COLOURS[est.size_class if est is not None and est.size_class in CLASS_COLOURS else None]
        colour = QColor(*rgb)
        if not in_view:
            colour = colour.darker(170)
        if colour.name() != self._colour:          # style sheets re-polish: only when it changes
            self._colour = colour.name()
            self.stripe.setStyleSheet(f"background: {self._colour}; border-radius: 2px;")
            self.title.setStyleSheet(f"color: {self._colour};")
        if est is None:
            title = f"#{record.track_id}   sizing..."
        else:
            title = f"#{record.track_id}   " + size_text(est, dash="\u2013")
        state = "in view" if in_view else "out of view"
        detail = (f"{state} \u00b7 seen {record.first_seen:.1f}\u2013{record.last_seen:.1f} s "
                  f"\u00b7 {record.frames_sized} frames sized")
        if title != self.title.text():
            self.title.setText(title)
        if detail != self.detail.text():
            self.detail.setText(detail)
        if len(record.points) != self._points or (record.points and record.points[-1] is not self._last_point):
            self._points = len(record.points)
            self._last_point = record.points[-1] if record.points else None
            self.sparkline.set_points(list(record.points), colour)
        elif self.sparkline.colour != colour:
            self.sparkline.set_points(self.sparkline.points, colour)


class TrackPanel(QWidget):
    """The list of polyps. `track_selected(id)` (-1: none) when the selection changes."""

    track_selected = pyqtSignal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.history = TrackHistory()
        self.header = QLabel("Polyps", self)
        font = QFont(self.header.font())
        font.setBold(True)
        self.header.setFont(font)
        self.list = QListWidget(self)
        self.list.setSelectionMode(QListWidget.SelectionMode.SingleSelection)
        self.list.setVerticalScrollMode(QListWidget.ScrollMode.ScrollPerPixel)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.list.itemSelectionChanged.connect(self._selection_changed)
        self.empty = QLabel("No polyp tracked yet.", self)
        self.empty.setStyleSheet("color: #8a8e98;")
        # What the size interval is calibrated on (or that it is not): under the list.
        self.note = QLabel("", self)
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: #8a8e98; font-size: 11px;")
        self.note.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.header)
        layout.addWidget(self.empty)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.note)
        self._rows: dict[int, tuple[QListWidgetItem, TrackRow]] = {}
        self.setMinimumWidth(330)

    def set_interval_note(self, text: str) -> None:
        """E.g. "90% interval calibrated on synthetic data (...)"; empty hides it."""
        self.note.setText(f"Sizes: {text}" if text else "")
        self.note.setVisible(bool(text))

    def add_result(self, result: FrameResult) -> None:
        self.history.update(result)

    def clear(self) -> None:
        self.history.clear()
        self.list.clear()
        self._rows.clear()
        self.refresh()

    @property
    def row_count(self) -> int:
        return self.list.count()

    def row_ids(self) -> list[int]:
        return [self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())]

    def selected_id(self) -> int | None:
        items = self.list.selectedItems()
        return items[0].data(Qt.ItemDataRole.UserRole) if items else None

    def select(self, track_id: int | None) -> None:
        if track_id is None or track_id not in self._rows:
            self.list.clearSelection()
        else:
            self.list.setCurrentItem(self._rows[track_id][0])

    def refresh(self) -> None:
        """Bring the rows up to date with the history (called on a timer)."""
        for track_id, record in self.history.tracks.items():
            if track_id not in self._rows:
                item = QListWidgetItem()
                item.setData(Qt.ItemDataRole.UserRole, track_id)
                row = TrackRow(track_id)
                item.setSizeHint(row.sizeHint())
                self.list.addItem(item)
                self.list.setItemWidget(item, row)
                self._rows[track_id] = (item, row)
            self._rows[track_id][1].show_record(record, self.history.in_view(record))
        in_view = sum(self.history.in_view(r) for r in self.history.tracks.values())
        self.header.setText(f"Polyps \u2014 {len(self.history.tracks)} seen, {in_view} in view")
        self.empty.setVisible(not self.history.tracks)

    def _selection_changed(self) -> None:
        selected = self.selected_id()
        self.track_selected.emit(-1 if selected is None else int(selected))
