#!/usr/bin/env bash
# Installs the torch-tensorrt release that matches the torch in .venv (torch-tensorrt X.Y works
# only with torch X.Y), built for torch's CUDA version, from PyTorch's own package index
# (https://download.pytorch.org/whl/cuXYZ, where torch-tensorrt is published per CUDA version);
# torch-tensorrt's own requirements pick the TensorRT it was built against. A constraint keeps
# pip from replacing the installed torch. Needs an NVIDIA GPU, its driver and a CUDA build of
# torch; every refusal is one line and exit code 2. Extra arguments go to pip.
#   scripts/install_tensorrt.sh            # then: .venv/bin/python -m pytest tests/test_tensorrt.py
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HAGVIEW_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
die() { echo "install_tensorrt: error: $*" >&2; exit 2; }

[ -x "$PY" ] || die "$VENV does not exist; run scripts/test.sh (or scripts/_setup.sh) first"
command -v nvidia-smi >/dev/null 2>&1 || die "no NVIDIA driver here (nvidia-smi not found); TensorRT needs a CUDA GPU"
nvidia-smi -L >/dev/null 2>&1 || die "nvidia-smi finds no GPU; TensorRT needs a CUDA GPU"

# `read < <(...)` would hide a failing python under set -e: capture first, then check
PROBE="$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda or "none", int(torch.cuda.is_available()))' 2>&1)" \
    || die "torch does not import in $VENV: $(printf '%s' "$PROBE" | tail -n 1)"
read -r TORCH_VERSION TORCH_CUDA CUDA_OK <<<"$PROBE"
[ "$TORCH_CUDA" != "none" ] || die "torch $TORCH_VERSION in $VENV is a CPU-only build; install the CUDA build \
first, e.g. HAGVIEW_TORCH_SPEC='torch==${TORCH_VERSION%%+*}' with the CUDA index (https://pytorch.org/get-started/locally/)"
[ "$CUDA_OK" = "1" ] || die "torch $TORCH_VERSION (CUDA $TORCH_CUDA) cannot use the GPU (torch.cuda.is_available() is False); check the driver"

BASE="${TORCH_VERSION%%+*}"                        # 2.13.0+cu130 -> 2.13.0
MAJOR_MINOR="$(echo "$BASE" | cut -d. -f1,2)"      # -> 2.13
CUDA_TAG="cu$(echo "$TORCH_CUDA" | tr -d .)"       # 13.0 -> cu130
INDEX="${HAGVIEW_TORCH_INDEX:-https://download.pytorch.org/whl/$CUDA_TAG}"
echo "install_tensorrt: torch $TORCH_VERSION (CUDA $TORCH_CUDA) -> torch-tensorrt==$MAJOR_MINOR.* from $INDEX"
CONSTRAINT="$(mktemp)"
trap 'rm -f "$CONSTRAINT"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINT"
"$PY" -m pip install -c "$CONSTRAINT" --extra-index-url "$INDEX" "torch-tensorrt==$MAJOR_MINOR.*" "$@" \
    || die "pip could not install torch-tensorrt==$MAJOR_MINOR.* for CUDA $TORCH_CUDA from $INDEX (see pip's message above)"
# the same check the backend makes: imports, matches torch, sees the GPU
cd "$ROOT"
"$PY" - <<'PY' || die "torch-tensorrt was installed but cannot be used (the line above says why)"
import sys
from pipeline.engines.tensorrt_build import unavailable_reason
reason = unavailable_reason()
if reason:
    print(f"install_tensorrt: error: {reason}", file=sys.stderr)
    sys.exit(1)
import tensorrt, torch, torch_tensorrt
print(f"install_tensorrt: ok: tensorrt {tensorrt.__version__}, torch-tensorrt {torch_tensorrt.__version__}, "
      f"torch {torch.__version__}, GPU {torch.cuda.get_device_name(torch.cuda.current_device())}")
PY
