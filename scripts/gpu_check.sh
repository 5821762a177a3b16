#!/usr/bin/env bash
# One-shot GPU check for a lent GPU machine (PyTorch + CUDA, CPU onnxruntime, no TensorRT, no
# network): installs the carried wheels (PyAV), runs the GPU tests and the CUDA latency table,
# and writes everything it prints under $OUT. Under 8 minutes on one H100 (each step has its
# own time limit). README "GPU check" says how to carry the wheels.
#
#   bash scripts/gpu_check.sh              # on the GPU machine (the device tool sets $OUT)
#   bash scripts/gpu_check.sh --dry-run    # here, on the CPU: same steps, GPU tests skipped with
#                                          # their reasons, the benchmark in --smoke mode
# Exit code: 0 when every step passed, 1 otherwise (the summary names the failed steps).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DRY=0
case "${1:-}" in
    --dry-run) DRY=1 ;;
    "") ;;
    *) echo "gpu_check: error: unknown argument ${1} (use --dry-run or nothing)" >&2; exit 2 ;;
esac

OUT="${OUT:-$ROOT/bench-results/gpu-check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

if [ "$DRY" = 1 ] && [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
else
    PY="$(command -v python3)"
fi
FAILED=()
step() { echo; echo "== $1 (t=${SECONDS}s)"; }
# run_step NAME LIMIT_S CMD...: runs CMD under a time limit, records a failure by name
run_step() {
    local name="$1" limit="$2"; shift 2
    step "$name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        [ "$rc" -eq 124 ] && echo "gpu_check: $name ran past its ${limit}s limit"
        FAILED+=("$name (exit $rc)")
    fi
    return 0
}

# the steps; run below with everything they print copied to $LOG
check() {

step "machine"
echo "dry run: $([ "$DRY" = 1 ] && echo yes || echo no); python: $PY; out: $OUT"
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not available here"
"$PY" -c 'import sys, torch, numpy, onnxruntime
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}")
print("cuda available:", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
if [ "$DRY" = 0 ] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: error: no CUDA device here (use --dry-run on a machine without a GPU)"
    exit 2
fi

step "wheels"
if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
    SITE=/tmp/hagview-site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$ROOT"/.whl/*.whl || { echo "gpu_check: error: installing the carried wheels failed"; exit 2; }
    export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    ls "$ROOT"/.whl/*.whl | sed 's|.*/|installed |'
else
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    echo "no .whl/ here (nothing carried)"
fi
MISSING="$("$PY" - <<'PY'
import importlib
need = ["numpy", "cv2", "av", "yaml", "onnx", "onnxruntime", "safetensors", "scipy", "torch", "onnxscript",
        "sklearn", "pytest"]
missing = []
for name in need:
    try:
        importlib.import_module(name)
    except Exception:
        missing.append(name)
print(" ".join(missing))
PY
)"
if [ -n "$MISSING" ]; then
    echo "gpu_check: error: missing Python packages: $MISSING (carry their wheels in .whl/: README 'GPU check')"
    exit 2
fi
echo "all needed packages import"

# GPU tests: the engines (FP16 and CUDA graphs against the folded ONNX model, the TensorRT
# engine's CUDA path with a stand-in compiler) and the trainer on CUDA; of tests/test_tensorrt.py
# the GPU-marked ones (real TensorRT: skipped with the reason where it is not installed; its
# stand-in tests are CPU-only and run in CI).
run_step "gpu tests" "$([ "$DRY" = 1 ] && echo 900 || echo 270)" "$PY" -m pytest -q -rs -p no:cacheprovider \
    --timeout=240 --junitxml="$OUT/pytest.xml" tests/test_engines.py tests/test_cuda_training.py
run_step "tensorrt gpu tests" 120 "$PY" -m pytest -q -rs -p no:cacheprovider --timeout=100 -m gpu \
    --junitxml="$OUT/pytest-tensorrt.xml" tests/test_tensorrt.py

if [ "$DRY" = 1 ]; then
    run_step "latency table (smoke, CPU)" 600 "$PY" scripts/bench_inference.py --device cuda --smoke --out "$OUT"
else
    run_step "latency table" 300 "$PY" scripts/bench_inference.py --device cuda --out "$OUT"
fi

step "summary"
echo "elapsed ${SECONDS}s; files in $OUT:"
ls -1 "$OUT"
if [ "${#FAILED[@]}" -eq 0 ]; then
    echo "gpu_check: all steps passed"
    exit 0
fi
printf 'gpu_check: FAILED: %s\n' "${FAILED[@]}"
exit 1
}

# a pipe rather than `exec > >(tee ...)`: the script ends only after tee has written everything
( check ) 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
