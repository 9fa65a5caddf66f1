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
# Installed at the pinned versions the Dockerfiles install (constraints.txt), so the image
# build finds every requirement satisfied and needs no network.
constraints=$repo/constraints.txt
key=$( { echo "$reqs"; cat "$constraints"; echo "$RECIPE"; } | sha256sum | cut -c1-16)
tag=nima-standin:$key
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "standin: $tag already in the engine" >&2
    echo "$tag"
    exit 0
fi
cache=${NIMA_DOCKER_CI_CACHE:-$HOME/.cache/nima-docker-ci}
rootfs=$cache/rootfs-$key
mkdir -p "$cache"

drop() {  # rm -rf, after unmounting what an interrupted debootstrap left mounted inside (proc)
    local d
    for d in "$@"; do
        awk -v d="$d/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r \
            | xargs -r -n1 umount -l
        rm -rf "$d"
    done
}

# One build per key at a time (other harnesses on this machine share the cache): the second
# waits, then finds the finished rootfs.
exec 9>"$cache/rootfs-$key.lock"
flock 9
if [ ! -f "$rootfs/.complete" ]; then
    # Rootfs of older requirement lists (2-3 GB each) and builds abandoned over 3 hours ago go.
    find "$cache" -maxdepth 1 -name 'rootfs-*' ! -name "rootfs-$key" ! -name '*.lock' \
        \( ! -name '*.tmp*' -o -mmin +180 \) -print0 \
        | while IFS= read -r -d '' old; do drop "$old"; done
    drop "$rootfs"
    tmp=$(mktemp -d "$rootfs.tmpXXXX")
    trap 'drop "$tmp"' EXIT
    echo "standin: debootstrap bookworm (about a minute)" >&2
    debootstrap --variant=minbase --include=python3 bookworm "$tmp" \
        http://deb.debian.org/debian >"$tmp.log" 2>&1 \
        || { tail -n 20 "$tmp.log" >&2; rm -f "$tmp.log"; exit 1; }
    rm -f "$tmp.log"
    rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
    site=$tmp/usr/local/lib/python3.11/dist-packages  # on Debian python3's sys.path
    echo "standin: pip install --target (from the host, pinned by constraints.txt):" $reqs >&2
    # shellcheck disable=SC2086
    "$python" -m pip install -q --no-cache-dir --target "$site" -c "$constraints" \
        $(echo "$reqs" | tr '\n' ' ')
    # Console scripts land in $site/bin with the host interpreter's path; the image does not
    # need them (the Dockerfile runs `python3 -m pip`).
    rm -rf "$site/bin"
    chmod 755 "$tmp"
    touch "$tmp/.complete"
    mv -T "$tmp" "$rootfs" 2>/dev/null || drop "$tmp"  # a harness without the lock won
    trap - EXIT
fi
flock -u 9
[ -f "$rootfs/.complete" ] || { echo "standin: $rootfs is incomplete" >&2; exit 1; }

echo "standin: docker import $rootfs as $tag" >&2
tar -C "$rootfs" --exclude=./.complete -c . \
    | docker import --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
        --change 'CMD ["python3"]' - "$tag" >/dev/null
echo "standin: $tag ready" >&2
echo "$tag"
