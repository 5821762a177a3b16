#!/usr/bin/env bash
# Installs TensorRT and the torch-tensorrt release that matches the torch in .venv
# (torch-tensorrt X.Y only works with torch X.Y). Needs an NVIDIA GPU, its driver, and a CUDA
# build of torch; refuses with the reason otherwise. Extra arguments go to pip.
#   scripts/install_tensorrt.sh            # then: .venv/bin/python -m pytest tests/test_tensorrt.py
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
die() { echo "install_tensorrt: error: $*" >&2; exit 2; }

[ -x "$PY" ] || die "$VENV does not exist; run scripts/test.sh (or scripts/_setup.sh) first"
command -v nvidia-smi >/dev/null 2>&1 || die "no NVIDIA driver here (nvidia-smi not found); TensorRT needs a CUDA GPU"
nvidia-smi -L >/dev/null 2>&1 || die "nvidia-smi finds no GPU; TensorRT needs a CUDA GPU"

read -r TORCH_VERSION TORCH_CUDA CUDA_OK < <("$PY" - <<'PY'
import torch
print(torch.__version__, torch.version.cuda or "none", int(torch.cuda.is_available()))
PY
)
[ "$TORCH_CUDA" != "none" ] || die "torch $TORCH_VERSION in $VENV is a CPU-only build; install the CUDA build \
first, e.g. HAGVIEW_TORCH_SPEC='torch==${TORCH_VERSION%%+*}' with the CUDA index (https://pytorch.org/get-started/locally/)"
[ "$CUDA_OK" = "1" ] || die "torch $TORCH_VERSION (CUDA $TORCH_CUDA) cannot use the GPU (torch.cuda.is_available() is False); check the driver"

BASE="${TORCH_VERSION%%+*}"                 # 2.13.0+cu128 -> 2.13.0
MAJOR_MINOR="$(echo "$BASE" | cut -d. -f1,2)"
echo "install_tensorrt: torch $TORCH_VERSION (CUDA $TORCH_CUDA) -> torch-tensorrt==$MAJOR_MINOR.*"
# the constraint keeps pip from replacing the installed torch with another build
CONSTRAINT="$(mktemp)"
trap 'rm -f "$CONSTRAINT"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINT"
"$PY" -m pip install -c "$CONSTRAINT" "torch-tensorrt==$MAJOR_MINOR.*" tensorrt "$@"
"$PY" - <<'PY'
import tensorrt, torch, torch_tensorrt
print(f"install_tensorrt: ok: tensorrt {tensorrt.__version__}, torch-tensorrt {torch_tensorrt.__version__}, "
      f"torch {torch.__version__}, GPU {torch.cuda.get_device_name(0)}")
PY
