"""The main window: video with overlay, track panel, controls and the status line.

Everything that can wait (opening, seeking, snapshots, finishing a recording) runs on the
bridge's threads; the GUI thread only paints and reacts.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PyQt6.QtCore import QSize, Qt, QTimer, pyqtSignal
from PyQt6.QtGui import QAction, QCloseEvent, QKeySequence
from PyQt6.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QInputDialog, QLabel,
                             QMainWindow, QMessageBox, QSlider, QSplitter, QStyle, QToolButton, QVBoxLayout, QWidget)

from pipeline.errors import HagviewError
from pipeline.fsutil import atomic_path
from pipeline.provenance import about_text

from .bridge import PipelineBridge, SourceInfo
from .recorder import RECORD_MODES
from .tracks import TrackPanel
from .video import VideoWidget

log = logging.getLogger(__name__)

SPEEDS: tuple[tuple[str, float | None], ...] = (
    ("0.25\u00d7", 0.25), ("0.5\u00d7", 0.5), ("1\u00d7", 1.0), ("2\u00d7", 2.0), ("4\u00d7", 4.0), ("max", None))
SEEK_STEP_S = 5.0
SHORTCUT_HELP = (
    ("Space", "play / pause"), (".", "step one frame (pauses)"), ("\u2190 / \u2192", "back / forward 5 s (files)"),
    ("[ / ]", "slower / faster (0.25\u00d7 to 4\u00d7, max)"), ("O", "overlay on / off"),
    ("\u2191 / \u2193", "confidence threshold up / down"), ("S", "snapshot (PNG raw + overlay, JSON)"),
    ("R", "record MP4 (annotated or raw)"), ("F11 / Esc / double-click", "full screen / leave it"),
    ("P", "track panel"), ("click a box or a row", "highlight that polyp"), ("Ctrl+O", "open a file"),
    ("Ctrl+L", "open a device or stream"), ("Ctrl+D", "open the demo"), ("Ctrl+Q", "quit"),
)

_STATE_STYLES = {
    "playing": "background:#1f7a3a;", "paused": "background:#5a5f6b;", "ended": "background:#5a5f6b;",
    "no signal": "background:#9a6a00;", "reconnecting": "background:#9a6a00;", "error": "background:#a32020;",
}


@dataclass
class ViewerOptions:
    source: str = "demo"
    output_dir: Path = Path("hagview-output")       # snapshots/ and recordings/ go here
    record_path: Path | None = None                 # start recording to this file at once
    record_mode: str = "annotated"
    screenshot_path: Path | None = None             # scripted runs: grab the window ...
    exit_after: int | None = None                   # ... after this many painted frames, then quit
    score_threshold: float = 0.3


def format_time(seconds: float) -> str:
    seconds = max(0.0, seconds)
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _ms(summary: dict | None, key: str) -> str:
    value = (summary or {}).get(key)
    return "\u2013" if value is None else f"{value:.0f}"


class ViewerWindow(QMainWindow):
    finished = pyqtSignal(int)      # scripted runs: the exit code

    def __init__(self, bridge: PipelineBridge, options: ViewerOptions) -> None:
        super().__init__()
        self.bridge = bridge
        self.options = options
        self.info: SourceInfo | None = None
        self.state, self.state_message = "reconnecting", f"opening {options.source}"
        self.latest = None                       # newest FrameResult shown
        self.synthetic = False
        self.error_message = ""
        self._paint_times: deque[float] = deque(maxlen=120)
        self._frames_shown = 0
        self._scripted_done = False
        self._record_started_at = 0.0
        self._stats: dict = {}
        self.setWindowTitle(f"hagview \u2014 {options.source}")

        self.video = VideoWidget(self)
        self.video.set_state(self.state, self.state_message)
        bridge.display_area = lambda: self.video.display_area
        self.panel = TrackPanel(self)
        self.panel.track_selected.connect(lambda tid: self.video.set_selected(None if tid < 0 else tid))
        self.video.track_clicked.connect(lambda tid: self.panel.select(None if tid < 0 else tid))
        self.video.double_clicked.connect(self.toggle_fullscreen)
        self._build_actions()
        controls = self._build_controls()
        left = QWidget(self)
        column = QVBoxLayout(left)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self.video, 1)
        column.addWidget(controls)
        self.splitter = QSplitter(Qt.Orientation.Horizontal, self)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.panel)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 0)
        self.setCentralWidget(self.splitter)
        self._build_status()
        self._build_menus()

        bridge.frame_ready.connect(self._on_frame)
        bridge.state_changed.connect(self._on_state)
        bridge.opened.connect(self._on_opened)
        bridge.stats_ready.connect(self._on_stats)
        bridge.command_failed.connect(self._on_failure)
        bridge.notice.connect(self._on_notice)

        self._ui_timer = QTimer(self)              # panel, seek bar and status: 5 times a second
        self._ui_timer.setInterval(200)
        self._ui_timer.timeout.connect(self._refresh)
        self._ui_timer.start()
        self.resize(1400, 820)

    # --- building ---------------------------------------------------------------------------
    def _action(self, text: str, shortcut: str | QKeySequence.StandardKey | None, slot, *,
                checkable: bool = False, icon: QStyle.StandardPixmap | None = None, tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        if icon is not None:
            action.setIcon(self.style().standardIcon(icon))
        action.setCheckable(checkable)
        keys = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
        action.setToolTip(f"{tip or text} ({keys})" if keys else (tip or text))
        (action.toggled if checkable else action.triggered).connect(slot)
        self.addAction(action)       # shortcuts work in full screen too, whatever has focus
        return action

    def _build_actions(self) -> None:
        px = QStyle.StandardPixmap
        self.act_play = self._action("Pause", Qt.Key.Key_Space, self.toggle_play, icon=px.SP_MediaPause,
                                     tip="Play / pause")
        self.act_step = self._action("Step", Qt.Key.Key_Period, self.step, icon=px.SP_MediaSkipForward,
                                     tip="Next frame (pauses)")
        self.act_back = self._action("Back 5 s", Qt.Key.Key_Left, lambda: self.seek_relative(-SEEK_STEP_S))
        self.act_forward = self._action("Forward 5 s", Qt.Key.Key_Right, lambda: self.seek_relative(SEEK_STEP_S))
        self.act_slower = self._action("Slower", Qt.Key.Key_BracketLeft, lambda: self.change_speed(-1))
        self.act_faster = self._action("Faster", Qt.Key.Key_BracketRight, lambda: self.change_speed(+1))
        self.act_overlay = self._action("Overlay", Qt.Key.Key_O, self.set_overlay, checkable=True,
                                        tip="Overlay on/off (clean video)")
        self.act_overlay.setChecked(True)
        self.act_snapshot = self._action("Snapshot", Qt.Key.Key_S, self.snapshot, icon=px.SP_DialogSaveButton,
                                         tip="Snapshot: PNG with and without overlay")
        self.act_record = self._action("Record", Qt.Key.Key_R, self.set_recording, checkable=True,
                                       tip="Record MP4 (crash-safe)")
        self.act_fullscreen = self._action("Full screen", Qt.Key.Key_F11, self.set_fullscreen, checkable=True,
                                           icon=px.SP_TitleBarMaxButton)
        self.act_leave_fullscreen = self._action("Leave full screen", Qt.Key.Key_Escape,
                                                 lambda: self.act_fullscreen.setChecked(False))
        self.act_panel = self._action("Track panel", Qt.Key.Key_P, lambda on: self.panel.setVisible(on),
                                      checkable=True)
        self.act_panel.setChecked(True)
        self.act_threshold_up = self._action("Raise threshold", Qt.Key.Key_Up,
                                             lambda: self.threshold.setValue(self.threshold.value() + 5))
        self.act_threshold_down = self._action("Lower threshold", Qt.Key.Key_Down,
                                               lambda: self.threshold.setValue(self.threshold.value() - 5))
        self.act_open_file = self._action("Open file...", QKeySequence.StandardKey.Open, self.open_file_dialog)
        self.act_open_source = self._action("Open device or stream...", "Ctrl+L", self.open_source_dialog)
        self.act_demo = self._action("Open the demo", "Ctrl+D", lambda: self.open_source("demo"))
        self.act_quit = self._action("Quit", QKeySequence.StandardKey.Quit, self.close)
        self.act_help = self._action("Keyboard shortcuts", Qt.Key.Key_F1, self.show_shortcuts)
        self.act_about = self._action("About the models", None, self.show_about)

    def _button(self, action: QAction, text_beside: bool = True) -> QToolButton:
        button = QToolButton(self)
        button.setDefaultAction(action)
        button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon if text_beside
                                  else Qt.ToolButtonStyle.ToolButtonIconOnly)
        button.setAutoRaise(True)
        return button

    def _build_controls(self) -> QWidget:
        box = QWidget(self)
        box.setObjectName("controls")
        box.setStyleSheet("#controls { background: #1d1f24; } QLabel { color: #d9dce3; }")
        self.seek_bar = QSlider(Qt.Orientation.Horizontal, box)
        self.seek_bar.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.seek_bar.setEnabled(False)
        self.seek_bar.sliderMoved.connect(self._seek_preview)
        self.seek_bar.sliderReleased.connect(lambda: self.seek_to(self.seek_bar.value() / 1000.0))
        self.seek_bar.actionTriggered.connect(self._seek_bar_action)
        self.time_label = QLabel("--:-- / live", box)
        self.time_label.setMinimumWidth(130)
        self.time_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

        self.speed = QComboBox(box)
        self.speed.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        for text, factor in SPEEDS:
            self.speed.addItem(text, factor)
        self.speed.setCurrentIndex(2)
        self.speed.setToolTip("Replay speed ([ slower, ] faster; max = as fast as possible)")
        self.speed.currentIndexChanged.connect(lambda i: self.bridge.set_speed(self.speed.itemData(i)))

        self.threshold = QSlider(Qt.Orientation.Horizontal, box)
        self.threshold.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.threshold.setRange(0, 100)
        self.threshold.setFixedWidth(120)
        self.threshold.setValue(round(self.options.score_threshold * 100))
        self.threshold.setToolTip("Detection confidence threshold (Up / Down)")
        self.threshold_label = QLabel(box)
        self.threshold_label.setMinimumWidth(82)
        self.threshold.valueChanged.connect(self._threshold_changed)
        self._threshold_changed(self.threshold.value(), send=False)

        self.record_mode = QComboBox(box)
        self.record_mode.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.record_mode.addItems(RECORD_MODES)
        self.record_mode.setCurrentText(self.options.record_mode)
        self.record_mode.setToolTip("What Record writes: the overlay burnt in, or the clean video")

        seek_row = QHBoxLayout()
        seek_row.addWidget(self.seek_bar, 1)
        seek_row.addWidget(self.time_label)
        buttons = QHBoxLayout()
        for action in (self.act_play, self.act_step):
            buttons.addWidget(self._button(action))
        buttons.addWidget(QLabel(" speed", box))
        buttons.addWidget(self.speed)
        buttons.addSpacing(12)
        buttons.addWidget(self._button(self.act_overlay))
        buttons.addWidget(QLabel(" confidence", box))
        buttons.addWidget(self.threshold)
        buttons.addWidget(self.threshold_label)
        buttons.addStretch(1)
        buttons.addWidget(self._button(self.act_snapshot))
        self.record_button = self._button(self.act_record)
        buttons.addWidget(self.record_button)
        buttons.addWidget(self.record_mode)
        buttons.addWidget(self._button(self.act_fullscreen, text_beside=False))
        layout = QVBoxLayout(box)
        layout.setContentsMargins(8, 4, 8, 4)
        layout.setSpacing(2)
        layout.addLayout(seek_row)
        layout.addLayout(buttons)
        return box

    def _build_status(self) -> None:
        bar = self.statusBar()
        bar.setStyleSheet("QStatusBar { background: #15161a; } QStatusBar QLabel { color: #d9dce3; padding: 0 6px; }"
                          "QStatusBar::item { border: none; }")

        def label(tip: str) -> QLabel:
            widget = QLabel(bar)
            widget.setToolTip(tip)
            return widget

        self.state_label = label("Source state")
        self.fps_label = label("Frames per second: arriving from the source / leaving the pipeline / painted")
        self.delay_label = label("Overlay (annotation) delay: frame capture to its overlay being ready, p50 / p99;"
                                 " display delay: capture to paint, p99")
        self.backend_label = label("Inference backend")
        self.models_label = label("Models")
        self.synthetic_label = label("The models were trained on synthetic data")
        self.synthetic_label.setStyleSheet("background:#a32020; color:white; font-weight:bold; border-radius:3px;")
        self.synthetic_label.setText("\u26a0 SYNTHETIC-TRAINED MODEL")
        self.synthetic_label.setToolTip("A model was trained on synthetic data: not for clinical use")
        self.synthetic_label.hide()
        self.message_label = label("Last message")
        self.recording_label = label("Recording")
        self.recording_label.setStyleSheet("color:#ff6b6b; font-weight:bold;")
        self.recording_label.hide()
        bar.addWidget(self.state_label)
        bar.addWidget(self.fps_label)
        bar.addWidget(self.delay_label)
        bar.addWidget(self.recording_label)
        bar.addWidget(self.message_label, 1)
        bar.addPermanentWidget(self.synthetic_label)
        bar.addPermanentWidget(self.backend_label)
        bar.addPermanentWidget(self.models_label)
        self._show_state()
        self.fps_label.setText("\u2013 fps")
        self.delay_label.setText("overlay delay \u2013 ms")

    def _build_menus(self) -> None:
        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        for action in (self.act_open_file, self.act_open_source, self.act_demo):
            file_menu.addAction(action)
        file_menu.addSeparator()
        file_menu.addAction(self.act_snapshot)
        file_menu.addAction(self.act_record)
        file_menu.addSeparator()
        file_menu.addAction(self.act_quit)
        playback = menu.addMenu("&Playback")
        for action in (self.act_play, self.act_step, self.act_back, self.act_forward, self.act_slower,
                       self.act_faster, self.act_threshold_up, self.act_threshold_down):
            playback.addAction(action)
        view = menu.addMenu("&View")
        for action in (self.act_overlay, self.act_panel, self.act_fullscreen):
            view.addAction(action)
        help_menu = menu.addMenu("&Help")
        help_menu.addAction(self.act_help)
        help_menu.addAction(self.act_about)

    # --- pipeline events --------------------------------------------------------------------
    def _on_frame(self) -> None:
        result = self.bridge.take_result()
        if result is None:
            return
        self.video.show_result(result, result.display)     # painted before this returns
        self.bridge.frame_shown(result.display)
        self.panel.add_result(result)
        self.latest = result
        self._frames_shown += 1
        self._paint_times.append(time.perf_counter())
        if self.options.exit_after and self._frames_shown >= self.options.exit_after:
            self._finish_scripted(0)

    def _on_state(self, state: str, message: str) -> None:
        self.state, self.state_message = state, message
        self.video.set_state(state, message)
        playing = state not in ("paused", "ended", "error")
        self.act_play.setText("Pause" if playing else "Play")
        self.act_play.setIcon(self.style().standardIcon(
            QStyle.StandardPixmap.SP_MediaPause if playing else QStyle.StandardPixmap.SP_MediaPlay))
        if state == "error":
            self.error_message = message
        self._show_state()
        if self.options.exit_after and state in ("error", "ended") and not self._scripted_done:
            # A scripted run that cannot reach its frame count still leaves its screenshot.
            QTimer.singleShot(300, lambda: self._finish_scripted(1 if state == "error" else 0))

    def _on_opened(self, info: SourceInfo) -> None:
        self.info = info
        self.panel.clear()
        self.setWindowTitle(f"hagview \u2014 {info.spec}")
        self.seek_bar.setEnabled(info.seekable and bool(info.duration))
        self.seek_bar.setRange(0, int((info.duration or 0) * 1000))
        self.speed.setEnabled(not info.live)
        models = info.model_info or {}
        # the banner text (pipeline.provenance.model_mark) travels as the `synthetic` flag
        self.synthetic = models.get("mark") or False
        self.models = models
        self.video.synthetic = self.synthetic
        self.synthetic_label.setVisible(bool(self.synthetic))
        if self.synthetic:
            self.synthetic_label.setText("\u26a0 " + self.synthetic.split(" - ")[0])
            self.synthetic_label.setToolTip(about_text(models))
        self.panel.set_interval_note(str(models.get("interval") or ""))
        self.backend_label.setText(info.backend)
        text, tip = self._models_text(models)
        self.models_label.setText(text)
        self.models_label.setToolTip(tip)
        # The slider may have moved before this source opened: the new pipeline gets its value.
        self.bridge.set_score_threshold(self.threshold.value() / 100.0)
        if self.options.record_path is not None and self.bridge.recorder is None:
            self._start_recording(self.options.record_path)

    @staticmethod
    def _models_text(models: dict) -> tuple[str, str]:
        """(short text for the status line, full description for its tooltip)."""
        short, full = [], []
        for kind in ("detector", "sizer"):
            entry = models.get(kind)
            if entry:
                data = ", ".join(entry.get("data") or [])
                short.append(str(entry.get("architecture") or entry.get("name")) + (f" ({data})" if data else ""))
                full.append(f"{kind}: {entry.get('path')} ({entry.get('architecture')}"
                            f"{', synthetic training data' if entry.get('synthetic') else ''})")
        if models.get("boxes"):
            short.append(f"boxes {Path(str(models['boxes'])).name}")
            full.append(f"given boxes: {models['boxes']}")
        if not models.get("sizer"):
            short.append("no sizer")
            full.append("no sizer bundle: tracking only")
        return " + ".join(short), "\n".join(full)

    def _on_stats(self, stats: dict) -> None:
        self._stats = stats
        annotation = stats.get("annotation_delay")
        display = list(self.video.display_delays_ms)[-300:]
        display_p99 = f"{np.percentile(display, 99):.0f}" if display else "\u2013"
        self.delay_label.setText(f"overlay delay {_ms(annotation, 'p50_ms')} / {_ms(annotation, 'p99_ms')} ms"
                                 f" \u00b7 display {display_p99} ms")
        recording = stats.get("recording")
        if recording and recording.get("error") and recording["error"] != self.error_message:
            self._on_failure(recording["error"])

    def _on_failure(self, message: str) -> None:
        self.error_message = message
        self.message_label.setText(message)
        self.message_label.setStyleSheet("color:#ff8a80;")
        self.message_label.setToolTip(message)
        log.warning("%s", message)

    def _on_notice(self, message: str) -> None:
        self.message_label.setText(message)
        self.message_label.setStyleSheet("")
        self.message_label.setToolTip(message)

    # --- periodic refresh -------------------------------------------------------------------
    def painted_fps(self) -> float:
        times = [t for t in self._paint_times if t > time.perf_counter() - 2.0]
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 and times[-1] > times[0] else 0.0

    def _refresh(self) -> None:
        self.panel.refresh()
        stats = self._stats
        self.fps_label.setText(f"{stats.get('fps_in') or 0:.1f} in \u00b7 {stats.get('fps_out') or 0:.1f} out"
                               f" \u00b7 {self.painted_fps():.1f} shown fps")
        if self.latest is not None:
            position = self.latest.frame.pts
            duration = self.info.duration if self.info else None
            if duration:
                self.time_label.setText(f"{format_time(position)} / {format_time(duration)}")
                if not self.seek_bar.isSliderDown():
                    self.seek_bar.blockSignals(True)
                    self.seek_bar.setValue(int(position * 1000))
                    self.seek_bar.blockSignals(False)
            else:
                self.time_label.setText(f"{format_time(position)} \u00b7 live")
        recorder = self.bridge.recorder
        if recorder is not None:
            elapsed = time.monotonic() - self._record_started_at
            dropped = f", {recorder.frames_dropped} dropped" if recorder.frames_dropped else ""
            self.recording_label.setText(f"\u25cf REC {format_time(elapsed)} ({recorder.frames_written} frames"
                                         f"{dropped})")

    def _show_state(self) -> None:
        text = self.state if not self.state_message else f"{self.state}: {self.state_message}"
        self.state_label.setText(f" {text} ")
        self.state_label.setToolTip(text)
        self.state_label.setStyleSheet(f"{_STATE_STYLES.get(self.state, '')} color:white; border-radius:3px;")

    def status_text(self) -> str:
        """Everything the status line says (tests and scripted runs read it)."""
        labels = (self.state_label, self.fps_label, self.delay_label, self.recording_label, self.message_label,
                  self.synthetic_label, self.backend_label, self.models_label)
        return " | ".join(label.text().strip() for label in labels if label.isVisible() or label is self.state_label)

    # --- controls ---------------------------------------------------------------------------
    def open_source(self, source: str) -> None:
        self.stop_recording()
        self.video.clear()
        self.latest = None
        self.error_message = ""
        self.options.source = source
        self.bridge.open(source)

    def open_file_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a video", "",
                                              "Videos (*.mp4 *.mkv *.avi *.mov *.webm *.ts);;All files (*)")
        if path:
            self.open_source(path)

    def open_source_dialog(self) -> None:
        text, ok = QInputDialog.getText(self, "Open a device or stream",
                                        "Device (/dev/video0 or 0) or stream URL (rtsp://, udp://, srt://, http://):")
        if ok and text.strip():
            self.open_source(text.strip())

    def toggle_play(self) -> None:
        if self.state == "ended" and self.info is not None and self.info.seekable:
            self.panel.clear()
            self.bridge.seek(0.0)
            self.bridge.resume()
        elif self.state in ("paused", "ended"):
            self.bridge.resume()
        else:
            self.bridge.pause()

    def step(self) -> None:
        self.bridge.step()

    def seek_to(self, seconds: float) -> None:
        if self.info is None or not self.info.seekable:
            self._on_failure("seek: this source cannot seek (live)")
            return
        duration = self.info.duration or 0.0
        self.panel.clear()            # the tracker starts over at the new position
        self.bridge.seek(min(max(0.0, seconds), max(0.0, duration - 0.05)))

    def seek_relative(self, delta: float) -> None:
        position = self.latest.frame.pts if self.latest is not None else 0.0
        self.seek_to(position + delta)

    def _seek_preview(self, value: int) -> None:
        if self.info and self.info.duration:
            self.time_label.setText(f"{format_time(value / 1000)} / {format_time(self.info.duration)}")

    def _seek_bar_action(self, action: int) -> None:
        if action in (QSlider.SliderAction.SliderPageStepAdd.value, QSlider.SliderAction.SliderPageStepSub.value):
            self.seek_to(self.seek_bar.sliderPosition() / 1000.0)

    def change_speed(self, direction: int) -> None:
        if self.speed.isEnabled():
            self.speed.setCurrentIndex(min(max(0, self.speed.currentIndex() + direction), self.speed.count() - 1))

    def _threshold_changed(self, value: int, send: bool = True) -> None:
        self.threshold_label.setText(f"\u2265 {value / 100:.2f}")
        if send:
            self.bridge.set_score_threshold(value / 100.0)

    def set_overlay(self, enabled: bool) -> None:
        self.video.set_overlay_enabled(enabled)

    def snapshot(self) -> None:
        if self.latest is None:
            self._on_failure("snapshot: no frame yet")
            return
        self.bridge.snapshot(self.latest, self.options.output_dir / "snapshots", synthetic=self.synthetic,
                             selected_id=self.video.selected_id)

    def set_recording(self, on: bool) -> None:
        if on and self.bridge.recorder is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            mode = self.record_mode.currentText()
            self._start_recording(self.options.output_dir / "recordings" / f"hagview-{stamp}-{mode}.mp4")
        elif not on:
            self.stop_recording()

    def _start_recording(self, path: Path) -> None:
        try:
            recorder = self.bridge.start_recording(path, mode=self.record_mode.currentText(),
                                                   synthetic=self.synthetic)
        except (HagviewError, ValueError, OSError) as exc:
            self._on_failure(f"record: {exc}")
            self.act_record.blockSignals(True)
            self.act_record.setChecked(False)
            self.act_record.blockSignals(False)
            return
        self._record_started_at = time.monotonic()
        self.record_mode.setEnabled(False)
        self.act_record.blockSignals(True)
        self.act_record.setChecked(True)
        self.act_record.blockSignals(False)
        self.recording_label.setText("\u25cf REC")
        self.recording_label.show()
        self._on_notice(f"recording ({recorder.mode}) to {recorder.path}")

    def stop_recording(self) -> None:
        self.bridge.stop_recording()
        self.record_mode.setEnabled(True)
        self.recording_label.hide()
        self.act_record.blockSignals(True)
        self.act_record.setChecked(False)
        self.act_record.blockSignals(False)

    def toggle_fullscreen(self) -> None:
        self.act_fullscreen.setChecked(not self.act_fullscreen.isChecked())

    def show_about(self) -> None:
        QMessageBox.information(self, "About hagview's models", about_text(getattr(self, "models", None)))

    def show_shortcuts(self) -> None:
        rows = "".join(f"<tr><td><b>{keys}</b></td><td>&nbsp;&nbsp;{what}</td></tr>" for keys, what in SHORTCUT_HELP)
        QMessageBox.information(self, "hagview keyboard shortcuts", f"<table>{rows}</table>")

    def set_fullscreen(self, on: bool) -> None:
        if on:
            self.showFullScreen()
        else:
            self.showNormal()

    # --- scripted runs and closing ----------------------------------------------------------
    def save_screenshot(self, path: Path) -> Path:
        self.panel.refresh()
        image = self.grab()
        with atomic_path(path) as tmp:
            if not image.save(str(tmp), "PNG"):
                raise HagviewError(f"{path}: could not write the screenshot")
        return path

    def _finish_scripted(self, code: int) -> None:
        if self._scripted_done:
            return
        self._scripted_done = True
        self._refresh()
        if self.options.screenshot_path is not None:
            try:
                self.save_screenshot(self.options.screenshot_path)
            except (HagviewError, OSError) as exc:
                self._on_failure(f"screenshot: {exc}")
                code = code or 2
        self.finished.emit(code)

    def closeEvent(self, event: QCloseEvent) -> None:
        self._ui_timer.stop()
        super().closeEvent(event)

    def sizeHint(self) -> QSize:
        return QSize(1400, 820)
