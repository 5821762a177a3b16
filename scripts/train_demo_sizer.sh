#!/usr/bin/env bash
# Train the demo polyp sizer on synthetic data and export it as the committed bundle.
#
#   scripts/train_demo_sizer.sh [WORK_DIR]      (default WORK_DIR: runs/demo-sizer)
#
# 1. hagview-train renders the synthetic training videos itself (configs/train/synthetic_small.yaml,
#    data.kind: synthetic, seeded) and trains a two-stream HAG ResNet-18 with Gradient Routing;
# 2. hagview-export folds the gates and writes pipeline/assets/bundles/sizer/.
# The width is 1/8 so that the bundle (ONNX + safetensors) stays within the 10 MB the demo
# bundles share. Everything is seeded: the same command gives the same data and, on the same
# CPU and torch build, the same weights. The bundle says it was trained on synthetic data and is
# not for clinical use. Set HAGVIEW_DEMO_BUNDLE to export elsewhere.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
cd "$ROOT"

WORK="${1:-runs/demo-sizer}"
BUNDLE="${HAGVIEW_DEMO_BUNDLE:-pipeline/assets/bundles/sizer}"
RUN="$WORK/run"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p "$WORK"

if [ -f "$RUN/config.yaml" ]; then
    echo "[demo-sizer] $RUN exists: resuming it (delete it to train from scratch)"
    hagview-train --out "$RUN" --resume
else
    hagview-train --config configs/train/synthetic_small.yaml --out "$RUN" \
        --set model.width_mult=0.125
fi

hagview-export "$RUN" --out "$BUNDLE" --force
du -sh "$BUNDLE"
echo "[demo-sizer] bundle written to $BUNDLE"
