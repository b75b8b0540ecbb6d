#!/usr/bin/env bash
# README line 1 in a folder with nothing beside it: clean clone of main, empty ILF cache, data from 127.0.0.1.
set -u
rm -rf /tmp/bare && mkdir -p /tmp/bare/cache
cd /tmp/bare
( cd /work/shared/data && exec python3 -m http.server 8765 --bind 127.0.0.1 ) > /tmp/bare/http.log 2>&1 &
HTTP=$!
git clone -q /work/main ilf && cd ilf
git log --oneline -1
echo "[bare] bash scripts/setup.sh && .venv/bin/ilf run"
export ILF_CACHE=/tmp/bare/cache ILF_DATA_BASE_URL=http://127.0.0.1:8765
T0=$(date +%s)
bash scripts/setup.sh && .venv/bin/ilf run
RC=$?
echo "[bare] exit $RC after $(( $(date +%s) - T0 )) s"
kill $HTTP
