#!/usr/bin/env bash
# Rewrite constraints.txt from the set-up .venv (after upgrading a dependency there and running the
# tests): the exact versions scripts/setup.sh installs. pyproject.toml keeps the ranges.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# The versions ilf's results and CI were measured with: scripts/setup.sh installs with"
  echo "#   pip install -c constraints.txt -e '.[openvino,qwen-0_5b,dev]'"
  echo "# pyproject.toml states ranges; regenerate this file with scripts/lock.sh after an upgrade."
  # A local build label (torch's +cpu) is dropped: the pin then matches that release's other builds.
  .venv/bin/python -m pip freeze --exclude-editable | grep -v -E '^ilf( |==|@)' | sed -E 's/^(torch==[^+]*)\+.*/\1/'
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pins"
