# Sourced by scripts/test.sh and scripts/demo.sh: installs the system packages the viewer and the
# stream tests use (as root with apt, e.g. CI), creates .venv if missing and installs the project
# into it. Idempotent: a second run checks what is installed and returns quickly.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Debian/Ubuntu packages: the libraries Qt's xcb platform plugin needs (a minimal system lacks
# them and Qt would abort), Xvfb (a real X server for the viewer tests), v4l-utils (v4l2-ctl, to
# check a capture card), and the real stream servers of tests/test_live_streams.py: ffmpeg (UDP,
# HTTP, SRT) and GStreamer's RTSP server on Debian's python3 (python3-gi).
SYSTEM_PACKAGES=(
    libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-randr0
    libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libxcb-sync1 libxcb-shm0 libxkbcommon-x11-0 libx11-xcb1
    libegl1 libgl1 libfontconfig1 libdbus-1-3
    xvfb xauth v4l-utils ffmpeg
    python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
    gstreamer1.0-plugins-ugly
)
install_system_packages() {
    # Only as root with apt, and only what is missing (dpkg-query answers in milliseconds);
    # HAGVIEW_NO_APT=1 skips it. Without them the tests that need them skip and say why.
    [ -z "${HAGVIEW_NO_APT:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && command -v dpkg-query >/dev/null || return 0
    local installed missing=() pkg
    installed=" $({ dpkg-query -W -f='${db:Status-Abbrev}|${Package}\n' "${SYSTEM_PACKAGES[@]}" 2>/dev/null || true; } \
        | awk -F'|' '$1 ~ /^ii/ {printf "%s ", $2}') "
    for pkg in "${SYSTEM_PACKAGES[@]}"; do
        [[ "$installed" == *" $pkg "* ]] || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "[setup] apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}"; } >/dev/null; then
        echo "[setup] warning: apt-get could not install ${missing[*]}; the tests that need them will skip" >&2
    fi
}
install_system_packages
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PY" -m venv "$VENV"
fi
# torch is pinned to the CPU wheel this machine kind ships; any other spec pulls CUDA packages.
TORCH_SPEC="${HAGVIEW_TORCH_SPEC:-torch==2.13.0}"
STAMP="$VENV/.hagview-installed"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[setup] installing hagview and its dependencies into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
    # Everything: the runtime (the base install), training and export (train), the tests (dev).
    "$VENV/bin/python" -m pip install -q -e "$ROOT[train,dev]"
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
