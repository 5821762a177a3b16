#!/usr/bin/env bash
# The demo. With a display (DISPLAY or WAYLAND_DISPLAY set) that Qt can use it opens the viewer,
# hagview, on the live synthetic demo with the committed demo bundles. Without one (or with
# HAGVIEW_HEADLESS=1, or when `hagview --check-display` says why no window can open) it renders the synthetic demo video (hagview-synth --preset demo) and annotates it headless
# with hagview-annotate (burnt-in video, per-frame results, report), then says where the report is.
# Usage: scripts/demo.sh [OUTPUT_DIR]   (default: ./demo-output)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
cd "$ROOT"

OUT="${1:-$ROOT/demo-output}"

if [ -z "${HAGVIEW_HEADLESS:-}" ] && { [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ]; }; then
    # Qt aborts on a platform plugin it cannot load; hagview checks first and says why in one line.
    if PROBLEM="$(hagview --check-display 2>&1)"; then
        echo "[demo] opening the viewer on the synthetic demo (F1 lists the keys; snapshots and recordings go to $OUT/viewer)"
        exec hagview --source demo --output-dir "$OUT/viewer"
    fi
    echo "[demo] $PROBLEM"
    echo "[demo] annotating the demo headless instead of opening the viewer"
else
    echo "[demo] no display (DISPLAY and WAYLAND_DISPLAY unset): annotating the demo headless instead of opening the viewer"
fi
DATA="$OUT/data"
VIDEO="$DATA/001-001.mp4"
mkdir -p "$OUT"

if [ ! -f "$VIDEO" ]; then
    echo "[demo] rendering the synthetic demo video into $DATA"
    hagview-synth --preset demo --seed 0 --out "$DATA" --overwrite
fi

ARGS=()
if [ ! -f "$ROOT/pipeline/assets/bundles/detector/bundle.json" ]; then
    echo "[demo] no committed detector bundle: tracking and sizing on the generator's ground-truth boxes"
    ARGS+=(--boxes auto)
fi
if [ ! -f "$ROOT/pipeline/assets/bundles/sizer/bundle.json" ]; then
    echo "[demo] no committed sizer bundle: tracking only (no sizes)"
fi

echo "[demo] annotating $VIDEO (headless)"
hagview-annotate "$VIDEO" --out "$OUT/annotated" --render --mot --resume ${ARGS[@]+"${ARGS[@]}"}

echo "[demo] report:          $OUT/annotated/001-001/report.html"
echo "[demo] annotated video: $OUT/annotated/001-001/annotated.mp4"
