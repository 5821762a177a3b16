"""`hagview` on a display Qt cannot use: one line naming the cause (and the apt packages for
missing libraries), exit code 2, never Qt's abort and core dump.

A plugin that really cannot load is made by copying Qt's own xcb plugin and renaming one of the
libraries it needs (same length, so the ELF stays valid) to a version no system has.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _qt_dirs() -> tuple[Path, Path]:
    from PyQt6.QtCore import QLibraryInfo
    plugins = Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath))
    libs = Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.LibrariesPath))
    return plugins / "platforms" / "libqxcb.so", libs


@pytest.fixture
def broken_xcb_env(tmp_path):
    plugin, libs = _qt_dirs()
    if not plugin.is_file() or shutil.which("ldd") is None:
        pytest.skip("no xcb platform plugin in this PyQt6, or no ldd")
    data = plugin.read_bytes()
    needed = b"libxcb-icccm.so.4\0"
    if data.count(needed) != 1:
        pytest.skip("this xcb plugin does not name libxcb-icccm.so.4 once")
    folder = tmp_path / "platforms"
    folder.mkdir()
    (folder / "libqxcb.so").write_bytes(data.replace(needed, b"libxcb-icccm.so.9\0"))
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    env.update(QT_QPA_PLATFORM="xcb", DISPLAY=":199", QT_QPA_PLATFORM_PLUGIN_PATH=str(folder),
               LD_LIBRARY_PATH=str(libs))     # the copy's RUNPATH no longer leads to Qt's own libraries
    return env


def _hagview(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gui.app", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_plugin_that_cannot_load_is_one_line_naming_libraries_and_packages(broken_xcb_env):
    # Qt on its own aborts on this plugin (what a user saw as a core dump) ...
    qt = subprocess.run([sys.executable, "-c", "from PyQt6.QtGui import QGuiApplication; QGuiApplication(['x'])"],
                        env=broken_xcb_env, capture_output=True, text=True, timeout=120)
    assert qt.returncode == -signal.SIGABRT, (qt.returncode, qt.stderr[-500:])
    # ... hagview says why in one line and exits 2, for the viewer and for the check alone.
    for args in (["--source", "demo"], ["--check-display"]):
        done = _hagview(broken_xcb_env, *args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, (done.returncode, done.stderr[-1500:])
        assert lines[0].startswith("hagview: error: Qt's xcb platform plugin cannot load: missing ")
        assert "libxcb-icccm.so.9" in lines[0] and "apt-get install libxcb-icccm4" in lines[0]


def test_no_x_server_is_one_line_and_exit_2(tmp_path):
    from gui.app import platform_problem
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    env["QT_QPA_PLATFORM"] = "xcb"
    cases = [dict(env), {**env, "DISPLAY": ":199"}]      # DISPLAY unset; set, but no server there
    for case in cases:
        done = _hagview(case, "--source", "demo")
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, (done.returncode, done.stderr[-1500:])
        assert lines[0] == f"hagview: error: {platform_problem(case)}"
    if platform_problem(cases[1]).startswith("Qt's xcb platform plugin cannot load"):
        return      # this machine lacks the xcb libraries: the line above named them
    assert "DISPLAY is not set" in platform_problem(cases[0])
    assert "could not connect to display :199" in platform_problem(cases[1])
    assert platform_problem({**env, "QT_QPA_PLATFORM": "offscreen"}) is None
