#!/usr/bin/env bash
# Wheels for bench/gpu.py on a GPU machine that has JAX, NumPy, Pillow, SciPy, scikit-learn,
# h5py, ml-dtypes, rich and absl but no Keras and no internet: Keras, its two missing needs
# (namex, optree) and this package, into .whl/ (git-ignored; about 3 MB). The machine then runs
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit
#   python3 bench/gpu.py --backends jax,torch --budget 450 --out "$OUT"
# Python 3.12, x86-64 manylinux: the lent machine's (override with PYVER=3.11 etc.).
set -euo pipefail
cd "$(dirname "$0")/.."
pyver=${PYVER:-3.12}
rm -rf .whl && mkdir .whl
# The versions the tests pass with (constraints.txt); KERAS_VERSION overrides Keras's.
pins=$(grep -E '^(keras|namex|optree)==' constraints.txt)
[ "$(echo "$pins" | wc -l)" = 3 ] \
    || { echo "gpu_wheels.sh: constraints.txt does not pin keras, namex and optree" >&2; exit 1; }
if [ -n "${KERAS_VERSION:-}" ]; then
    pins=$(echo "$pins" | sed "s/^keras==.*/keras==$KERAS_VERSION/")
fi
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl $pins
python3 -m pip wheel -q --no-deps -w .whl .
ls -l .whl
du -sh .whl
