#!/usr/bin/env bash
# Build a stand-in for the tensorflow/tensorflow:2.21.0 base image, for engines that cannot
# pull from a registry (CI here). Usage: standin.sh  -> prints the tag, nima-standin:KEY
# (needs root, a running engine reachable through DOCKER_HOST, debootstrap, and pip access to
# PyPI on the host).
#
# A debootstrap'ed Debian bookworm (Python 3.11, like the host) gets the project's runtime
# requirements installed FROM THE HOST with `pip install --target`: pip inside a container
# cannot verify the registries' certificates here. The rootfs is cached under
# ${NIMA_DOCKER_CI_CACHE:-~/.cache/nima-docker-ci}/rootfs-KEY (KEY hashes the requirement list
# and RECIPE below), so a second CI run only re-imports it, or skips everything when the engine
# already has the tag.
set -euo pipefail
RECIPE="bookworm minbase python3; pip --target dist-packages; v1"  # change to invalidate caches
repo=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-python3}

# The runtime requirements of the package (pyproject's dependencies) plus what `pip install
# --no-build-isolation` of the wheel needs in the image.
reqs=$("$python" - "$repo/pyproject.toml" <<'PY'
import sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print("\n".join(sorted(deps) + ["pip>=24", "setuptools>=77", "wheel"]))
PY
)
key=$( { echo "$reqs"; echo "$RECIPE"; } | sha256sum | cut -c1-16)
tag=nima-standin:$key
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "standin: $tag already in the engine" >&2
    echo "$tag"
    exit 0
fi
cache=${NIMA_DOCKER_CI_CACHE:-$HOME/.cache/nima-docker-ci}
rootfs=$cache/rootfs-$key
mkdir -p "$cache"

if [ ! -f "$rootfs/.complete" ]; then
    # Rootfs of older requirement lists (2-3 GB each) and interrupted builds go.
    find "$cache" -maxdepth 1 -name 'rootfs-*' ! -name "rootfs-$key" -exec rm -rf {} +
    rm -rf "$rootfs" "$rootfs.tmp"
    echo "standin: debootstrap bookworm (about a minute)" >&2
    debootstrap --variant=minbase --include=python3 bookworm "$rootfs.tmp" \
        http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
        || { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
    rm -rf "$rootfs.tmp"/var/cache/apt/archives/*.deb "$rootfs.tmp"/var/lib/apt/lists/*
    site=$rootfs.tmp/usr/local/lib/python3.11/dist-packages  # on Debian python3's sys.path
    echo "standin: pip install --target (from the host):" $reqs >&2
    # shellcheck disable=SC2086
    "$python" -m pip install -q --no-cache-dir --target "$site" $(echo "$reqs" | tr '\n' ' ')
    # Console scripts land in $site/bin with the host interpreter's path; the image does not
    # need them (the Dockerfile runs `python3 -m pip`).
    rm -rf "$site/bin"
    touch "$rootfs.tmp/.complete"
    mv "$rootfs.tmp" "$rootfs"
fi

echo "standin: docker import $rootfs as $tag" >&2
tar -C "$rootfs" --exclude=./.complete -c . \
    | docker import --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
        --change 'CMD ["python3"]' - "$tag" >/dev/null
echo "standin: $tag ready" >&2
echo "$tag"
