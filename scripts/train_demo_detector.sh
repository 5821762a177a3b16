#!/usr/bin/env bash
# Train the demo polyp detector on synthetic data and export it as the committed bundle.
#
#   scripts/train_demo_detector.sh [WORK_DIR]     (default WORK_DIR: runs/demo-detector)
#
# 1. hagview-synth renders 32 synthetic videos (seed 11, 320x240, 12.5 fps, 8 s, 1-3 polyps);
# 2. hagview-train trains configs/train/detector_synthetic.yaml on them (fold 0 of 4, CPU,
#    one thread, 24 epochs: 20 minutes on this shared 2-core machine under a load of 7-11);
# 3. hagview-export folds the gates and writes pipeline/assets/bundles/detector/.
# Everything is seeded, so the same command gives the same data, and on the same CPU and
# torch build the same weights. The bundle says it was trained on synthetic data and is
# not for clinical use. Set HAGVIEW_DEMO_BUNDLE to export elsewhere.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
cd "$ROOT"

WORK="${1:-runs/demo-detector}"
BUNDLE="${HAGVIEW_DEMO_BUNDLE:-pipeline/assets/bundles/detector}"
DATA="$WORK/data"
RUN="$WORK/run"
SYNTH_SEED=11       # the demo detector test renders its fresh video from a different seed

# One intra-op thread: on a small shared CPU, more threads mostly wait on each other.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p "$WORK"

if [ ! -f "$DATA/lesion_info.csv" ]; then
    cat > "$WORK/synth.yaml" <<'EOF'
# every video shows at least one polyp; frames where it is out of view are the negatives
polyps:
  min_count: 1
  max_count: 3
EOF
    hagview-synth --out "$DATA" --videos 32 --seconds 8 --fps 12.5 --size 320x240 \
        --seed "$SYNTH_SEED" --config "$WORK/synth.yaml"
else
    echo "[demo-detector] reusing $DATA"
fi

if [ -f "$RUN/config.yaml" ]; then
    echo "[demo-detector] $RUN exists: resuming it (delete it to train from scratch)"
    hagview-train --out "$RUN" --resume
else
    hagview-train --config configs/train/detector_synthetic.yaml --out "$RUN" \
        --set data.kind=realcolon --set "data.root=$DATA"
fi

hagview-export "$RUN" --out "$BUNDLE" --force
du -sh "$BUNDLE"
echo "[demo-detector] bundle written to $BUNDLE"
