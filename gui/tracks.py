"""The track panel: every polyp seen so far, its current size and class, a sparkline of its size.

`TrackHistory` collects what the pipeline reported per track (pipeline.polyps, plain data, no
Qt); the panel shows it, in the overlay's label and colour. The panel is refreshed on a timer,
not per frame: a list that changes 30 times a second cannot be read anyway, and the GUI thread
stays free for painting video.
"""
from __future__ import annotations

import numpy as np
from PyQt6.QtCore import QPointF, QRectF, QSize, Qt, pyqtSignal
from PyQt6.QtGui import QColor, QFont, QPainter, QPainterPath, QPen, QPolygonF
from PyQt6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QVBoxLayout,
                             QWidget)

from pipeline.overlay import track_colour, track_label
from pipeline.polyps import PolypHistories, PolypHistory
from pipeline.types import FrameResult
from pipeline.sizeclass import DIMINUTIVE_MAX_MM, LARGE_MIN_MM

GONE_AFTER_S = 1.0     # a track not reported for this long is listed as out of view


class TrackHistory:
    """The panel's polyps (pipeline.polyps, the history hagview-annotate keeps too), built from
    the FrameResults shown, each overlay counted once."""

    MAX_POINTS = 900     # per track; 30 s at 30 fps, older points drop off the sparkline's left

    def __init__(self) -> None:
        self.polyps = PolypHistories(max_rows=self.MAX_POINTS)
        self._last_overlay = -1
        self.now = 0.0

    @property
    def tracks(self) -> dict[int, PolypHistory]:
        return self.polyps.polyps

    def clear(self) -> None:
        self.polyps.clear()
        self._last_overlay = -1

    def update(self, result: FrameResult) -> None:
        self.now = result.frame.pts
        if result.overlay_frame_index == self._last_overlay:
            return       # the same overlay carried onto a newer frame: nothing new
        self._last_overlay = result.overlay_frame_index
        self.polyps.add(result.overlay_frame_index, self.now, result.tracks)

    def in_view(self, record: PolypHistory) -> bool:
        return record.visible or self.now - record.last_time < GONE_AFTER_S


class Sparkline(QWidget):
    """Size over time: the smoothed size as a line over its interval band, with the 5 and 10 mm
    class boundaries marked, so a class change can be read at a glance."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.points: tuple[np.ndarray, ...] = (np.empty(0),) * 4      # time, size, low, high
        self.colour = QColor(200, 200, 200)
        self.setMinimumSize(120, 40)

    def sizeHint(self) -> QSize:
        return QSize(300, 44)

    def set_points(self, points: tuple[np.ndarray, ...], colour: QColor) -> None:
        self.points, self.colour = points, colour
        self.update()

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        area = QRectF(self.rect()).adjusted(1, 2, -4, -2)
        painter.fillRect(self.rect(), QColor(26, 27, 31))
        # Scaled to the sizes, not to the early (wide) intervals, so the line keeps its detail.
        times, sizes, lows, highs = self.points
        top_mm = max(LARGE_MIN_MM * 1.4, float(sizes.max()) * 1.3 if sizes.size else 0.0)

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
        if not times.size:
            painter.end()
            return
        times, sizes, lows, highs = (v.tolist() for v in self.points)
        t0, t1 = times[0], times[-1]
        span = max(t1 - t0, 1e-6)

        def x(t: float) -> float:
            return area.left() + (t - t0) / span * area.width() if len(times) > 1 else area.right()

        band = QPolygonF([QPointF(x(t), y(mm)) for t, mm in zip(times, highs)] +
                         [QPointF(x(t), y(mm)) for t, mm in zip(reversed(times), reversed(lows))])
        fill = QColor(self.colour)
        fill.setAlpha(60)
        path = QPainterPath()
        path.addPolygon(band)
        painter.fillPath(path, fill)
        painter.setPen(QPen(self.colour, 1.6))
        painter.drawPolyline(QPolygonF([QPointF(x(t), y(mm)) for t, mm in zip(times, sizes)]))
        painter.setBrush(self.colour)
        painter.drawEllipse(QPointF(x(times[-1]), y(sizes[-1])), 2.5, 2.5)
        painter.end()


class TrackRow(QFrame):
    """One polyp: colour stripe, id, size with interval and class, state; sparkline on the right."""

    def __init__(self, track_id: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.track_id = track_id
        self._colour = ""
        self._points = -1
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

    def show_record(self, record: PolypHistory, in_view: bool) -> None:
        colour = QColor(*track_colour(record))
        if not in_view:
            colour = colour.darker(170)
        if colour.name() != self._colour:          # style sheets re-polish: only when it changes
            self._colour = colour.name()
            self.stripe.setStyleSheet(f"background: {self._colour}; border-radius: 2px;")
            self.title.setStyleSheet(f"color: {self._colour};")
        title = track_label(record, dash="\u2013", gap="   ")
        state = "in view" if in_view else "out of view"
        detail = (f"{state} \u00b7 seen {record.first_time:.1f}\u2013{record.last_time:.1f} s "
                  f"\u00b7 {record.frames_sized} frames sized")
        if title != self.title.text():
            self.title.setText(title)
        if detail != self.detail.text():
            self.detail.setText(detail)
        if record.size_points_added != self._points:
            self._points = record.size_points_added
            self.sparkline.set_points(record.size_points(TrackHistory.MAX_POINTS), colour)
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
