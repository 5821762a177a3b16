"""`hagview`: the viewer a clinician or researcher watches during a procedure or a replay.

    hagview [--source SRC] [--config FILE] [--sizer BUNDLE] [--detector BUNDLE] [--backend NAME]
            [--record PATH] [--screenshot PATH --exit-after N]

Arguments that are wrong before anything starts (a missing config or bundle, a bad option) give
one line and exit code 2, and so does a display Qt cannot use (a platform plugin whose libraries
are missing, no X server): that is found out before Qt is asked, because Qt aborts the process. Problems of the source itself (a file that does not decode, a device
that is gone) are shown in the window and the program keeps running; a scripted run
(`--exit-after`) then saves its screenshot, prints the message and exits with 1.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.cli_util import EXIT_FAILURE, ArgumentParser, add_run_options, run_cli
from pipeline.errors import ConfigError, HagviewError
from pipeline.fsutil import check_writable_dir

PROG = "hagview"
log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Watch endoscopy video with polyps tracked and sized live "
                       "(HAG+GR models). Research software: not for clinical use.")
    p.add_argument("--source", default="demo", metavar="SRC",
                   help="/dev/videoN, a device index, a video file, a stream URL (rtsp://, udp://, srt://, "
                        "http://) or 'demo' (default: the synthetic demo with the demo bundles)")
    add_run_options(p)
    p.add_argument("--boxes", metavar="FILE",
                   help="given boxes instead of a detector: a synthetic .gt.json, a MOTChallenge text file, "
                        "or 'ground-truth' (the demo's own boxes)")
    p.add_argument("--record", metavar="PATH", help="record to this MP4 from the first frame (crash-safe)")
    p.add_argument("--record-mode", choices=("annotated", "raw"), default="annotated",
                   help="what recordings contain: the overlay burnt in (default) or the clean video")
    p.add_argument("--output-dir", default="hagview-output", metavar="DIR",
                   help="where snapshots/ and recordings/ go (default: %(default)s)")
    p.add_argument("--screenshot", metavar="PATH", help="scripted runs: save a PNG of the window and quit "
                   "(needs --exit-after)")
    p.add_argument("--exit-after", type=int, metavar="N", help="scripted runs: quit after N frames were shown")
    p.add_argument("--fullscreen", action="store_true", help="start in full screen (F11 toggles)")
    p.add_argument("--check-display", action="store_true",
                   help="only check that a window can be opened here: exit 0, or say why not and exit 2")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.screenshot and args.exit_after is None:
        raise ConfigError("--screenshot needs --exit-after N (the number of frames to show first)")
    if args.exit_after is not None and args.exit_after < 1:
        raise ConfigError(f"--exit-after must be >= 1, got {args.exit_after}")
    if args.screenshot and Path(args.screenshot).suffix.lower() != ".png":
        raise ConfigError(f"--screenshot {args.screenshot}: screenshots are PNG files (end the name in .png)")
    if args.record:
        record = Path(args.record)
        if record.suffix.lower() != ".mp4":
            raise ConfigError(f"--record {record}: recordings are MP4 files (end the name in .mp4)")
        if record.is_dir():
            raise ConfigError(f"--record {record}: is a directory")
        check_writable_dir(record.parent if str(record.parent) else ".")
    if args.screenshot:
        check_writable_dir(Path(args.screenshot).parent)
    from pipeline.sources import source_kind
    source_kind(args.source)         # an unsupported stream scheme is a usage error (SourceError)
    for flag, path in (("--sizer", args.sizer), ("--detector", args.detector)):
        if path is not None:
            from pipeline.bundle import load_bundle
            load_bundle(path)        # raises BundleError naming the file and the problem


# Libraries Qt's xcb platform plugin (and the Qt libraries it loads) need from the system, by
# name before ".so", and the Debian/Ubuntu packages that provide them.
QT_SYSTEM_PACKAGES = {
    "libxcb-cursor": "libxcb-cursor0", "libxcb-icccm": "libxcb-icccm4", "libxcb-keysyms": "libxcb-keysyms1",
    "libxcb-image": "libxcb-image0", "libxcb-render-util": "libxcb-render-util0", "libxcb-randr": "libxcb-randr0",
    "libxcb-render": "libxcb-render0", "libxcb-shape": "libxcb-shape0", "libxcb-shm": "libxcb-shm0",
    "libxcb-sync": "libxcb-sync1", "libxcb-util": "libxcb-util1", "libxcb-xfixes": "libxcb-xfixes0",
    "libxcb-xkb": "libxcb-xkb1", "libxcb-xinerama": "libxcb-xinerama0", "libxcb-xinput": "libxcb-xinput0",
    "libxcb": "libxcb1", "libX11-xcb": "libx11-xcb1", "libX11": "libx11-6", "libxkbcommon-x11": "libxkbcommon-x11-0",
    "libxkbcommon": "libxkbcommon0", "libEGL": "libegl1", "libGL": "libgl1", "libOpenGL": "libopengl0",
    "libGLX": "libglx0", "libfontconfig": "libfontconfig1", "libfreetype": "libfreetype6",
    "libdbus-1": "libdbus-1-3", "libglib-2.0": "libglib2.0-0", "libgthread-2.0": "libglib2.0-0",
    "libwayland-client": "libwayland-client0", "libwayland-cursor": "libwayland-cursor0",
    "libwayland-egl": "libwayland-egl1",
}
HEADLESS_PLATFORMS = ("offscreen", "minimal")


def qt_platform(env) -> str:
    """The platform plugin Qt will pick: QT_QPA_PLATFORM's first entry, else wayland in a
    Wayland session, else xcb (Qt's default on Linux)."""
    chosen = env.get("QT_QPA_PLATFORM", "").split(";")[0].split(":")[0].strip()
    if chosen:
        return chosen
    if env.get("WAYLAND_DISPLAY") and env.get("XDG_SESSION_TYPE") == "wayland":
        return "wayland"
    return "xcb"


def missing_libraries(plugin: Path, env) -> list[str]:
    """The shared libraries `plugin` needs that the dynamic loader cannot find (ldd)."""
    ldd = shutil.which("ldd")
    if ldd is None or not plugin.is_file():
        return []
    done = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, env=dict(env), timeout=30)
    return sorted({m.group(1) for m in re.finditer(r"^\s*(\S+) => not found", done.stdout, re.MULTILINE)})


def _package(library: str) -> str | None:
    return QT_SYSTEM_PACKAGES.get(library.split(".so")[0])


def platform_problem(env=None) -> str | None:
    """Why Qt cannot open a window here (one line), or None. Qt itself aborts the process when
    its platform plugin does not load or finds no display, so this looks first: the plugin's
    missing libraries (ldd), then a throw-away process that starts Qt the same way."""
    env = dict(os.environ if env is None else env)
    platform = qt_platform(env)
    if platform in HEADLESS_PLATFORMS:
        return None
    from PyQt6.QtCore import QLibraryInfo

    folders = [p for p in env.get("QT_QPA_PLATFORM_PLUGIN_PATH", "").split(os.pathsep) if p]
    folders.append(os.path.join(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath), "platforms"))
    plugin = next((Path(f) / f"libq{platform}.so" for f in folders if (Path(f) / f"libq{platform}.so").is_file()), None)
    if plugin is None:
        return f"Qt has no {platform!r} platform plugin (QT_QPA_PLATFORM={env.get('QT_QPA_PLATFORM', '')!r})"
    missing = missing_libraries(plugin, env)
    if missing:
        packages = sorted({_package(lib) for lib in missing} - {None})
        unknown = [lib for lib in missing if _package(lib) is None]
        install = f"; install them with: apt-get install {' '.join(packages)}" if packages else ""
        other = f" (no known package for {', '.join(unknown)})" if unknown and packages else ""
        return (f"Qt's {platform} platform plugin cannot load: missing {', '.join(missing)}{install}{other}"
                f"; or run headless with QT_QPA_PLATFORM=offscreen or hagview-annotate")
    if platform == "xcb" and not env.get("DISPLAY"):
        return ("no X display (DISPLAY is not set): run on a desktop, or headless with "
                "QT_QPA_PLATFORM=offscreen or hagview-annotate")
    probe = "from PyQt6.QtGui import QGuiApplication; QGuiApplication(['hagview-probe'])"
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    except subprocess.TimeoutExpired:
        return f"Qt's {platform} platform plugin did not start within 60 s (DISPLAY={env.get('DISPLAY', '')!r})"
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    reason = next((line for line in lines if "could not connect" in line.lower() or "cannot" in line.lower()),
                  lines[0] if lines else f"exit code {done.returncode}")
    return (f"Qt's {platform} platform plugin cannot start: {reason.rstrip('.')}; run on a desktop, or headless "
            f"with QT_QPA_PLATFORM=offscreen or hagview-annotate")


def leave_cores_for_video(config) -> None:
    """With `runtime.inference_threads: 0` (backend default), use half the cores for inference.

    A backend's default thread pool takes every core and spins between runs; in the viewer that
    starves decoding, display scaling and painting (measured with scripts/bench_viewer.py on a
    2-core machine: 1080p30 shown at 0.70x the source rate with the default pool, 0.995x with
    one inference thread). An explicit value in the run config is kept as it is.
    """
    if config.runtime.inference_threads == 0:
        config.runtime.inference_threads = max(1, (os.cpu_count() or 2) // 2)
        log.debug("inference threads: %d (half the cores; set runtime.inference_threads to change)",
                  config.runtime.inference_threads)


def _route_qt_messages() -> None:
    """Qt's own warnings go to logging (debug for the offscreen plugin's harmless notices)."""
    from PyQt6.QtCore import QtMsgType, qInstallMessageHandler

    qt_log = logging.getLogger("qt")

    def handler(kind, context, message: str) -> None:
        if "propagateSizeHints" in message or kind == QtMsgType.QtDebugMsg:
            qt_log.debug("%s", message)
        elif kind == QtMsgType.QtInfoMsg:
            qt_log.info("%s", message)
        else:
            qt_log.warning("%s", message)
    qInstallMessageHandler(handler)


def apply_dark_theme(app) -> None:
    """A dark, low-glare theme: the video is what should be bright in an endoscopy room."""
    from PyQt6.QtGui import QColor, QPalette

    app.setStyle("Fusion")
    palette = QPalette()
    roles = QPalette.ColorRole
    for role, colour in ((roles.Window, "#202227"), (roles.WindowText, "#e3e5ea"), (roles.Base, "#17181c"),
                         (roles.AlternateBase, "#22242a"), (roles.Text, "#e3e5ea"), (roles.Button, "#2a2d34"),
                         (roles.ButtonText, "#e3e5ea"), (roles.Highlight, "#3d6fb6"),
                         (roles.HighlightedText, "#ffffff"), (roles.ToolTipBase, "#2a2d34"),
                         (roles.ToolTipText, "#e3e5ea"), (roles.PlaceholderText, "#8a8e98")):
        palette.setColor(role, QColor(colour))
    app.setPalette(palette)


@run_cli(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check_display:
        problem = platform_problem()
        if problem:
            raise HagviewError(problem)
        return 0
    _check_args(args)
    from pipeline.config import load_run_config
    from pipeline.runtime import default_bundle

    config = load_run_config(args.config, args.set)
    leave_cores_for_video(config)
    sizer = args.sizer or default_bundle("sizer")
    detector = args.detector or (None if args.boxes else default_bundle("detector"))
    if sizer is None:
        log.warning("no sizer bundle (none given, no committed demo bundle): tracking only")

    from PyQt6.QtCore import QTimer
    from PyQt6.QtWidgets import QApplication

    from pipeline.runtime import share_cores_between_threads

    if QApplication.instance() is None:
        problem = platform_problem()
        if problem:
            raise HagviewError(problem)

    from .bridge import PipelineBridge
    from .window import ViewerOptions, ViewerWindow

    # The GUI thread must get the interpreter lock quickly while pipeline threads run Python
    # (tracking, smoothing): with the default 5 ms switch interval a paint can wait that long.
    share_cores_between_threads()
    _route_qt_messages()
    app = QApplication.instance() or QApplication([PROG])
    app.setApplicationName(PROG)
    apply_dark_theme(app)
    options = ViewerOptions(source=args.source, output_dir=Path(args.output_dir),
                            record_path=Path(args.record) if args.record else None, record_mode=args.record_mode,
                            screenshot_path=Path(args.screenshot) if args.screenshot else None,
                            exit_after=args.exit_after, score_threshold=config.detect.score_threshold)
    bridge = PipelineBridge(config=config, sizer=sizer, detector=detector, backend=args.backend, boxes=args.boxes)
    window = ViewerWindow(bridge, options)
    window.finished.connect(app.exit)

    # Ctrl+C and SIGTERM close the window normally, so a recording is finished, not cut.
    previous = {signum: signal.signal(signum, lambda *_: app.quit()) for signum in (signal.SIGINT, signal.SIGTERM)}
    wake = QTimer()
    wake.timeout.connect(lambda: None)      # lets Python run its signal handlers during exec()
    wake.start(250)
    try:
        if args.fullscreen:
            window.act_fullscreen.setChecked(True)
        else:
            window.show()
        bridge.open(args.source)
        code = app.exec()
    finally:
        wake.stop()
        window.close()
        recording = bridge.shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if recording is not None:
        dropped = f" ({recording.frames_dropped} dropped: the encoder fell behind)" if recording.frames_dropped else ""
        print(f"{PROG}: recording: {recording.frames_written} frames{dropped} -> {recording.path}", file=sys.stderr)
    if code and window.error_message:
        print(f"{PROG}: error: {window.error_message}", file=sys.stderr)
    if options.screenshot_path is not None and options.screenshot_path.exists():
        print(f"{PROG}: screenshot: {options.screenshot_path}", file=sys.stderr)
    return code if code in (0, EXIT_FAILURE, 2) else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
