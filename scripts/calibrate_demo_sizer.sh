#!/usr/bin/env bash
# Calibrate the committed demo sizer's size interval on held-out synthetic videos.
#
#   scripts/calibrate_demo_sizer.sh [WORK_DIR]      (default WORK_DIR: runs/demo-sizer-calibration)
#
# 1. hagview-synth renders 60 videos (runs 1901 and 1903: 24 + 36 videos, 640x480, 10 fps, 8 s,
#    2-3 polyps of 2-20 mm, the demo sizer's training distribution). The sizer trained on run 21
#    and the detector on run 11; trainer.calibrate refuses videos rendered from training seeds.
#    scripts/bench_calibration.py evaluates on runs 1902 and 1904, which neither saw.
# 2. python -m trainer.calibrate runs the pipeline on them with given boxes and with the demo
#    detector's boxes and writes the interval tables into pipeline/assets/bundles/sizer/bundle.json
#    (the model files are untouched). Re-run it after retraining the sizer or replacing the detector.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
cd "$ROOT"

WORK="${1:-runs/demo-sizer-calibration}"
BUNDLE="${HAGVIEW_DEMO_BUNDLE:-pipeline/assets/bundles/sizer}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p "$WORK"
cat > "$WORK/synth.yaml" <<'YAML'
polyps: {min_count: 2, max_count: 3, diameter_mm: [2.0, 20.0]}
YAML
DIRS=()
for run in "1901 24" "1903 36"; do
    set -- $run
    if [ ! -f "$WORK/run-$1/lesion_info.csv" ]; then
        hagview-synth --out "$WORK/run-$1" --videos "$2" --seconds 8 --fps 10 --size 640x480 --seed "$1" \
            --config "$WORK/synth.yaml" --quiet
    fi
    DIRS+=("$WORK/run-$1")
done
python -m trainer.calibrate "$BUNDLE" "${DIRS[@]}" \
    --description "synthetic data (60 hagview-synth videos, runs 1901 and 1903, 640x480, 10 fps, 8 s)"
